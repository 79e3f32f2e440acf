"""Interest never goes stale: a gap in a link's interest sequence triggers a snapshot.

The neighbour here is a raw ZeroMQ socket speaking the link protocol to a real node
process, so the test can produce the gap itself (in production a full link drops an
update); everything the node does is real.
"""

from __future__ import annotations

import time

import pytest
import zmq

from treescale import protocol as P


class RawChild:
    """A node's child link, spoken by hand."""

    def __init__(self, address: str, name: str = "fake") -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, f"node:{name}".encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.sock.send_multipart(P.encode_link(name, address="tcp://127.0.0.1:9"))
        assert isinstance(self.expect(P.Linked), P.Linked)

    def send(self, frames: list) -> None:
        self.sock.send_multipart(frames)

    def expect(self, kind: type, timeout: float = 5.0, where=lambda m: True):
        """The next message of ``kind`` satisfying ``where`` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000)):
                break
            msg = P.decode(self.sock.recv_multipart())
            if isinstance(msg, kind) and where(msg):
                return msg
        raise AssertionError(f"no {kind.__name__} from the node within {timeout}s")

    def forwarded_names(self, want: int, timeout: float = 5.0) -> list[str]:
        """Names of the events the node forwarded to us, until ``want`` arrived."""
        names: list[str] = []
        deadline = time.monotonic() + timeout
        while len(names) < want:
            batch = self.expect(P.Batch, max(0.0, deadline - time.monotonic()))
            names += list(batch.meta.name_column())
        return names

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def node(node_factory):
    """A node without machine services: its interest changes only when the test says."""
    return node_factory("n1", {"services": []})


@pytest.fixture
def child(node):
    c = RawChild(node.address)
    yield c
    c.close()


def test_a_gap_makes_the_node_ask_for_a_snapshot_and_apply_it(node, clients, child):
    child.send(P.encode_interest(1, [(True, "a.one", None)]))
    child.send(P.encode_interest(3, [(True, "a.three", None)]))  # #2 went missing
    resync = child.expect(P.Resync)
    assert resync.seq == 1  # the last update the node accepted
    child.send(P.encode_interest(4, [(True, "a.four", None)]))  # ignored: stale path
    child.send(P.encode_interest(5, [(True, "a.three", None), (True, "a.five", None)],
                                 full=True))
    pub = clients(node.address)
    pub.flush()
    # The node must route exactly by the snapshot: a.one was withdrawn by it, a.four
    # came while the link was out of sync and is superseded.
    for name in ("a.one", "a.three", "a.four", "a.five", "a.three"):
        pub.publish(name, b"x")
        pub.flush()
    assert child.forwarded_names(3) == ["a.three", "a.five", "a.three"]


def test_the_node_answers_a_resync_with_its_whole_interest(node, clients, child):
    sub = clients(node.address)
    sub.subscribe("orders.>")
    sub.subscribe("orders.created")  # covered: never advertised on its own
    sub.subscribe("metrics.cpu", queue="w")
    child.expect(P.Interest, where=lambda m: any(p == "metrics.cpu" for _, p, _ in m.ops))
    child.send(P.encode_resync(0))
    snap = child.expect(P.Interest, where=lambda m: m.full)
    keys = {(p, q) for _, p, q in snap.ops}
    assert ("orders.>", None) in keys and ("metrics.cpu", "w") in keys
    assert ("orders.created", None) not in keys
    assert all(add for add, _, _ in snap.ops)
    # Numbering goes on after the snapshot: the next change is the next number.
    sub.subscribe("late.news")
    nxt = child.expect(P.Interest, where=lambda m: any(p == "late.news" for _, p, _ in m.ops))
    assert nxt.seq == snap.seq + 1 and not nxt.full


def test_each_event_of_a_split_forwarded_batch_keeps_its_own_publisher(node, clients,
                                                                       child):
    """A forwarded batch carries several publishers' events ([source, count] runs); a
    subscriber that wants only some of them must see each one's real publisher."""
    sub = clients(node.address, name="sub")
    sub.subscribe("x.b")
    sub.subscribe("x.c")
    child.expect(P.Interest, where=lambda m: any(p == "x.c" for _, p, _ in m.ops))
    meta, body, large = P.encode_events([("x.a", b"1", None, 0, None, None),
                                         ("x.b", b"2", None, 0, None, None),
                                         ("x.c", b"3", None, 0, None, None)])
    child.send([P.encode_forward_header([["pa", 1], ["pb", 1], ["pc", 1]]), meta, body,
                *large])
    got = [(ev.name, ev.source) for ev in sub.events(timeout=5)][:2]
    assert got == [("x.b", "pb"), ("x.c", "pc")]
