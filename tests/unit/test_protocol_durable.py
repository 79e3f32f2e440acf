"""Tests for treescale.protocol's durable delivery kinds (25, 28-36): round trips of
every encoder through ``decode``, the bounds the decoders draw, and fuzzing (random
headers, random event rows with the right frame count, mutated valid messages) that
must end in a message or a ProtocolError, never anything else. No sockets."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.protocol_kit import OBJECTS, big, decode_or_protocol_error, expect, fast, mutate
from treescale import protocol as P
from treescale.protocol import (
    MAX_DURABLE_BATCH,
    MAX_ID,
    BadCount,
    FieldError,
    FrameCountError,
    OutOfRange,
    PayloadTooLarge,
    decode,
    packb,
)
from treescale.protocol import durable as D
from treescale.protocol.codec import I63

DurableEvent = P.DurableEvent


def evs(n: int = 2, **kw) -> list[DurableEvent]:
    return [DurableEvent(i + 1, f"id-{i}", f"orders.{i}", f"payload {i}".encode(),
                         {"h": i} if i % 2 else None, **kw) for i in range(n)]


# ----------------------------------------------------------------------- round trips


def test_dpub_round_trip() -> None:
    events = evs(3)
    frames = P.encode_dpub(events)
    assert len(frames) == 4
    msg = decode(frames)
    assert msg == P.DurablePublish(events)
    assert all(e.time == 0.0 and e.publisher == "" for e in msg.events)


def test_payload_frames_travel_untouched() -> None:
    frames = P.encode_dpub(evs(2))
    frames[1] = memoryview(b"zero copy")
    msg = decode(frames)
    assert msg.events[0].payload is frames[1] and msg.events[1].payload is frames[2]


def test_an_empty_dpub_is_one_frame() -> None:
    assert decode(P.encode_dpub([])) == P.DurablePublish([])


def test_dconfirm_round_trip() -> None:
    refused = [(3, "storage_full", "node n1's durable store is full")]
    assert decode(P.encode_dconfirm([1, 2], refused)) == P.DurableConfirm([1, 2], refused)
    assert decode(P.encode_dconfirm([])) == P.DurableConfirm([], [])
    assert decode([packb([P.DCONFIRM])]) == P.DurableConfirm([], [])


def test_dforward_round_trip() -> None:
    events = evs(2, time=1_700_000_000.25, publisher="client-7")
    assert decode(P.encode_dforward(events)) == P.CustodyForward(events)


def test_dforward_time_may_be_an_integer() -> None:
    [e] = evs(1, time=5, publisher="p")
    msg = decode(P.encode_dforward([e]))
    assert msg.events[0].time == 5.0 and isinstance(msg.events[0].time, float)


def test_dfack_round_trip() -> None:
    assert decode(P.encode_dfack([5, 1, I63])) == P.CustodyAck([5, 1, I63])
    assert decode(P.encode_dfack([])) == P.CustodyAck([])


@pytest.mark.parametrize("op", D.OPS)
def test_dctl_round_trip(op: str) -> None:
    args = {"durable": "d1", "pattern": "orders.>", "queue": None, "max_age": 1.5}
    assert decode(P.encode_dctl(9, op, args)) == P.DurableControl(9, op, args)


def test_dctl_without_args() -> None:
    assert decode(P.encode_dctl(0, "ls")) == P.DurableControl(0, "ls", {})
    assert decode([packb([P.DCTL, 1, "ls", None])]) == P.DurableControl(1, "ls", {})


def test_dctlr_round_trip() -> None:
    ok = {"durable": "d1", "created": True, "nodes": 3}
    assert decode(P.encode_dctlr(4, True, ok)) == P.DurableControlReply(4, True, ok)
    err = ["durable_mismatch", "d1 has pattern a.>"]
    assert decode(P.encode_dctlr(5, False, err)) == P.DurableControlReply(5, False, err)


def test_ddeliver_round_trip() -> None:
    events = evs(3, time=12.5, publisher="w")
    for i, e in enumerate(events):
        e.deliveries = i
    assert decode(P.encode_ddeliver("d1", events)) == P.DurableDeliver("d1", events)
    assert decode(P.encode_ddeliver("d1", [])) == P.DurableDeliver("d1", [])


def test_dack_round_trip() -> None:
    msg = decode(P.encode_dack("d1", [1, 2], [(3, 0), (4, 2.5)]))
    assert msg == P.DurableAck("d1", [1, 2], [(3, 0.0), (4, 2.5)])
    assert all(isinstance(d, float) for _, d in msg.naks)
    assert decode(P.encode_dack("d1")) == P.DurableAck("d1", [], [])


def test_probe_round_trips() -> None:
    assert decode(P.encode_probe(77, "n1")) == P.Probe(77, "n1")
    assert decode(P.encode_probed(77, 4)) == P.ProbeAnswer(77, 4)


def test_every_durable_kind_has_a_decoder_and_a_name() -> None:
    assert sorted(D.DECODERS) == [25, 28, 29, 30, 31, 32, 33, 34, 35, 36]
    assert all(P.DECODERS[k] is D.DECODERS[k] for k in D.DECODERS)
    assert not set(D.DECODERS) & P.RESERVED_KINDS
    assert all(k in P.KIND_NAMES for k in D.DECODERS)


# ------------------------------------------------------------------------- bounds


def rows_frames(kind: int, rows: list, payloads: list | None = None) -> list:
    payloads = [b"x"] * len(rows) if payloads is None else payloads
    header = [kind, "d1", rows] if kind == P.DDELIVER else [kind, rows]
    return [packb(header), *payloads]


ROW = {P.DPUB: [1, "id", "a.b", None], P.DFORWARD: [1, "id", "a.b", None, 1.0, "p"],
       P.DDELIVER: [1, "id", "a.b", None, 1.0, "p", 0]}
EVENT_KINDS = sorted(ROW)


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_at_most_max_durable_batch_events(kind: int) -> None:
    row = ROW[kind]
    assert len(decode(rows_frames(kind, [row] * MAX_DURABLE_BATCH)).events) == \
        MAX_DURABLE_BATCH
    expect(BadCount, rows_frames(kind, [row] * (MAX_DURABLE_BATCH + 1)),
           f"at most {MAX_DURABLE_BATCH} events")


@pytest.mark.parametrize("frames", [
    P.encode_dfack(range(MAX_DURABLE_BATCH + 1)),
    P.encode_dconfirm(range(MAX_DURABLE_BATCH + 1)),
    P.encode_dconfirm([], [(1, "c", "m")] * (MAX_DURABLE_BATCH + 1)),
    P.encode_dack("d", range(MAX_DURABLE_BATCH + 1)),
    P.encode_dack("d", [], [(1, 0)] * (MAX_DURABLE_BATCH + 1)),
], ids=["dfack", "confirmed", "refused", "acks", "naks"])
def test_at_most_max_durable_batch_numbers(frames: list) -> None:
    expect(BadCount, frames, f"at most {MAX_DURABLE_BATCH}")


@pytest.mark.parametrize("kind", EVENT_KINDS)
@pytest.mark.parametrize("eid", ["", "x" * (MAX_ID + 1), None, 5, b"id"])
def test_event_ids_are_1_to_max_id_characters(kind: int, eid) -> None:
    row = [ROW[kind][0], eid, *ROW[kind][2:]]
    err = expect(FieldError, rows_frames(kind, [row]), "event id")
    assert type(err) is FieldError


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_an_id_of_max_id_characters_passes(kind: int) -> None:
    row = [ROW[kind][0], "é" * MAX_ID, *ROW[kind][2:]]
    assert decode(rows_frames(kind, [row])).events[0].id == "é" * MAX_ID


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_payload_over_max_payload(kind: int) -> None:
    assert decode(rows_frames(kind, [ROW[kind]], [big(10)]), max_payload=10)
    err = expect(PayloadTooLarge, rows_frames(kind, [ROW[kind]], [big(11)]),
                 "11 bytes", "'a.b'", "limit of 10 bytes", max_payload=10)
    assert err.ref == "a.b"


@pytest.mark.parametrize("kind", EVENT_KINDS)
@pytest.mark.parametrize("rows,payloads", [(1, 0), (1, 2), (2, 1), (0, 1)])
def test_one_payload_frame_per_event(kind: int, rows: int, payloads: int) -> None:
    expect(FrameCountError, rows_frames(kind, [ROW[kind]] * rows, [b"x"] * payloads),
           "one payload frame per event", f"({rows})")


SINGLE = {"dconfirm": P.encode_dconfirm([1]), "dfack": P.encode_dfack([1]),
          "dctl": P.encode_dctl(1, "ls"), "dctlr": P.encode_dctlr(1, True, {}),
          "dack": P.encode_dack("d", [1]), "dprobe": P.encode_probe(1, "n"),
          "dprobed": P.encode_probed(1, 1)}


@pytest.mark.parametrize("kind", sorted(SINGLE))
def test_control_kinds_take_one_frame(kind: str) -> None:
    expect(FrameCountError, SINGLE[kind] + [b"x"], f"{kind} takes 1 frame(s), got 2")


@pytest.mark.parametrize("op", ["", "Subscribe", "drop", "subscribe ", 5, None])
def test_bad_op(op) -> None:
    expect(FieldError, [packb([P.DCTL, 1, op, {}])], "durable op")


@pytest.mark.parametrize("delay", [-0.001, -1, 86400.5, 1e300, math.inf, -math.inf,
                                   math.nan, True, "1", None])
def test_nak_delay_out_of_range(delay) -> None:
    expect(FieldError, [packb([P.DACK, "d", [], [[1, delay]]])],
           "delay of 0..86400 seconds")


@pytest.mark.parametrize("delay", [0, 0.0, 1, 86400, 86400.0])
def test_nak_delay_in_range(delay) -> None:
    assert decode([packb([P.DACK, "d", [], [[1, delay]]])]).naks == [(1, float(delay))]


HEADERS = {P.DPUB: [P.DPUB, [ROW[P.DPUB]]], P.DFORWARD: [P.DFORWARD, [ROW[P.DFORWARD]]],
           P.DDELIVER: [P.DDELIVER, "d", [ROW[P.DDELIVER]]]}


def row_with(kind: int, i: int, value) -> list:
    header = [list(f) if isinstance(f, list) else f for f in HEADERS[kind]]
    header[-1] = [list(ROW[kind])]
    header[-1][0][i] = value
    return [packb(header), b"x"]


@pytest.mark.parametrize("kind", EVENT_KINDS)
@pytest.mark.parametrize("seq", [-1, I63 + 1, 2**64 - 1])
def test_event_seq_out_of_range(kind: int, seq: int) -> None:
    expect(OutOfRange, row_with(kind, 0, seq), "event seq")


@pytest.mark.parametrize("kind", EVENT_KINDS)
@pytest.mark.parametrize("i,value,fragment", [
    (0, "1", "event seq must be an integer"), (0, True, "event seq must be an integer"),
    (2, None, "event name must be a string"), (3, [1], "event headers must be a map"),
])
def test_event_field_errors(kind: int, i: int, value, fragment: str) -> None:
    expect(FieldError, row_with(kind, i, value), fragment)


@pytest.mark.parametrize("kind", [P.DFORWARD, P.DDELIVER])
@pytest.mark.parametrize("i,value,fragment", [
    (4, -1.0, "event time"), (4, 1e11, "event time"), (4, True, "event time"),
    (4, None, "event time"), (4, math.nan, "event time"), (4, "now", "event time"),
    (5, None, "event publisher must be a string"), (5, 3, "event publisher"),
])
def test_forwarded_event_field_errors(kind: int, i: int, value, fragment: str) -> None:
    expect(FieldError, row_with(kind, i, value), fragment)


@pytest.mark.parametrize("value,exc", [(-1, OutOfRange), (I63 + 1, OutOfRange),
                                       (None, FieldError), (1.0, FieldError)])
def test_ddeliver_deliveries(value, exc) -> None:
    expect(exc, row_with(P.DDELIVER, 6, value), "deliveries")


@pytest.mark.parametrize("kind", EVENT_KINDS)
@pytest.mark.parametrize("rows,fragment", [
    ("rows", "events must be a list"), (None, "events must be a list"),
    ([[1, "id", "a"]], "events must be lists of"), (["row"], "events must be lists of"),
])
def test_event_rows_must_be_lists_of_their_width(kind: int, rows, fragment: str) -> None:
    n = len(rows) if isinstance(rows, list) else 0
    expect(FieldError, rows_frames(kind, rows, [b"x"] * n), fragment)


@pytest.mark.parametrize("header,exc,fragment", [
    ([P.DCONFIRM, 5], FieldError, "confirmed seqs must be a list"),
    ([P.DCONFIRM, [-1]], OutOfRange, "confirmed seqs"),
    ([P.DCONFIRM, [], 5], FieldError, "dconfirm refusals must be a list"),
    ([P.DCONFIRM, [], True], FieldError, "dconfirm refusals must be a list"),
    ([P.DCONFIRM, [], "abc"], FieldError, "dconfirm refusals must be a list"),
    ([P.DCONFIRM, [], [[1, "c"]]], FieldError, "refusals must be [seq, code, message]"),
    ([P.DCONFIRM, [], [[1, 2, "m"]]], FieldError, "code must be a string"),
    ([P.DCONFIRM, [], [[-1, "c", "m"]]], OutOfRange, "seq"),
    ([P.DFACK, None], FieldError, "custody acks must be a list"),
    ([P.DFACK, [I63 + 1]], OutOfRange, "custody acks"),
    ([P.DCTL, -1, "ls", {}], OutOfRange, "request id"),
    ([P.DCTL, 1, "ls", [1]], FieldError, "durable args must be a map"),
    ([P.DCTLR, 1, 1, {}], FieldError, "dctlr ok must be true or false"),
    ([P.DCTLR, 1, None, {}], FieldError, "dctlr ok must be true or false"),
    ([P.DCTLR, "1", True, {}], FieldError, "request id must be an integer"),
    ([P.DDELIVER, None, []], FieldError, "durable must be a string"),
    ([P.DACK, None, [], []], FieldError, "durable must be a string"),
    ([P.DACK, "d", 5, []], FieldError, "acks must be a list"),
    ([P.DACK, "d", [], 5], FieldError, "dack naks must be a list"),
    ([P.DACK, "d", [], True], FieldError, "dack naks must be a list"),
    ([P.DACK, "d", [], [[1]]], FieldError, "dack naks must be [seq, delay"),
    ([P.DACK, "d", [], [[-1, 0]]], OutOfRange, "seq"),
    ([P.DPROBE, 1, None], FieldError, "probe origin must be a string"),
    ([P.DPROBE, -1, "n"], OutOfRange, "probe token"),
    ([P.DPROBED, 1, -1], OutOfRange, "probe nodes"),
    ([P.DPROBED, 1, None], FieldError, "probe nodes must be an integer"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_control_field_errors(header: list, exc: type, fragment: str) -> None:
    expect(exc, [packb(header)], fragment)


# --------------------------------------------------------------------------- fuzz


def reencoded(msg) -> list | None:
    """What a node would send on for a decoded message (None: nothing to check)."""
    if isinstance(msg, P.DurablePublish):
        return P.encode_dpub(msg.events)
    if isinstance(msg, P.CustodyForward):
        return P.encode_dforward(msg.events)
    if isinstance(msg, P.DurableDeliver):
        return P.encode_ddeliver(msg.durable, msg.events)
    if isinstance(msg, P.DurableConfirm):
        return P.encode_dconfirm(msg.confirmed, msg.refused)
    if isinstance(msg, P.CustodyAck):
        return P.encode_dfack(msg.seqs)
    if isinstance(msg, P.DurableAck):
        return P.encode_dack(msg.durable, msg.acks, msg.naks)
    if isinstance(msg, P.Probe):
        return P.encode_probe(msg.token, msg.origin)
    if isinstance(msg, P.ProbeAnswer):
        return P.encode_probed(msg.token, msg.nodes)
    return None


def check_durable(msg) -> None:
    """What decode accepted is in range and survives being sent on unchanged."""
    for e in getattr(msg, "events", ()):
        assert 0 <= e.seq <= I63 and 1 <= len(e.id) <= MAX_ID
        assert isinstance(e.name, str) and isinstance(e.publisher, str)
        assert 0 <= e.time < 1e11 and 0 <= e.deliveries <= I63
        assert e.headers is None or isinstance(e.headers, dict)
    for _, delay in getattr(msg, "naks", ()):
        assert 0 <= delay <= 86400
    frames = reencoded(msg)
    if frames is not None:
        assert decode(frames) == msg


def decodes(frames: list, max_payload: int = 1 << 26) -> None:
    msg = decode_or_protocol_error(frames, max_payload=max_payload)
    if msg is not None:
        check_durable(msg)


DURABLE_KINDS = sorted(D.DECODERS)


@fast(300)
@given(st.sampled_from(DURABLE_KINDS), st.lists(OBJECTS, max_size=6),
       st.lists(st.one_of(st.binary(max_size=32), OBJECTS.map(packb)), max_size=4))
def test_fuzz_random_durable_headers(kind: int, fields: list, rest: list) -> None:
    """A durable kind with random fields, then random frames."""
    decodes([packb([kind, *fields]), *rest])


FIELD = st.one_of(OBJECTS, st.sampled_from(
    [0, 1, -1, I63, I63 + 1, 86400, 86400.5, 1e11, "", "x" * MAX_ID, "x" * (MAX_ID + 1),
     None, True, {}, [], math.nan]))
SEQ_LISTS = st.one_of(FIELD, st.lists(FIELD, max_size=4))
PAIRS = st.one_of(FIELD, st.lists(st.one_of(FIELD, st.lists(FIELD, max_size=4)),
                                  max_size=4))


@fast(300)
@given(st.sampled_from(EVENT_KINDS), st.data())
def test_fuzz_event_rows_with_the_right_frame_count(kind: int, data) -> None:
    """Rows of the kind's width (mostly) whose fields are random, one payload frame
    each: decode gets past the frame count into every field check."""
    width = len(ROW[kind])
    row = st.lists(FIELD, min_size=width, max_size=width)
    valid = st.builds(lambda i, v, r: [*r[:i], v, *r[i + 1:]],
                      st.integers(0, width - 1), FIELD, st.just(ROW[kind]))
    rows = data.draw(st.lists(st.one_of(valid, row, st.lists(FIELD, max_size=8)),
                              max_size=4))
    payloads = data.draw(st.lists(st.binary(max_size=12), min_size=len(rows),
                                  max_size=len(rows)))
    durable = data.draw(FIELD)
    header = [kind, durable, rows] if kind == P.DDELIVER else [kind, rows]
    decodes([packb(header), *payloads], max_payload=8)


@fast(300)
@given(st.sampled_from([P.DCONFIRM, P.DFACK, P.DACK]), FIELD, SEQ_LISTS, PAIRS)
def test_fuzz_acks_and_naks(kind: int, durable, seqs, pairs) -> None:
    """Lists of seqs, refusals and naks built from edge values."""
    header = {P.DCONFIRM: [kind, seqs, pairs], P.DFACK: [kind, seqs],
              P.DACK: [kind, durable, seqs, pairs]}[kind]
    decodes([packb(header)])


VALID = [
    P.encode_dpub(evs(2)), P.encode_dconfirm([1, 2], [(3, "storage_full", "full")]),
    P.encode_dforward(evs(2, time=3.5, publisher="c")), P.encode_dfack([4, 5]),
    P.encode_dctl(1, "subscribe", {"durable": "d", "pattern": "a.>", "start": "all"}),
    P.encode_dctlr(1, True, {"durable": "d"}), P.encode_dctlr(2, False, ["no_durable", "m"]),
    P.encode_ddeliver("d", evs(2, time=3.5, publisher="c", deliveries=1)),
    P.encode_dack("d", [1], [(2, 1.5)]), P.encode_probe(9, "n1"), P.encode_probed(9, 2),
]


@fast(300)
@given(st.sampled_from(VALID), st.integers(0, 9), OBJECTS,
       st.sampled_from(["replace", "truncate", "append", "drop-frame", "add-frame"]))
def test_fuzz_mutated_durable_messages(frames: list, i: int, obj, how: str) -> None:
    """One defect in a valid durable message: a typed error or a message."""
    decodes(mutate(frames, i, obj, how))


@pytest.mark.parametrize("frames", VALID, ids=lambda f: P.KIND_NAMES[P.loads(f[0])[0]])
def test_valid_messages_survive_being_sent_on(frames: list) -> None:
    check_durable(decode(frames))
