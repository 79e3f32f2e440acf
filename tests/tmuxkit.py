"""A real terminal for tests: a tmux server of the test's own (its own socket), a
window of a chosen size running one command, and what the screen shows.

Must not touch: what runs in it (the test says), any tmux server but its own.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, wait_until

TSCTL = f"{shlex.quote(sys.executable)} -m tsctl.main"


class Terminal:
    """A tmux server of our own (its own socket) running one command in a window."""

    def __init__(self, tmp: Path, command: str, width: int, height: int) -> None:
        if shutil.which("tmux") is None:
            raise AssertionError("tmux is not installed (apt-get install tmux; .ci/run "
                                 "installs it)")
        self.socket = str(tmp / "tmux.sock")
        self.tmux("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height),
                  "-c", str(ROOT), command)

    def tmux(self, *args: str) -> str:
        r = subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True,
                           timeout=30)
        assert r.returncode == 0, f"tmux {args[0]}: {r.stderr.decode()}"
        return r.stdout.decode()

    def screen(self, colours: bool = False, joined: bool = False) -> str:
        """The window's text; ``joined``: lines the terminal wrapped are joined again,
        so a line longer than the window shows as one long line."""
        return self.tmux("capture-pane", "-p", *(["-e"] if colours else []),
                         *(["-J"] if joined else []), "-t", "t")

    def resize(self, width: int, height: int) -> None:
        self.tmux("resize-window", "-t", "t", "-x", str(width), "-y", str(height))

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True,
                       timeout=30)


def run_in_terminal(tmp: Path, args: str, width: int, height: int,
                    timeout: float = 60) -> tuple[str, int, str]:
    """Run ``tsctl ARGS`` in a width x height terminal until it exits: (the screen it
    left, lines the terminal wrapped joined again; its exit status; its stderr). The
    terminal's own size is all it is told: no $COLUMNS or $LINES from this process."""
    tmp.mkdir(parents=True, exist_ok=True)
    exit_file, errors = tmp / "exit", tmp / "stderr"
    exit_file.unlink(missing_ok=True)
    # `exec cat` keeps the window (and so the screen) open after tsctl exits.
    term = Terminal(tmp, f"env -u COLUMNS -u LINES {TSCTL} {args} 2> {errors}; "
                         f"echo $? > {exit_file}.tmp; mv {exit_file}.tmp {exit_file}; "
                         "exec cat", width, height)
    try:
        wait_until(exit_file.exists, timeout, f"`tsctl {args}` to exit in the terminal")
        return term.screen(joined=True), int(exit_file.read_text()), errors.read_text()
    finally:
        term.close()
