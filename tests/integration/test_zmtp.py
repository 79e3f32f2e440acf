"""The request session's own ZMTP (treescale.zmtp) against real libzmq and real nodes.

libzmq is the reference: a ROUTER must see our DEALER as one of its own (routing id,
multipart messages, short and long frames, its PINGs answered), and requests must
behave the same over either wire, through a node restart included."""

from __future__ import annotations

import time

import pytest
import zmq

from tests.conftest import free_port
from treescale import Client, NoResponders
from treescale.zmtp import MAX_MESSAGE, WIRE_ENV, ZmtpDealer, ZmtpError, ZmtpWire


@pytest.fixture
def router():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close()
    ctx.term()


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def test_a_router_sees_our_routing_id_and_whole_messages_both_ways(router):
    sock, address = router
    dealer = ZmtpDealer(address, b"req-1", 5, MAX_MESSAGE)
    try:
        long_frame = bytes(range(256)) * 300  # over 255 bytes: the 8-byte size form
        dealer.send([b"hello", b"", long_frame], soon())
        ident, *frames = sock.recv_multipart()
        assert ident == b"req-1" and frames == [b"hello", b"", long_frame]
        sock.send_multipart([b"req-1", b"one", long_frame, b"three"])
        assert dealer.recv(soon()) == [b"one", long_frame, b"three"]
        assert dealer.recv(time.monotonic() + 0.05) is None  # nothing more: a timeout
    finally:
        dealer.close()


def test_pings_from_the_router_are_answered_and_never_surface(router):
    sock, address = router
    sock.setsockopt(zmq.HEARTBEAT_IVL, 50)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 300)  # no PONG within 300 ms: dropped
    dealer = ZmtpDealer(address, b"pinged", 5, MAX_MESSAGE)
    try:
        dealer.send([b"first"], soon())
        assert sock.recv_multipart() == [b"pinged", b"first"]
        # Read for a while: the router pings every 50 ms and we answer in recv().
        assert dealer.recv(time.monotonic() + 1.0) is None
        dealer.send([b"still here"], soon())
        assert sock.recv_multipart() == [b"pinged", b"still here"]
    finally:
        dealer.close()


def test_a_peer_that_is_not_zmtp_is_refused_with_a_reason():
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def talk_http() -> None:
        conn, _ = listener.accept()
        conn.recv(64)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b" " * 64)
        conn.close()

    threading.Thread(target=talk_http, daemon=True).start()
    try:
        with pytest.raises(ZmtpError, match="does not speak ZMTP 3"):
            ZmtpDealer(f"tcp://127.0.0.1:{listener.getsockname()[1]}", b"x", 5,
                       MAX_MESSAGE)
    finally:
        listener.close()


def test_the_wire_reconnects_when_the_router_comes_back():
    ctx = zmq.Context()
    port = free_port()
    wire = ZmtpWire(f"tcp://127.0.0.1:{port}", b"phoenix")
    try:
        with pytest.raises(TimeoutError, match="no connection"):
            wire.send([b"nobody"], time.monotonic() + 0.2)
        for round_ in range(2):
            sock = ctx.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 5000)
            sock.bind(f"tcp://127.0.0.1:{port}")
            wire.send([b"round %d" % round_], soon())
            assert sock.recv_multipart() == [b"phoenix", b"round %d" % round_]
            sock.close()  # the connection breaks under the wire
            assert wire.recv(soon(1.0)) is None
    finally:
        wire.close()
        ctx.term()


@pytest.mark.parametrize("wire", ["native", "zmq"])
def test_requests_work_on_either_wire_through_a_node_restart(wire, node_factory, clients,
                                                             monkeypatch):
    if wire == "zmq":
        monkeypatch.setenv(WIRE_ENV, "zmq")
    n = node_factory("answers")
    responder = clients(n.address, name="echo")
    responder.subscribe("svc.echo", handler=lambda ev: responder.reply(ev, ev.data))
    requester = Client(n.address, name="asker")
    try:
        assert requester.request("svc.echo", b"before", timeout=5).data == b"before"
        with pytest.raises(NoResponders):
            requester.request("svc.nobody", b"", timeout=5)
        n.kill()
        n.start()
        # The responder's client comes back by itself and subscribes again; the
        # requester's session says hello again on its next request.
        deadline = time.monotonic() + 20
        answer = None
        while answer is None and time.monotonic() < deadline:
            try:
                answer = requester.request("svc.echo", b"after", timeout=1)
            except (NoResponders, TimeoutError):
                continue
        assert answer is not None and answer.data == b"after"
    finally:
        requester.close()
