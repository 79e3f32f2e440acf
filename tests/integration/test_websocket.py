"""The WebSocket gateway against real node processes: a WebSocket session is an
ordinary session of its node (the same hello, routing, requests, durable
subscriptions, slow-consumer policy), and the same port serves the dashboard's files.
What a peer may not do over WebSocket is tests/security/test_websocket.py."""

from __future__ import annotations

import urllib.error
import urllib.request

import msgpack
import pytest

from tests.conftest import ADMIN, secure
from tests.wskit import WsPeer, events, opens, unpack
from treescale.local import free_port


def ws_node(node_factory, name: str = "n1", **config):
    """A node with client auth and a WebSocket port; (node, ws URL)."""
    port = free_port()
    n = node_factory(name, secure({"websocket_port": port, **config}))
    return n, f"ws://127.0.0.1:{port}/"


def test_a_websocket_session_publishes_subscribes_and_requests_like_any_client(
        node_factory, clients):
    n, url = ws_node(node_factory, groups=["backend"])
    py = clients(n.address, name="py")
    py.subscribe("orders.>")
    py.subscribe("svc.echo", handler=lambda e: py.reply(e, b"echo:" + e.data))
    with WsPeer(url) as ws:
        ready = ws.hello("browser", ADMIN, subs=["prices.*"])
        assert ready[0] == 2 and ready[1] == "n1"
        ws.barrier()
        # WebSocket -> Python
        ws.publish("orders.created", b"42")
        ev = py.next_event(5)
        assert ev is not None and (ev.name, ev.data, ev.source) == (
            "orders.created", b"42", "browser")
        # Python -> WebSocket, with the subscription made in the hello
        py.publish("prices.eur", b"1.08")
        header, frames = ws.until(6)
        assert header[1] == [["py", 1]] and events(frames) == [("prices.eur", b"1.08")]
        # a request from the WebSocket session to a Python responder
        ws.send([msgpack.packb([7, 1, "svc.echo", None, 1, None]), b"hi"])
        header, frames = ws.until(6)
        [(name, payload)] = events(frames)
        assert name.startswith("$inbox.n1.") and name.split(".")[3] == "1"
        assert payload == b"echo:hi"
        # nobody listens: the node's own error, relayed
        ws.send([msgpack.packb([7, 2, "svc.nobody", None, 1, None]), b""])
        header, _ = ws.until(9)
        assert header[1] == "no_responders" and header[3] == 2


def test_a_python_request_reaches_a_websocket_responder(node_factory, clients):
    n, url = ws_node(node_factory)
    with WsPeer(url) as ws:
        ws.hello("responder", ADMIN, subs=["svc.upper"])
        ws.barrier()
        py = clients(n.address, name="caller")
        import threading

        answer: list = []
        caller = threading.Thread(target=lambda: answer.append(
            py.request("svc.upper", b"abc", timeout=10)))
        caller.start()
        header, frames = ws.until(6)
        meta = unpack(frames[0])
        reply_to = meta[4][0][2]  # extras of event 0: [target, mode, reply, headers]
        ws.send([msgpack.packb([8, reply_to, {"by": "ws"}]), b"ABC"])
        caller.join(10)
        assert answer and answer[0].data == b"ABC" and answer[0].headers == {"by": "ws"}


def test_a_websocket_session_owns_a_durable_subscription(node_factory, clients, tmp_path):
    n, url = ws_node(node_factory, durable_path=str(tmp_path / "durable"))
    py = clients(n.address, name="py")
    with WsPeer(url) as ws:
        ws.hello("durable-ws", ADMIN)
        ws.send([msgpack.packb([31, 1, "subscribe", {"durable": "d1",
                                                     "pattern": "jobs.>",
                                                     "start": "all"}])])
        header, _ = ws.until(32, timeout=15)
        assert header[1] == 1 and header[2] is True, header
        py.publish_durable("jobs.build", b"job-1")
        py.flush()
        header, frames = ws.until(33, timeout=10)
        [[seq, _id, name, _headers, _time, publisher, deliveries]] = header[2]
        assert (header[1], name, publisher, deliveries, frames) == (
            "d1", "jobs.build", "py", 0, [b"job-1"])
        ws.send([msgpack.packb([34, "d1", [seq], []])])
        ws.barrier()
    info = py.durable_info("d1")
    assert (info["acked"], info["unacked"], info["stored"]) == (1, 0, 0), info


