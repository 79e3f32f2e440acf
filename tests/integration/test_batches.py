"""The batch API through a real node process: ``publish_many`` (one name, many names,
targets, back-pressure) received by ``batches()`` and by ``events()``, in order, with
both clients."""

from __future__ import annotations

import asyncio
import threading

from tests.conftest import wait_until
from treescale import AsyncClient
from treescale.client_io import BATCH_EVENTS, MAX_QUEUED


def take_batches(client, n: int, timeout: float = 10.0) -> list:
    """Batches until ``n`` events came (fails if fewer arrive in time)."""
    got, count = [], 0
    for batch in client.batches(timeout=timeout):
        got.append(batch)
        count += len(batch)
        if count >= n:
            break
    assert count == n, f"expected {n} events, got {count}"
    return got


def test_publish_many_one_name_arrives_in_order_as_batches(node, clients):
    sub = clients(node.address, name="sub")
    sub.subscribe("orders.>")
    pub = clients(node.address, name="shop")
    datas = [b"%05d" % i for i in range(10_000)]  # more than one PUB batch
    assert pub.publish_many("orders.created", datas) == len(datas)
    pub.flush()
    batches = take_batches(sub, len(datas))
    assert [bytes(p) for b in batches for p in b.payloads] == datas
    assert {tuple(b.names) for b in batches} == {("orders.created",)}
    assert {b.source(0) for b in batches} == {"shop"}
    assert all(b.sources == [("shop", len(b))] for b in batches)
    assert [bytes(ev.data) for ev in batches[0]] == datas[:len(batches[0])]


def test_publish_many_names_reach_only_their_subscribers_in_order(node, clients):
    sub = clients(node.address)
    sub.subscribe("a.*")
    pub = clients(node.address, name="mixer")
    names = ["a.x", "b.y", "a.z", "a.x"] * 500
    datas = [b"%d" % i for i in range(len(names))]
    pub.publish("a.first", b"before")  # publish and publish_many keep call order
    pub.publish_many(names, datas)
    pub.publish("a.last", b"after")
    pub.flush()
    want = [("a.first", b"before"),
            *((n, d) for n, d in zip(names, datas, strict=True) if n.startswith("a.")),
            ("a.last", b"after")]
    got = []
    for ev in sub.events(timeout=5):  # the per-event API reads them as well
        got.append((ev.name, bytes(ev.data)))
        if len(got) == len(want):
            break
    assert got == want
    assert sub.next_event(0.3) is None


def test_events_and_batches_drain_one_inbox_in_order(node, clients):
    sub = clients(node.address)
    sub.subscribe("mixed")
    pub = clients(node.address)
    datas = [b"%04d" % i for i in range(3000)]
    pub.publish_many("mixed", datas)
    pub.flush()
    got = []
    for ev in sub.events(timeout=5):  # stop in the middle of a delivery
        got.append(bytes(ev.data))
        if len(got) == 10:
            break
    for batch in sub.batches(timeout=5):  # the rest of it first, then the next ones
        got.extend(map(bytes, batch.payloads))
        if len(got) == len(datas):
            break
    assert got == datas


def test_handlers_still_get_events_and_batches_the_rest(node, clients):
    sub = clients(node.address)
    handled: list = []
    all_handled = threading.Event()

    def handler(ev) -> None:
        handled.append((ev.name, bytes(ev.data)))
        if len(handled) == 2:
            all_handled.set()

    sub.subscribe("h.>", handler=handler)
    sub.subscribe("i.>")
    pub = clients(node.address, name="p")
    pub.publish_many(["h.1", "i.1", "h.2", "i.2"], [b"a", b"b", b"c", b"d"])
    pub.flush()
    assert all_handled.wait(5)
    assert handled == [("h.1", b"a"), ("h.2", b"c")]
    (batch,) = take_batches(sub, 2)
    assert [(batch.name(i), bytes(p)) for i, p in enumerate(batch.payloads)] == [
        ("i.1", b"b"), ("i.2", b"d")]
    assert batch.sources == [("p", 2)]


def test_publish_many_target_narrows_delivery(node, clients):
    web = clients(node.address, name="web", groups=["web"])
    plain = clients(node.address, name="plain")
    for c in (web, plain):
        c.subscribe("deploy")
    pub = clients(node.address)
    pub.publish_many("deploy", [b"v1", b"v2", b"v3"], target="group:web",
                     headers={"by": "ci"})
    pub.flush()
    (batch,) = take_batches(web, 3)
    assert [(bytes(e.data), e.target, dict(e.headers)) for e in batch] == [
        (b"v1", "group:web", {"by": "ci"}), (b"v2", "group:web", {"by": "ci"}),
        (b"v3", "group:web", {"by": "ci"})]
    assert next(plain.batches(timeout=0.5), None) is None


