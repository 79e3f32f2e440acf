"""Tests for treescale.protocol: round trips, typed decode errors and fuzzing.

The module is pure (frames in, frames out), so everything here runs in process on plain
bytes; no sockets.
"""

from __future__ import annotations

import struct
from array import array

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from treescale import protocol as P
from treescale.protocol import (
    LARGE_PAYLOAD,
    MODE_ALL,
    MODE_ONE,
    PROTOCOL_VERSION,
    Batch,
    BatchView,
    Bye,
    EncodingError,
    Error,
    FieldError,
    FrameCountError,
    Hello,
    PayloadTooLarge,
    Ping,
    Pong,
    ProtocolError,
    Ready,
    Reply,
    Request,
    Subscribe,
    UnknownKind,
    Unsubscribe,
    VersionMismatch,
    decode,
    decode_events,
    packb,
)

# Deterministic and quick: a fixed seed per test, no example database, no deadline, and
# no "explain" phase (it re-runs a failing case many times and can take minutes).
FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fast(examples: int) -> settings:
    return settings(FAST, max_examples=examples)

MESSAGE_TYPES = (Hello, Ready, Subscribe, Unsubscribe, Batch, Request, Reply, Error, Ping,
                 Pong, Bye)


def big(n: int, fill: int = 0x5A) -> bytes:
    """A payload of ``n`` bytes (cheap to build, unlike hypothesis binaries)."""
    return bytes([fill]) * n


def le32(*sizes: int) -> bytes:
    return struct.pack(f"<{len(sizes)}I", *sizes)


def le16(*idx: int) -> bytes:
    return struct.pack(f"<{len(idx)}H", *idx)


def unmeta(frame: bytes) -> list:
    """A meta frame as plain msgpack (extras has int keys)."""
    return msgpack.unpackb(frame, strict_map_key=False)


def pub(meta: list, body: bytes = b"", *large) -> list:
    """A PUB message with a hand-built meta (for malformed batches)."""
    return [packb([P.PUB]), packb(meta), body, *large]


def decoded_batch(frames: list, **kw) -> BatchView:
    batch = decode(frames, **kw)
    assert isinstance(batch, Batch)
    return batch.meta


# ----------------------------------------------------------------- control round trips


def test_hello_round_trip_with_everything() -> None:
    """Every hello field survives the trip, subscriptions included (reconnect path)."""
    frames = P.encode_hello("web-1", token="s3cret", groups=["web", "eu"], tags=["prod"],
                            channels=["logs", "metrics"],
                            subs=[("orders.*", None), ("jobs.>", "workers")],
                            options={"batch": 64, "compress": False})
    assert len(frames) == 1
    assert decode(frames) == Hello(
        version=PROTOCOL_VERSION, token="s3cret", name="web-1", groups=("web", "eu"),
        tags=("prod",), channels=("logs", "metrics"),
        subs=(("orders.*", None), ("jobs.>", "workers")),
        options={"batch": 64, "compress": False})


def test_hello_round_trip_minimal() -> None:
    """Defaults come back as empty tuples/dict and no token, not as None."""
    assert decode(P.encode_hello("x")) == Hello(PROTOCOL_VERSION, None, "x")


def test_hello_nil_name_and_lists_are_accepted_as_empty() -> None:
    """A minimal raw client may send nil for the optional parts."""
    msg = decode([packb([P.HELLO, PROTOCOL_VERSION])])
    assert msg == Hello(PROTOCOL_VERSION, None, "")


def test_ready_round_trip() -> None:
    limits = {"max_payload": 1 << 26, "large_payload": LARGE_PAYLOAD, "client_timeout": 6.5}
    assert decode(P.encode_ready("n1", "c-17", limits)) == Ready("n1", "c-17", limits)


@pytest.mark.parametrize("queue", [None, "workers"])
def test_sub_unsub_round_trip(queue: str | None) -> None:
    assert decode(P.encode_sub("a.*.>", queue)) == Subscribe("a.*.>", queue)
    assert decode(P.encode_unsub("a.*.>", queue)) == Unsubscribe("a.*.>", queue)


