"""What `tsctl build` must change on one server, decided from what it found there. Pure.

A server's install root holds everything build puts there (so teardown can remove it
all and several nodes can share a machine):

    ROOT/.treescale-install   marker: this directory belongs to tsctl build
    ROOT/wheels/              the wheelhouse (TreeScale and every dependency)
    ROOT/venv/                the virtual environment installed from it
    ROOT/tree.db              the compiled tree (the node's database)
    ROOT/keys/                CURVE: the node's keypair, authorized/ (every node's key)
    ROOT/run.sh               daemon mode: starts the node, writes ROOT/node.pid
    ROOT/node.log             daemon mode: the node's output
    ROOT/state.json           digests of what is installed, for the next build to compare

and, in systemd mode, /etc/systemd/system/treescale-NAME.service (unit_text: what the
unit says and how it escapes paths and names for systemd).

Idempotence comes from comparing digests, never timestamps: the same wheelhouse, tree
and service text on a running node mean "up to date" and nothing is touched.
"""

from __future__ import annotations

import hashlib
import shlex
import string
from dataclasses import dataclass, field

MARKER = ".treescale-install"
STATE_FILE = "state.json"
SYSTEMD_DIR = "/etc/systemd/system"
# What a unit name holds unescaped (systemd.unit(5)); "@" would make it a template.
UNIT_NAME_SAFE = frozenset(string.ascii_letters + string.digits + ":_-")
# What a word of a unit's command line holds without quotes.
EXEC_WORD_PLAIN = frozenset(string.ascii_letters + string.digits + "/._-+=:,@")

# Actions, in the order they run.
INSTALL = "install"   # upload the wheelhouse and (re)create the venv from it
WRITE_DB = "db"       # upload the compiled tree
WRITE_KEYS = "keys"   # write the node's CURVE keys (keyring.py)
SERVICE = "service"   # write the run script or systemd unit
RESTART = "restart"   # the node runs old code/config: stop it, start it
START = "start"       # the node is not running: start it
ORDER = (INSTALL, WRITE_DB, WRITE_KEYS, SERVICE, RESTART, START)


@dataclass(frozen=True)
class Layout:
    """Where node ``name`` lives under install root ``root`` on its server."""

    root: str
    name: str

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/") or "/", *parts])

    @property
    def marker(self) -> str:
        return self.path(MARKER)

    @property
    def wheels(self) -> str:
        return self.path("wheels")

    @property
    def venv(self) -> str:
        return self.path("venv")

    @property
    def python(self) -> str:
        return self.path("venv", "bin", "python")

    @property
    def db(self) -> str:
        return self.path("tree.db")

    @property
    def keys_dir(self) -> str:
        return self.path("keys")

    @property
    def run_script(self) -> str:
        return self.path("run.sh")

    @property
    def pid_file(self) -> str:
        return self.path("node.pid")

    @property
    def log_file(self) -> str:
        return self.path("node.log")

    @property
    def state_file(self) -> str:
        return self.path(STATE_FILE)

    @property
    def unit_name(self) -> str:
        return f"treescale-{unit_escape(self.name)}.service"

    @property
    def unit_path(self) -> str:
        return f"{SYSTEMD_DIR}/{self.unit_name}"

    def node_argv(self, config: str) -> tuple[str, ...]:
        """The command that runs the node (same in both modes)."""
        return (self.python, "-m", "tsctl.main", "node", "start", "--config", config,
                "--name", self.name)

    def node_command(self, config: str) -> str:
        """node_argv as a shell command line."""
        return " ".join(shlex.quote(p) for p in self.node_argv(config))


def check_install_root(root: str) -> str:
    """``root`` if it is safe to install into and later remove (absolute, not a system
    directory); ValueError otherwise."""
    if not root.startswith("/"):
        raise ValueError(f"install_root {root!r} must be an absolute path")
    if any(ord(c) < 32 or c == "\x7f" for c in root):
        raise ValueError(f"install_root {root!r} must not hold control characters")
    parts = [p for p in root.split("/") if p]
    if not parts or parts in (["usr"], ["etc"], ["var"], ["opt"], ["home"], ["root"],
                              ["tmp"], ["bin"], ["lib"], ["srv"]) or ".." in parts:
        raise ValueError(f"install_root {root!r} is too broad: give a directory of its own "
                         "(e.g. /opt/treescale)")
    return "/" + "/".join(parts)


