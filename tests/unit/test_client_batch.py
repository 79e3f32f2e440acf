"""The batch API's pure parts: ``pack_many`` (publish_many's encoding) and the
``EventBatch`` column view over real encoded DELIVER messages, checked against what
``decode_batch`` (the per-event path) makes of the same frames. No sockets."""

from __future__ import annotations

from itertools import groupby

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treescale import client_io as C
from treescale import protocol as P
from treescale.client_batch import EventBatch, batch_of
from treescale.client_core import ClientCore, Deliver, DeliverDurable, Event, decode_batch
from treescale.client_io import ENCODED, Outbox, pack_many, pack_outbox
from treescale.routing import TargetError

BIG = P.LARGE_PAYLOAD


def wire(frame) -> bytes:
    """A frame as the receiving socket hands it over (bytes)."""
    return frame if isinstance(frame, bytes) else bytes(frame.buffer)


def delivered(messages: list, runs: list | None = None) -> list[list]:
    """The DELIVERs a node would make of PUB messages: same meta, body and large
    frames, a sources header (one publisher unless ``runs`` is given)."""
    out = []
    for msg in messages:
        n = P.decode_events(msg[1], msg[2], msg[3:], 1 << 40).n
        header = P.encode_deliver_header(runs or [["pub", n]])
        out.append([header, *map(wire, msg[1:])])
    return out


def core(limits: dict | None = None) -> ClientCore:
    c = ClientCore(None, "t")
    c.limits = dict(limits or {})
    return c


def packed(*args, **kw) -> list[list]:
    return [msg for msg, _ in pack_many(core(), *args, **kw)]


def same_events(batch: EventBatch, frames: list) -> None:
    """Every column of ``batch`` says what the per-event decoding says."""
    events = decode_batch(frames)
    assert len(batch) == len(events)
    assert list(batch) == events
    assert [batch.name(i) for i in range(len(batch))] == [e.name for e in events]
    assert batch.names == list(dict.fromkeys(e.name for e in events))
    assert [bytes(p) for p in batch.payloads] == [bytes(e.data) for e in events]
    assert list(batch.sizes) == [len(e.data) for e in events]
    assert batch.nbytes == sum(len(e.data) for e in events)
    assert [batch.source(i) for i in range(len(batch))] == [e.source for e in events]


# ------------------------------------------------------------------ the column view

names = st.sampled_from(["a", "a.b", "c.d.e"])
payloads = st.one_of(st.binary(max_size=40), st.sampled_from([b"", b"x" * 100]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(names, payloads), max_size=50),
       st.lists(st.tuples(st.sampled_from(["p1", "p2", "client-9"]), st.integers(1, 20)),
                min_size=1, max_size=4))
def test_columns_match_the_per_event_decoding(events, runs):
    datas = [d for _, d in events]
    msgs = packed([n for n, _ in events], datas)
    per_event = [s for s, c in runs for _ in range(c)][:len(events)]
    per_event += [runs[-1][0]] * (len(events) - len(per_event))
    wire_runs = [[s, len(list(g))] for s, g in groupby(per_event)]
    for frames in delivered(msgs, wire_runs):
        same_events(EventBatch.of_frames(frames), frames)


def test_one_name_batch_and_its_sources():
    frames = delivered(packed("orders.created", [b"1", b"22", b"333"]),
                       [["shop", 2], ["client-7", 1]])[0]
    batch = EventBatch.of_frames(frames)
    assert len(batch) == 3 and batch.names == ["orders.created"]
    assert batch.name(2) == batch.name(-1) == "orders.created"
    assert batch.payloads == [b"1", b"22", b"333"]
    assert batch.sources == [("shop", 2), ("client-7", 1)]
    assert [batch.source(i) for i in range(3)] == ["shop", "shop", "client-7"]
    with pytest.raises(IndexError):
        batch.name(3)
    with pytest.raises(IndexError):
        batch.source(-4)


def test_large_payloads_are_their_own_frames_and_in_order():
    huge = b"L" * (BIG + 5)
    msgs = packed(["x", "y", "x"], [b"small", huge, b""])
    assert len(msgs) == 1 and len(msgs[0]) == 4  # header, meta, body, one large frame
    frames = delivered(msgs)[0]
    batch = EventBatch.of_frames(frames)
    same_events(batch, frames)
    assert [bytes(p) for p in batch.payloads] == [b"small", huge, b""]