@pytest.mark.parametrize("ref", [None, 42, "orders.new", [1, "x"]])
def test_error_round_trip(ref) -> None:
    assert decode(P.encode_error("too_large", "payload too big", ref)) == Error(
        "too_large", "payload too big", ref)


@pytest.mark.parametrize("token", [0, 1, 2**40])
def test_ping_pong_round_trip(token: int) -> None:
    assert decode(P.encode_ping(token)) == Ping(token)
    assert decode(P.encode_pong(token)) == Pong(token)


def test_ping_pong_default_token() -> None:
    assert decode(P.encode_ping()) == Ping(0)
    assert decode([packb([P.PONG])]) == Pong(0)


def test_bye_round_trip() -> None:
    assert decode(P.encode_bye()) == Bye()


@pytest.mark.parametrize("payload", [b"", b"question", big(LARGE_PAYLOAD + 1)])
def test_request_round_trip(payload: bytes) -> None:
    """The payload frame is handed through as the very same object."""
    frames = P.encode_request(7, "svc.echo", payload, target="group:web", mode=MODE_ALL,
                              headers={"trace": "abc", "n": 3})
    msg = decode(frames)
    assert msg == Request(7, "svc.echo", "group:web", MODE_ALL, {"trace": "abc", "n": 3},
                          payload)
    assert msg.payload is payload


def test_request_defaults() -> None:
    msg = decode(P.encode_request(1, "svc", b"x"))
    assert (msg.target, msg.mode, msg.headers) == (None, MODE_ONE, None)


def test_reply_round_trip() -> None:
    payload = b"answer"
    msg = decode(P.encode_reply("$inbox.n1.c1.7", payload, {"status": 200}, source="w-2"))
    assert msg == Reply("$inbox.n1.c1.7", {"status": 200}, payload, "w-2")
    assert msg.payload is payload
    assert decode(P.encode_reply("$inbox.n1.c1.8", b"")).source == ""


def test_interest_and_resync_round_trip() -> None:
    ops = [(True, "orders.>", None), (False, "a.b", "w")]
    assert decode(P.encode_interest(7, ops)) == P.Interest(7, ops, False)
    snap = [(True, "orders.>", None), (True, "x", "q")]
    assert decode(P.encode_interest(8, snap, full=True)) == P.Interest(8, snap, True)
    assert decode(P.encode_resync(41)) == P.Resync(41)


def test_an_interest_snapshot_holds_only_additions() -> None:
    expect(FieldError, P.encode_interest(1, [(False, "a", None)], full=True),
           "an interest snapshot holds only additions")
    expect(FieldError, [packb([P.INTEREST, 1, [], "yes"])],
           "interest snapshot flag must be true or false")


def test_unknown_trailing_header_fields_are_ignored() -> None:
    """Newer peers may append header fields; older decoders must not choke."""
    assert decode([packb([P.SUB, "a", None, "future", 1])]) == Subscribe("a", None)
    assert decode([packb([P.PING, 5, {"new": True}])]) == Ping(5)


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


def ev(name: str, data: bytes, target=None, mode=MODE_ALL, reply=None, headers=None) -> tuple:
    return (name, data, target, mode, reply, headers)


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


# ---------------------------------------------------------------------- decode errors


def expect(exc_type: type, frames: list, *fragments: str, max_payload: int = 1 << 26):
    """Decode must raise exactly ``exc_type`` whose message names every fragment."""
    with pytest.raises(ProtocolError) as info:
        decode(frames, max_payload=max_payload)
    err = info.value
    assert type(err) is exc_type, f"{type(err).__name__}: {err}"
    assert err.code == exc_type.code
    for frag in fragments:
        assert frag in str(err), f"{frag!r} not in {str(err)!r}"
    return err


def test_error_codes_are_stable() -> None:
    """Codes go on the wire in ERROR messages: they must not drift."""
    assert {c.__name__: c.code for c in (ProtocolError, FrameCountError, EncodingError,
                                         UnknownKind, VersionMismatch, FieldError,
                                         PayloadTooLarge)} == {
        "ProtocolError": "bad_message", "FrameCountError": "bad_frame_count",
        "EncodingError": "bad_encoding", "UnknownKind": "unknown_kind",
        "VersionMismatch": "version", "FieldError": "bad_field",
        "PayloadTooLarge": "too_large"}