def test_publish_many_blocks_at_the_queue_bound_until_the_node_is_back(node, clients):
    pub = clients(node.address)
    node.kill()
    wait_until(lambda: not pub.core.ready, what="the client to see its node gone")
    chunk, calls = 1000, MAX_QUEUED // 1000 * 2
    done: list[int] = []

    def publish() -> None:
        for _ in range(calls):
            done.append(pub.publish_many("held", [b"e"] * chunk))

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    # the call that takes the queue past MAX_QUEUED blocks (before it, all return)
    wait_until(lambda: (len(done) + 1) * chunk >= MAX_QUEUED, what="the queue to fill")
    t.join(0.5)
    assert t.is_alive(), "publish_many did not block at MAX_QUEUED"
    assert len(done) * chunk <= MAX_QUEUED
    assert len(pub._outbox) <= MAX_QUEUED + BATCH_EVENTS
    node.start()
    t.join(30)
    assert not t.is_alive() and sum(done) == calls * chunk
    pub.flush(timeout=30)


def test_async_client_both_ends(node):
    async def main() -> None:
        async with AsyncClient(node.address, name="asub") as sub, \
                AsyncClient(node.address, name="apub") as pub:
            await sub.subscribe("async.>")
            datas = [b"%04d" % i for i in range(5000)]
            assert await pub.publish_many("async.one", datas[:2500]) == 2500
            await pub.publish_many(["async.two"] * 2500, datas[2500:])
            await pub.flush()
            got, names = [], set()
            async for batch in sub.batches(timeout=5):
                got.extend(map(bytes, batch.payloads))
                names.update(batch.names)
                assert batch.source(0) == "apub"
                if len(got) >= len(datas):
                    break
            assert got == datas and names == {"async.one", "async.two"}
            await pub.publish_many("async.one", [b"x", b"y"])
            evs = []
            async for ev in sub.events(timeout=5):
                evs.append(bytes(ev.data))
                if len(evs) == 2:
                    break
            assert evs == [b"x", b"y"]

    asyncio.run(main())


def test_durable_deliveries_come_out_of_batches_with_their_acks(node, clients):
    sub = clients(node.address, name="billing")
    sub.subscribe("orders.>", durable="billing", start="new")
    pub = clients(node.address, name="shop")
    ids = [pub.publish("orders.created", b"%d" % i, durable=True) for i in range(3)]
    pub.flush(10)
    events = [ev for batch in take_batches(sub, 3) for ev in batch]
    assert [(e.id, bytes(e.data), e.durable) for e in events] == [
        (ids[0], b"0", "billing"), (ids[1], b"1", "billing"), (ids[2], b"2", "billing")]
    for e in events:
        e.ack()
    wait_until(lambda: sub.durable_info("billing")["unacked"] == 0, 10, "acks applied")


def test_async_publishing_waits_past_max_queued_while_the_node_is_away(node):
    """AsyncClient is held to the same bound as Client: with its node gone, the call
    that takes the queue past MAX_QUEUED waits (for the node), and everything queued
    goes once the node is back."""
    async def main() -> None:
        async with AsyncClient(node.address, name="held") as pub:
            node.kill()
            deadline = asyncio.get_running_loop().time() + 10
            while pub.core.ready:
                assert asyncio.get_running_loop().time() < deadline, "node still seen"
                await asyncio.sleep(0.02)
            chunk = 1000
            # up to the bound (each batch counts its events and its own slot): all return
            for _ in range(MAX_QUEUED // chunk - 1):
                await pub.publish_many("held", [b"e"] * chunk)
            over = asyncio.ensure_future(pub.publish_many("held", [b"e"] * chunk))
            single = asyncio.ensure_future(_publish_one_by_one(pub, BATCH_EVENTS))
            done, _ = await asyncio.wait({over, single}, timeout=0.5)
            assert not done, "publishing past MAX_QUEUED did not wait"
            assert len(pub._outbox) <= MAX_QUEUED + BATCH_EVENTS + chunk
            node.start()
            await asyncio.wait_for(asyncio.gather(over, single), 30)
            await pub.flush(timeout=30)

    asyncio.run(main())


async def _publish_one_by_one(client, n: int) -> None:
    for _ in range(n):
        await client.publish("held", b"e")
