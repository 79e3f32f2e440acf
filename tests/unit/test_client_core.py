"""ClientCore without sockets: each message kind from a node and each error code
becomes the right actions, and the core stays free of I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treescale import client_core
from treescale import protocol as P
from treescale import subjects as S
from treescale.client_core import (
    AuthError,
    ClientCore,
    Deliver,
    Event,
    FailWaiter,
    NodeError,
    NoResponders,
    Pong,
    Ready,
    Refused,
    ReportError,
    Resend,
    ResendHello,
    ResolveWaiter,
    node_error,
)

NODE, CID = "n1", "c1"


def ready_core(**kw) -> ClientCore:
    core = ClientCore(None, "app", **kw)
    core.receive(P.encode_ready(NODE, CID, {"max_payload": 100, "client_timeout": 15}))
    return core


def deliver(*events: tuple[str, bytes], source: str = "svc") -> list:
    names = [n for n, _ in events]
    meta, body, large = P.encode_columns(names, [d for _, d in events])
    return P.encode_deliver([[source, len(events)]], meta, body, large)


def reply_name(req_id: int) -> str:
    return S.inbox(NODE, CID, req_id, "c4p")


def error(code: str, ref=None) -> list:
    return P.encode_error(code, f"about {code}", ref)


def test_ready_records_the_session_and_says_so():
    core = ClientCore(None, "app")
    actions = core.receive(P.encode_ready(NODE, CID, {"max_payload": 7}))
    assert actions == [Ready(NODE, CID, {"max_payload": 7})]
    assert core.ready and core.was_ready and core.node == NODE and core.client_id == CID
    assert core.inbox_prefix == S.inbox_prefix(NODE, CID)
    assert core.limits == {"max_payload": 7}


@pytest.mark.parametrize(("client_timeout", "ping_every"), [
    (15, client_core.HEARTBEAT), (3.0, 1.0), (1, 1 / 3), (0.01, 0.05)])
def test_the_ping_interval_is_a_third_of_the_nodes_client_timeout(client_timeout,
                                                                  ping_every):
    core = ClientCore(None, "app")
    assert core.ping_every == client_core.HEARTBEAT  # before the node said anything
    core.receive(P.encode_ready(NODE, CID, {"client_timeout": client_timeout}))
    assert core.ping_every == pytest.approx(ping_every)


@given(st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.floats(),
                 st.integers(-(2**63), 2**64 - 1), st.lists(st.booleans(), max_size=2)))
def test_any_client_timeout_a_node_sends_gives_a_sane_ping_interval(value):
    core = ClientCore(None, "app")
    core.receive(P.encode_ready(NODE, CID, {"client_timeout": value}))
    assert 0.05 <= core.ping_every <= client_core.HEARTBEAT


def test_pong_carries_its_token_and_a_nodes_ping_needs_nothing():
    core = ready_core()
    token, frames = core.ping()
    assert P.decode(frames).token == token
    assert core.receive(P.encode_pong(token)) == [Pong(token)]
    assert core.receive(P.encode_ping(3)) == []


def test_a_delivery_without_requests_is_handed_over_undecoded():
    core = ready_core()
    frames = deliver(("a.b", b"1"), ("a.c", b"22"))
    [action] = core.receive(frames)
    assert action == Deliver(frames)
    assert [(e.name, bytes(e.data), e.source) for e in action.iter_events()] == [
        ("a.b", b"1", "svc"), ("a.c", b"22", "svc")]


def test_replies_are_taken_out_of_a_delivery_and_the_rest_delivered():
    core = ready_core()
    req_id, frames = core.request("svc.x", b"q", None, "all", None, None)
    assert P.decode(frames).req_id == req_id and req_id in core.pending
    actions = core.receive(deliver(("app.ev", b"e"), (reply_name(req_id), b"r1"),
                                   (reply_name(req_id), b"r2")))
    assert [a.__class__ for a in actions] == [ResolveWaiter, ResolveWaiter, Deliver]
    assert [(a.ref, bytes(a.event.data), a.last) for a in actions[:2]] == [
        (req_id, b"r1", False), (req_id, b"r2", False)]
    assert [e.name for e in actions[2].iter_events()] == ["app.ev"]
    assert req_id in core.pending  # a stream listens until forgotten
    core.forget(req_id)
    assert core.receive(deliver((reply_name(req_id), b"late"))) == []  # never an app event


def test_a_single_reply_request_ends_with_its_first_reply():
    core = ready_core()
    req_id, _ = core.request("svc.x", b"q", None, "one", None, 1)
    [action] = core.receive(deliver((reply_name(req_id), b"r")))
    assert action.__class__ is ResolveWaiter and action.last
    assert action.items() == (action.event, client_core.END_OF_STREAM)
    assert req_id not in core.pending
    assert core.receive(deliver((reply_name(req_id), b"second"))) == []


def test_a_delivery_without_inbox_names_stays_whole_while_requests_wait():
    core = ready_core()
    core.request("svc.x", b"q", None, "all", None, None)
    frames = deliver(("a.b", b"1"))
    assert core.receive(frames) == [Deliver(frames)]


def test_a_malformed_reply_subject_of_ours_is_dropped():
    core = ready_core()
    core.request("svc.x", b"q", None, "all", None, None)
    assert core.receive(deliver((core.inbox_prefix + "x", b"?"))) == []


@pytest.mark.parametrize("code, cls", [(S.NO_RESPONDERS, NoResponders),
                                       (S.BAD_TARGET, NodeError),
                                       (S.BAD_PATTERN, NodeError),
                                       (S.TOO_LARGE, NodeError),
                                       (S.PERMISSION_DENIED, NodeError)])
def test_request_errors_fail_the_request_they_refer_to(code, cls):
    core = ready_core()
    req_id, _ = core.request("svc.x", b"q", None, "one", None, 1)
    [action] = core.receive(error(code, req_id))
    assert action.__class__ is FailWaiter and action.ref == req_id
    assert type(action.error) is cls and action.error.code == code
    assert action.items() == (action.error, client_core.END_OF_STREAM)  # raised, then over
    assert req_id not in core.pending


@pytest.mark.parametrize("code", sorted(S.REQUEST_ERRORS))
def test_request_errors_about_something_else_are_reported(code):
    core = ready_core()
    req_id, _ = core.request("svc.x", b"q", None, "one", None, 1)
    for ref in (req_id + 1, "svc.x", None, True):
        [action] = core.receive(error(code, ref))
        assert action.__class__ is ReportError and action.error.code == code
    assert req_id in core.pending


@pytest.mark.parametrize("code", [S.BAD_MESSAGE, S.BAD_FRAME_COUNT, S.BAD_ENCODING,
                                  S.UNKNOWN_KIND, S.VERSION, S.BAD_FIELD, S.UNEXPECTED,
                                  S.CYCLE, S.FULL, S.SLOW_CONSUMER])
def test_other_errors_are_reported_and_end_no_request(code):
    core = ready_core()
    req_id, _ = core.request("svc.x", b"q", None, "one", None, 1)
    [action] = core.receive(error(code, req_id))
    assert action == ReportError(action.error)
    assert type(action.error) is NodeError and action.error.code == code
    assert action.error.ref == req_id and req_id in core.pending


@pytest.mark.parametrize("code", sorted(S.AUTH_ERRORS))
def test_a_refused_first_hello_is_fatal_a_later_one_reported(code):
    core = ClientCore("bad", "app")
    [action] = core.receive(error(code))
    assert action.__class__ is Refused and type(action.error) is AuthError
    core = ready_core()
    core.session_lost()
    [action] = core.receive(error(code))
    assert action.__class__ is ReportError and type(action.error) is AuthError


def test_not_ready_on_a_ready_session_says_hello_again():
    core = ready_core()
    core.subs[("a.>", None)] = None
    [action] = core.receive(error(S.NOT_READY))
    assert action.__class__ is ResendHello and not core.ready
    assert P.decode(action.frames).subs == (("a.>", None),)  # subscriptions come back
    [action] = core.receive(error(S.NOT_READY))  # already saying hello: just report
    assert action.__class__ is ReportError and action.error.code == S.NOT_READY


def test_requests_the_node_dropped_with_our_session_are_sent_once_more():
    core = ready_core()
    waiting, frames = core.request("svc.x", b"q", None, "one", None, 1)
    answered, _ = core.request("svc.y", b"q", None, "all", None, None)
    core.receive(deliver((reply_name(answered), b"part")))
    assert [a.__class__ for a in core.receive(error(S.NOT_READY))] == [ResendHello]
    actions = core.receive(P.encode_ready(NODE, CID, {}))
    assert actions[1:] == [Resend(waiting, frames)]  # not the answered stream
    actions = core.receive(error(S.NOT_READY))  # forgotten again: the retry is spent
    assert [a.__class__ for a in actions] == [ResendHello, FailWaiter]
    assert actions[1].ref == waiting and actions[1].error.code == S.NOT_READY
    assert answered in core.pending and waiting not in core.pending


def test_node_error_picks_the_exception_class():
    assert type(node_error(S.BAD_TOKEN, "m")) is AuthError
    assert type(node_error(S.TOKEN_REQUIRED, "m")) is AuthError
    assert type(node_error(S.NO_RESPONDERS, "m", 3)) is NoResponders
    err = node_error(S.BAD_FIELD, "oops", "x")
    assert type(err) is NodeError and str(err) == "bad_field: oops" and err.ref == "x"


def test_a_message_that_is_not_one_raises_protocol_error():
    with pytest.raises(P.ProtocolError):
        ready_core().receive([b"\xc1"])


def test_what_the_core_sends_is_checked_before_it_leaves():
    core = ready_core()
    with pytest.raises(ValueError, match="exceeds the node's limit of 100 bytes"):
        core.request("svc.x", b"x" * 101, None, "one", None, 1)
    with pytest.raises(TypeError, match="must be bytes"):
        core.request("svc.x", 5, None, "one", None, 1)
    with pytest.raises(ValueError, match="mode must be"):
        core.request("svc.x", b"", None, "some", None, 1)
    assert not core.pending
    with pytest.raises(ValueError, match="not a request"):
        core.reply(Event("a", b""), b"r", None)
    rep = P.decode(core.reply(Event("a", b"", reply=reply_name(1)), "r", {"h": 1}))
    assert rep.reply_to == reply_name(1) and bytes(rep.payload) == b"r"