def test_equal_sizes_take_the_one_call_cut_and_agree_with_slicing():
    datas = [b"%07d" % i for i in range(300)]
    frames = delivered(packed("eq", datas))[0]
    batch = EventBatch.of_frames(frames)
    assert batch.payloads == datas  # bytes, cut in one call
    mixed = delivered(packed("eq", [*datas, b"tail"]))[0]
    assert [bytes(p) for p in EventBatch.of_frames(mixed).payloads] == [*datas, b"tail"]


def test_empty_batch():
    meta, body, _ = P.encode_columns([], [])
    frames = [P.encode_deliver_header([]), meta, body]
    batch = EventBatch.of_frames(frames)
    assert len(batch) == 0 and list(batch) == [] and batch.payloads == []
    assert batch.names == [] and batch.sources == [] and batch.nbytes == 0
    with pytest.raises(IndexError):
        batch.name(0)


def test_events_with_targets_and_headers_iterate_as_events():
    msgs = packed("deploy", [b"v1", b"v2"], target="group:web", headers={"h": "1"})
    frames = delivered(msgs)[0]
    batch = EventBatch.of_frames(frames)
    same_events(batch, frames)
    assert [(e.target, dict(e.headers)) for e in batch] == [("group:web", {"h": "1"})] * 2


def test_inbox_items_the_client_took_apart_are_batches_too():
    evs = (Event("a", b"1", None, "s1"), Event("b", b"22", None, "s1"),
           Event("a", b"", None, "s2"))
    for item in (Deliver(None, evs), DeliverDurable(evs)):
        batch = batch_of(item)
        assert list(batch) == list(evs) and len(batch) == 3
        assert batch.names == ["a", "b"] and batch.name(1) == "b"
        assert batch.payloads == [b"1", b"22", b""] and list(batch.sizes) == [1, 2, 0]
        assert batch.sources == [("s1", 2), ("s2", 1)] and batch.source(2) == "s2"
    frames = delivered(packed("a", [b"q"]))[0]
    assert list(batch_of(Deliver(frames))) == decode_batch(frames)


# ------------------------------------------------------------------ pack_many


def test_pack_many_cuts_like_the_outbox():
    datas = [b"%06d" % i for i in range(C.BATCH_EVENTS * 2 + 3)]
    counted = list(pack_many(core(), "n", datas))
    assert [n for _, n in counted] == [C.BATCH_EVENTS, C.BATCH_EVENTS, 3]
    got = [bytes(e.data) for frames in delivered([m for m, _ in counted])
           for e in decode_batch(frames)]
    assert got == datas
    by_bytes = list(pack_many(core(), "n", [b"b" * 60_000] * 40))  # ~1 MiB per batch
    assert sum(n for _, n in by_bytes) == 40 and len(by_bytes) > 1
    assert all(len(m[2]) <= C.BATCH_BYTES for m, _ in by_bytes)


def test_pack_many_checks_what_publish_checks():
    assert list(pack_many(core(), "n", [])) == []
    assert [bytes(p) for p in EventBatch.of_frames(
        delivered(packed("n", ["text", bytearray(b"ba"), memoryview(b"mv")]))[0]
    ).payloads] == [b"text", b"ba", b"mv"]
    with pytest.raises(TypeError):
        packed("n", [b"ok", 42])
    with pytest.raises(TypeError):
        packed(["n", 7], [b"a", b"b"])
    with pytest.raises(TypeError, match="not one payload"):
        packed("n", b"one payload")
    with pytest.raises(ValueError, match="2 names for 3 payloads"):
        packed(["a", "b"], [b"1", b"2", b"3"])
    with pytest.raises(TargetError):
        packed("n", [b"1"], target="nowhere:x")
    with pytest.raises(ValueError, match="mode"):
        packed("n", [b"1"], mode="some")
    with pytest.raises(ValueError, match="exceeds the node's limit"):
        list(pack_many(core({"max_payload": BIG + 1}), "n", [b"1", b"z" * (BIG + 2)]))


def test_encoded_batches_count_for_back_pressure_and_keep_their_place():
    box = Outbox()
    box.add("first", b"1")
    for msg, n in pack_many(core(), "many", [b"2", b"3"]):
        box.add_encoded(msg, n)
    box.add("last", b"4")
    assert len(box) == 3 + 2  # three entries, two events inside the encoded batch
    names, datas = box.take()
    assert ENCODED in names and len(box) == 0
    got = [(e.name, bytes(e.data)) for frames in delivered(list(pack_outbox(names, datas)))
           for e in decode_batch(frames)]
    assert got == [("first", b"1"), ("many", b"2"), ("many", b"3"), ("last", b"4")]
