"""Tests for treescale.protocol's event batches (PUB, DELIVER, FORWARD): round trips,
zero-copy large payloads, every meta check, and fuzzing of decode_events. No sockets."""

from __future__ import annotations

import struct
from array import array

import msgpack
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.unit.protocol_kit import (
    FAST,
    OBJECTS,
    SCALARS,
    big,
    check_view_consistent,
    decode_or_protocol_error,
    decoded_batch,
    ev,
    expect,
    fast,
    le16,
    le32,
    pub,
    unmeta,
)
from treescale import protocol as P
from treescale.protocol import (
    LARGE_PAYLOAD,
    MODE_ALL,
    MODE_ONE,
    Batch,
    BatchView,
    EncodingError,
    FieldError,
    FrameCountError,
    PayloadTooLarge,
    ProtocolError,
    decode,
    decode_events,
    packb,
)

# ------------------------------------------------------------------- batch round trips


def check_batch(frames: list, events: list, max_payload: int = 1 << 26) -> BatchView:
    """Decode a PUB and check names, payloads (in order) and extras against ``events``."""
    view = decoded_batch(frames, max_payload=max_payload)
    assert view.n == len(events)
    assert list(view.name_column()) == [e[0] for e in events]
    assert view.payloads() == [e[1] for e in events]
    assert [view.extra(i) for i in range(view.n)] == [tuple(e[2:]) for e in events]
    assert view.events() == [tuple(e) for e in events]
    return view




def test_batch_one_name_has_nil_index() -> None:
    """A uniform batch carries one name and no index column."""
    events = [ev("metrics.cpu", b"%d" % i) for i in range(5)]
    frames = P.encode_pub(events)
    assert len(frames) == 3
    names, index, *_ = unmeta(frames[1])
    assert names == ["metrics.cpu"] and index is None
    view = check_batch(frames, events)
    assert view.index is None and view.extras is None


def test_batch_many_names_builds_index() -> None:
    """Distinct names are listed once, in first-seen order; the index points into them."""
    names = ["a.b", "c", "a.b", "d.e.f", "c", "c", "a.b"]
    events = [ev(nm, nm.encode() * i) for i, nm in enumerate(names)]
    frames = P.encode_pub(events)
    meta = unmeta(frames[1])
    assert meta[0] == ["a.b", "c", "d.e.f"]
    assert len(meta[1]) == 2 * len(names)
    view = check_batch(frames, events)
    assert list(view.index) == [0, 1, 0, 2, 1, 1, 0]


def test_batch_empty_payloads() -> None:
    events = [ev("x", b""), ev("y", b""), ev("x", b"")]
    frames = P.encode_pub(events)
    assert frames[2] == b""
    check_batch(frames, events)


def test_batch_empty() -> None:
    """An empty batch is valid and views as no events."""
    frames = P.encode_pub([])
    assert len(frames) == 3
    view = check_batch(frames, [])
    assert list(view.name_column()) == [] and view.payloads() == []


def test_batch_extras_round_trip() -> None:
    """target, mode, reply and headers come back per event; plain events get defaults."""
    events = [
        ev("a", b"1"),
        ev("a", b"2", target="group:web"),
        ev("b", b"3", mode=MODE_ONE),
        ev("a", b"4", reply="$inbox.n1.c1.9"),
        ev("b", b"5", headers={"k": "v", "n": [1, 2], "raw": b"\x00"}),
        ev("c", b"6", "tag:prod", MODE_ONE, "$inbox.n1.c1.10", {"x": None}),
    ]
    view = check_batch(P.encode_pub(events), events)
    assert sorted(view.extras) == [1, 2, 3, 4, 5]


def test_batch_mixing_small_and_large_is_zero_copy() -> None:
    """Payloads >= LARGE_PAYLOAD travel as their own frames, as the caller's objects."""
    large_a = big(LARGE_PAYLOAD, 1)
    large_b = bytearray(big(LARGE_PAYLOAD + 12345, 2))
    just_below = big(LARGE_PAYLOAD - 1, 3)
    events = [ev("s", b"small-1"), ev("l", large_a), ev("s", just_below), ev("s", b""),
              ev("l", large_b, mode=MODE_ONE), ev("s", b"small-2")]
    frames = P.encode_pub(events)
    assert len(frames) == 5
    assert frames[3] is large_a and frames[4] is large_b
    assert frames[2] == b"small-1" + just_below + b"small-2"
    assert unmeta(frames[1])[3] == [1, 4]
    view = check_batch(frames, events)
    payloads = view.payloads()
    assert payloads[1] is large_a and payloads[4] is large_b


