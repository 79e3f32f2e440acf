"""A client's session with its node: the message kinds 1-12 as typed values, their
encoders and their decoders. Pure.

Owns: HELLO, READY, SUB, UNSUB, PUB, DELIVER, REQUEST, REPLY, ERROR, PING, PONG and
BYE: the header layout of each, the frames it carries, and the checks its decoder
makes (``DECODERS`` maps a kind to its decoder). PUB and DELIVER carry an event batch
whose frames ``batch`` owns; ``decode_batch`` serves FORWARD too.

Must not touch: sockets, clocks, sessions or routing; what a node *does* with a
message (docs/PROTOCOL.md says that) is not decided here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from treescale.protocol.batch import MODE_ALL, MODE_ONE, BatchView, decode_events, encode_events
from treescale.protocol.codec import (
    I63,
    U64,
    BadCount,
    FieldError,
    FrameCountError,
    PayloadTooLarge,
    as_buffer,
    bounded,
    check_version,
    expect_frames,
    fields,
    mapping,
    packb,
    text,
    texts,
)
from treescale.protocol.kinds import (
    BYE,
    DELIVER,
    ERROR,
    FORWARD,
    HELLO,
    KIND_NAMES,
    PING,
    PONG,
    PROTOCOL_VERSION,
    PUB,
    READY,
    REPLY,
    REQUEST,
    SUB,
    UNSUB,
)

# ----------------------------------------------------------------------- messages


@dataclass(slots=True)
class Introduction:
    """What a peer says about itself when it arrives, a client (Hello) or a child
    node (Link): the node authenticates both alike."""

    version: int
    token: str | None
    name: str
    groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(slots=True)
class Hello(Introduction):
    channels: tuple[str, ...] = ()
    subs: tuple[tuple[str, str | None], ...] = ()
    options: dict = field(default_factory=dict)


@dataclass(slots=True)
class Ready:
    node: str
    client_id: str
    limits: dict = field(default_factory=dict)


@dataclass(slots=True)
class SubscriptionChange:
    pattern: str
    queue: str | None = None


class Subscribe(SubscriptionChange):
    __slots__ = ()


class Unsubscribe(SubscriptionChange):
    __slots__ = ()


@dataclass(slots=True)
class Batch:
    """A batch of events: what PUB, DELIVER and FORWARD carry.

    ``meta`` is the validated BatchView, ``meta_frame``/``body`` the frames as received
    (so a node can forward them unchanged), ``large`` the separate payload frames.
    ``sources`` (DELIVER and FORWARD) is a list of ``[source, count]`` runs over the
    events.
    """

    meta: BatchView
    meta_frame: Any
    body: Any
    large: list
    sources: list = field(default_factory=list)
    kind: int = PUB  # PUB, DELIVER or FORWARD: who may send it depends on it


@dataclass(slots=True)
class Request:
    req_id: int
    name: str
    target: str | None
    mode: int
    headers: dict | None
    payload: Any


@dataclass(slots=True)
class Reply:
    reply_to: str
    headers: dict | None
    payload: Any
    source: str = ""  # accepted on the wire; the node names the replier itself


@dataclass(slots=True)
class Error:
    code: str
    message: str
    ref: Any = None


@dataclass(slots=True)
class Ping:
    token: int = 0


@dataclass(slots=True)
class Pong:
    token: int = 0


@dataclass(slots=True)
class Bye:
    pass


# ----------------------------------------------------------------------- encoding


def encode_hello(
    name: str,
    token: str | None = None,
    groups: Sequence[str] = (),
    tags: Sequence[str] = (),
    channels: Sequence[str] = (),
    subs: Iterable[tuple[str, str | None]] = (),
    options: dict | None = None,
    version: int = PROTOCOL_VERSION,
) -> list[bytes]:
    return [packb([HELLO, version, token, name, list(groups), list(tags), list(channels),
                   [list(s) for s in subs], options or {}])]


def encode_ready(node: str, client_id: str, limits: dict) -> list[bytes]:
    return [packb([READY, node, client_id, limits])]


def encode_sub(pattern: str, queue: str | None = None) -> list[bytes]:
    return [packb([SUB, pattern, queue])]


def encode_unsub(pattern: str, queue: str | None = None) -> list[bytes]:
    return [packb([UNSUB, pattern, queue])]


def encode_error(code: str, message: str, ref: Any = None) -> list[bytes]:
    return [packb([ERROR, code, message, ref])]


def encode_ping(token: int = 0) -> list[bytes]:
    return [packb([PING, token])]


def encode_pong(token: int = 0) -> list[bytes]:
    return [packb([PONG, token])]


def encode_bye() -> list[bytes]:
    return [packb([BYE])]


# The header of every PUB: a node takes its fast path on exactly these bytes.
PUB_HEADER = packb([PUB])


def encode_pub(events: Sequence[Sequence]) -> list:
    """A PUB message carrying ``events`` as one batch."""
    meta, body, large = encode_events(events)
    return [PUB_HEADER, meta, body, *large]


def encode_deliver_header(sources: list) -> bytes:
    return packb([DELIVER, sources])


def encode_deliver(sources: list, meta: bytes, body: Any, large: Sequence = ()) -> list:
    return [encode_deliver_header(sources), meta, body, *large]


def encode_request(req_id: int, name: str, payload: Any, target: str | None = None,
                   mode: int = MODE_ONE, headers: dict | None = None) -> list:
    return [packb([REQUEST, req_id, name, target, mode, headers]), payload]


def encode_reply(reply_to: str, payload: Any, headers: dict | None = None,
                 source: str = "") -> list:
    return [packb([REPLY, reply_to, headers, source]), payload]


# ----------------------------------------------------------------------- decoding
# Each decoder takes (header, frames, max_payload): the header already unpacked, all
# frames of the message (header first) and the payload limit of the receiver.


def _decode_hello(header: list, frames: Sequence, max_payload: int) -> Hello:
    expect_frames(frames, HELLO, 1)
    version, token, name, groups, tags, channels, subs, options = fields(header, 8)
    version = check_version(version)
    sub_list = []
    if subs is not None:
        if not isinstance(subs, list):
            raise FieldError("hello subscriptions must be a list of [pattern, queue]")
        for s in subs:
            if not isinstance(s, list) or len(s) != 2:
                raise FieldError("hello subscriptions must be a list of [pattern, queue]")
            sub_list.append((text(s[0], "pattern"), text(s[1], "queue", optional=True)))
    return Hello(
        version=version,
        token=text(token, "token", optional=True),
        name=text(name, "client name", optional=True) or "",
        groups=texts(groups, "groups"),
        tags=texts(tags, "tags"),
        channels=texts(channels, "channels"),
        subs=tuple(sub_list),
        options=mapping(options, "options") or {},
    )


def _decode_ready(header: list, frames: Sequence, max_payload: int) -> Ready:
    expect_frames(frames, READY, 1)
    node, client_id, limits = fields(header, 3)
    return Ready(text(node, "node"), text(client_id, "client id"),
                 mapping(limits, "limits") or {})


def _decode_sub(header: list, frames: Sequence, max_payload: int) -> Subscribe:
    expect_frames(frames, SUB, 1)
    pattern, queue = fields(header, 2)
    return Subscribe(text(pattern, "pattern"), text(queue, "queue", optional=True))


def _decode_unsub(header: list, frames: Sequence, max_payload: int) -> Unsubscribe:
    expect_frames(frames, UNSUB, 1)
    pattern, queue = fields(header, 2)
    return Unsubscribe(text(pattern, "pattern"), text(queue, "queue", optional=True))


def decode_batch(header: list, frames: Sequence, max_payload: int) -> Batch:
    """PUB, DELIVER or FORWARD: a header, a meta, a body, then the large frames."""
    if len(frames) < 3:
        raise FrameCountError(
            f"{KIND_NAMES[header[0]]} takes a header, a meta and a body frame "
            f"(then one frame per large payload), got {len(frames)} frame(s)")
    large = list(frames[3:])
    meta = decode_events(frames[1], frames[2], large, max_payload)
    sources = []
    if header[0] in (DELIVER, FORWARD):
        (sources,) = fields(header, 1)
        _check_sources(sources, meta.n, KIND_NAMES[header[0]])
    return Batch(meta, frames[1], frames[2], large, sources, header[0])


def _check_sources(sources: Any, n: int, kind: str) -> None:
    """``[source, count]`` runs: positive counts that add up to the batch's events (a
    node expands, merges and re-sends them: a forged count must not reach that)."""
    if not isinstance(sources, list):
        raise FieldError(f"{kind} sources must be a list of [source, count]")
    total = 0
    for run in sources:
        if (not isinstance(run, list) or len(run) != 2 or run[0].__class__ is not str
                or run[1].__class__ is not int):
            raise FieldError(f"{kind} sources must be a list of [source, count]")
        if run[1] < 1:
            raise BadCount(f"{kind} source count must be positive, got {run[1]}")
        total += run[1]
    if total != n:
        raise BadCount(f"{kind} source counts add up to {total}, the batch holds "
                       f"{n} event(s)")


def _decode_request(header: list, frames: Sequence, max_payload: int) -> Request:
    expect_frames(frames, REQUEST, 2)
    req_id, name, target, mode, headers = fields(header, 5)
    req_id = bounded(req_id, "request id", 0, I63)
    if mode not in (MODE_ALL, MODE_ONE):
        raise FieldError(f"request mode must be 0 (all) or 1 (one), got {mode!r}")
    size = len(as_buffer(frames[1]))
    if size > max_payload:
        raise PayloadTooLarge(f"request payload of {size} bytes exceeds the limit of "
                              f"{max_payload} bytes", ref=req_id)
    return Request(req_id, text(name, "request name"),
                   text(target, "target", optional=True), mode,
                   mapping(headers, "headers"), frames[1])


def _decode_reply(header: list, frames: Sequence, max_payload: int) -> Reply:
    expect_frames(frames, REPLY, 2)
    reply_to, headers, source = fields(header, 3)
    size = len(as_buffer(frames[1]))
    if size > max_payload:
        raise PayloadTooLarge(f"reply payload of {size} bytes exceeds the limit of "
                              f"{max_payload} bytes", ref=reply_to)
    return Reply(text(reply_to, "reply subject"), mapping(headers, "headers"), frames[1],
                 text(source, "source", optional=True) or "")


def _decode_error(header: list, frames: Sequence, max_payload: int) -> Error:
    expect_frames(frames, ERROR, 1)
    code, message, ref = fields(header, 3)
    return Error(text(code, "error code"), text(message, "error message"), ref)


def _decode_ping(header: list, frames: Sequence, max_payload: int) -> Ping:
    expect_frames(frames, PING, 1)
    (token,) = fields(header, 1)
    return Ping(_token(token, "ping token"))


def _decode_pong(header: list, frames: Sequence, max_payload: int) -> Pong:
    expect_frames(frames, PONG, 1)
    (token,) = fields(header, 1)
    return Pong(_token(token, "pong token"))


def _token(value: Any, what: str) -> int:
    """A ping's token (nil is 0): echoed in the pong, so it must stay a number."""
    return 0 if value is None else bounded(value, what, 0, U64)


def _decode_bye(header: list, frames: Sequence, max_payload: int) -> Bye:
    expect_frames(frames, BYE, 1)
    return Bye()


Decoder = Callable[[list, Sequence, int], Any]

DECODERS: dict[int, Decoder] = {
    HELLO: _decode_hello,
    READY: _decode_ready,
    SUB: _decode_sub,
    UNSUB: _decode_unsub,
    PUB: decode_batch,
    DELIVER: decode_batch,
    REQUEST: _decode_request,
    REPLY: _decode_reply,
    ERROR: _decode_error,
    PING: _decode_ping,
    PONG: _decode_pong,
    BYE: _decode_bye,
}
