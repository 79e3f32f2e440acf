"""Which durables a route reaches through each member (custody.durable_keys), and the
short name of such a set (keyset_digest): what an event handed to a neighbour is
marked with, so that a copy arriving after a durable moved behind that neighbour goes
there again."""

from __future__ import annotations

from treescale import subjects
from treescale.brokers.custody import durable_keys, keyset_digest
from treescale.routing import RoutingTable


def test_keys_per_member_real_and_stand_in_alike_plain_queues_ignored() -> None:
    table = RoutingTable("x")
    near = subjects.durable_queue("d", "near")
    far = subjects.durable_queue("c", "far")
    for mid in (b"link-d", ("away", "b"), ("durable", "mine"), b"client"):
        table.add_member(mid, link=isinstance(mid, bytes) and mid.startswith(b"link"))
    table.subscribe(b"link-d", "orders.>", near)
    table.subscribe(b"link-d", "orders.*", far)
    table.subscribe(("away", "b"), "orders.>", subjects.stand_in_queue(far))
    table.subscribe(("durable", "mine"), "orders.created",
                    subjects.durable_queue("x", "mine"))
    table.subscribe(b"client", "orders.>", "workers")  # a plain queue group
    table.subscribe(b"link-d", "orders.>", None)  # and plain interest on the link
    keys = durable_keys(table.lookup("orders.created"))
    assert keys[b"link-d"] == {near, far}
    assert keys[("away", "b")] == {far}  # a stand-in's key is the durable's own
    assert keys[("durable", "mine")] == {subjects.durable_queue("x", "mine")}
    assert b"client" not in keys
    # a name only one durable matches
    assert durable_keys(table.lookup("orders.created.eu")) == {
        b"link-d": {near}, ("away", "b"): {far}}


def test_digest_names_the_set_whatever_its_order_and_differs_per_set() -> None:
    a, b = subjects.durable_queue("d", "near"), subjects.durable_queue("c", "far")
    assert keyset_digest(frozenset([a, b])) == keyset_digest(frozenset([b, a]))
    assert len({keyset_digest(frozenset(s)) for s in ([a], [b], [a, b])}) == 3
    assert len(keyset_digest(frozenset([a]))) == 16  # 8 bytes, hex: one short mark
