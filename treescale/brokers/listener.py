"""Where a node listens: its ROUTER socket, the TCP port and the Unix socket.

Owns: the ROUTER's options (what ZeroMQ itself enforces: message cap, handshake
time, queues, backlog), binding the TCP port (a free one for port 0), and the
endpoint for applications on the node's own machine (``ipc_path``): refusing a path
another live node listens on, the socket file's permissions (``ipc_mode``, set by the
umask at bind time) and the path limit.

Why a Unix socket: a real deployment runs its applications next to their node. A Unix socket skips
the loopback TCP stack on both hops of every event (measured in BENCHMARKS.md: 1 MiB
events through a node at 70 % of a direct connection instead of about 50 %). It is the
same ROUTER, so a client on it says the same hello, with the same tokens, CURVE keys,
permissions and limits as one on the TCP port; nothing else in the node knows which
endpoint a session came on.

Must not touch: sessions or what they may do (gate, handshake), CURVE's keys and
ZAP (curve.py, which this only asks to serve the socket).
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from treescale.brokers.parent import heartbeats
from treescale.config import ConfigError, NodeConfig

if TYPE_CHECKING:
    from treescale.brokers.curve import Curve

log = logging.getLogger("treescale.node")

# sockaddr_un's sun_path is 108 bytes with its NUL; libzmq refuses longer paths.
MAX_IPC_PATH = 107
IPC_SCHEME = "ipc://"


def listen(ctx: zmq.Context, config: NodeConfig,
           curve: Curve | None) -> tuple[zmq.Socket, str, str | None]:
    """The node's ROUTER, set up and bound: (socket, TCP endpoint, ipc endpoint)."""
    sock = ctx.socket(zmq.ROUTER)
    if curve is not None:
        curve.serve(sock)  # before the socket binds
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    # No ROUTER_HANDOVER: a second connection presenting a live routing id is
    # ignored by ZeroMQ instead of taking the first one's place. A session is also
    # bound to its connection's fd (``Node._handle``): a routing id seen again on
    # another connection is a new peer that must say hello, never the old session.
    sock.setsockopt(zmq.LINGER, 500)
    sock.setsockopt(zmq.SNDHWM, 100)  # messages are batches: bound memory
    heartbeats(sock)  # no ZMTP pings: links.tick times out silent children
    sock.setsockopt(zmq.RCVHWM, 1000)
    # A hard cap far above max_payload protects memory; the node itself answers
    # anything between max_payload and this cap with a readable error.
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * config.max_payload + (1 << 20))
    # A connection that never finishes ZeroMQ's greeting is libzmq's to close.
    sock.setsockopt(zmq.HANDSHAKE_IVL, int(config.hello_timeout * 1000))
    # Room for a burst of connections (clients coming back after a restart):
    # ZeroMQ's default of 100 makes the rest retry their SYN a second later.
    sock.setsockopt(zmq.BACKLOG, 1024)
    endpoint = config.bind_address
    if config.port == 0:
        port = sock.bind_to_random_port(f"tcp://{config.host}")
        endpoint = f"tcp://{config.host}:{port}"
    else:
        sock.bind(endpoint)
    return sock, endpoint, serve_locally(sock, config)


def serve_locally(sock: zmq.Socket, config: NodeConfig) -> str | None:
    """Bind the node's ROUTER ``sock`` to its ``ipc_path`` too (None: it has none).
    A refusal closes ``sock`` first: the TCP port is not left bound either."""
    if not config.ipc_path:
        return None
    try:
        endpoint = bind_ipc(sock, config.ipc_path, int(config.ipc_mode, 8))
    except ConfigError:
        sock.close(0)
        raise
    log.info("node %s: local clients on %s", config.name, endpoint)
    return endpoint


def bind_ipc(sock: zmq.Socket, path: str, mode: int) -> str:
    """Bind ``sock`` to the Unix socket ``path`` (file mode ``mode``); its endpoint.

    Raises ConfigError naming the path when it is too long, its directory is missing,
    or another process listens on it (libzmq would silently take the path over: the
    other node's local clients would then reach us)."""
    full = Path(path).absolute()
    if len(os.fsencode(full)) > MAX_IPC_PATH:
        raise ConfigError(f"ipc_path {str(full)!r} is longer than {MAX_IPC_PATH} bytes "
                          "(the limit of a Unix socket's address): choose a shorter one")
    if not full.parent.is_dir():
        raise ConfigError(f"ipc_path {str(full)!r}: directory {str(full.parent)!r} "
                          "does not exist")
    if _someone_listens(full):
        raise ConfigError(f"ipc_path {str(full)!r} is in use: another node listens on it")
    if full.exists() and not stat.S_ISSOCK(full.stat().st_mode):
        raise ConfigError(f"ipc_path {str(full)!r} exists and is not a socket: "
                          "refusing to replace it")
    endpoint = IPC_SCHEME + str(full)
    # The socket file is created by bind() in this thread: a umask makes it born with
    # the right mode, with no moment in which anyone else could connect.
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(endpoint)
    finally:
        os.umask(old)
    return endpoint


def remove_ipc(endpoint: str | None) -> None:
    """Remove the socket file of ``endpoint`` once its node has closed the socket."""
    if not endpoint:
        return
    try:
        os.unlink(endpoint[len(IPC_SCHEME):])
    except FileNotFoundError:
        pass


def _someone_listens(path: Path) -> bool:
    """Whether a live process accepts connections on the Unix socket ``path``."""
    if not path.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False  # a stale file left by a node that was killed: safe to replace
    finally:
        probe.close()
    return True
