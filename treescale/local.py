"""A whole tree as local processes on this machine (`tsctl up`, `tsctl demo`, tests).

Each node runs as `python -m tsctl.main node start --config FILE --name NAME` in its
own session, logging to a file; a JSON state file remembers the processes so that
`tsctl down` (or another shell) can stop them. Like a built tree, a local one is
closed: every node accepts the tree's admin token (every permission) and links with
the link token derived from it, both handed over in the environment, never on a
command line; the admin token is written 0600 beside the state file (``up.token``).

Must not touch: what a node does (it is only started and stopped here), reading config
beyond the tree (treescale.loader).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import msgpack
import zmq

from treescale.config import ENV_ADMIN_TOKEN, ENV_LINK_TOKEN
from treescale.credentials import link_token_for, read_token_file, write_private
from treescale.loader import load_tree

DEFAULT_STATE = Path(os.environ.get("TREESCALE_STATE",
                                    Path.home() / ".treescale" / "up.json"))


@dataclass
class LocalNode:
    name: str
    address: str
    pid: int
    log: str
    ipc: str | None = None  # ipc:// address for applications on this machine
    websocket: str | None = None  # ws:// (or wss://) URL: browsers, the dashboard

    @property
    def dashboard(self) -> str | None:
        """The dashboard's page (http:// or https://), where the node has one."""
        return self.websocket.replace("ws", "http", 1) if self.websocket else None


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port for a node to listen on, chosen *below* the kernel's ephemeral
    range: an outgoing connection (a child dialling, a client pinging) can then never
    take it between our pick and the node's bind, nor connect to itself on it. Never
    the same port twice in one process."""
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    floor = 10000 if low > 12000 else 1024
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(floor, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free TCP port in {floor}-{low - 1} on {host}")


def answers_ping(address: str, timeout: float = 0.2, keys_dir: str | None = None) -> bool:
    """True if a node answers a ping at ``address`` (used to wait for start-up); a node
    with CURVE keys in ``keys_dir`` is asked with its own keypair."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys_dir is not None:
        from treescale.keys import load_own

        public, secret = load_own(keys_dir).as_bytes()
        sock.curve_secretkey, sock.curve_publickey = secret, public
        sock.curve_serverkey = public
    try:
        sock.connect(address)
        sock.send(msgpack.packb([10, 1]))
        return bool(sock.poll(int(timeout * 1000))) and \
            msgpack.unpackb(sock.recv())[0] == 11
    finally:
        sock.close()


def token_file(state: Path = DEFAULT_STATE) -> Path:
    """Where `up` keeps the admin token of the tree it started."""
    return state.with_name(state.stem + ".token")


def _admin_token(state: Path, given: str | None) -> str:
    """``given``, else $TREESCALE_TOKEN, else the last tree's, else a new one; kept
    (0600) in ``token_file(state)``."""
    path = token_file(state)
    token = given or os.environ.get("TREESCALE_TOKEN")
    if not token and path.exists():
        token = read_token_file(path)
    token = token or secrets.token_urlsafe(32)
    if not path.exists() or read_token_file(path) != token:
        path.unlink(missing_ok=True)
        write_private(path, token + "\n")
    return token


def up(config: str | Path, state: Path = DEFAULT_STATE, local: bool = True,
       timeout: float = 30.0, on_started: Callable[[LocalNode], object] | None = None,
       admin_token: str | None = None) -> list[LocalNode]:
    """Start every node of the tree in ``config`` (parents first, forked by one
    treescale.launcher process: each its own process, session, log and database);
    wait until each answers. ``local`` rewrites every address to 127.0.0.1. Every node accepts
    ``admin_token`` (default: see ``_admin_token``) with every permission."""
    tree = load_tree(config)
    if state.exists() and any(_alive(n.pid) for n in read_state(state)):
        raise RuntimeError(f"a tree is already running (state {state}); "
                           "run `tsctl down` first")
    state.parent.mkdir(parents=True, exist_ok=True)
    admin = _admin_token(state, admin_token)
    secrets_env = {ENV_ADMIN_TOKEN: admin, ENV_LINK_TOKEN: link_token_for(admin)}
    logs = state.parent / "logs"
    logs.mkdir(exist_ok=True)
    nodes: list[LocalNode] = []
    cmd = [sys.executable, "-m", "treescale.launcher", str(config), str(state.parent)]
    if local:
        cmd.append("--local")
    launcher_log = logs / "launcher.log"
    try:
        with open(launcher_log, "ab") as err:
            launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        env={**os.environ, **secrets_env})
        with launcher.stdout:
            for line in launcher.stdout:  # one per node, as soon as it is forked
                forked = json.loads(line)
                spec = tree.spec(forked["name"])
                host = "127.0.0.1" if local else spec.host
                ipc = forked.get("ipc")
                nodes.append(LocalNode(forked["name"], f"tcp://{host}:{spec.port}",
                                       forked["pid"], forked["log"],
                                       f"ipc://{ipc}" if ipc else None,
                                       forked.get("websocket")))
                write_state(state, nodes)
        if len(nodes) < len(tree.names):
            raise RuntimeError(f"the launcher started {len(nodes)} of "
                               f"{len(tree.names)} nodes; see {launcher_log}:\n"
                               + _tail(str(launcher_log)))
        deadline = time.monotonic() + timeout
        for node in nodes:
            while not answers_ping(node.address):
                if not _alive(node.pid):
                    raise RuntimeError(f"node {node.name} exited; see {node.log}:\n"
                                       + _tail(node.log))
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {node.name} did not answer within "
                                       f"{timeout:g}s; see {node.log}")
            if on_started:
                on_started(node)
    except BaseException:
        down(state)
        raise
    return nodes


def down(state: Path = DEFAULT_STATE, timeout: float = 10.0) -> list[str]:
    """Stop the nodes recorded in ``state`` (SIGTERM, then SIGKILL); names stopped."""
    nodes = read_state(state)
    for n in nodes:
        _signal(n.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for n in nodes:
        while _alive(n.pid) and time.monotonic() < deadline:
            time.sleep(0.02)  # waiting for a process to exit: no event to wait on
        if _alive(n.pid):
            _signal(n.pid, signal.SIGKILL)
    state.unlink(missing_ok=True)
    return [n.name for n in nodes]


def read_state(state: Path = DEFAULT_STATE) -> list[LocalNode]:
    if not state.exists():
        return []
    return [LocalNode(**n) for n in json.loads(state.read_text())]


def write_state(state: Path, nodes: list[LocalNode]) -> None:
    state.write_text(json.dumps([asdict(n) for n in nodes], indent=1))


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False  # our own child, now reaped
    except ChildProcessError:
        pass  # not our child: ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _tail(path: str, limit: int = 1500) -> str:
    try:
        return Path(path).read_text(errors="replace")[-limit:]
    except OSError:
        return ""