def test_empty_message() -> None:
    expect(FrameCountError, [], "empty message")


@pytest.mark.parametrize("frame", [b"", b"\xc1", b"\x92\x01", b"\x91\x05\x00",
                                   b"\xa2\xff\xfe", b"\xdd\xff\xff\xff\xff",
                                   b"\x91\x81\x90\x00", b"\x92\x05\xc7\x01\xff\x00"],
                         ids=["empty", "reserved-byte", "truncated", "extra-data",
                              "bad-utf8", "huge-array", "unhashable-map-key",
                              "bad-timestamp"])
def test_header_not_msgpack(frame: bytes) -> None:
    expect(EncodingError, [frame], "header frame is not valid msgpack")


@pytest.mark.parametrize("header", [{"kind": 1}, 5, "hello", None, []],
                         ids=["map", "int", "str", "nil", "empty-array"])
def test_header_not_a_non_empty_array(header) -> None:
    expect(EncodingError, [packb(header)], "non-empty msgpack array")


@pytest.mark.parametrize("kind", ["pub", 5.0, None, True, [5]])
def test_header_kind_not_int(kind) -> None:
    expect(EncodingError, [packb([kind])], "message kind")


@pytest.mark.parametrize("kind", [0, 13, 25, 28, 39, 99, -1, 2**64 - 1])
def test_unknown_kind(kind: int) -> None:
    expect(UnknownKind, [packb([kind])], f"unknown message kind {kind}")


def test_version_mismatch_names_both_versions() -> None:
    err = expect(VersionMismatch, P.encode_hello("x", version=2), "version 2",
                 f"speaks {PROTOCOL_VERSION}")
    assert err.code == "version"


@pytest.mark.parametrize("version", [None, "1", True, 1.0])
def test_hello_version_must_be_int(version) -> None:
    expect(FieldError, [packb([P.HELLO, version, None, "x"])], "protocol version",
           "integer")


SINGLE = {"hello": P.encode_hello("x"), "ready": P.encode_ready("n", "c", {}),
          "sub": P.encode_sub("a"), "unsub": P.encode_unsub("a"),
          "error": P.encode_error("c", "m"), "ping": P.encode_ping(),
          "pong": P.encode_pong(), "bye": P.encode_bye(),
          "resync": P.encode_resync(1)}


@pytest.mark.parametrize("kind", sorted(SINGLE))
@pytest.mark.parametrize("extra", [1, 2])
def test_single_frame_kinds_reject_extra_frames(kind: str, extra: int) -> None:
    expect(FrameCountError, SINGLE[kind] + [b"x"] * extra,
           f"{kind} takes 1 frame(s), got {1 + extra}")


@pytest.mark.parametrize("kind,frames", [
    ("request", [packb([P.REQUEST, 1, "a", None, 1, None])]),
    ("request", P.encode_request(1, "a", b"") + [b""]),
    ("reply", [packb([P.REPLY, "r", None])]),
    ("reply", P.encode_reply("r", b"") + [b""]),
])
def test_two_frame_kinds_need_exactly_two(kind: str, frames: list) -> None:
    expect(FrameCountError, frames, f"{kind} takes 2 frame(s), got {len(frames)}")


@pytest.mark.parametrize("kind,name", [(P.PUB, "pub"), (P.DELIVER, "deliver")])
@pytest.mark.parametrize("count", [1, 2])
def test_batch_kinds_need_header_meta_body(kind: int, name: str, count: int) -> None:
    frames = [packb([kind, []]), *P.encode_pub([])[1:]][:count]
    expect(FrameCountError, frames, f"{name} takes a header, a meta and a body",
           f"got {count} frame(s)")


H = P.HELLO
V = PROTOCOL_VERSION