def test_batch_all_large() -> None:
    events = [ev("l", big(LARGE_PAYLOAD + i, i)) for i in range(3)]
    frames = P.encode_pub(events)
    assert frames[2] == b"" and len(frames) == 6
    check_batch(frames, events)


def test_encode_columns_round_trip_with_extras_and_given_sizes() -> None:
    """The column encoder (used by the outbox) agrees with the event encoder."""
    names = ["a", "b", "a"]
    datas = [b"xx", big(LARGE_PAYLOAD), b"z"]
    extras = {1: ("node:n1", MODE_ONE, None, {"h": 1})}
    meta, body, large = P.encode_columns(names, datas, extras, array("I", map(len, datas)))
    assert large[0] is datas[1] and body == b"xxz"
    view = decoded_batch([packb([P.PUB]), meta, body, *large])
    assert view.events() == [ev("a", b"xx"), ev("b", datas[1], "node:n1", MODE_ONE, None,
                                                   {"h": 1}), ev("a", b"z")]
    assert P.encode_columns([], []) == P.encode_events([])


def test_batch_decodes_from_memoryview_frames() -> None:
    """Frames may be buffers (zmq.Frame.buffer): payloads are slices of the body."""
    events = [ev("a", b"one"), ev("b", b"two"), ev("a", b"")]
    frames = [memoryview(f) for f in P.encode_pub(events)]
    view = decoded_batch(frames)
    assert [bytes(p) for p in view.payloads()] == [b"one", b"two", b""]


def test_view_events_subset() -> None:
    events = [ev("a", b"1"), ev("b", b"2", target="channel:c"), ev("a", b"3")]
    view = decoded_batch(P.encode_pub(events))
    assert view.events([2, 1]) == [events[2], events[1]]


def test_deliver_round_trip_forwards_meta_and_body_untouched() -> None:
    """A node re-sends a PUB's meta/body as a DELIVER; the client sees the same events."""
    large = big(LARGE_PAYLOAD * 2)
    events = [ev("a.b", b"hello"), ev("a.b", large)]
    _, meta, body, *large_frames = P.encode_pub(events)
    frames = P.encode_deliver([["web-1", 2]], meta, body, large_frames)
    batch = decode(frames)
    assert isinstance(batch, Batch)
    assert batch.sources == [["web-1", 2]]
    assert batch.meta_frame is meta and batch.body is body
    assert batch.large[0] is large
    assert batch.meta.events() == events


# ----------------------------------------------------------- property: batch round trip

TOKENS = ["a", "b", "c", "$sys", "orders", "x1"]
NAMES = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4).map(".".join)
SMALL = st.binary(max_size=200)
LARGE = st.builds(big, st.sampled_from([LARGE_PAYLOAD, LARGE_PAYLOAD + 1, LARGE_PAYLOAD + 999]),
                  st.integers(0, 255))
MSGPACK_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                           st.text(max_size=6), st.binary(max_size=6))
EVENTS = st.tuples(
    NAMES,
    st.one_of(SMALL, SMALL, SMALL, LARGE),
    st.one_of(st.none(), st.sampled_from(["node:n1", "group:web", "tag:prod", "channel:c"])),
    st.sampled_from([MODE_ALL, MODE_ONE]),
    st.one_of(st.none(), st.just("$inbox.n1.c1.3")),
    st.one_of(st.none(), st.dictionaries(st.text(max_size=5), MSGPACK_VALUES, max_size=3)),
)


@FAST
@given(st.lists(EVENTS, max_size=12))
def test_property_pub_round_trip(events: list) -> None:
    """Any batch comes back exactly, large payloads as their own (identical) frames."""
    frames = P.encode_pub(events)
    n_large = sum(len(e[1]) >= LARGE_PAYLOAD for e in events)
    assert len(frames) == 3 + n_large
    view = decoded_batch(frames)
    assert view.events() == events
    large_in = [e[1] for e in events if len(e[1]) >= LARGE_PAYLOAD]
    assert all(a is b for a, b in zip(frames[3:], large_in, strict=True))
    out = view.payloads()
    assert all(out[i] is events[i][1] for i in view.large_idx)
    assert len(frames[2]) == sum(len(e[1]) for e in events) - sum(map(len, large_in))


