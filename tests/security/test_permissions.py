"""Per-token permissions on every path, against real nodes: a token with only pub and
sub cannot run commands, cannot watch the command services or anyone's replies, cannot
forge a reply, and allow/deny rules hold for publish and subscribe. Each case also shows
a client with the right token doing the same thing."""

from __future__ import annotations

import queue
from pathlib import Path

import msgpack
import pytest

from tests.conftest import LINK, wait_until
from tests.integration.test_bad_input import Raw
from treescale import protocol as P
from treescale import subjects
from treescale.client import Client, NodeError
from treescale.services.rpc import call

ORDERS = {"publish": {"allow": ["orders.>"], "deny": ["orders.secret.>"]},
          "subscribe": {"allow": ["orders.>", "audit.*"], "deny": ["orders.secret.>"]}}
TOKENS = {"admin": ["*"], "viewer": ["pub", "sub"], "orders": ORDERS}
# Works whether or not command services need their flag (and auth) yet.
CONFIG = {"tokens": TOKENS, "exec_enabled": True, "handlers_enabled": True}


def raw_hello(token: str, subs: list | None = None) -> bytes:
    return msgpack.packb([P.HELLO, P.PROTOCOL_VERSION, token, "raw", [], [], [],
                          subs or [], {}])


def session(address: str, token: str) -> Raw:
    r = Raw(address)
    r.send(raw_hello(token))
    assert r.recv()[0] == P.READY
    return r


def service_answers(c: Client, service: str, node: str) -> bool:
    try:
        call(c, service, "ls" if service == "handlers" else "run",
             {} if service == "handlers" else {"command": "true"}, node=node, timeout=2)
        return True
    except TimeoutError:
        return False


@pytest.fixture
def p1(node_factory):
    return node_factory("p1", CONFIG)


@pytest.fixture
def admin(p1, clients):
    c = clients(p1.address, token="admin", name="admin")
    wait_until(lambda: service_answers(c, "exec", "p1")
               and service_answers(c, "handlers", "p1"), 30, "exec and handlers services")
    return c


def errors_of(c: Client, code: str, text: str = "") -> list:
    return [e for e in c.errors if e.code == code and text in e.message]


# ------------------------------------------------ (a) no commands without the grant


def test_a_pub_sub_token_cannot_run_commands(p1, admin, clients, tmp_path: Path):
    viewer = clients(p1.address, token="viewer", name="viewer", on_error=lambda e: None)
    hacked = tmp_path / "hacked"
    with pytest.raises(NodeError) as err:
        call(viewer, "exec", "run", {"command": f"touch {hacked}"}, node="p1", timeout=5)
    assert err.value.code == subjects.PERMISSION_DENIED
    assert "does not allow exec" in err.value.message
    with pytest.raises(NodeError) as err:
        call(viewer, "handlers", "add", {"pattern": "boom.x", "run": f"touch {hacked}"},
             node="p1", timeout=5)
    assert err.value.code == subjects.PERMISSION_DENIED
    # The same request by hand, its req_id in the refusal.
    raw = session(p1.address, "viewer")
    try:
        raw.send(*P.encode_request(9, subjects.service("exec", "p1"), b"{}"))
        msg = raw.recv()
        assert msg[0] == P.ERROR and msg[1] == subjects.PERMISSION_DENIED and msg[3] == 9
    finally:
        raw.close()

    # The admin does both on the same node: the command runs, the handler is installed.
    ran = tmp_path / "ran"
    [r] = call(admin, "exec", "run", {"command": f"touch {ran}"}, node="p1", timeout=10)
    assert r.ok and r.result["exit"] == 0 and ran.exists()
    handled = tmp_path / "handled"
    [r] = call(admin, "handlers", "add", {"pattern": "boom.y", "run": f"touch {handled}"},
               node="p1", timeout=10)
    assert r.ok
    viewer.publish("boom.x", b"")  # no handler was installed for it
    viewer.publish("boom.y", b"")  # the admin's handler runs on an ordinary event
    wait_until(handled.exists, 15, "the admin's handler to run")
    [r] = call(admin, "handlers", "ls", node="p1", timeout=10)
    assert [h["pattern"] for h in r.result] == ["boom.y"]
    assert not hacked.exists()


# ------------------------------------- (b) no watching the services or the replies


