"""Every confirmed durable event arrives, whatever dies: real node processes killed
with SIGKILL and restarted (same name, same store), subscribers away and back, and
clients killed with unacked events. Each test checks the confirmed ids against the
delivered ones (lost must be empty) and that a second copy only comes redelivered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT, NodeProcess, wait_until
from treescale import Client


class Received:
    """What a durable subscriber got: id -> deliveries, and copies not marked."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.unmarked_duplicates: list[str] = []

    def take(self, sub: Client, until: set[str], timeout: float) -> None:
        """Receive and ack until every id of ``until`` arrived (or fail naming how
        many did not)."""
        deadline = time.monotonic() + timeout
        while not until <= set(self.ids):
            left = deadline - time.monotonic()
            assert left > 0, (f"{len(until - set(self.ids))} confirmed events never "
                              f"arrived, e.g. {sorted(until - set(self.ids))[:5]}")
            ev = sub.next_event(min(left, 1.0))
            if ev is None or ev.durable is None:
                continue
            if ev.id in self.ids and not ev.redelivered:
                self.unmarked_duplicates.append(ev.id)
            self.ids[ev.id] = self.ids.get(ev.id, 0) + 1
            ev.ack()


def publish(pub: Client, prefix: str, start: int, n: int) -> list[str]:
    ids = [f"{prefix}:{i:06d}" for i in range(start, start + n)]
    for eid in ids:
        pub.publish("orders.created", eid.encode(), durable=True, id=eid)
    return ids


def chain(node_factory, tmp_path) -> list[NodeProcess]:
    """r <- m <- l, each with its own database and durable store."""
    r = node_factory("r", {})
    m = node_factory("m", {"parent": r.address})
    leaf = node_factory("l", {"parent": m.address})
    return [r, m, leaf]


def linked(client: Client, nodes: int, timeout: float = 20.0) -> None:
    """Wait until the client's node sees ``nodes`` nodes (its durable probe says)."""
    def count() -> bool:
        info = client.subscribe("probe.>", durable="probe-count", timeout=10)
        return info["nodes"] >= nodes
    wait_until(count, timeout, f"{nodes} nodes linked")


@pytest.mark.parametrize("victim", ["m", "l", "r"])
def test_kill_a_node_of_the_chain_mid_stream(victim, node_factory, tmp_path):
    """The middle node, the subscriber's node or the publisher's node is killed with
    SIGKILL while events flow, and restarted: every confirmed event arrives."""
    r, m, leaf = nodes = chain(node_factory, tmp_path)
    sub = Client(leaf.address, name="billing")
    pub = Client(r.address, name="shop")
    try:
        linked(sub, 3)
        sub.subscribe("orders.>", durable="billing", ack_wait=5.0)
        got = Received()
        confirmed = set(publish(pub, "a", 0, 300))
        pub.flush(20)
        node = {"r": r, "m": m, "l": leaf}[victim]
        node.kill()
        # Published while it is down: the publisher's node keeps them in custody (or,
        # with the publisher's node down, the client keeps them until it is back).
        more = publish(pub, "b", 0, 300)
        node.start()
        pub.flush(30)
        confirmed |= set(more)
        confirmed |= set(publish(pub, "c", 0, 300))
        pub.flush(20)
        try:
            got.take(sub, confirmed, 60)
        except AssertionError:
            print("DEBUG", sub.durable_info("billing"), len(got.ids), sorted(got.ids)[:3])
            raise
        assert not got.unmarked_duplicates
    finally:
        sub.close(2)
        pub.close(2)
        for n in nodes:
            n.kill()


def test_subscriber_away_then_back_on_a_restarted_node(node_factory, tmp_path):
    """The durable keeps its interest while its client is away and its position
    across its node's restart: what was acked is not sent again."""
    r, m, leaf = nodes = chain(node_factory, tmp_path)
    try:
        with Client(leaf.address) as sub:
            linked(sub, 3)
            sub.subscribe("orders.>", durable="away")
            with Client(r.address) as pub:
                first = set(publish(pub, "x", 0, 50))
                pub.flush(10)
                got = Received()
                got.take(sub, first, 20)
                # An ack in flight when the node dies means a redelivery (marked):
                # wait until the node has applied them, then kill it.
                wait_until(lambda: sub.durable_info("away")["acked"] == 50, 10,
                           "acks applied")
        leaf.kill()
        leaf.start()
        with Client(r.address) as pub:
            later = set(publish(pub, "y", 0, 50))
            pub.flush(20)
        with Client(leaf.address) as back:
            info = back.subscribe("orders.>", durable="away")
            assert info["created"] is False
            again = Received()
            again.take(back, later, 30)
            assert not set(again.ids) & first, "acked events came again"
            assert not again.unmarked_duplicates
            assert back.durable_info("away")["acked"] >= 100
    finally:
        for n in nodes:
            n.kill()


MEMBER = """
import sys, time
from treescale import Client
c = Client(sys.argv[1], name="member")
c.subscribe("jobs.>", durable="workers", queue="q", ack_wait=60, max_pending=1000)
print("ready", flush=True)
for ev in c.events(timeout=60):
    print(ev.id, flush=True)   # never acked: it dies holding them
"""