# ---------------------------------------------------------------------- meta errors


def test_meta_not_msgpack() -> None:
    expect(EncodingError, [packb([P.PUB]), b"\xc1", b""], "meta frame is not valid msgpack")


@pytest.mark.parametrize("meta", [{"names": []}, "meta", [[], None, b"", []], []])
def test_meta_wrong_shape(meta) -> None:
    expect(EncodingError, [packb([P.PUB]), packb(meta), b""],
           "meta must be [names, index, sizes, large, extras]")


S2 = le32(2, 3)


@pytest.mark.parametrize("meta,body,large,fragment", [
    ([None, None, S2, [], None], b"abcde", [], "names must be a list of strings"),
    ([["a", 1], le16(0, 1), S2, [], None], b"abcde", [], "names must be a list of strings"),
    ([[b"a"], None, S2, [], None], b"abcde", [], "names must be a list of strings"),
    ([["a"], None, "sizes", [], None], b"", [], "sizes must be uint32 values packed as bin"),
    ([["a"], None, [2, 3], [], None], b"abcde", [], "sizes must be uint32"),
    ([["a"], None, b"\x00\x00\x00", [], None], b"", [], "sizes must be uint32"),
    ([[], None, S2, [], None], b"abcde", [], "names must not be empty"),
    ([["a", "b"], None, S2, [], None], b"abcde", [], "index is required"),
    ([["a", "b"], le16(0), S2, [], None], b"abcde", [], "one uint16 per event (2)"),
    ([["a", "b"], le16(0, 1, 1), S2, [], None], b"abcde", [], "one uint16 per event (2)"),
    ([["a", "b"], [0, 1], S2, [], None], b"abcde", [], "one uint16 per event"),
    ([["a", "b"], le16(0, 2), S2, [], None], b"abcde", [], "points past the names list"),
    ([["a"], None, S2, "0", None], b"abcde", [], "meta large must list event positions"),
    ([["a"], None, S2, [2], None], b"", [b"x"], "meta large must list event positions"),
    ([["a"], None, S2, [-1], None], b"", [b"x"], "meta large must list event positions"),
    ([["a"], None, S2, [True], None], b"", [b"x"], "meta large must list event positions"),
    ([["a"], None, S2, [1], None], b"ab", [b"xy"],
     "large payload frame of event 1 holds 2 bytes, meta says 3"),
    ([["a"], None, S2, [], None], b"abcd", [], "body holds 4 bytes but the meta declares 5"),
    ([["a"], None, S2, [1], None], b"abc", [b"xyz"], "body holds 3 bytes"),
    ([["a"], None, S2, [], []], b"abcde", [], "extras must be a map or nil"),
    ([["a"], None, S2, [], {2: [None, 0, None, None]}], b"abcde", [],
     "extras keys must be event positions"),
    ([["a"], None, S2, [], {"0": [None, 0, None, None]}], b"abcde", [],
     "extras keys must be event positions"),
    ([["a"], None, S2, [], {0: [None, 0, None]}], b"abcde", [],
     "extras values must be [target, mode, reply, headers]"),
    ([["a"], None, S2, [], {0: "node:x"}], b"abcde", [], "extras values must be"),
    ([["a"], None, S2, [], {0: [5, 0, None, None]}], b"abcde", [], "target must be a string"),
    ([["a"], None, S2, [], {1: [None, 2, None, None]}], b"abcde", [],
     "event mode must be 0 (all) or 1 (one), got 2"),
    ([["a"], None, S2, [], {1: [None, None, None, None]}], b"abcde", [], "event mode"),
    ([["a"], None, S2, [], {0: [None, 0, 9, None]}], b"abcde", [], "reply subject must be"),
    ([["a"], None, S2, [], {0: [None, 0, None, [1]]}], b"abcde", [], "headers must be a map"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_meta_field_errors(meta: list, body: bytes, large: list, fragment: str) -> None:
    expect(FieldError, pub(meta, body, *large), fragment)


def test_large_frame_count_mismatch() -> None:
    expect(FrameCountError, pub([["a"], None, S2, [1], None], b"ab"),
           "declares 1 large payload frame(s), got 0")
    expect(FrameCountError, pub([["a"], None, S2, [], None], b"abcde", b"extra"),
           "declares 0 large payload frame(s), got 1")


@pytest.mark.parametrize("large_idx", [[1, 0], [0, 0]], ids=["unsorted", "duplicate"])
def test_large_positions_must_be_strictly_increasing(large_idx: list) -> None:
    """The large frames travel in event order (docs/PROTOCOL.md), and payloads() hands
    them out in that order; a meta listing them in another order or twice must be
    refused, else the view returns payloads whose sizes disagree with the checked
    sizes (here event 0 would get 5 bytes for a declared 3, or event 1 would get b"").
    """
    sizes = le32(3, 5) if large_idx == [1, 0] else le32(3, 3)
    large = [b"B" * 5, b"A" * 3] if large_idx == [1, 0] else [b"A" * 3, b"A" * 3]
    expect(FieldError, pub([["a"], None, sizes, large_idx, None], b"", *large),
           "meta large positions must be strictly increasing")


@pytest.mark.parametrize("events,limit,name,size", [
    ([ev("big.one", b"x" * 11)], 10, "big.one", 11),
    ([ev("a", b"ok"), ev("b.huge", b"x" * 50), ev("a", b"x" * 20)], 30, "b.huge", 50),
    ([ev("a", b""), ev("large.evt", big(LARGE_PAYLOAD))], LARGE_PAYLOAD - 1, "large.evt",
     LARGE_PAYLOAD),
])
def test_batch_payload_too_large(events: list, limit: int, name: str, size: int) -> None:
    """The error names the limit and the offending event (and puts it in ``ref``)."""
    err = expect(PayloadTooLarge, P.encode_pub(events), f"{size} bytes", repr(name),
                 f"limit of {limit} bytes", max_payload=limit)
    assert err.ref == name


def test_payload_at_limit_is_accepted() -> None:
    check_batch(P.encode_pub([ev("a", b"x" * 10)]), [ev("a", b"x" * 10)], max_payload=10)



# ------------------------------------------------------------------------------- fuzz

VALID_EXTRA = st.tuples(st.one_of(st.none(), st.sampled_from(["group:web", "tag:x"])),
                        st.sampled_from([0, 1]), st.one_of(st.none(), st.just("$inbox.n.c.1")),
                        st.one_of(st.none(), st.dictionaries(st.text(max_size=2), SCALARS,
                                                             max_size=2))).map(list)
BAD_EXTRA = st.one_of(
    st.tuples(SCALARS, st.one_of(st.sampled_from([0, 1, 2]), SCALARS), SCALARS,
              SCALARS).map(list),
    OBJECTS)


@st.composite
def batch_parts(draw) -> tuple[list, bytes, list]:
    """(meta, body, large) that are valid most of the time, else carry a random defect
    in one or more places, so the fuzzer exercises every check, not just the first."""

    def defect() -> bool:
        return draw(st.integers(0, 11)) == 0

    k = draw(st.integers(0, 5))
    names = draw(st.lists(st.sampled_from(["a", "b", "c.d"]), min_size=1, max_size=3,
                          unique=True))
    if defect():
        names = draw(st.one_of(st.just([]), OBJECTS))
    if isinstance(names, list) and len(names) == 1 and draw(st.booleans()):
        index = None
    else:
        n_names = len(names) if isinstance(names, list) else 1
        index = le16(*draw(st.lists(st.integers(0, max(n_names - 1, 0)), min_size=k,
                                    max_size=k)))
    if defect():
        index = draw(st.one_of(st.none(), st.binary(max_size=8), OBJECTS,
                               st.lists(st.integers(0, 9), min_size=k, max_size=k).map(
                                   lambda ix: le16(*ix))))
    sizes = draw(st.lists(st.integers(0, 6), min_size=k, max_size=k))
    sizes_raw = draw(OBJECTS) if defect() else le32(*sizes)
    large_idx = draw(st.sets(st.integers(0, k - 1)).map(sorted) if k else st.just([]))
    if defect():
        large_idx = draw(st.one_of(st.lists(st.integers(-1, k), max_size=3), st.none(),
                                   OBJECTS))
    positions = [i for i in (large_idx if isinstance(large_idx, list) else ())
                 if i.__class__ is int and 0 <= i < k]
    large = [bytes(sizes[i]) for i in positions]
    small = max(sum(sizes) - sum(sizes[i] for i in positions), 0)
    body = draw(st.binary(min_size=small, max_size=small))
    if defect():
        body = draw(st.binary(max_size=12))
    if defect():
        large = draw(st.lists(st.binary(max_size=6), max_size=3))
    extras = draw(st.one_of(st.none(), st.dictionaries(st.integers(0, max(k - 1, 0)),
                                                       VALID_EXTRA, max_size=3)))
    if defect():
        extras = draw(st.one_of(OBJECTS, st.dictionaries(st.integers(-1, k), BAD_EXTRA,
                                                         min_size=1, max_size=2)))
    return [names, index, sizes_raw, large_idx, extras], body, large


@fast(150)
@given(batch_parts(), st.integers(0, 8))
def test_fuzz_decode_events(parts: tuple, max_payload: int) -> None:
    """decode_events returns a consistent view or raises ProtocolError, nothing else."""
    meta, body, large = parts
    try:
        view = decode_events(packb(meta), body, large, max_payload)
    except ProtocolError as exc:
        event(f"error {exc.code}")
        return
    event("decoded")
    check_view_consistent(view)
    assert max(view.sizes, default=0) <= max_payload


@fast(100)
@given(st.one_of(OBJECTS.map(packb), st.binary(max_size=32)), st.binary(max_size=24),
       st.lists(st.binary(max_size=8), max_size=3))
def test_fuzz_decode_events_random_meta(meta: bytes, body: bytes, large: list) -> None:
    """Meta frames that are arbitrary msgpack objects or bytes."""
    try:
        view = decode_events(meta, body, large, 1 << 20)
    except ProtocolError:
        return
    check_view_consistent(view)


@fast(100)
@given(st.sampled_from([P.PUB, P.DELIVER]), st.lists(OBJECTS, max_size=2), batch_parts())
def test_fuzz_batch_messages(kind: int, fields: list, parts: tuple) -> None:
    meta, body, large = parts
    decode_or_protocol_error([packb([kind, *fields]), packb(meta), body, *large])



# ----------------------------------------------------- what docs/PROTOCOL.md promises


def test_extras_keys_are_integers_that_strict_msgpack_refuses() -> None:
    """A reader must unpack the meta with strict_map_key=False (as the doc's example
    does): msgpack's default refuses the integer keys of ``extras``."""
    _, meta, _ = P.encode_pub([ev("a", b"1"), ev("a", b"2", headers={"k": "v"})])
    with pytest.raises(ValueError):
        msgpack.unpackb(meta)
    assert msgpack.unpackb(meta, strict_map_key=False)[4] == {1: [None, 0, None, {"k": "v"}]}


def test_sizes_count_large_payloads_too() -> None:
    """One size per event, large or not; the body holds only the small ones."""
    events = [ev("a", b"abc"), ev("a", big(LARGE_PAYLOAD)), ev("a", b"de")]
    _, meta, body, large = P.encode_pub(events)
    names, index, sizes, large_idx, extras = unmeta(meta)
    assert struct.unpack("<3I", sizes) == (3, LARGE_PAYLOAD, 2)
    assert large_idx == [1] and body == b"abcde" and len(large) == LARGE_PAYLOAD


def test_the_large_payload_rule_binds_senders_not_receivers() -> None:
    """A big payload in the body, or a small one in its own frame, is accepted: a
    receiver reads ``large``, never guesses from sizes. Re-encoding applies the rule."""
    huge = big(LARGE_PAYLOAD + 5)
    frames = pub([["a"], None, le32(len(huge), 2), [1], None], huge, b"xy")
    view = decoded_batch(frames)
    assert [bytes(p) for p in view.payloads()] == [huge, b"xy"]
    meta, body, large = P.encode_events(view.events())
    assert unmeta(meta)[3] == [0] and body == b"xy" and bytes(large[0]) == huge


@FAST
@given(NAMES, st.one_of(SMALL, LARGE),
       st.one_of(st.none(), st.sampled_from(["node:n1", "group:web"])),
       st.sampled_from([MODE_ALL, MODE_ONE]), st.one_of(st.none(), st.just("$inbox.n.c.1")),
       st.one_of(st.none(), st.dictionaries(st.text(max_size=3), MSGPACK_VALUES, max_size=2)))
def test_property_encode_single_agrees_with_the_batch_decoder(name, data, target, mode,
                                                              reply, headers) -> None:
    """The one-event encoder (requests, replies, system events) makes the same batch."""
    meta, body, *large = P.encode_single(name, data, target, mode, reply, headers)
    view = decode_events(meta, body, large, 1 << 26)
    assert view.events() == [(name, data, target, mode, reply, headers)]
    assert (len(large) == 1) == (len(data) >= LARGE_PAYLOAD)