WATCHES = [subjects.service(">"), subjects.service("exec", ">"),
           subjects.service("*", "p1"), subjects.AUDIT_EXEC]


def test_a_pub_sub_token_cannot_watch_commands_or_replies(p1, admin, clients):
    raw = session(p1.address, "viewer")
    try:
        for pattern in WATCHES:
            code, message = raw.error(*P.encode_sub(pattern))
            assert code == subjects.PERMISSION_DENIED and pattern in message, message
        code, _ = raw.error(*P.encode_sub(subjects.node_inboxes("p1")))
        assert code == subjects.BAD_PATTERN
        code, _ = raw.error(*P.encode_sub(subjects.INBOX + ".>"))
        assert code == subjects.BAD_PATTERN
    finally:
        raw.close()
    # The subscriptions of a hello are checked the same way, each on its own.
    hello = Raw(p1.address)
    try:
        hello.send(raw_hello("viewer", [[subjects.service(">"), None], ["fine.*", None]]))
        first = hello.recv()
        assert first[0] == P.ERROR and first[1] == subjects.PERMISSION_DENIED
        assert hello.recv()[0] == P.READY
    finally:
        hello.close()

    spy = clients(p1.address, token="viewer", name="spy", on_error=lambda e: None)
    for pattern in [*WATCHES, subjects.INBOX + ".>", ">", "*.>"]:
        spy.subscribe(pattern)
    # subscribe() returns once the node answered, so its refusals are in by now.
    assert len(errors_of(spy, subjects.PERMISSION_DENIED)) == len(WATCHES)
    assert len(errors_of(spy, subjects.BAD_PATTERN, "inboxes are private")) == 1

    out: list = []
    [r] = call(admin, "exec", "run", {"command": "echo top-secret; exit 3"}, node="p1",
               timeout=10, on_stream=lambda node, stream, data: out.append(data))
    assert r.ok and r.result["exit"] == 3 and b"".join(out) == b"top-secret\n"
    assert spy.next_event(1.0) is None  # neither the command, its output nor its exit


# ------------------------------------------------------------- (c) forged replies


def test_a_forged_reply_is_refused_and_the_real_one_arrives(p1, clients):
    asked: queue.SimpleQueue = queue.SimpleQueue()
    responder = clients(p1.address, token="viewer", name="responder")
    responder.subscribe("work.q", handler=asked.put)
    victim = clients(p1.address, token="viewer", name="victim")
    attacker = session(p1.address, "viewer")
    try:
        with victim.request_stream("work.q", b"?", timeout=10) as replies:
            ev = asked.get(timeout=10)
            node, cid, req_id, cap = subjects.parse_inbox(ev.reply)
            # The attacker knows everything but the capability.
            wrong = "0" if cap[0] != "0" else "1"
            for forged in (subjects.inbox(node, cid, req_id, wrong + cap[1:]),
                           subjects.inbox(node, cid, req_id, cap + "0")):
                code, message = attacker.error(*P.encode_reply(forged, b"forged"))
                assert code == subjects.PERMISSION_DENIED and forged in message
            code, _ = attacker.error(*P.encode_reply(subjects.inbox_prefix(node, cid)
                                                     + str(req_id), b"forged"))
            assert code == subjects.BAD_FIELD  # not even a reply subject
            the_real_reply_alone_arrives(responder, ev, replies)
    finally:
        attacker.close()


def test_a_forged_reply_from_another_node_is_dropped_and_counted(node_factory, clients):
    root = node_factory("r1", {"tokens": TOKENS, "link_token": LINK})
    leaf = node_factory("r2", {"parent": root.address, "link_token": LINK})
    admin = clients(root.address, token="admin", name="admin")
    admin.subscribe(subjects.NODE_STATS)
    asked: queue.SimpleQueue = queue.SimpleQueue()
    responder = clients(leaf.address, name="responder")
    responder.subscribe("work.far", handler=asked.put)
    victim = clients(root.address, token="viewer", name="victim")
    wait_until(lambda: _answers(victim, "work.far", asked, responder), 15,
               "the leaf's responder to be reachable")
    attacker = session(leaf.address, "admin")
    try:
        with victim.request_stream("work.far", b"?", timeout=10) as replies:
            ev = next_ask(asked)
            node, cid, req_id, cap = subjects.parse_inbox(ev.reply)
            forged = subjects.inbox(node, cid, req_id, "f" * len(cap))
            attacker.send(*P.encode_reply(forged, b"forged"))  # r2 cannot tell: r1 can
            the_real_reply_alone_arrives(responder, ev, replies)
    finally:
        attacker.close()

    def counted() -> bool:
        ev = admin.next_event(1.5)
        report = msgpack.unpackb(bytes(ev.data)) if ev is not None else {}
        return report.get("node") == "r1" and report["bad_replies"] >= 1

    wait_until(counted, 10, "r1 to count the forged reply")


