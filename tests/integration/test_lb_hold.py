"""Scale from zero through the lb service on a real node: a held connection asks for
real servers (``$sys.lb.<node>.wanted``) and goes through once ``reals_set`` gives one,
or is closed when its hold runs out; ``reals_set`` refuses bad input whole.

The real servers are TCP echo servers the test starts on 127.0.0.1.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import msgpack
import pytest

from tests.conftest import free_port, secure, wait_until
from tests.integration.test_lb import lb, lb_error, lb_ready, tsctl
from treescale import subjects

IO_TIMEOUT = 10.0


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator:
    """Start echo servers on demand (127.0.0.1, a free port): "IP:PORT" of each."""
    started: list[socketserver.ThreadingTCPServer] = []

    def start() -> str:
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return "{}:{}".format(*server.server_address)

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def lb_node(node_factory, clients):
    n = node_factory("n1", secure(None, "lb"))
    c = clients(n.address, name="lb-hold-test")
    lb_ready(c)
    watcher = clients(n.address, name="lb-watcher")
    watcher.subscribe(subjects.lb_events("n1"))
    return n, c, watcher


def connect(port: int, send: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), IO_TIMEOUT)
    s.sendall(send)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def closed_unanswered(s: socket.socket) -> bool:
    """The balancer closed it without a byte (a FIN, or a reset: it had unread data)."""
    try:
        return s.recv(16) == b""
    except ConnectionResetError:
        return True


def wanted_events(watcher, timeout: float) -> list[dict]:
    """The wanted events that come until ``timeout`` seconds pass without one."""
    return [msgpack.unpackb(ev.data) for ev in watcher.events(timeout=timeout)
            if ev.name == subjects.lb_event("n1", "wanted")]


def test_held_connections_ask_once_and_go_through_when_reals_are_set(lb_node, echo):
    _, c, watcher = lb_node
    port = free_port()
    vip = f"127.0.0.1:{port}"
    added = lb(c, "add", vip=vip, hold=5, owner="service:web")  # auto: the proxy
    assert added["backend"] == "proxy" and "hold needs the proxy backend" in added["why"]
    assert (added["reals"], added["owner"], added["hold"]) == ([], "service:web", 5.0)
    held_from = time.monotonic()
    socks = [connect(port, f"ping{i}".encode()) for i in range(3)]
    try:
        ev = watcher.next_event(timeout=IO_TIMEOUT)
        assert ev is not None and ev.name == subjects.lb_event("n1", "wanted")
        first = msgpack.unpackb(ev.data)
        assert (first["node"], first["vip"], first["owner"]) == (
            "n1", f"tcp/{vip}", "service:web")
        assert abs(first["time"] - time.time()) < 5
        wait_until(lambda: lb(c, "show", vip=vip)["held"] == 3, IO_TIMEOUT,
                   "three connections held")
        shown = lb(c, "show", vip=vip)
        assert shown["connections_total"] == 3 and shown["hold_expired"] == 0
        assert abs(shown["last_connection"] - time.time()) < 5
        set_ = lb(c, "reals_set", vip=vip, reals=[echo()])
        held_for = time.monotonic() - held_from
        assert set_["changed"] and len(set_["reals"]) == 1
        for i, s in enumerate(socks):  # the bytes sent while held come back
            assert recv_exactly(s, 5) == f"ping{i}".encode()
            s.sendall(b"more")
            assert recv_exactly(s, 4) == b"more"
    finally:
        for s in socks:
            s.close()
    # Three connections waited together: one event, then at most one a second.
    later = wanted_events(watcher, 1.5)
    assert 1 + len(later) <= held_for + 1
    assert all(e["vip"] == f"tcp/{vip}" for e in later)
    again = lb(c, "reals_set", vip=vip, reals=set_and_key(set_))
    assert not again["changed"]  # the same set: the backend is not touched
    listed = {s["key"]: s for s in lb(c, "ls")["services"]}[f"tcp/{vip}"]
    assert listed["owner"] == "service:web" and listed["connections_total"] == 3
    assert listed["held"] == 0


def set_and_key(service: dict) -> list[str]:
    return [f"{r['address']}:{r['port']}@{r['weight']}" for r in service["reals"]]


def test_an_expired_hold_closes_the_connection_and_the_service_still_works(lb_node, echo):
    _, c, watcher = lb_node
    port = free_port()
    vip = f"127.0.0.1:{port}"
    lb(c, "add", vip=vip, backend="proxy", hold=1, reals=[])
    start = time.monotonic()
    with connect(port, b"hello") as s:
        assert closed_unanswered(s)
    waited = time.monotonic() - start
    assert 0.9 <= waited < 5, waited  # held for the hold, not closed at once
    shown = lb(c, "show", vip=vip)
    assert (shown["connections_total"], shown["hold_expired"], shown["held"]) == (1, 1, 0)
    assert wanted_events(watcher, 0.5), "the held connection asked for real servers"
    before = shown["last_connection"]
    lb(c, "reals_set", vip=vip, reals=[echo()])
    with connect(port, b"hello") as s:
        assert recv_exactly(s, 5) == b"hello"
    shown = lb(c, "show", vip=vip)
    assert shown["connections_total"] == 2 and shown["last_connection"] >= before
    # Emptied again: held once more (not refused), and expired once more.
    assert lb(c, "reals_set", vip=vip, reals=[])["reals"] == []
    with connect(port, b"x") as s:
        assert closed_unanswered(s)
    assert lb(c, "show", vip=vip)["hold_expired"] == 2


def test_without_a_hold_an_empty_service_closes_at_once_and_asks_nobody(lb_node):
    _, c, watcher = lb_node
    port = free_port()
    lb(c, "add", vip=f"127.0.0.1:{port}", backend="proxy")
    start = time.monotonic()
    with connect(port, b"hello") as s:
        assert closed_unanswered(s)
    assert time.monotonic() - start < 0.9
    assert wanted_events(watcher, 1.0) == []
    assert lb(c, "show", vip=f"127.0.0.1:{port}")["connections_total"] == 1


def test_reals_set_refuses_bad_input_whole_and_leaves_the_service_serving(lb_node, echo):
    _, c, _ = lb_node
    port = free_port()
    vip = f"127.0.0.1:{port}"
    real = echo()
    lb(c, "add", vip=vip, backend="proxy", reals=[real])
    for bad, message in (
            ([real, "web:80"], "'web' is not an IPv4 address"),
            ([real, "127.0.0.1:0"], "port must be 1-65535"),
            ([real, real], "listed twice"),
            ("127.0.0.1:80", "reals must be a list")):
        error = lb_error(c, "reals_set", vip=vip, reals=bad)
        assert message in error and error.count("\n") == 0
    assert "no virtual service tcp/127.0.0.1:9" in lb_error(
        c, "reals_set", vip="127.0.0.1:9", reals=[real])
    assert "missing argument 'vip'" in lb_error(c, "reals_set", reals=[real])
    assert set_and_key(lb(c, "show", vip=vip)) == [f"{real}@1"]  # unchanged
    with connect(port, b"still") as s:
        assert recv_exactly(s, 5) == b"still"
    follows = f"127.0.0.1:{free_port()}"
    lb(c, "add", vip=follows, backend="proxy", follow_image="web:1", target_port=80)
    assert "follows containers" in lb_error(c, "reals_set", vip=follows, reals=[real])
    # add: a hold only on the proxy, and a number.
    assert "hold needs the proxy backend" in lb_error(
        c, "add", vip="127.0.0.1:9", backend="nft", hold=5)
    assert "hold needs the proxy backend" in lb_error(
        c, "add", vip="127.0.0.1:9", backend="ipvs", hold=5)
    assert "not a number" in lb_error(c, "add", vip="127.0.0.1:9", hold="soon")
    assert "owner" in lb_error(c, "add", vip="127.0.0.1:9", owner=["x"])
    assert {s["key"] for s in lb(c, "ls")["services"]} == {f"tcp/{vip}", f"tcp/{follows}"}
    # The legitimate change still works after all that.
    other = echo()
    assert set_and_key(lb(c, "reals_set", vip=vip, reals=[other + "@2"])) == [f"{other}@2"]
    with connect(port, b"again") as s:
        assert recv_exactly(s, 5) == b"again"


def test_cli_sets_owner_hold_and_reals(lb_node, echo):
    n, c, _ = lb_node
    a = ("-a", n.address)
    vip = f"127.0.0.1:{free_port()}"
    added = tsctl("lb", "add", vip, "--hold", "2", "--owner", "service:web", *a)
    assert added.returncode == 0, added.stderr
    assert "backend auto: proxy" in added.stdout
    real = echo()
    done = tsctl("lb", "reals-set", vip, real + "@2", *a)
    assert done.returncode == 0 and f"{real}@2" in done.stdout, done.stderr
    with connect(int(vip.rpartition(":")[2]), b"cli") as s:
        assert recv_exactly(s, 3) == b"cli"
    shown = tsctl("lb", "show", vip, *a).stdout
    assert "owner service:web; hold 2 s" in shown and "connections 1 (last" in shown
    emptied = tsctl("lb", "reals-set", vip, *a)
    assert emptied.returncode == 0 and f"tcp/{vip}: none" in emptied.stdout
    refused = tsctl("lb", "add", f"127.0.0.1:{free_port()}", "--backend", "nft",
                    "--hold", "1", *a)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "hold needs the proxy backend" in refused.stderr
