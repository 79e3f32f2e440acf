"""Run one shell command for a service: a timeout, output as it comes, a clean kill.

Shared by remote exec (which streams output to the requester) and event handlers
(which collect it, bounded). The command runs as ``/bin/sh -c COMMAND`` in a session
of its own, so a timeout kills the whole process group, not just the shell: a
``sleep`` the shell forked must not outlive it and keep the output pipes open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

CHUNK = 16 * 1024
PIPE_DRAIN = 5.0  # seconds to wait for the output pipes once the command is gone

OnOutput = Callable[[str, bytes], None]  # (stream "stdout"/"stderr", chunk)


@dataclass(frozen=True)
class ProcessResult:
    exit: int  # the exit status; -SIGNAL when a signal ended it (e.g. -9 on a timeout)
    duration: float
    timed_out: bool = False


def run_command(command: str, on_output: OnOutput, *, timeout: float,
                stdin: bytes | None = None, env: Mapping[str, str] | None = None,
                on_start: Callable[[subprocess.Popen, bool], None] | None = None
                ) -> ProcessResult:
    """Run ``command`` until it exits or ``timeout`` seconds pass (then kill its group).

    ``on_output`` is called from reader threads, one per stream, in order within a
    stream. ``stdin`` is written by a thread of its own (a command that never reads
    it must not stall the timeout); without it stdin is /dev/null. Raises OSError if
    the command cannot be started at all. ``on_start(proc, True)`` / ``(proc, False)``
    bracket the command's life, for an owner that must kill it on shutdown."""
    started = time.monotonic()
    proc = subprocess.Popen(["/bin/sh", "-c", command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                            env=None if env is None else dict(env),
                            start_new_session=True)
    if on_start is not None:
        on_start(proc, True)
    threads = [threading.Thread(target=_pump, args=(pipe, name, on_output), daemon=True,
                                name=f"pump-{name}")
               for pipe, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))]
    if stdin is not None:
        threads.append(threading.Thread(target=_feed, args=(proc.stdin, stdin),
                                        daemon=True, name="feed-stdin"))
    for t in threads:
        t.start()
    timed_out = False
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc)
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted by an exception: leave nothing behind
            kill_group(proc)
            proc.wait()
        if on_start is not None:
            on_start(proc, False)
    # A child the command left running in the background may hold the pipes a while
    # longer; it is the command's to keep (only a timeout kills the group).
    for t in threads:
        t.join(PIPE_DRAIN)
    return ProcessResult(code, time.monotonic() - started, timed_out)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the command and everything it started in its session."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _pump(pipe: Any, stream: str, on_output: OnOutput) -> None:
    with pipe:
        for chunk in iter(lambda: pipe.read1(CHUNK), b""):
            on_output(stream, chunk)


def _feed(pipe: Any, data: bytes) -> None:
    try:
        with pipe:
            pipe.write(data)
    except (BrokenPipeError, OSError):
        pass  # the command exited or closed stdin without reading it all: its choice