@pytest.mark.parametrize("header,fragment", [
    ([H, V, 5, "x"], "token must be a string, got int"),
    ([H, V, b"tok", "x"], "token must be a string, got bytes"),
    ([H, V, None, 7], "client name must be a string"),
    ([H, V, None, "x", ["web", 1]], "groups must be a list of strings"),
    ([H, V, None, "x", "web"], "groups must be a list of strings"),
    ([H, V, None, "x", [], [b"t"]], "tags must be a list of strings"),
    ([H, V, None, "x", [], [], {"c": 1}], "channels must be a list of strings"),
    ([H, V, None, "x", [], [], [], "a.*"], "subscriptions must be a list of [pattern, queue]"),
    ([H, V, None, "x", [], [], [], [["a.*"]]], "subscriptions must be a list"),
    ([H, V, None, "x", [], [], [], ["a.*"]], "subscriptions must be a list"),
    ([H, V, None, "x", [], [], [], [[1, None]]], "pattern must be a string, got int"),
    ([H, V, None, "x", [], [], [], [["a", 2]]], "queue must be a string, got int"),
    ([H, V, None, "x", [], [], [], [], [1]], "options must be a map, got list"),
    ([P.READY, None, "c", {}], "node must be a string, got NoneType"),
    ([P.READY, "n", 5, {}], "client id must be a string"),
    ([P.READY, "n", "c", "limits"], "limits must be a map, got str"),
    ([P.SUB], "pattern must be a string, got NoneType"),
    ([P.SUB, b"a.b"], "pattern must be a string, got bytes"),
    ([P.SUB, "a", 1], "queue must be a string, got int"),
    ([P.UNSUB, ["a"]], "pattern must be a string, got list"),
    ([P.UNSUB, "a", False], "queue must be a string, got bool"),
    ([P.ERROR, 1, "m"], "error code must be a string"),
    ([P.ERROR, "c", None], "error message must be a string"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_single_frame_field_errors(header: list, fragment: str) -> None:
    expect(FieldError, [packb(header)], fragment)


R = P.REQUEST


@pytest.mark.parametrize("header,fragment", [
    ([R, "7", "svc", None, 1, None], "request id must be an integer, got str"),
    ([R, True, "svc", None, 1, None], "request id must be an integer, got bool"),
    ([R, 7, None, None, 1, None], "request name must be a string"),
    ([R, 7, "svc", 5, 1, None], "target must be a string, got int"),
    ([R, 7, "svc", None, 2, None], "request mode must be 0 (all) or 1 (one), got 2"),
    ([R, 7, "svc", None, None, None], "request mode must be 0 (all) or 1 (one), got None"),
    ([R, 7, "svc", None, "one", None], "got 'one'"),
    ([R, 7, "svc", None, 1, [1]], "headers must be a map, got list"),
    ([P.REPLY, None, None], "reply subject must be a string"),
    ([P.REPLY, "r", "h"], "headers must be a map, got str"),
    ([P.REPLY, "r", None, 5], "source must be a string, got int"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_request_reply_field_errors(header: list, fragment: str) -> None:
    expect(FieldError, [packb(header), b"payload"], fragment)


@pytest.mark.parametrize("header", [[P.DELIVER], [P.DELIVER, "web-1"], [P.DELIVER, {}]])
def test_deliver_sources_must_be_a_list(header: list) -> None:
    expect(FieldError, [packb(header), *P.encode_pub([])[1:]], "deliver sources")


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


def test_request_reply_payload_too_large() -> None:
    err = expect(PayloadTooLarge, P.encode_request(9, "svc", b"x" * 11), "request payload",
                 "11 bytes", "limit of 10 bytes", max_payload=10)
    assert err.ref == 9
    err = expect(PayloadTooLarge, P.encode_reply("$inbox.n.c.9", b"x" * 11), "reply payload",
                 "limit of 10 bytes", max_payload=10)
    assert err.ref == "$inbox.n.c.9"


# ------------------------------------------------------------------------------- fuzz

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(), st.text(max_size=8), st.binary(max_size=16))
OBJECTS = st.recursive(
    SCALARS,
    lambda kids: st.one_of(
        st.lists(kids, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(-3, 8)), kids,
                        max_size=4)),
    max_leaves=10)


def decode_or_protocol_error(frames: list, max_payload: int = 1 << 26):
    """Return the decoded message or None on ProtocolError; anything else propagates."""
    try:
        msg = decode(frames, max_payload=max_payload)
    except ProtocolError as exc:
        assert isinstance(exc.code, str) and str(exc)
        event(f"error {exc.code}")
        return None
    assert isinstance(msg, MESSAGE_TYPES)
    event(f"decoded {type(msg).__name__}")
    if isinstance(msg, Batch):
        check_view_consistent(msg.meta)
    return msg


def check_view_consistent(view: BatchView) -> None:
    """What decode accepted must be self-consistent: one name and one payload of the
    declared size per event."""
    payloads = view.payloads()
    assert len(payloads) == view.n
    assert [len(p) for p in payloads] == list(view.sizes)
    assert len(list(view.name_column())) == view.n
    assert len(view.events()) == view.n


@fast(300)
@given(st.lists(st.binary(max_size=48), max_size=6))
def test_fuzz_random_binary_frames(frames: list) -> None:
    decode_or_protocol_error(frames)


@fast(80)
@given(st.integers(0, 15), st.lists(OBJECTS, max_size=8),
       st.lists(st.one_of(st.binary(max_size=32), OBJECTS.map(packb)), max_size=4))
def test_fuzz_random_msgpack_headers(kind: int, fields: list, rest: list) -> None:
    """Header of a real kind (mostly) with random fields, then random frames."""
    decode_or_protocol_error([packb([kind, *fields]), *rest])


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


VALID_MESSAGES = [
    P.encode_hello("w", "t", ["g"], ["t"], ["c"], [("a.*", None), ("b", "q")], {"o": 1}),
    P.encode_ready("n1", "c1", {"max_payload": 10}), P.encode_sub("a.*", "q"),
    P.encode_unsub("a.>"), P.encode_error("bad_field", "oops", 3), P.encode_ping(4),
    P.encode_pong(5), P.encode_bye(), P.encode_request(1, "svc", b"q", "node:n1", 0, {}),
    P.encode_reply("$inbox.n1.c1.1", b"r", {"h": 1}, "w"),
    P.encode_pub([ev("a", b"x"), ev("b", big(LARGE_PAYLOAD), "tag:t", 1, None, {"h": 2})]),
]


@fast(200)
@given(st.sampled_from(VALID_MESSAGES), st.integers(0, 9), OBJECTS,
       st.sampled_from(["replace", "truncate", "append", "drop-frame", "add-frame"]))
def test_fuzz_mutated_valid_messages(frames: list, i: int, obj, how: str) -> None:
    """One defect in an otherwise valid message: a typed error or a message, never a crash."""
    header = msgpack.unpackb(frames[0])
    rest = list(frames[1:])
    if how == "replace":
        header[i % len(header)] = obj
    elif how == "truncate":
        header = header[:i % len(header) + 1]
    elif how == "append":
        header.append(obj)
    elif how == "drop-frame" and rest:
        del rest[i % len(rest)]
    else:
        rest.insert(i % (len(rest) + 1), packb(obj))
    decode_or_protocol_error([packb(header), *rest])


# ------------------------------------------------------------------------------ inbox


@pytest.mark.parametrize("node,client,req", [("n1", "c-1", 0), ("edge-7", "abc", 2**40),
                                             ("n", "c", 17)])
def test_inbox_round_trip(node: str, client: str, req: int) -> None:
    subject = P.inbox_subject(node, client, req)
    assert subject.startswith("$inbox.")
    assert P.parse_inbox(subject) == (node, client, req)


@FAST
@given(st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True),
       st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True), st.integers(0, 2**63))
def test_property_inbox_round_trip(node: str, client: str, req: int) -> None:
    assert P.parse_inbox(P.inbox_subject(node, client, req)) == (node, client, req)


@pytest.mark.parametrize("subject", [
    "", "$inbox", "$inbox.n1.c1", "$inbox.n1.c1.7.8", "$inbox.n1.c1.seven",
    "$sys.n1.c1.7", "inbox.n1.c1.7", "orders.new", "$inbox.n1.c1.", "$INBOX.n1.c1.7",
])
def test_parse_inbox_rejects_other_subjects(subject: str) -> None:
    assert P.parse_inbox(subject) is None
