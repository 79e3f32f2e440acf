"""tsctl's root group imports each command's module when it is used: its map of
command names to modules must hold every command each module defines, and only them."""

from __future__ import annotations

import importlib
import subprocess
import sys

from tsctl.main import COMMAND_MODULES

from tests.conftest import ROOT


def test_the_command_map_names_every_command_of_every_module_and_nothing_else():
    defined = {}
    for module in sorted(set(COMMAND_MODULES.values())):
        for command in importlib.import_module(f"tsctl.{module}").COMMANDS:
            defined[command.name] = module
    assert defined == COMMAND_MODULES


def test_node_start_parses_without_rich_or_the_other_commands():
    """`tsctl node start` is what every node process runs: its imports are a node's
    memory. Parsed here up to --help, in a fresh interpreter."""
    probe = ("import sys\n"
             "from tsctl.main import cli\n"
             "try:\n"
             "    cli(['node', 'start', '--help'], prog_name='tsctl')\n"
             "except SystemExit:\n"
             "    pass\n"
             "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('rich', 'tsctl', 'yaml', 'asyncio', 'docker', 'paramiko') "
             "or m == 'urllib.request')))\n")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.splitlines()[-1].split())
    assert {"tsctl.main", "tsctl.node_cmd"} <= loaded
    assert loaded <= {"tsctl", "tsctl.main", "tsctl.node_cmd", "tsctl.failures"}, loaded
