"""A client's durable delivery without sockets: what ClientCore sends (DPUB, DACK,
DCTL) and what the node's DCONFIRM, DCTLR and DDELIVER mean, frames in, frames out."""

from __future__ import annotations

import pytest

from treescale import DeliveryError
from treescale import protocol as P
from treescale import subjects as S
from treescale.client_core import (
    ClientCore,
    Confirmed,
    ControlDone,
    DeliverDurable,
    DurableDelivery,
    Event,
    NodeError,
    ReportError,
    Send,
    decode_batch,
)
from treescale.client_durable import DPUB_BYTES, subscribe_args

NODE, CID = "n1", "c1"


def ready_core(**kw) -> ClientCore:
    core = ClientCore(None, "app", **kw)
    core.receive(P.encode_ready(NODE, CID, {"max_payload": 4 << 20, "client_timeout": 15}))
    return core


def sent(core: ClientCore) -> list:
    """What the core would send now, decoded."""
    return [P.decode(frames) for frames in core.durable.take()]


def ddeliver(durable: str, *rows: tuple) -> list:
    """DDELIVER of (seq, name, data, deliveries) rows."""
    return P.encode_ddeliver(durable, [
        P.DurableEvent(seq, f"id{seq}", name, data, {"k": "v"}, 1.7e9 + seq, "pub", d)
        for seq, name, data, d in rows])


# ------------------------------------------------------------------ publishing


def test_durable_publishes_leave_as_one_dpub_with_ids_and_cseqs():
    core = ready_core()
    core.publish_durable("orders.created", b"1", None, None)
    core.publish_durable("orders.created", "two", {"h": "x"}, "my-key")
    [msg] = sent(core)
    assert isinstance(msg, P.DurablePublish)
    assert [(e.seq, e.name, bytes(e.payload), e.headers) for e in msg.events] == [
        (1, "orders.created", b"1", None), (2, "orders.created", b"two", {"h": "x"})]
    assert msg.events[0].id == f"{core.durable.prefix}:1"
    assert len(core.durable.prefix) == 16 and msg.events[1].id == "my-key"
    assert sent(core) == []  # sent once per session
    assert ClientCore(None, "b").durable.prefix != core.durable.prefix