def test_the_node_ends_a_silent_websocket_session(node_factory):
    """hello_timeout and client_timeout hold for WebSocket sessions too: the node
    closes the connection and the gateway closes the WebSocket (4001)."""
    n, url = ws_node(node_factory, hello_timeout=1.0)
    with WsPeer(url) as ws:
        code, _reason, _ = ws.closed(timeout=10)
    assert code == 4001
    with WsPeer(url) as ws:  # others still get in
        assert ws.hello("late", ADMIN)[0] == 2


def test_the_same_port_serves_the_dashboard_with_a_strict_policy(node_factory):
    n, url = ws_node(node_factory)
    page = url.replace("ws://", "http://")
    with urllib.request.urlopen(page, timeout=5) as resp:
        body = resp.read()
        assert resp.status == 200 and b"<html" in body.lower()
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    for escape in ("../pyproject.toml", "%2e%2e/pyproject.toml", ".hidden",
                   "treescale/../../gateway.py", "..%2f..%2fconfig.py"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(page + escape, timeout=5)
        assert refused.value.code == 404, escape


def test_tsctl_node_start_ws_port_reports_the_port(node_factory, clients):
    port = free_port()
    n = node_factory("n1", secure(), args=("--ws-port", str(port)))
    c = clients(n.address)
    c.subscribe("$sys.node.stats")
    ev = c.next_event(5)
    assert ev is not None and ev.json()["websocket_port"] == port
    with WsPeer(f"ws://127.0.0.1:{port}/") as ws:
        assert ws.hello("ws", ADMIN)[0] == 2


def test_a_gateway_in_a_process_of_its_own_relays_to_its_node(node_factory, clients,
                                                              tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT, wait_until

    n = node_factory("n1", secure())
    port = free_port()
    refused = subprocess.run(
        [sys.executable, "-m", "tsctl.main", "node", "gateway", "--node", n.address,
         "--ws-port", str(port), "--ws-host", "0.0.0.0"], cwd=ROOT, capture_output=True,
        text=True, timeout=60)
    assert refused.returncode == 1 and refused.stderr.startswith(
        "error: refusing a WebSocket listener on 0.0.0.0 without TLS"), refused.stderr
    gateway = subprocess.Popen(
        [sys.executable, "-m", "tsctl.main", "node", "gateway", "--node", n.address,
         "--ws-port", str(port)], cwd=ROOT, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: opens(f"ws://127.0.0.1:{port}/"), 20, "the gateway")
        py = clients(n.address, name="py")
        py.subscribe("orders.>")
        with WsPeer(f"ws://127.0.0.1:{port}/") as ws:
            assert ws.hello("far", "wrong")[1] == "bad_token"  # the node decides
        with WsPeer(f"ws://127.0.0.1:{port}/") as ws:
            assert ws.hello("far", ADMIN)[0] == 2
            ws.publish("orders.created", b"7")
            ev = py.next_event(5)
            assert ev is not None and (ev.data, ev.source) == (b"7", "far")
    finally:
        gateway.terminate()
        gateway.wait(10)


def _children(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    with open(path) as f:
        return [int(p) for p in f.read().split()]


def _gone(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper is gone too
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_the_gateway_runs_apart_and_dies_with_its_node(node_factory):
    """The default gateway is a child process of the node (the relay never takes the
    node's GIL); it goes when the node goes, kill -9 included, and frees its port."""
    from tests.conftest import wait_until

    n, url = ws_node(node_factory)
    [gateway] = _children(n.proc.pid)
    with WsPeer(url) as ws:
        assert ws.hello("ws", ADMIN)[0] == 2
    n.kill()
    wait_until(lambda: _gone(gateway), 10, "the gateway process to exit")
    with pytest.raises(OSError):
        WsPeer(url, open_timeout=2)
    n.start()  # the same ports again: nothing of the old gateway holds them
    with WsPeer(url) as ws:
        assert ws.hello("again", ADMIN)[0] == 2


def test_the_gateway_can_run_on_a_thread_of_the_node(node_factory):
    n, url = ws_node(node_factory, websocket_gateway="thread")
    assert _children(n.proc.pid) == []
    with WsPeer(url) as ws:
        assert ws.hello("ws", ADMIN)[0] == 2
