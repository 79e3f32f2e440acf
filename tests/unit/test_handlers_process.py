"""run_command, shared by exec and event handlers: real /bin/sh subprocesses."""

from __future__ import annotations

import os

from tests.conftest import wait_until
from treescale.services.process import run_command


def collect(command: str, **kw):
    seen: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def on_output(stream: str, chunk: bytes) -> None:
        seen[stream] += chunk

    return run_command(command, on_output, **kw), seen


def test_output_exit_status_stdin_and_environment():
    result, seen = collect('tr a-z A-Z; echo "$GREETING" >&2; exit 4', timeout=10,
                           stdin=b"payload\n", env={"GREETING": "hi", "PATH": os.defpath})
    assert (result.exit, result.timed_out) == (4, False)
    assert seen == {"stdout": b"PAYLOAD\n", "stderr": b"hi\n"}


def test_without_stdin_the_command_reads_nothing():
    result, seen = collect("cat", timeout=10)
    assert result.exit == 0 and seen["stdout"] == b""


def test_a_command_that_ignores_a_large_stdin_is_not_stalled():
    result, seen = collect("echo done", timeout=10, stdin=b"x" * (4 << 20))
    assert result.exit == 0 and seen["stdout"] == b"done\n"


def test_a_timeout_kills_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "child.pid"
    # the shell forks sleep (it is not the last command), so killing only the
    # shell would leave sleep running with the pipes open
    result, seen = collect(f"sleep 30 & echo $! > {pid_file}; wait; echo never",
                           timeout=0.5)
    assert result.timed_out and result.exit == -9
    assert seen["stdout"] == b""
    child = int(pid_file.read_text())
    wait_until(lambda: not _running(child), 10, "the forked sleep to be killed")


def test_on_start_brackets_the_command():
    calls = []
    collect("true", timeout=10, on_start=lambda proc, alive: calls.append(alive))
    assert calls == [True, False]


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its (new) parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
