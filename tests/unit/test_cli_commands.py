"""tsctl's root group imports each command's module when it is used: its map of
command names to modules must hold every command each module defines, and only them."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
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


# Nothing listens here: a usage error must be found before tsctl connects.
NOWHERE = "tcp://127.0.0.1:1"


def _service(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsctl.main", "service", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_service_commands_have_help():
    for command in ("add", "ls", "info", "scale", "rm", "logs"):
        r = _service(command, "--help")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"Usage: tsctl service {command} ") and "--json" in r.stdout
    assert "-- COMMAND" in _service("add", "--help").stdout


@pytest.mark.parametrize("args,message", [
    (("add", "web", "--image", "img", "--group", "g", "--tag", "t"),
     "give --group or --tag, not both"),
    (("add", "web", "--image", "img", "--env", "NOEQUALS"),
     "--env 'NOEQUALS': expected KEY=VALUE"),
    (("add", "web", "--image", "img", "--replicas", "-1"), "-1 is not in the range x>=0"),
    (("add", "web", "--image", "img", "--replica", "2"), "no such option: --replica"),
    (("add", "web", "--image", "img", "--vip-node", "n1"), "--vip-node needs --vip"),
    (("add", "web", "--image", "img", "--vip", "127.0.0.1:80"), "--vip needs --port"),
    (("add", "web"), "Missing option '--image'"),
    (("scale", "web", "--", "-1"), "-1 is not in the range x>=0"),
    (("logs", "web", "--tail", "-5"), "-5 is not in the range x>=0"),
])
def test_service_usage_errors_exit_2_before_connecting(args, message):
    r = _service(*args, "-a", NOWHERE)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr


def test_a_well_formed_service_add_gets_past_parsing_to_the_node():
    """The options the usage errors above misuse, used right: only the missing node
    stops it (one line, exit 1), so those exit codes came from the mistakes."""
    r = _service("add", "web", "--image", "img", "--group", "g", "--env", "A=b=c",
                 "--replicas", "0", "--min", "0", "--vip", "127.0.0.1:80", "--port", "80",
                 "--vip-node", "n1", "-a", NOWHERE, "--timeout", "0.5", "--",
                 "sh", "-c", "echo hi")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
