"""The node's Unix socket for local applications (``ipc_path``), against real nodes.

The socket is one more endpoint of the same ROUTER: each case shows what a peer on it
cannot do (no token, another user, a second node on the same path) beside the same
operation working for whoever may."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ADMIN, ROOT, NodeProcess, secure
from treescale import Client
from treescale.client_core import AuthError
from treescale.config import ConfigError, node_config_from_dict

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setpriv)")


@pytest.fixture
def sock_dir() -> Path:
    """A short directory (a Unix socket's path is at most 107 bytes) that others may
    enter, so that only the socket's own mode keeps them out."""
    path = Path(tempfile.mkdtemp(prefix="ts-ipc-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def ipc_node(tmp_path: Path, sock: Path, name: str = "n1", **config) -> NodeProcess:
    return NodeProcess(tmp_path, name, secure({"ipc_path": str(sock), **config}))


def test_a_local_client_says_the_same_hello_with_the_same_token(tmp_path, sock_dir):
    n = ipc_node(tmp_path, sock_dir / "n1.sock").start()
    try:
        address = f"ipc://{sock_dir / 'n1.sock'}"
        with pytest.raises(AuthError):
            Client(address, token="wrong", name="intruder", timeout=5)
        with Client(address, token=ADMIN, name="local") as local, \
                Client(n.address, token=ADMIN, name="remote") as remote:
            remote.subscribe("orders.>")
            local.publish("orders.created", b"42")
            ev = remote.next_event(5)
            assert ev is not None and (ev.name, ev.data, ev.source) == (
                "orders.created", b"42", "local")
            local.subscribe("svc.echo", handler=lambda e: local.reply(e, e.data))
            assert remote.request("svc.echo", b"ping", timeout=5).data == b"ping"
    finally:
        n.stop()
    assert not (sock_dir / "n1.sock").exists()  # removed when the node stops


@root_only
def test_the_socket_is_the_node_users_alone_unless_ipc_mode_says_so(tmp_path, sock_dir):
    private, shared = sock_dir / "private.sock", sock_dir / "shared.sock"
    a = ipc_node(tmp_path, private, "a").start()
    b = ipc_node(tmp_path, shared, "b", ipc_mode="0666").start()
    try:
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert stat.S_IMODE(shared.stat().st_mode) == 0o666
        probe = ("import socket, sys; s = socket.socket(socket.AF_UNIX); "
                 "s.connect(sys.argv[1]); print('connected')")

        def as_nobody(path: Path) -> subprocess.CompletedProcess:
            return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup",
                                   "--clear-groups", sys.executable, "-c", probe,
                                   str(path)], capture_output=True, text=True, timeout=30)
        refused = as_nobody(private)
        assert refused.returncode != 0 and "Permission denied" in refused.stderr
        assert as_nobody(shared).stdout.strip() == "connected"
        with Client(f"ipc://{private}", token=ADMIN, name="owner") as owner:
            owner.flush(5)  # the node's own user is served
    finally:
        a.stop()
        b.stop()


def test_a_second_node_cannot_take_a_live_nodes_socket(tmp_path, sock_dir):
    path = sock_dir / "n.sock"
    first = ipc_node(tmp_path, path, "first").start()
    try:
        second = ipc_node(tmp_path, path, "second")
        second.launch()
        assert second.proc.wait(30) != 0
        log = second.log()
        assert f"ipc_path '{path}' is in use" in log and "Traceback" not in log
        with Client(f"ipc://{path}", token=ADMIN, name="still") as c:
            assert c.node == "first"  # the socket still reaches the first node
    finally:
        first.stop()


def test_a_killed_nodes_stale_socket_is_replaced(tmp_path, sock_dir):
    path = sock_dir / "n.sock"
    old = ipc_node(tmp_path, path, "old").start()
    old.kill()
    assert path.exists()  # kill -9 leaves the file behind
    new = ipc_node(tmp_path, path, "new").start()
    try:
        with Client(f"ipc://{path}", token=ADMIN, name="c") as c:
            assert c.node == "new"
    finally:
        new.stop()


def test_a_path_that_is_not_a_socket_is_never_replaced(tmp_path, sock_dir):
    path = sock_dir / "precious"
    path.write_text("keep me")
    done = subprocess.run([sys.executable, "-m", "tsctl.main", "node", "start",
                           "--name", "x", "--port", "0", "--ipc", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "exists and is not a socket" in done.stderr and "Traceback" not in done.stderr
    assert path.read_text() == "keep me"


@pytest.mark.parametrize("raw, words", [
    ({"ipc_mode": "999"}, "must be an octal file mode"),
    ({"ipc_mode": 600}, "must be a string"),
    ({"ipc_path": 7}, "must be a string"),
])
def test_bad_ipc_settings_are_named(raw, words):
    with pytest.raises(ConfigError, match=words):
        node_config_from_dict({"name": "n", **raw})
    assert node_config_from_dict({"name": "n", "ipc_mode": "0660"}).ipc_mode == "0660"


def test_an_over_long_path_is_refused_with_its_limit(tmp_path):
    long_dir = tmp_path / ("d" * 60) / ("e" * 60)
    long_dir.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-m", "tsctl.main", "node", "start",
                           "--name", "x", "--port", "0", "--ipc", str(long_dir / "n.sock")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "longer than 107 bytes" in done.stderr
    assert "Traceback" not in done.stderr