def test_queue_group_member_killed_with_unacked_events(node, clients):
    """Each event goes to one member; the unacked ones of a member killed with
    SIGKILL go to another member at once, marked redelivered."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'cli'}"}
    doomed = subprocess.Popen([sys.executable, "-c", MEMBER, node.address],
                              stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert doomed.stdout.readline().strip() == "ready"
        other = clients(node.address, name="other")
        other.subscribe("jobs.>", durable="workers", queue="q", ack_wait=60)
        pub = clients(node.address)
        ids = [pub.publish("jobs.run", b"%d" % i, durable=True) for i in range(40)]
        pub.flush(10)
        mine: dict[str, bool] = {}
        held: set[str] = set()
        reader = threading.Thread(target=lambda: held.update(
            line.strip() for line in doomed.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 20
        while len(mine) + len(held) < 40 and time.monotonic() < deadline:
            ev = other.next_event(0.2)
            if ev is not None:
                assert ev.id not in mine, "one member got an event twice"
                mine[ev.id] = ev.redelivered
                ev.ack()
        assert held and mine, "both members got a share"
        assert not held & set(mine), "an event went to both members"
        assert held | set(mine) == set(ids)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
        redelivered = {}
        deadline = time.monotonic() + 20
        while len(redelivered) < len(held) and time.monotonic() < deadline:
            ev = other.next_event(0.5)
            if ev is not None:
                redelivered[ev.id] = ev.redelivered
                ev.ack()
        assert set(redelivered) == held
        assert all(redelivered.values()), "what the dead member held came redelivered"
    finally:
        doomed.kill()
        doomed.wait()


def test_republished_id_is_stored_once(node, clients):
    sub = clients(node.address)
    sub.subscribe("orders.>", durable="dedup")
    pub = clients(node.address)
    for _ in range(3):
        pub.publish("orders.created", b"same", durable=True, id="order-1")
    pub.publish("orders.created", b"other", durable=True, id="order-2")
    pub.flush(10)
    first = sub.next_event(10)
    second = sub.next_event(10)
    assert {first.id, second.id} == {"order-1", "order-2"}
    first.ack()
    second.ack()
    assert sub.next_event(1.0) is None, "a republished id was delivered again"
    assert sub.durable_info("dedup")["delivered"] == 2


def test_storage_quota_refuses_then_recovers(node_factory, clients):
    from treescale import DeliveryError

    n = node_factory("q1", {"durable_max_bytes": 20_000})
    sub = clients(n.address)
    sub.subscribe("big.>", durable="slow")
    pub = clients(n.address)
    for i in range(30):
        pub.publish("big.x", b"%04d" % i + b"." * 996, durable=True)
    with pytest.raises(DeliveryError) as err:
        pub.flush(10)
    assert "storage_full" in str(err.value) and "q1" in str(err.value)
    refused = {eid for eid, _, _ in err.value.refused}
    assert len(refused) >= 10
    # The subscriber drains and acks; the same publish now succeeds.
    taken = 0
    while (ev := sub.next_event(2.0)) is not None:
        ev.ack()
        taken += 1
    assert taken == 30 - len(refused)
    wait_until(lambda: sub.durable_info("slow")["unacked"] == 0, 10, "acks applied")
    pub.publish("big.x", b"after" + b"." * 995, durable=True, wait=True)
    ev = sub.next_event(10)
    assert bytes(ev.data).startswith(b"after")


def test_retention_drops_and_tells(node, clients):
    watch = clients(node.address)
    watch.subscribe("$sys.durable.overflow")
    sub = clients(node.address)
    sub.subscribe("logs.>", durable="tail", max_bytes=3000)
    sub.close()
    pub = clients(node.address)
    for i in range(10):
        pub.publish("logs.app", b"%03d" % i + b"-" * 997, durable=True)
    pub.flush(10)
    ev = watch.next_event(10)
    assert ev is not None and ev.name == "$sys.durable.overflow"
    back = clients(node.address)
    back.subscribe("logs.>", durable="tail", max_bytes=3000)
    info = back.durable_info("tail")
    assert info["overflow"] == 7 and info["stored"] == 3
    kept = [bytes(back.next_event(10).data)[:3] for _ in range(3)]
    assert kept == [b"007", b"008", b"009"], "the oldest were dropped"


def test_start_all_seq_time_and_replay(node, clients):
    pub = clients(node.address)
    pub.subscribe("keep.>", durable="keeper")  # something owes them: they are stored
    # One confirmed at a time: each is stored by its own wakeup, at its own time.
    ids = [pub.publish("keep.x", b"%d" % i, durable=True, wait=True) for i in range(6)]
    seqs = {}
    for _ in range(6):
        ev = pub.next_event(10)
        seqs[ev.id] = (ev.seq, ev.time)
        ev.ack()
    every = clients(node.address)
    every.subscribe("keep.>", durable="late-all", start="all")
    assert [every.next_event(10).id for _ in range(6)] == ids
    third_seq, third_time = seqs[ids[3]]
    from_seq = clients(node.address)
    from_seq.subscribe("keep.>", durable="late-seq", seq=third_seq)
    assert [from_seq.next_event(10).id for _ in range(3)] == ids[3:]
    from_time = clients(node.address)
    from_time.subscribe("keep.>", durable="late-time", time=third_time)
    got = [from_time.next_event(10).id for _ in range(3)]
    assert got == ids[3:]
    assert pub.durable_replay("keeper", seq=seqs[ids[4]][0])["replayed"] == 2
    again = [pub.next_event(10) for _ in range(2)]
    assert [e.id for e in again] == ids[4:] and all(e.redelivered for e in again)