def run_script(layout: Layout, config: str) -> str:
    """Daemon mode (no systemd): a script that records its pid and becomes the node."""
    return (f"#!/bin/sh\n# TreeScale node {layout.name}, written by `tsctl build` "
            "(daemon mode: this server has no systemd).\n"
            f"echo $$ > {shlex.quote(layout.pid_file)}\n"
            f"export TREE_DB_PATH={shlex.quote(layout.db)} PYTHONUNBUFFERED=1\n"
            f"exec {layout.node_command(config)}\n")


def unit_escape(name: str) -> str:
    """``name`` as part of a unit name: every character a unit name cannot hold becomes
    \\xNN per UTF-8 byte, like systemd-escape (letters, digits, ':', '_', '-' stay)."""
    return "".join(c if c in UNIT_NAME_SAFE else "".join(f"\\x{b:02x}" for b in c.encode())
                   for c in name)


def _literal(text: str) -> str:
    """``text`` with '%' doubled: systemd expands %-specifiers in most settings."""
    return text.replace("%", "%%")


def _quoted(word: str) -> str:
    """One word that systemd takes literally, quoted if it must be (C escapes inside
    double quotes: backslash and quote)."""
    if word and set(word) <= EXEC_WORD_PLAIN:
        return word
    return '"' + _literal(word.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def exec_line(argv: tuple[str, ...]) -> str:
    """An ExecStart= value that runs exactly ``argv``: '$' doubled in the arguments,
    where systemd would expand $VARIABLES, but not in the program's path, which it
    takes literally."""
    program, *args = argv
    return " ".join([_quoted(program), *(_quoted(word).replace("$", "$$") for word in args)])


def unit_text(layout: Layout, config: str) -> str:
    """Systemd mode: a unit that runs the node as root (its services drive Docker and
    the kernel's load balancing), from its install root, and starts it again however
    it ended (crash, kill -9 or a clean exit), never giving up."""
    return (f"# TreeScale node {layout.name}, written by `tsctl build`.\n"
            "[Unit]\n"
            f"Description={_literal(f'TreeScale node {layout.name}')}\n"
            "After=network-online.target\nWants=network-online.target\n"
            "# never give up restarting: the tree needs the node back\n"
            "StartLimitIntervalSec=0\n\n"
            "[Service]\n"
            f"Environment={_quoted('TREE_DB_PATH=' + layout.db)} PYTHONUNBUFFERED=1\n"
            f"WorkingDirectory={_literal(layout.root)}\n"
            f"ExecStart={exec_line(layout.node_argv(config))}\n"
            "Restart=always\nRestartSec=2\n"
            "# well within the time `tsctl build` and `teardown` wait for a stop\n"
            "TimeoutStopSec=20\n\n"
            "[Install]\nWantedBy=multi-user.target\n")


def digest(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


@dataclass(frozen=True)
class Desired:
    """What the server should hold after the build."""

    wheelhouse: str  # digest of the wheelhouse content
    db: str          # digest of the compiled tree
    service: str     # the run script or unit text (mode follows the server)
    keys: str | None = None  # digest of the node's key files (None: no CURVE keys)


@dataclass(frozen=True)
class Found:
    """What inspecting the server found (``state`` is its state.json, or {})."""

    state: dict = field(default_factory=dict)
    venv_ok: bool = False
    running: bool = False


def plan(desired: Desired, found: Found) -> tuple[str, ...]:
    """The actions that bring the server from ``found`` to ``desired``, in order; empty
    when it is up to date. A running node is restarted only if something it uses
    changed; a stopped node is started."""
    actions = []
    if found.state.get("wheelhouse") != desired.wheelhouse or not found.venv_ok:
        actions.append(INSTALL)
    if found.state.get("db") != desired.db:
        actions.append(WRITE_DB)
    if desired.keys is not None and found.state.get("keys") != desired.keys:
        actions.append(WRITE_KEYS)
    if found.state.get("service") != digest(desired.service):
        actions.append(SERVICE)
    if found.running and actions:
        actions.append(RESTART)
    elif not found.running:
        actions.append(START)
    return tuple(actions)


def describe(actions: tuple[str, ...], systemd: bool, wheel_count: int = 0,
             wheel_bytes: int = 0) -> str:
    """The actions in words, for --dry-run and the summary."""
    if not actions:
        return "up to date"
    size = f" ({wheel_bytes / 1e6:.0f} MB)" if wheel_bytes else ""
    words = {INSTALL: f"install {wheel_count} wheels{size} into a venv" if wheel_count
             else "install the wheelhouse into a venv",
             WRITE_DB: "write the tree db", WRITE_KEYS: "write the node's keys",
             SERVICE: "write the systemd unit" if systemd else "write the run script",
             RESTART: "restart the node", START: "start the node"}
    return ", ".join(words[a] for a in actions)
