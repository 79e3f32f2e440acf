"""Tests for treescale.protocol: the session messages (kinds 1-12), typed decode errors,
fuzzing of every decoder, the package face and its purity.

The package is pure (frames in, frames out), so everything here runs in process on
plain bytes; no sockets. Batches: test_protocol_batch.py; links: test_protocol_links.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.protocol_kit import (
    OBJECTS,
    big,
    decode_or_protocol_error,
    ev,
    expect,
    fast,
    mutate,
)
from treescale import protocol as P
from treescale import subjects
from treescale.protocol import (
    LARGE_PAYLOAD,
    MODE_ALL,
    MODE_ONE,
    PROTOCOL_VERSION,
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
    packb,
)

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



def test_unknown_trailing_header_fields_are_ignored() -> None:
    """Newer peers may append header fields; older decoders must not choke."""
    assert decode([packb([P.SUB, "a", None, "future", 1])]) == Subscribe("a", None)
    assert decode([packb([P.PING, 5, {"new": True}])]) == Ping(5)



# ---------------------------------------------------------------------- decode errors


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


@pytest.mark.parametrize("kind", [0, 13, 37, 39, 99, -1, 2**64 - 1])
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



def test_request_reply_payload_too_large() -> None:
    err = expect(PayloadTooLarge, P.encode_request(9, "svc", b"x" * 11), "request payload",
                 "11 bytes", "limit of 10 bytes", max_payload=10)
    assert err.ref == 9
    err = expect(PayloadTooLarge, P.encode_reply("$inbox.n.c.9", b"x" * 11), "reply payload",
                 "limit of 10 bytes", max_payload=10)
    assert err.ref == "$inbox.n.c.9"



# ------------------------------------------------------------------------------- fuzz


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
    decode_or_protocol_error(mutate(frames, i, obj, how))



# ------------------------------------------------------------------- the package face

# Every public name treescale.protocol had before it was split (callers use P.X).
PUBLIC_BEFORE_SPLIT = """
    BYE Batch BatchView Bye DELIVER ERROR EncodingError Error FORWARD FieldError
    FrameCountError HELLO Hello INTEREST Interest KIND_NAMES LARGE_PAYLOAD LINK LINKED
    Link Linked MODES MODE_ALL MODE_ONE PING PONG PROTOCOL_VERSION PUB PayloadTooLarge
    Ping Pong ProtocolError READY REDIRECT REPLY REQUEST RESYNC Ready Redirect Reply
    Request Resync PLACEMENT SUB PlacementInfo Subscribe UNSUB UnknownKind Unsubscribe VersionMismatch
    decode decode_events decode_header encode_bye encode_columns encode_deliver
    encode_deliver_header encode_error encode_events encode_forward_header encode_hello
    encode_interest encode_link encode_linked encode_ping encode_pong encode_pub
    encode_ready encode_redirect encode_reply encode_request encode_resync encode_single
    encode_placement encode_sub encode_unsub packb
""".split()


def test_the_face_still_exports_every_public_name() -> None:
    missing = [n for n in PUBLIC_BEFORE_SPLIT if not hasattr(P, n)]
    assert not missing
    assert set(PUBLIC_BEFORE_SPLIT) <= set(P.__all__)
    assert all(hasattr(P, n) for n in P.__all__)


def test_the_canonical_pub_header_is_public_and_inboxes_moved_to_subjects() -> None:
    assert P.PUB_HEADER == packb([P.PUB])
    for gone in ("_PUB_HEADER", "_buffer", "inbox_subject", "parse_inbox"):
        assert not hasattr(P, gone), gone


def test_as_buffer_reads_frames_without_copying() -> None:
    class Frame:  # what zmq.Frame looks like to the codec
        def __init__(self, data: bytes) -> None:
            self.buffer = memoryview(data)

    data = b"payload"
    frame = Frame(data)
    assert P.as_buffer(frame) is frame.buffer
    assert P.as_buffer(data) is data
    view = memoryview(data)
    assert P.as_buffer(view) is view


def test_error_codes_are_the_subjects_vocabulary() -> None:
    """The codes a decode error sends are spelled once, in treescale.subjects."""
    codes = {c.code for c in (ProtocolError, FrameCountError, EncodingError, UnknownKind,
                              VersionMismatch, FieldError, PayloadTooLarge)}
    assert codes == {subjects.BAD_MESSAGE, subjects.BAD_FRAME_COUNT, subjects.BAD_ENCODING,
                     subjects.UNKNOWN_KIND, subjects.VERSION, subjects.BAD_FIELD,
                     subjects.TOO_LARGE}


def test_reserved_kinds_have_no_decoder() -> None:
    """37-39 wait for credit grants: unknown until those exist (25 and 28-36 are
    durable delivery's)."""
    assert P.RESERVED_KINDS == set(range(37, 40))
    assert not P.RESERVED_KINDS & set(P.KIND_NAMES)
    assert set(P.DECODERS) == set(P.KIND_NAMES)
    for kind in P.RESERVED_KINDS:
        expect(UnknownKind, [packb([kind])], f"unknown message kind {kind}")


PACKAGE = Path(P.__file__).parent


def imported_roots(source: str) -> set[str]:
    """The top-level package of every import in ``source``."""
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("module", sorted(p.name for p in PACKAGE.glob("*.py")))
def test_protocol_modules_stay_pure_and_say_what_they_own(module: str) -> None:
    """Only the codec's own imports (no I/O, clock or concurrency: the house-wide
    purity rule is tests/unit/test_architecture.py), and a docstring that names what
    the module owns and what it must not touch."""
    source = (PACKAGE / module).read_text()
    imported = imported_roots(source)
    assert imported <= {"__future__", "collections", "dataclasses", "typing", "struct",
                        "sys", "array", "itertools", "msgpack", "treescale"}
    doc = ast.get_docstring(ast.parse(source)) or ""
    assert "Pure." in doc and "Owns" in doc and "must not touch" in doc.lower()
