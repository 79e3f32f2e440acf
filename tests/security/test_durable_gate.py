"""Durable delivery's paths through the gate, against a real node: a client may not
speak custody (the node-to-node kinds), durable publishes obey the token's publish
rules, durable subscriptions and their control ops obey its subscribe rules, and acks
only reach a durable the client is attached to. Each case also shows the legitimate
operation working."""

from __future__ import annotations

import pytest

from tests.conftest import wait_until
from tests.security.test_permissions import session
from treescale import DeliveryError, subjects
from treescale import protocol as P
from treescale.client import NodeError

ORDERS = {"publish": {"allow": ["orders.>"]}, "subscribe": {"allow": ["orders.>"]}}
TOKENS = {"admin": ["*"], "orders": ORDERS}


@pytest.fixture
def d1(node_factory):
    return node_factory("d1", {"tokens": TOKENS})


@pytest.mark.parametrize("frames", [
    P.encode_dforward([P.DurableEvent(1, "x", "orders.a", b"p", None, 1.0, "n")]),
    P.encode_dfack([1]),
    P.encode_probe(7, "d1"),
    P.encode_probed(7, 1),
], ids=["dforward", "dfack", "dprobe", "dprobed"])
def test_a_client_may_not_speak_custody(frames, d1, clients):
    raw = session(d1.address, "admin")  # even the admin's token: these are for links
    try:
        code, _ = raw.error(*frames)
        assert code == subjects.UNEXPECTED
    finally:
        raw.close()
    c = clients(d1.address, token="admin")
    assert c.durables() == [], "the forged forward stored nothing"


def test_durable_publishes_obey_the_publish_rules(d1, clients):
    c = clients(d1.address, token="orders")
    with pytest.raises(DeliveryError) as err:
        c.publish("payments.x", b"p", durable=True, wait=True)
    assert err.value.refused[0][1] == subjects.PERMISSION_DENIED
    admin = clients(d1.address, token="admin")
    with pytest.raises(DeliveryError) as err:  # no durable events in reserved areas
        admin.publish("$sys.forged", b"p", durable=True, wait=True)
    assert err.value.refused[0][1] == subjects.BAD_FIELD
    c.publish("orders.x", b"p", durable=True, wait=True)  # what the token allows


def test_durable_subscriptions_and_their_ops_obey_the_subscribe_rules(d1, clients):
    admin = clients(d1.address, token="admin")
    admin.subscribe("payments.>", durable="pay")
    orders = clients(d1.address, token="orders")
    with pytest.raises(NodeError) as err:
        orders.subscribe("payments.>", durable="pay")  # resume someone else's
    assert err.value.code == subjects.PERMISSION_DENIED
    for op in (orders.durable_info, orders.durable_remove):
        with pytest.raises(NodeError) as err:
            op("pay")
        assert err.value.code == subjects.PERMISSION_DENIED
    with pytest.raises(NodeError):
        orders.durable_replay("pay", seq=0)
    assert [d["durable"] for d in orders.durables()] == [], "ls hides what it may not see"
    assert admin.durable_info("pay")["durable"] == "pay", "rm was refused: it is there"
    orders.subscribe("orders.>", durable="mine")  # its own pattern: allowed
    assert orders.durable_info("mine")["pattern"] == "orders.>"


def test_acks_reach_only_a_durable_the_client_is_attached_to(d1, clients):
    owner = clients(d1.address, token="admin")
    owner.subscribe("orders.>", durable="held", ack_wait=60)
    owner.publish("orders.x", b"p", durable=True, wait=True)
    ev = owner.next_event(10)
    assert ev is not None
    raw = session(d1.address, "admin")  # another session acks the owner's event
    try:
        raw.send(*P.encode_dack("held", [ev.seq]))
        raw.send(*P.encode_ping(1))
        assert raw.recv()[0] == P.PONG  # the node went past the forged ack
    finally:
        raw.close()
    assert owner.durable_info("held")["unacked"] == 1, "a stranger's ack released it"
    ev.ack()  # the owner's does
    wait_until(lambda: owner.durable_info("held")["unacked"] == 0, 10, "the owner's ack")