def test_a_large_backlog_is_cut_by_count_and_bytes():
    core = ready_core()
    for _ in range(P.MAX_DURABLE_BATCH + 5):
        core.publish_durable("a.b", b"x", None, None)
    msgs = sent(core)
    assert [len(m.events) for m in msgs] == [P.MAX_DURABLE_BATCH, 5]
    big = b"y" * (DPUB_BYTES // 2 + 1)
    for _ in range(3):
        core.publish_durable("a.b", big, None, None)
    assert [len(m.events) for m in sent(core)] == [1, 1, 1]


def test_confirms_and_refusals_settle_events_and_flush_reports_refusals_once():
    core = ready_core()
    for i in range(4):
        core.publish_durable("a.b", b"%d" % i, None, f"e{i}")
    sent(core)
    actions = core.receive(P.encode_dconfirm([1, 3], [(2, S.STORAGE_FULL,
                                                       "node n1's durable store is full")]))
    assert actions == [Confirmed(3)]
    assert list(core.durable.unconfirmed) == [4]
    assert core.durable.settled(3) and not core.durable.settled(4)
    err = core.delivery_error(4, 10.0)
    assert isinstance(err, DeliveryError) and err.unconfirmed == 1
    assert err.refused == [("e1", S.STORAGE_FULL, "node n1's durable store is full")]
    assert str(err) == ("2 durable events not confirmed: 1 refused by node n1 "
                        "(storage_full: node n1's durable store is full), "
                        "1 unconfirmed after 10.0 s")
    # the refusal was reported: not again; the unconfirmed one is still counted
    again = core.delivery_error(4, 1.0)
    assert again.refused == [] and again.unconfirmed == 1
    core.receive(P.encode_dconfirm([4]))
    assert core.delivery_error(4, 1.0) is None


def test_a_flush_covers_what_was_published_before_it_only():
    core = ready_core()
    core.publish_durable("a.b", b"1", None, None)
    upto = core.durable.last_cseq
    core.publish_durable("a.b", b"2", None, None)
    core.receive(P.encode_dconfirm([1], [(2, "bad", "no")]))
    assert core.delivery_error(upto, 1.0) is None
    err = core.delivery_error(2, 1.0)
    assert str(err) == "1 durable event not confirmed: 1 refused by node n1 (bad: no)"


def test_waiting_for_one_event_reports_that_one():
    core = ready_core()
    a, _ = core.publish_durable("a.b", b"1", None, None)
    b, _ = core.publish_durable("a.b", b"2", None, None)
    core.receive(P.encode_dconfirm([], [(a, "x", "y")]))
    assert core.durable.settled(0, only=a) and not core.durable.settled(0, only=b)
    assert core.delivery_error(0, 1.0, only=a).refused[0][1] == "x"
    assert core.delivery_error(0, 2.0, only=b).unconfirmed == 1
    assert core.delivery_error(b, 2.0).refused == []  # a's refusal was reported


def test_a_new_session_resends_every_unconfirmed_event_in_order_with_the_same_ids():
    core = ready_core()
    for i in range(5):
        core.publish_durable("a.b", b"%d" % i, None, None)
    first = sent(core)[0].events
    core.receive(P.encode_dconfirm([2, 4]))
    core.session_lost()
    core.receive(P.encode_ready(NODE, CID, {}))
    [msg] = sent(core)
    assert [e.seq for e in msg.events] == [1, 3, 5]
    assert [e.id for e in msg.events] == [first[0].id, first[2].id, first[4].id]
    # a node that forgot us (not_ready) gets them again after the hello too
    core.receive(P.encode_error(S.NOT_READY, "who?"))
    core.receive(P.encode_ready(NODE, CID, {}))
    assert [e.seq for e in sent(core)[0].events] == [1, 3, 5]


def test_refused_publish_input():
    core = ready_core()
    with pytest.raises(ValueError):
        core.publish_durable("a.b", b"x", None, "i" * (P.MAX_ID + 1))
    with pytest.raises(TypeError):
        core.publish_durable("a.b", 42, None, None)
    small = ClientCore(None, "a")
    small.receive(P.encode_ready(NODE, CID, {"max_payload": 3}))
    with pytest.raises(ValueError):
        small.publish_durable("a.b", b"toolong", None, None)
    assert not small.durable.unconfirmed


def test_a_mutable_payload_is_copied_for_resends():
    core = ready_core()
    buf = bytearray(b"abc")
    core.publish_durable("a.b", buf, None, None)
    buf[:] = b"zzz"
    assert bytes(sent(core)[0].events[0].payload) == b"abc"


def test_room_counts_unconfirmed_events():
    core = ready_core(max_unconfirmed=2)
    core.publish_durable("a.b", b"", None, None)
    assert core.durable.has_room()
    core.publish_durable("a.b", b"", None, None)
    assert not core.durable.has_room()
    core.receive(P.encode_dconfirm([1]))
    assert core.durable.has_room()


# ------------------------------------------------------------------ deliveries


def test_ddeliver_becomes_durable_events_with_their_fields():
    core = ready_core()
    [action] = core.receive(ddeliver("billing", (7, "orders.created", b"a", 0),
                                     (9, "orders.paid", b"b", 2)))
    assert isinstance(action, DeliverDurable)
    first, second = action.iter_events()
    assert isinstance(first, DurableDelivery) and isinstance(first, Event)
    assert (first.name, bytes(first.data), first.source, dict(first.headers)) == (
        "orders.created", b"a", "pub", {"k": "v"})
    assert (first.seq, first.id, first.durable, first.time) == (7, "id7", "billing",
                                                                1.7e9 + 7)
    assert (first.deliveries, first.redelivered) == (1, False)
    assert (second.deliveries, second.redelivered, second.seq) == (3, True, 9)
    assert first.reply is None and first.target is None


def test_ordinary_events_have_no_durable_fields_and_ack_is_a_no_op():
    meta, body, large = P.encode_columns(["a.b"], [b"1"])
    [ev] = decode_batch(P.encode_deliver([["s", 1]], meta, body, large))
    assert type(ev) is Event
    assert (ev.seq, ev.id, ev.durable, ev.time, ev.redelivered, ev.deliveries) == (
        None, None, None, None, False, 0)
    ev.ack()
    ev.nak()
    core = ready_core()
    core.ack(ev)
    assert not core.durable.has_work()


def test_acks_and_naks_leave_as_one_dack_per_durable():
    core = ready_core()

    class Acker:  # what a shell is to its events: ack/nak go back through it
        def ack(self, ev):
            core.ack(ev)

        def nak(self, ev, delay=0.0):
            core.ack(ev, delay)

    core.acker = Acker()
    [a] = core.receive(ddeliver("billing", (1, "x.y", b"", 0), (2, "x.y", b"", 0),
                                (3, "x.y", b"", 1)))
    [b] = core.receive(ddeliver("audit", (5, "x.y", b"", 0)))
    e1, e2, e3 = a.iter_events()
    e1.ack()
    e3.nak(delay=2.5)
    core.ack(e2)
    next(b.iter_events()).ack()
    msgs = sent(core)
    assert [(m.durable, m.acks, m.naks) for m in msgs] == [
        ("billing", [1, 2], [(3, 2.5)]), ("audit", [5], [])]
    assert sent(core) == []
    with pytest.raises(ValueError):
        e1.nak(delay=-1)


# ------------------------------------------------------------------ control


def test_subscribe_args_and_start_choices():
    args = subscribe_args("billing", "orders.>")
    assert args == {"durable": "billing", "pattern": "orders.>", "queue": None,
                    "start": "new", "seq": 0, "time": 0.0, "ack_wait": 30.0,
                    "max_pending": 1000, "max_age": None, "max_bytes": None}
    assert subscribe_args("d", "a", start=5)["start"] == "seq"
    assert subscribe_args("d", "a", start=5)["seq"] == 5
    assert subscribe_args("d", "a", seq=3)["seq"] == 3
    t = subscribe_args("d", "a", time=1.5e9, max_age=60, max_bytes=1000)
    assert (t["start"], t["time"], t["max_age"], t["max_bytes"]) == ("time", 1.5e9,
                                                                        60.0, 1000)
    assert subscribe_args("d", "a", start="all", queue="q")["start"] == "all"
    for bad in ({"start": "later"}, {"seq": 1, "time": 2.0}, {"start": "all", "seq": 1},
                {"start": "seq"}, {"ack_wait": 0}, {"max_pending": 0}, {"seq": -1}):
        with pytest.raises(ValueError):
            subscribe_args("d", "a", **bad)
    with pytest.raises(ValueError):
        subscribe_args("", "a")


def test_control_replies_answer_their_request():
    core = ready_core()
    req, frames = core.control("ls", {})
    msg = P.decode(frames)
    assert (msg.req_id, msg.op, msg.args) == (req, "ls", {})
    assert core.receive(P.encode_dctlr(req, True, {"durables": []})) == [
        ControlDone(req, {"durables": []}, None)]
    assert core.receive(P.encode_dctlr(req, True, {})) == []  # answered already
    req, _ = core.control("info", {"durable": "x"})
    [done] = core.receive(P.encode_dctlr(req, False, [S.NO_DURABLE, "no durable x"]))
    assert done.ref == req and isinstance(done.error, NodeError)
    assert done.error.code == S.NO_DURABLE and done.error.message == "no durable x"


def test_durable_subscriptions_resume_after_a_new_session():
    core = ready_core()
    args = subscribe_args("billing", "orders.>", start="all")
    req, _ = core.control("subscribe", args)
    core.receive(P.encode_dctlr(req, True, {"durable": "billing", "created": True}))
    core.session_lost()
    actions = core.receive(P.encode_ready(NODE, CID, {}))
    [resume] = [P.decode(a.frames) for a in actions if isinstance(a, Send)]
    assert (resume.op, resume.args) == ("subscribe", args)
    # its answer is nobody's; a refusal is reported
    assert core.receive(P.encode_dctlr(resume.req_id, True, {})) == []
    core.receive(P.encode_error(S.NOT_READY, "who?"))
    actions = core.receive(P.encode_ready(NODE, CID, {}))
    [resume] = [P.decode(a.frames) for a in actions if isinstance(a, Send)]
    [report] = core.receive(P.encode_dctlr(resume.req_id, False,
                                           [S.DURABLE_MISMATCH, "other pattern"]))
    assert isinstance(report, ReportError) and report.error.code == S.DURABLE_MISMATCH


def test_an_unanswered_subscribe_goes_again_with_its_own_id_and_rm_fails():
    core = ready_core()
    req, _ = core.control("subscribe", subscribe_args("d", "a.>"))
    rm, _ = core.control("rm", {"durable": "e"})
    core.session_lost()
    actions = core.receive(P.encode_ready(NODE, CID, {}))
    again = [P.decode(a.frames) for a in actions if isinstance(a, Send)]
    assert [(m.req_id, m.op) for m in again] == [(req, "subscribe")]
    [failed] = [a for a in actions if isinstance(a, ControlDone)]
    assert failed.ref == rm and isinstance(failed.error, ConnectionError)


def test_a_refused_or_abandoned_subscribe_is_not_resumed():
    core = ready_core()
    req, _ = core.control("subscribe", subscribe_args("d", "a.>"))
    core.receive(P.encode_dctlr(req, False, [S.DURABLE_MISMATCH, "no"]))
    req2, _ = core.control("subscribe", subscribe_args("e", "a.>"))
    core.forget_control(req2)
    req3, _ = core.control("subscribe", subscribe_args("f", "a.>"))
    core.receive(P.encode_dctlr(req3, True, {}))
    core.control("unsubscribe", {"durable": "f"})
    assert core.durable.subs == {}
