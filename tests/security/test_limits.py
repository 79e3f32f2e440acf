"""Limits before work, against real node processes: each attack that used to crash a
node, grow its memory or hold its file descriptors (issue rows 5-10) now fails with
an error naming the problem or the limit, the node's memory and descriptors stay
bounded (read from /proc of the node process), and a legitimate client still
connects, publishes and receives right after."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import fields

import msgpack
import pytest
import zmq

from tests.conftest import ping, wait_until
from treescale import protocol as P
from treescale import subjects
from treescale.client import NodeError
from treescale.config import NodeConfig

MiB = 1 << 20
QUIET = {"services": []}  # no service threads: the node's descriptors stay put
LINK_SECRET = "link-secret-for-tests"
CLIENT_TOKEN = "client-secret-for-tests"


def linking(config: dict) -> dict:
    """A config under which a LINK that presents LINK_SECRET is admitted (a node's own
    link credential where NodeConfig has one, else a token), and a client with
    CLIENT_TOKEN may publish and subscribe."""
    tokens = {CLIENT_TOKEN: ["*"]}
    if "link_token" in {f.name for f in fields(NodeConfig)}:
        return {**config, "tokens": tokens, "link_token": LINK_SECRET}
    return {**config, "tokens": {**tokens, LINK_SECRET: ["*"]}}


def status(pid: int, key: str) -> int:
    """A /proc/<pid>/status value in bytes (VmRSS now, VmHWM the peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def rss(node) -> int:
    return status(node.proc.pid, "VmRSS")


def open_fds(node) -> int:
    return len(os.listdir(f"/proc/{node.proc.pid}/fd"))


@pytest.fixture
def ctx():
    """A context of our own: attacks open more sockets than the default 1023."""
    c = zmq.Context()
    c.set(zmq.MAX_SOCKETS, 8000)
    yield c
    c.destroy(linger=0)


class Peer:
    """A raw DEALER speaking frames by hand, as a hostile client or node would."""

    def __init__(self, ctx: zmq.Context, address: str, reconnect: bool = True) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if not reconnect:  # what the node closes stays closed
            self.sock.setsockopt(zmq.RECONNECT_IVL, -1)
        self.sock.connect(address)

    def send(self, *frames) -> None:
        self.sock.send_multipart(list(frames))

    def recv(self, timeout: float = 5.0) -> list | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return msgpack.unpackb(self.sock.recv_multipart()[0], strict_map_key=False)

    def expect(self, kind: int, timeout: float = 10.0, code: str | None = None) -> list:
        """Read until a message of ``kind`` (an ERROR with ``code``) comes."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg is None:
                break
            if msg[0] == kind and (code is None or msg[1] == code):
                return msg
            seen.append(msg[:2])
        raise AssertionError(f"no {P.KIND_NAMES[kind]} {code or ''} within {timeout}s; "
                             f"got {seen[-5:]}")

    def link(self, name: str, address: str = "tcp://127.0.0.1:1") -> None:
        self.send(*P.encode_link(name, LINK_SECRET, address=address))
        self.expect(P.LINKED)

    def close(self) -> None:
        self.sock.close(0)


def assert_serves(node, clients, **kw) -> None:
    """A legitimate client connects, subscribes, publishes and receives its event."""
    sub = clients(node.address, name="legit-sub", **kw)
    sub.subscribe("legit.check")
    pub = clients(node.address, name="legit-pub", **kw)
    pub.publish("legit.check", b"still here")
    ev = sub.next_event(10)
    assert ev is not None and bytes(ev.data) == b"still here", "node stopped serving"


def one_event(name: str, headers: dict | None = None) -> list:
    meta, body, large = P.encode_events([(name, b"1", None, 0, None, headers)])
    return [meta, body, *large]


# ------------------------------------------------------------- row 5: crashes


def test_more_distinct_names_than_a_batch_holds_reach_a_subscriber_split(node_factory,
                                                                         clients):
    """70,000+ distinct names merged for one subscriber in one round used to raise in
    the node's flush (a batch index holds 65,535) and end the process."""
    node = node_factory("n5a", {})
    wide = clients(node.address, name="wide")
    wide.subscribe("many.>")
    narrow = clients(node.address, name="narrow")  # makes every batch split
    narrow.subscribe("many.7.>")
    pub = clients(node.address, name="flooder")
    total = 140_000
    for i in range(total):
        pub.publish(f"many.{i % 10}.{i}", b"")
    pub.flush(60)
    got = 0
    deadline = time.monotonic() + 90
    while got < total and time.monotonic() < deadline:
        if wide.next_event(10) is None:
            break
        got += 1
    assert node.alive, node.log()
    assert got == total, f"the wide subscriber got {got} of {total}"
    assert "Traceback" not in node.log()
    assert_serves(node, clients)


def test_forward_source_counts_past_two_to_the_64_are_refused(node_factory, clients, ctx):
    node = node_factory("n5b", linking({}))
    watcher = clients(node.address, token=CLIENT_TOKEN, name="watcher")
    watcher.subscribe("x")
    child = Peer(ctx, node.address)
    try:
        child.link("fake-child")
        forged = P.encode_forward_header([["a", 2**64 - 1]])
        for _ in range(20):  # two in one round used to be merged into 2**65: a crash
            child.send(forged, *one_event("x"))
        msg = child.expect(P.ERROR, code=subjects.BAD_COUNT)
        assert "add up to 18446744073709551615" in msg[2] and "1 event" in msg[2]
        assert watcher.next_event(0.5) is None
        assert node.alive
        child.send(P.encode_forward_header([["a", 1]]), *one_event("x"))  # a good one
        ev = watcher.next_event(10)
        assert ev is not None and ev.source == "a"
    finally:
        child.close()
    assert_serves(node, clients, token=CLIENT_TOKEN)


def test_an_open_depth_of_two_to_the_64_is_refused(node_factory, clients, ctx):
    """A full node adds one to its children's open depth and tells its children: a
    depth of 2**64-1 made that 2**64, which msgpack cannot encode, and the node died."""
    node = node_factory("n5c", linking({"max_children": 1}))
    child = Peer(ctx, node.address)
    try:
        child.link("fake-child")
        child.send(*P.encode_placement({"open_depth": 2**64 - 1}))
        msg = child.expect(P.ERROR, code=subjects.OUT_OF_RANGE)
        assert "placement open_depth must be in 0..65535" in msg[2]
        child.send(*P.encode_placement({"open_depth": P.MAX_DEPTH}))  # the cap itself
        child.send(*P.encode_ping(5))
        child.expect(P.PONG)
        wait_until(lambda: child.recv(0.2) == [P.PLACEMENT, {"tree_open": P.MAX_DEPTH}],
                   10, "the capped depth told to the child")
    finally:
        child.close()
    assert node.alive
    assert_serves(node, clients, token=CLIENT_TOKEN)


def test_a_peer_that_floods_then_hangs_up_does_not_abort_the_node(node_factory, clients,
                                                                  ctx):
    """Found by `make fuzz`: libzmq 4.3.5 asserts (``!_io_error``) when its ping timer
    fires on a connection whose peer filled the receive queue and hung up; with the
    ROUTER pinging every 200 ms, any peer could abort the node, hello or not."""
    node = node_factory("n5d", {})
    for _ in range(20):
        flood = ctx.socket(zmq.DEALER)
        flood.setsockopt(zmq.SNDHWM, 0)
        flood.connect(node.address)
        for _ in range(100_000):
            flood.send(b"\xc1garbage")
        flood.close(linger=0)
        keeps_answering(node, 0.5)  # past the 200 ms a ping timer would take
    assert_serves(node, clients)
    assert node.alive and "Assertion failed" not in node.log()


def keeps_answering(node, seconds: float) -> None:
    """The node answers ping after ping for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert node.alive and ping(node.address, 2.0), f"node died:\n{node.log()}"


# ------------------------------------------------- row 6: a huge hello header


def test_a_20_mb_header_before_hello_is_refused_without_decoding(node_factory, clients,
                                                                ctx):
    node = node_factory("n6", {})
    peak_before = status(node.proc.pid, "VmHWM")
    # 20 MB of empty arrays: decoded, each is a list object (1.3 GiB and 9 s before).
    header = b"\xdd" + (20_000_000).to_bytes(4, "big") + b"\x90" * 20_000_000
    bad = Peer(ctx, node.address)
    try:
        started = time.monotonic()
        bad.send(header)
        msg = bad.expect(P.ERROR, code=subjects.MAX_HELLO_BYTES)
        assert time.monotonic() - started < 5
        assert "20000005 bytes" in msg[2] and "max_hello_bytes (65536)" in msg[2]
        assert "without decoding" in msg[2]
    finally:
        bad.close()
    assert status(node.proc.pid, "VmHWM") - peak_before < 120 * MiB
    assert_serves(node, clients)


# ---------------------------------------- row 7: denied links leave nothing behind


def test_denied_links_with_big_groups_are_freed_and_their_connections_closed(
        node_factory, clients, ctx):
    node = node_factory("n7", linking(QUIET))
    assert_serves(node, clients, token=CLIENT_TOKEN)  # warm: what serving costs anyway
    base_rss, base_fds = rss(node), open_fds(node)
    groups = ["g" * 50_000]
    codes: dict = {}
    for wave in range(10):  # 2,000 LINKs with a wrong token, 200 at a time
        peers = [Peer(ctx, node.address, reconnect=False) for _ in range(200)]
        for i, p in enumerate(peers):
            p.send(*P.encode_link(f"fake{wave}-{i}", "wrong", groups=groups,
                                  address="tcp://127.0.0.1:1"))
        for p in peers:
            msg = p.expect(P.ERROR)
            codes[msg[1]] = codes.get(msg[1], 0) + 1
        # the node closes each denied connection itself, the attacker's socket open
        wait_until(lambda: open_fds(node) < base_fds + 50, 15,
                   "the node closing denied connections")
        for p in peers:
            p.close()
    assert codes == {subjects.BAD_TOKEN: 2000}, codes
    wait_until(lambda: rss(node) - base_rss < 40 * MiB, 10,
               f"memory given back (grew {(rss(node) - base_rss) / MiB:.0f} MiB)")
    assert node.alive
    assert_serves(node, clients, token=CLIENT_TOKEN)


# ------------------------------------ row 8: a forged count of thirty million


def test_a_forward_claiming_thirty_million_events_for_one_is_refused(node_factory,
                                                                      clients, ctx):
    node = node_factory("n8", linking({}))
    watcher = clients(node.address, token=CLIENT_TOKEN, name="watcher")
    watcher.subscribe("x")
    child = Peer(ctx, node.address)
    try:
        child.link("fake-child")
        base = rss(node)
        # extras make the node route event by event: it expanded the runs per event
        child.send(P.encode_forward_header([["x", 30_000_000]]),
                   *one_event("x", {"h": "1"}))
        msg = child.expect(P.ERROR, code=subjects.BAD_COUNT)
        assert "add up to 30000000, the batch holds 1 event" in msg[2]
        assert rss(node) - base < 20 * MiB
        assert watcher.next_event(0.5) is None
    finally:
        child.close()
    assert_serves(node, clients, token=CLIENT_TOKEN)


# ------------------------------------------- row 9: state a peer may hold


def test_a_session_cannot_hold_more_than_max_subscriptions(node_factory, clients, ctx):
    node = node_factory("n9a", {"max_subscriptions": 1000})
    base = rss(node)
    flood = Peer(ctx, node.address)
    try:
        flood.send(msgpack.packb([P.HELLO, 1, None, "flood", [], [], [], [], {}]))
        flood.expect(P.READY)
        refused = 0
        for start in range(0, 100_000, 5_000):  # 100k SUBs, reading the answers
            for i in range(start, start + 5_000):
                flood.send(*P.encode_sub(f"flood.{i}.>"))
            refused += barrier(flood, start + 1)
        assert refused > 50_000  # errors past the node's queue for us are dropped
        assert "max_subscriptions 1000" in flood_error(flood)
    finally:
        flood.close()
    assert rss(node) - base < 60 * MiB
    assert_serves(node, clients)


def barrier(peer: Peer, token: int) -> int:
    """Ping until the pong comes (a pong behind a full queue of errors is dropped
    like them); how many max_subscriptions errors came before it."""
    refused = 0
    for _ in range(20):
        peer.send(*P.encode_ping(token))
        while (msg := peer.recv(2)) is not None:
            if msg[0] == P.PONG and msg[1] == token:
                return refused
            if msg[0] == P.ERROR:
                assert msg[1] == subjects.MAX_SUBSCRIPTIONS, msg
                refused += 1
    raise AssertionError("the node stopped answering pings")


def flood_error(flood: Peer) -> str:
    flood.send(*P.encode_sub("one.more"))
    return flood.expect(P.ERROR, code=subjects.MAX_SUBSCRIPTIONS)[2]


def test_idle_connections_are_closed_after_hello_timeout(node_factory, clients, ctx):
    node = node_factory("n9b", {**QUIET, "max_pending_hellos": 500, "hello_timeout": 2.0})
    assert_serves(node, clients)
    base_fds = open_fds(node)
    idle = [Peer(ctx, node.address, reconnect=False) for _ in range(3000)]
    try:
        # at most max_pending_hellos of them are kept, and not for long
        wait_until(lambda: open_fds(node) < base_fds + 20, 20,
                   "the node closing 3,000 idle connections")
        assert_serves(node, clients)  # a new client is served at once
        # one over the limit that speaks is told why
        more = [Peer(ctx, node.address, reconnect=False) for _ in range(600)]
        for p in more:
            p.send(*P.encode_ping(1))
        codes = error_codes(more, until=subjects.MAX_PENDING_HELLOS, timeout=10)
        assert subjects.MAX_PENDING_HELLOS in codes, codes
        for p in more:
            p.close()
    finally:
        for p in idle:
            p.close()
    wait_until(lambda: open_fds(node) < base_fds + 20, 20, "connections closed")
    assert node.alive
    assert_serves(node, clients)


def error_codes(peers: list[Peer], until: str, timeout: float) -> set:
    """The error codes that reach any of ``peers`` until one is ``until``."""
    poller = zmq.Poller()
    for p in peers:
        poller.register(p.sock, zmq.POLLIN)
    codes: set = set()
    deadline = time.monotonic() + timeout
    while until not in codes and time.monotonic() < deadline:
        for sock, _ in poller.poll(200):
            msg = msgpack.unpackb(sock.recv_multipart()[0])
            if msg[0] == P.ERROR:
                codes.add(msg[1])
    return codes


def test_silent_tcp_connections_are_closed(node_factory, clients):
    node = node_factory("n9c", {**QUIET, "max_pending_hellos": 500, "hello_timeout": 2.0})
    assert_serves(node, clients)
    base_rss, base_fds = rss(node), open_fds(node)
    conns = []
    deadline = time.monotonic() + 60
    try:
        while len(conns) < 10_000 and time.monotonic() < deadline:
            try:
                conns.append(socket.create_connection(("127.0.0.1", node.port), 5))
            except OSError:
                continue
        assert len(conns) == 10_000
        wait_until(lambda: open_fds(node) < base_fds + 20, 30,
                   "the node closing 10,000 silent connections")
        assert rss(node) - base_rss < 60 * MiB
        # the node ended them: a read sees the end (or a reset), not silence
        for s in conns[::1000]:
            s.settimeout(5)
            try:
                assert s.recv(1024, socket.MSG_PEEK) is not None
            except ConnectionResetError:
                pass
    finally:
        for s in conns:
            s.close()
    assert node.alive
    assert_serves(node, clients)


def test_a_link_cannot_hold_more_than_max_interest(node_factory, clients, ctx):
    node = node_factory("n9d", linking({"max_interest": 100}))
    child = Peer(ctx, node.address)
    try:
        child.link("fake-child")
        child.send(*P.encode_interest(1, [(True, f"i.{k}", None) for k in range(250)]))
        msg = child.expect(P.ERROR, code=subjects.MAX_INTEREST)
        assert msg[3] == 150 and "max_interest 100" in msg[2]
        child.send(*P.encode_interest(2, [(True, f"j.{k}", None) for k in range(5000)],
                                      full=True))
        msg = child.expect(P.ERROR, code=subjects.MAX_INTEREST)
        assert msg[3] == 4900
    finally:
        child.close()
    assert node.alive
    assert_serves(node, clients, token=CLIENT_TOKEN)


def test_no_more_than_max_sessions(node_factory, clients, ctx):
    node = node_factory("n9e", {**QUIET, "max_sessions": 2})
    clients(node.address, name="first")
    extra = Peer(ctx, node.address)
    late = Peer(ctx, node.address)
    try:
        extra.send(*P.encode_hello("extra"))  # the second session: still admitted
        extra.expect(P.READY)
        late.send(*P.encode_hello("late"))
        msg = late.expect(P.ERROR, code=subjects.MAX_SESSIONS)
        assert "max_sessions 2" in msg[2]
        extra.send(*P.encode_bye())  # one leaves: room again
    finally:
        extra.close()
        late.close()
    legit = []

    def admitted() -> bool:
        try:
            legit.append(clients(node.address, name="legit", timeout=3))
        except NodeError as exc:
            assert exc.code == subjects.MAX_SESSIONS, exc
            return False
        return True

    wait_until(admitted, 15, "room for a session once one left")
    legit[0].subscribe("legit.self")
    legit[0].publish("legit.self", b"ok")
    ev = legit[0].next_event(10)
    assert ev is not None and bytes(ev.data) == b"ok"


# --------------------------------------- row 10: a hello flood against slow auth


@pytest.fixture
def slow_auth_node(node_factory, tmp_path):
    script = tmp_path / "auth.sh"
    script.write_text('#!/bin/sh\nsleep 0.5\n[ "$TREESCALE_TOKEN" = "good" ]\n')
    script.chmod(0o755)
    return node_factory("n10", {"auth_command": str(script), "max_pending_auth": 8})


def test_a_hello_flood_on_one_connection_does_not_starve_another(slow_auth_node,
                                                                  clients, ctx):
    node = slow_auth_node
    flood = Peer(ctx, node.address)
    hello = msgpack.packb([P.HELLO, 1, "bad", "flood", [], [], [], [], {}])
    try:
        for _ in range(200):
            flood.send(hello)
        msg = flood.expect(P.ERROR, code=subjects.AUTH_PENDING)
        assert "still being authenticated" in msg[2]
        started = time.monotonic()
        legit = clients(node.address, token="good", name="legit", timeout=5)
        assert time.monotonic() - started < 5  # answered while the flood is queued
        legit.subscribe("after.flood")
        legit.publish("after.flood", b"ok")
        ev = legit.next_event(10)
        assert ev is not None and bytes(ev.data) == b"ok"
        flood.expect(P.ERROR, code=subjects.BAD_TOKEN)  # the one hello it had
    finally:
        flood.close()
    assert node.alive


def test_the_auth_queue_is_bounded_across_connections(slow_auth_node, clients, ctx):
    node = slow_auth_node
    peers = [Peer(ctx, node.address) for _ in range(40)]
    try:
        for p in peers:
            p.send(msgpack.packb([P.HELLO, 1, "bad", "many", [], [], [], [], {}]))
        codes: dict = {}
        for p in peers:
            msg = p.expect(P.ERROR, 20)
            codes[msg[1]] = codes.get(msg[1], 0) + 1
        assert codes.get(subjects.MAX_PENDING_AUTH, 0) >= 40 - 8 - 4, codes
        assert set(codes) <= {subjects.MAX_PENDING_AUTH, subjects.BAD_TOKEN}
    finally:
        for p in peers:
            p.close()
    legit = clients(node.address, token="good", name="legit", timeout=10)
    legit.subscribe("after.flood")
    legit.publish("after.flood", b"ok")
    ev = legit.next_event(10)
    assert ev is not None and bytes(ev.data) == b"ok"
