"""The console scripts pip installed (`tsctl`, `treescale`), for tests that run a command
the way a user types it rather than as `python -m tsctl.main`.

Owns: finding a script beside the interpreter running the tests (the venv `make`
creates, or any environment where the project is pip-installed) and running a command
line through it. A script that is not installed there skips the test with the reason
(run `make install`): an interpreter that only sees the source tree has no scripts.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest


def console_script(name: str) -> Path:
    """The installed script ``name`` of this environment, or skip the test."""
    script = Path(sys.executable).parent / name
    declared = {ep.name for ep in metadata.entry_points(group="console_scripts")
                if ep.value == "tsctl.main:cli"}
    if name not in declared or not script.is_file():
        pytest.skip(f"console script {name!r} is not installed for {sys.executable} "
                    "(run `make install`: it installs the project into .venv)")
    return script


def run_line(line: str, cwd: Path, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command line exactly as written (shell words, no shell), its first word
    resolved to the installed console script of that name."""
    argv = shlex.split(line)
    return subprocess.run([str(console_script(argv[0])), *argv[1:]], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})
