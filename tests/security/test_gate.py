"""The inbound gate against a real node: every path a client can send on is checked,
not just the canonical publish. Each case asserts that the refused path fails and that
a client with the right token does the same thing."""

from __future__ import annotations

import msgpack
import pytest

from tests.integration.test_bad_input import Raw
from treescale import protocol as P
from treescale import subjects
from treescale.client import Client, NodeError

TOKENS = {"admin": ["*"], "viewer": ["pub", "sub"]}


def raw_hello(token: str) -> bytes:
    return msgpack.packb([P.HELLO, P.PROTOCOL_VERSION, token, "raw", [], [], [], [], {}])


@pytest.fixture
def gated(node_factory):
    return node_factory("g1", {"tokens": TOKENS})


@pytest.fixture
def viewer(gated):
    r = Raw(gated.address)
    r.send(raw_hello("viewer"))
    assert r.recv()[0] == P.READY
    yield r
    r.close()


@pytest.fixture
def watcher(gated, clients):
    """An admin subscribed to the fabric's own events: it sees any forged one."""
    c = clients(gated.address, token="admin", name="watcher")
    c.subscribe("$sys.forged.>")
    return c


def one_event(name: str) -> list:
    meta, body, large = P.encode_events([(name, b"x", None, 0, None, None)])
    return [meta, body, *large]


def assert_nothing_arrives(c: Client, timeout: float = 0.5) -> None:
    assert c.next_event(timeout) is None


def test_a_publish_with_a_longer_header_is_checked_like_the_canonical_one(viewer,
                                                                           watcher):
    code, message = viewer.error(msgpack.packb([P.PUB, None]),
                                 *one_event("$sys.forged.a"))
    assert code == subjects.PERMISSION_DENIED and "sys" in message
    assert_nothing_arrives(watcher)
    watcher.publish("$sys.forged.b", b"ok")  # the admin may
    ev = watcher.next_event(5)
    assert ev is not None and ev.name == "$sys.forged.b"


@pytest.mark.parametrize("kind", [P.DELIVER, P.FORWARD])
def test_a_client_cannot_send_what_only_nodes_send(viewer, watcher, kind):
    code, message = viewer.error(P.packb([kind, [["someone", 1]]]),
                                 *one_event("$sys.forged.c"))
    assert code == subjects.UNEXPECTED and P.KIND_NAMES[kind] in message
    assert_nothing_arrives(watcher)


def test_a_client_cannot_speak_for_a_link(viewer):
    code, _ = viewer.error(*P.encode_interest(1, [(True, "x", None)]))
    assert code == subjects.UNEXPECTED
    code, _ = viewer.error(*P.encode_placement({"open_depth": 0}))
    assert code == subjects.UNEXPECTED


def test_a_request_to_a_service_needs_the_services_permission(gated, viewer, clients):
    responder = clients(gated.address, token="admin", name="svc")
    subject = subjects.service("probe", "g1")
    responder.subscribe(subject, handler=lambda ev: responder.reply(ev, b"pong"))
    viewer.send(*P.encode_request(41, subject, b"ping"))
    msg = viewer.recv()
    assert msg[0] == P.ERROR and msg[1] == subjects.PERMISSION_DENIED and msg[3] == 41
    admin = clients(gated.address, token="admin", name="caller")
    assert admin.request(subject, b"ping", timeout=5).data == b"pong"


def test_the_client_api_sees_a_refused_request_as_an_error(gated, clients):
    viewer = clients(gated.address, token="viewer", name="viewer")
    with pytest.raises(NodeError) as err:
        viewer.request(subjects.service("exec", "g1"), b"{}", timeout=5)
    assert err.value.code == subjects.PERMISSION_DENIED


def test_inboxes_stay_private_whatever_the_path(viewer):
    code, _ = viewer.error(*P.encode_sub("$inbox.g1.>"))
    assert code == subjects.BAD_PATTERN
    viewer.send(*P.encode_ping(7))  # the session is still fine
    assert viewer.recv()[:2] == [P.PONG, 7]


def test_a_connection_without_a_session_gets_not_ready_for_everything_but_hello(gated):
    r = Raw(gated.address)
    try:
        for frames in (P.encode_request(1, "x", b""), P.encode_sub("x"),
                       P.encode_interest(1, [])):
            code, _ = r.error(*frames)
            assert code == subjects.NOT_READY
        r.send(raw_hello("viewer"))
        assert r.recv()[0] == P.READY
    finally:
        r.close()