def the_real_reply_alone_arrives(responder, ev, replies) -> None:
    """The responder's answer reaches the requester, and nothing forged with it."""
    responder.reply(ev, b"real")
    first = replies.get(5)
    assert first is not None and bytes(first.data) == b"real"
    assert replies.get(0.5) is None


def next_ask(asked: queue.SimpleQueue) -> object:
    """The test's own request (a probe that timed out may have left one behind)."""
    while True:
        ev = asked.get(timeout=10)
        if bytes(ev.data) == b"?":
            return ev


def _answers(c: Client, name: str, asked: queue.SimpleQueue, responder: Client) -> bool:
    """One round trip through the tree (answering the request the probe makes)."""
    with c.request_stream(name, b"probe", timeout=1) as replies:
        try:
            ev = asked.get(timeout=1)
        except queue.Empty:
            return False
        responder.reply(ev, b"pong")
        return replies.get(1) is not None


# ---------------------------------------------------------- (d) allow and deny rules


def test_allow_and_deny_rules_hold_for_publish_and_subscribe(p1, clients):
    admin = clients(p1.address, token="admin", name="admin")
    admin.subscribe("orders.>")
    admin.subscribe("billing.>")
    orders = clients(p1.address, token="orders", name="orders", on_error=lambda e: None)
    orders.subscribe("orders.*")  # allowed, and clear of the deny rule
    orders.subscribe("orders.>")  # could see orders.secret.…: the deny rule refuses it
    orders.subscribe("billing.>")  # outside the allow list

    orders.publish("orders.new", b"1")
    ev = admin.next_event(5)
    assert ev is not None and ev.name == "orders.new"
    orders.publish("orders.secret.plan", b"2")
    orders.flush()  # a refused name drops its whole batch: one batch each
    orders.publish("billing.x", b"3")
    orders.flush()
    assert errors_of(orders, subjects.PERMISSION_DENIED, "subscribe 'orders.>': denied by "
                     "rule deny 'orders.secret.>'")
    assert errors_of(orders, subjects.PERMISSION_DENIED, "subscribe 'billing.>': not "
                     "within this token's subscribe allow list")
    assert errors_of(orders, subjects.PERMISSION_DENIED, "publish 'orders.secret.plan': "
                     "denied by rule deny 'orders.secret.>'")
    assert errors_of(orders, subjects.PERMISSION_DENIED, "publish 'billing.x': not in "
                     "this token's publish allow list (orders.>)")
    assert admin.next_event(0.5) is None  # neither refused publish got through

    admin.publish("orders.paid", b"4")
    admin.publish("orders.secret.plan", b"5")
    admin.publish("billing.y", b"6")
    got = [orders.next_event(5), orders.next_event(5)]  # its own first, then the admin's
    assert [ev.name for ev in got if ev is not None] == ["orders.new", "orders.paid"]
    assert orders.next_event(0.5) is None
    own = [admin.next_event(5) for _ in range(3)]  # the admin hears its own three
    assert [ev.name for ev in own if ev is not None] == ["orders.paid",
                                                         "orders.secret.plan", "billing.y"]
    with pytest.raises(NodeError) as err:
        orders.request("billing.ask", b"", timeout=5)
    assert err.value.code == subjects.PERMISSION_DENIED

    # A publish with a longer header goes the batch path: the same rules.
    raw = session(p1.address, "orders")
    try:
        meta, body, large = P.encode_events([("orders.secret.x", b"x", None, 0, None,
                                              None)])
        code, message = raw.error(msgpack.packb([P.PUB, None]), meta, body, *large)
        assert code == subjects.PERMISSION_DENIED and "deny 'orders.secret.>'" in message
    finally:
        raw.close()
    assert admin.next_event(0.5) is None
