"""Durable delivery through the clients and tsctl against a real node.

These need the node's side of durable delivery (DPUB/DCONFIRM, DCTL, DDELIVER/DACK):
they fail until it exists.
"""

from __future__ import annotations

import asyncio
import json

from tests.conftest import wait_until
from tests.integration.test_cli import one_line_error, tsctl
from treescale import AsyncClient


def test_durable_events_wait_for_their_subscriber_and_are_acked(node, clients):
    sub = clients(node.address, name="billing")
    info = sub.subscribe("orders.>", durable="billing", start="new")
    assert info["durable"] == "billing" and info["created"] is True
    pub = clients(node.address, name="shop")
    ids = [pub.publish("orders.created", b"%d" % i, durable=True) for i in range(5)]
    pub.flush(10)
    got = [sub.next_event(10) for _ in range(5)]
    assert [bytes(e.data) for e in got] == [b"0", b"1", b"2", b"3", b"4"]
    assert [e.id for e in got] == ids
    assert all(e.durable == "billing" and not e.redelivered and e.deliveries == 1
               for e in got)
    assert [e.seq for e in got] == sorted(e.seq for e in got)
    for e in got:
        e.ack()
    wait_until(lambda: sub.durable_info("billing")["unacked"] == 0, 10, "acks applied")


def test_a_nak_brings_the_event_back_redelivered(node, clients):
    c = clients(node.address)
    c.subscribe("jobs.>", durable="worker")
    c.publish("jobs.run", b"x", durable=True, wait=True)
    first = c.next_event(10)
    first.nak(delay=0)
    again = c.next_event(10)
    assert again.seq == first.seq and again.redelivered and again.deliveries == 2
    c.ack(again)


def test_a_resumed_durable_gets_what_was_published_while_away(node, clients):
    c = clients(node.address)
    c.subscribe("audit.>", durable="auditor")
    c.close()
    pub = clients(node.address)
    pub.publish("audit.login", b"alice", durable=True, wait=True)
    back = clients(node.address)
    info = back.subscribe("audit.>", durable="auditor")
    assert info["created"] is False
    ev = back.next_event(10)
    assert ev is not None and bytes(ev.data) == b"alice"
    ev.ack()


def test_unconfirmed_events_are_resent_after_the_node_restarts(node_factory, clients):
    n = node_factory("n1")
    c = clients(n.address)
    c.subscribe("a.>", durable="d")
    c.publish("a.b", b"1", durable=True, id="fixed-id", wait=True)
    n.stop()
    for i in range(3):
        c.publish("a.b", b"later%d" % i, durable=True)
    n.start()
    c.flush(20)
    assert [d["durable"] for d in c.durables()] == ["d"]
    assert c.durable_info("d")["stored"] >= 4


def test_ls_info_rm_replay(node, clients):
    c = clients(node.address)
    c.subscribe("x.>", durable="one")
    for i in range(3):
        c.publish("x.y", b"%d" % i, durable=True)
    c.flush(10)
    [d] = c.durables()
    assert d["durable"] == "one" and d["pattern"] == "x.>" and d["node"] == node.name
    evs = [c.next_event(10) for _ in range(3)]
    for e in evs:
        e.ack()
    assert c.durable_replay("one", seq=evs[0].seq)["replayed"] == 3
    assert all(c.next_event(10).redelivered for _ in range(3))
    assert c.durable_remove("one") ["removed"] == "one"
    assert c.durables() == []


def test_async_client_durable(node):
    async def main():
        async with AsyncClient(node.address) as c:
            await c.subscribe("z.>", durable="az")
            eid = await c.publish("z.a", b"1", durable=True, wait=True)
            async for ev in c.events(timeout=10):
                assert ev.id == eid and ev.durable == "az"
                ev.ack()
                break
            await c.flush()
            return await c.durable_info("az")

    info = asyncio.run(main())
    assert info["durable"] == "az"


def test_tsctl_durable_commands(node):
    r = tsctl("sub", "t.>", "--durable", "cli", "--count", "1", "--wait", "0.1",
              "-a", node.address)
    assert r.returncode == 0, r.stderr
    r = tsctl("pub", "t.x", "hello", "--durable", "-a", node.address)
    assert r.returncode == 0, r.stderr
    r = tsctl("sub", "t.>", "--durable", "cli", "--ack", "--json", "--count", "1",
              "-a", node.address)
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout.decode().splitlines()[0])
    assert ev["data"] == "hello" and ev["seq"] is not None and "redelivered" in ev
    r = tsctl("durable", "ls", "--json", "-a", node.address)
    assert [d["durable"] for d in json.loads(r.stdout)] == ["cli"]
    assert tsctl("durable", "ls", "-a", node.address).returncode == 0
    assert json.loads(tsctl("durable", "info", "cli", "--json", "-a",
                            node.address).stdout)["durable"] == "cli"
    one_line_error(tsctl("durable", "info", "nope", "-a", node.address), "no_durable")
    assert json.loads(tsctl("durable", "rm", "cli", "--json", "-a",
                            node.address).stdout)["removed"] == "cli"
