"""TreeScale wire protocol: ZeroMQ multipart frames <-> typed messages.

Pure: no sockets, no clock. The broker and the clients call these functions on the
frames they received and hand the frames these functions return to their sockets.

Every message starts with a *header frame*: a msgpack array whose first item is the
message kind (a small int). Kinds that carry events add frames after the header:

    PUB      [header, meta, body, large...]
    DELIVER  [header, meta, body, large...]
    REQUEST  [header, payload]
    REPLY    [header, payload]

``meta`` describes the events as columns (``[names, index, sizes, large, extras]``,
see ``encode_columns``); ``body`` holds the payloads smaller than ``LARGE_PAYLOAD`` back
to back, in event order; each larger payload travels as its own frame, so a node
forwards it without copying.

A node never decodes a payload and, when a whole batch goes to the same place,
forwards the meta and body frames untouched. See docs/PROTOCOL.md.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
LARGE_PAYLOAD = 64 * 1024

# Message kinds. Numbers are part of the wire format: never renumber.
HELLO = 1
READY = 2
SUB = 3
UNSUB = 4
PUB = 5
DELIVER = 6
REQUEST = 7
REPLY = 8
ERROR = 9
PING = 10
PONG = 11
BYE = 12
# 20-39: node-to-node links. Acks and credits will take the numbers after FORWARD.
LINK = 20
LINKED = 21
REDIRECT = 22
INTEREST = 23
STATS = 24
FORWARD = 26
RESYNC = 27

KIND_NAMES = {
    HELLO: "hello", READY: "ready", SUB: "sub", UNSUB: "unsub", PUB: "pub",
    DELIVER: "deliver", REQUEST: "request", REPLY: "reply", ERROR: "error",
    PING: "ping", PONG: "pong", BYE: "bye", LINK: "link", LINKED: "linked",
    REDIRECT: "redirect", INTEREST: "interest", STATS: "stats", FORWARD: "forward",
    RESYNC: "resync",
}

MODE_ALL = 0
MODE_ONE = 1
MODES = {"all": MODE_ALL, "one": MODE_ONE}


# --------------------------------------------------------------------------- errors


class ProtocolError(Exception):
    """A frame sequence that is not a valid TreeScale message.

    ``code`` is a stable short string that goes into the ERROR message the sender gets.
    """

    code = "bad_message"

    def __init__(self, message: str, ref: Any = None) -> None:
        super().__init__(message)
        self.ref = ref


class FrameCountError(ProtocolError):
    code = "bad_frame_count"


class EncodingError(ProtocolError):
    """A frame that should be msgpack is not, or has the wrong shape."""

    code = "bad_encoding"


class UnknownKind(ProtocolError):
    code = "unknown_kind"


class VersionMismatch(ProtocolError):
    code = "version"


class FieldError(ProtocolError):
    """A field has the wrong type or an invalid value."""

    code = "bad_field"


class PayloadTooLarge(ProtocolError):
    code = "too_large"


# ------------------------------------------------------------------------- messages


@dataclass(slots=True)
class Hello:
    version: int
    token: str | None
    name: str
    groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    subs: tuple[tuple[str, str | None], ...] = ()
    options: dict = field(default_factory=dict)


@dataclass(slots=True)
class Ready:
    node: str
    client_id: str
    limits: dict = field(default_factory=dict)


@dataclass(slots=True)
class Subscribe:
    pattern: str
    queue: str | None = None


@dataclass(slots=True)
class Unsubscribe:
    pattern: str
    queue: str | None = None


@dataclass(slots=True)
class Batch:
    """A batch of events: what PUB and DELIVER carry.

    ``meta`` is the validated BatchView, ``meta_frame``/``body`` the frames as received
    (so a node can forward them unchanged), ``large`` the separate payload frames.
    ``sources`` (DELIVER only) is a list of ``[source, count]`` runs over the events.
    """

    meta: BatchView
    meta_frame: Any
    body: Any
    large: list
    sources: list = field(default_factory=list)


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
    source: str = ""


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


@dataclass(slots=True)
class Link:
    """A child node introducing itself to its parent."""

    version: int
    token: str | None
    name: str
    groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    address: str = ""  # where the child listens: its siblings may need to reach it
    join: bool = False  # True: place me where the tree stays balanced (auto-join)


@dataclass(slots=True)
class Linked:
    """The parent's answer: its name and its own ancestors, nearest first, as
    ``[name, address]`` pairs (where to re-attach if it dies)."""

    node: str
    ancestors: list = field(default_factory=list)
    siblings: list = field(default_factory=list)  # the parent's children, [name, addr]


@dataclass(slots=True)
class Redirect:
    """A full node sends a joiner toward the shallowest open slot below it."""

    node: str
    address: str


@dataclass(slots=True)
class Stats:
    """A child's periodic word to its parent about its subtree (``open_depth``: how
    far below the child the nearest node with room for another child is)."""

    info: dict


@dataclass(slots=True)
class Interest:
    """Interest changes on a link: ``ops`` are ``(add, pattern, queue)``; ``seq``
    numbers them per link and direction so a gap is noticed."""

    seq: int
    ops: list
    full: bool = False  # a snapshot: ops are all adds and replace what came before


@dataclass(slots=True)
class Resync:
    """The receiver saw a gap after ``seq``: it asks for a full interest snapshot."""

    seq: int


# ------------------------------------------------------------------------- encoding

_packb = msgpack.Packer(use_bin_type=True).pack


def packb(obj: Any) -> bytes:
    """msgpack with bin/str kept apart (a fresh packer: safe from any thread)."""
    return msgpack.packb(obj, use_bin_type=True)


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


def encode_link(name: str, token: str | None = None, groups: Sequence[str] = (),
                tags: Sequence[str] = (), address: str = "", join: bool = False,
                version: int = PROTOCOL_VERSION) -> list[bytes]:
    return [packb([LINK, version, token, name, list(groups), list(tags), address,
                   bool(join)])]


def encode_linked(node: str, ancestors: Sequence[tuple[str, str]] = (),
                  siblings: Sequence[tuple[str, str]] = ()) -> list[bytes]:
    """Sent when a child links, and again to every child when the children change."""
    return [packb([LINKED, node, [list(a) for a in ancestors],
                   [list(s) for s in siblings]])]


def encode_redirect(node: str, address: str) -> list[bytes]:
    return [packb([REDIRECT, node, address])]


def encode_stats(info: dict) -> list[bytes]:
    return [packb([STATS, info])]


def encode_interest(seq: int, ops: Iterable[tuple[bool, str, str | None]],
                    full: bool = False) -> list[bytes]:
    header = [INTEREST, seq, [[1 if add else 0, p, q] for add, p, q in ops]]
    return [packb(header + [True] if full else header)]


def encode_resync(seq: int) -> list[bytes]:
    return [packb([RESYNC, seq])]


def encode_forward_header(sources: list) -> bytes:
    return packb([FORWARD, sources])


_PUB_HEADER = packb([PUB])
_NO_EXTRA = (None, 0, None, None)


def encode_events(events: Sequence[Sequence]) -> tuple[bytes, bytes, list]:
    """Pack event tuples ``(name, data, target, mode, reply, headers)``; see
    ``encode_columns``."""
    if not events:
        return encode_columns([], [])
    names, datas, targets, modes, replies, headers = zip(*events, strict=True)
    extras = {i: (t, m, r, h) for i, t, m, r, h in zip(range(len(datas)), targets, modes,
                                                      replies, headers, strict=True)
              if t is not None or m or r is not None or h is not None}
    return encode_columns(names, datas, extras or None)


def encode_columns(names_col: Sequence[str], datas: Sequence, extras: dict | None = None,
                   sizes: array | None = None) -> tuple[bytes, bytes, list]:
    """Pack a batch given as columns into meta, body and large payload frames.

    The meta is columnar so that both ends do per-batch work in C, not per-event work
    in Python: ``[names, index, sizes, large, extras]`` where ``names`` are the distinct
    event names, ``index`` (uint16 LE per event, nil when there is one name) points
    into them, ``sizes`` (uint32 LE per event) are the payload sizes, ``large`` lists
    the events whose payload is a frame of its own, and ``extras`` maps an event's
    position to ``[target, mode, reply, headers]`` for events that set any of them.
    Large payloads are returned as the caller's own objects (no copy).
    """
    if sizes is None:
        sizes = array("I", map(len, datas))
    if not datas:
        return _packb([[], None, b"", [], None]), b"", []
    distinct = dict.fromkeys(names_col)
    if len(distinct) == 1:
        names = [names_col[0]]
        index = None
    else:
        if len(distinct) > 65535:
            raise ValueError("a batch holds at most 65535 distinct event names")
        names = list(distinct)
        pos = {nm: i for i, nm in enumerate(names)}
        index = _le(array("H", map(pos.__getitem__, names_col)))
    large_idx: list = []
    large: list = []
    if max(sizes) >= LARGE_PAYLOAD:
        small = []
        for i, d in enumerate(datas):
            if sizes[i] >= LARGE_PAYLOAD:
                large_idx.append(i)
                large.append(d)
            else:
                small.append(d)
        body = b"".join(small)
    else:
        body = b"".join(datas)
    return _packb([names, index, _le(sizes), large_idx, extras]), body, large


def encode_single(name: str, payload: Any, target: str | None = None, mode: int = 0,
                  reply: str | None = None, headers: dict | None = None) -> list:
    """meta, body and large frames of a one-event batch (requests, replies, system
    events): the same format as ``encode_columns``, without its per-batch machinery."""
    size = len(_buffer(payload))
    extras = None
    if target is not None or mode or reply is not None or headers is not None:
        extras = {0: (target, mode, reply, headers)}
    if size >= LARGE_PAYLOAD:
        return [_packb([[name], None, _U32.pack(size), [0], extras]), b"", payload]
    return [_packb([[name], None, _U32.pack(size), [], extras]), payload]


_U32 = struct.Struct("<I")


def _le(arr: array) -> bytes:
    """Array bytes in little-endian order, whatever this machine's order."""
    if _BIG_ENDIAN:
        arr = array(arr.typecode, arr)
        arr.byteswap()
    return arr.tobytes()


def _from_le(typecode: str, data: Any) -> array:
    arr = array(typecode)
    arr.frombytes(data)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr


_BIG_ENDIAN = sys.byteorder == "big"


def encode_pub(events: Sequence[Sequence]) -> list:
    """A PUB message carrying ``events`` as one batch."""
    meta, body, large = encode_events(events)
    return [_PUB_HEADER, meta, body, *large]


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


# ------------------------------------------------------------------------- decoding


def _buffer(frame: Any) -> Any:
    """The bytes-like content of a frame (zmq.Frame, bytes or memoryview)."""
    buf = getattr(frame, "buffer", None)
    return frame if buf is None else buf


def _unpack(frame: Any, what: str) -> Any:
    try:
        return msgpack.unpackb(_buffer(frame), raw=False, strict_map_key=False,
                               use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise EncodingError(f"{what} frame is not valid msgpack: {exc}") from None


def _str(value: Any, what: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise FieldError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _strs(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FieldError(f"{what} must be a list of strings")
    return tuple(value)


def _dict(value: Any, what: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FieldError(f"{what} must be a map, got {type(value).__name__}")
    return value


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise FieldError(f"{what} must be an integer, got {type(value).__name__}")
    return value


def _fields(header: list, n: int, kind: int) -> list:
    """Header fields after the kind, padded with None; extra trailing fields are
    ignored so that newer peers can add fields without breaking older ones."""
    rest = header[1:n + 1]
    if len(rest) < n:
        rest += [None] * (n - len(rest))
    return rest


def _expect_frames(frames: Sequence, kind: int, count: int) -> None:
    if len(frames) != count:
        raise FrameCountError(
            f"{KIND_NAMES[kind]} takes {count} frame(s), got {len(frames)}")


def decode_header(frame: Any) -> list:
    header = _unpack(frame, "header")
    if not isinstance(header, list) or not header:
        raise EncodingError("header must be a non-empty msgpack array")
    if not isinstance(header[0], int) or isinstance(header[0], bool):
        raise EncodingError("header must start with the message kind (an integer)")
    return header


class BatchView:
    """A validated batch: its columns plus the frames they describe.

    Nothing here is per-event Python work unless a caller asks for single events
    (``event``) or all payloads (``payloads``); routing a uniform batch touches only
    the distinct names.
    """

    __slots__ = ("names", "index", "sizes", "large_idx", "extras", "body", "large", "n")

    def __init__(self, names: list, index: array | None, sizes: array, large_idx: list,
                 extras: dict | None, body: Any, large: Sequence) -> None:
        self.names = names
        self.index = index
        self.sizes = sizes
        self.large_idx = large_idx
        self.extras = extras
        self.body = body
        self.large = large
        self.n = len(sizes)

    def name_column(self) -> Iterable[str]:
        """The name of every event, in order."""
        if self.index is None:
            return repeat(self.names[0], self.n) if self.names else iter(())
        return map(self.names.__getitem__, self.index)

    def payloads(self) -> list:
        """The payload of every event, in order (slices of the body, large frames)."""
        buf = _buffer(self.body)
        if not self.large_idx:
            offsets = list(accumulate(self.sizes, initial=0))
            return list(map(buf.__getitem__, map(slice, offsets, offsets[1:])))
        out = []
        offset = 0
        large = iter(self.large)
        big = set(self.large_idx)
        for i, size in enumerate(self.sizes):
            if i in big:
                out.append(next(large))
            else:
                out.append(buf[offset:offset + size])
                offset += size
        return out

    def extra(self, i: int) -> tuple:
        """(target, mode, reply, headers) of event ``i``."""
        if self.extras is None:
            return _NO_EXTRA
        return self.extras.get(i, _NO_EXTRA)

    def events(self, indices: Iterable[int] | None = None) -> list[tuple]:
        """Events as ``(name, payload, target, mode, reply, headers)`` tuples."""
        payloads = self.payloads()
        names = list(self.name_column())
        if indices is None:
            indices = range(self.n)
        return [(names[i], payloads[i], *self.extra(i)) for i in indices]


def decode_events(meta_frame: Any, body: Any, large: Sequence,
                  max_payload: int) -> BatchView:
    """Check a batch's meta against its frames (all C-level checks) and view it.

    Validates what a node must trust before forwarding: the columns' shapes and types,
    that the sizes add up to the body and the large frames, and that no payload is
    above ``max_payload``.
    """
    meta = _unpack(meta_frame, "meta")
    if not isinstance(meta, list) or len(meta) < 5:
        raise EncodingError("meta must be [names, index, sizes, large, extras]")
    names, index, sizes_raw, large_idx, extras = meta[:5]
    if not isinstance(names, list) or not all(n.__class__ is str for n in names):
        raise FieldError("meta names must be a list of strings")
    if not isinstance(sizes_raw, bytes) or len(sizes_raw) % 4:
        raise FieldError("meta sizes must be uint32 values packed as bin")
    sizes = _from_le("I", sizes_raw)
    n = len(sizes)
    if n and not names:
        raise FieldError("meta names must not be empty when there are events")
    if index is None:
        if len(names) > 1:
            raise FieldError("meta index is required when a batch has several names")
        idx = None
    else:
        if not isinstance(index, bytes) or len(index) != 2 * n:
            raise FieldError(f"meta index must hold one uint16 per event ({n})")
        idx = _from_le("H", index)
        if n and max(idx) >= len(names):
            raise FieldError("meta index points past the names list")
    if n and max(sizes) > max_payload:
        big = max(range(n), key=sizes.__getitem__)
        name = names[idx[big] if idx is not None else 0]
        raise PayloadTooLarge(
            f"payload of {sizes[big]} bytes for {name!r} exceeds the limit of "
            f"{max_payload} bytes", ref=name)
    if large_idx is None:
        large_idx = []
    if not isinstance(large_idx, list) or not all(
            i.__class__ is int and 0 <= i < n for i in large_idx):
        raise FieldError("meta large must list event positions")
    if any(a >= b for a, b in zip(large_idx, large_idx[1:], strict=False)):
        raise FieldError("meta large positions must be strictly increasing")
    if len(large_idx) != len(large):
        raise FrameCountError(f"meta declares {len(large_idx)} large payload frame(s), "
                              f"got {len(large)}")
    for i, frame in zip(large_idx, large, strict=True):
        if len(_buffer(frame)) != sizes[i]:
            raise FieldError(f"large payload frame of event {i} holds "
                             f"{len(_buffer(frame))} bytes, meta says {sizes[i]}")
    small_total = sum(sizes) - sum(sizes[i] for i in large_idx)
    if small_total != len(_buffer(body)):
        raise FieldError(f"body holds {len(_buffer(body))} bytes but the meta declares "
                         f"{small_total}")
    if extras is not None:
        _check_extras(extras, n)
    return BatchView(names, idx, sizes, large_idx, extras, body, large)


def _check_extras(extras: Any, n: int) -> None:
    if not isinstance(extras, dict):
        raise FieldError("meta extras must be a map or nil")
    for i, ex in extras.items():
        if i.__class__ is not int or not 0 <= i < n:
            raise FieldError("meta extras keys must be event positions")
        if not isinstance(ex, list) or len(ex) != 4:
            raise FieldError("meta extras values must be [target, mode, reply, headers]")
        target, mode, reply, headers = ex
        if target is not None and target.__class__ is not str:
            raise FieldError("event target must be a string or nil")
        if mode not in (MODE_ALL, MODE_ONE):
            raise FieldError(f"event mode must be 0 (all) or 1 (one), got {mode!r}")
        if reply is not None and reply.__class__ is not str:
            raise FieldError("event reply subject must be a string or nil")
        if headers is not None and headers.__class__ is not dict:
            raise FieldError("event headers must be a map or nil")
        extras[i] = (target, mode, reply, headers)


def decode(frames: Sequence, max_payload: int = 64 * 1024 * 1024) -> Any:
    """Decode one message (frames after any routing id) into a typed message."""
    if not frames:
        raise FrameCountError("empty message")
    header = decode_header(frames[0])
    kind = header[0]
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise UnknownKind(f"unknown message kind {kind}")
    return decoder(header, frames, max_payload)


def _decode_hello(header: list, frames: Sequence, max_payload: int) -> Hello:
    _expect_frames(frames, HELLO, 1)
    version, token, name, groups, tags, channels, subs, options = _fields(header, 8, HELLO)
    version = _int(version, "protocol version")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"protocol version {version} is not supported (this node speaks "
            f"{PROTOCOL_VERSION})")
    sub_list = []
    if subs is not None:
        if not isinstance(subs, list):
            raise FieldError("hello subscriptions must be a list of [pattern, queue]")
        for s in subs:
            if not isinstance(s, list) or len(s) != 2:
                raise FieldError("hello subscriptions must be a list of [pattern, queue]")
            sub_list.append((_str(s[0], "pattern"), _str(s[1], "queue", optional=True)))
    return Hello(
        version=version,
        token=_str(token, "token", optional=True),
        name=_str(name, "client name", optional=True) or "",
        groups=_strs(groups, "groups"),
        tags=_strs(tags, "tags"),
        channels=_strs(channels, "channels"),
        subs=tuple(sub_list),
        options=_dict(options, "options") or {},
    )


def _decode_ready(header: list, frames: Sequence, max_payload: int) -> Ready:
    _expect_frames(frames, READY, 1)
    node, client_id, limits = _fields(header, 3, READY)
    return Ready(_str(node, "node"), _str(client_id, "client id"),
                 _dict(limits, "limits") or {})


def _decode_sub(header: list, frames: Sequence, max_payload: int) -> Subscribe:
    _expect_frames(frames, SUB, 1)
    pattern, queue = _fields(header, 2, SUB)
    return Subscribe(_str(pattern, "pattern"), _str(queue, "queue", optional=True))


def _decode_unsub(header: list, frames: Sequence, max_payload: int) -> Unsubscribe:
    _expect_frames(frames, UNSUB, 1)
    pattern, queue = _fields(header, 2, UNSUB)
    return Unsubscribe(_str(pattern, "pattern"), _str(queue, "queue", optional=True))


def _decode_batch(header: list, frames: Sequence, max_payload: int) -> Batch:
    if len(frames) < 3:
        raise FrameCountError(
            f"{KIND_NAMES[header[0]]} takes a header, a meta and a body frame "
            f"(then one frame per large payload), got {len(frames)} frame(s)")
    large = list(frames[3:])
    meta = decode_events(frames[1], frames[2], large, max_payload)
    sources = []
    if header[0] in (DELIVER, FORWARD):
        (sources,) = _fields(header, 1, header[0])
        if not isinstance(sources, list):
            raise FieldError("deliver sources must be a list of [source, count]")
    return Batch(meta, frames[1], frames[2], large, sources)


def _decode_request(header: list, frames: Sequence, max_payload: int) -> Request:
    _expect_frames(frames, REQUEST, 2)
    req_id, name, target, mode, headers = _fields(header, 5, REQUEST)
    if mode not in (MODE_ALL, MODE_ONE):
        raise FieldError(f"request mode must be 0 (all) or 1 (one), got {mode!r}")
    size = len(_buffer(frames[1]))
    if size > max_payload:
        raise PayloadTooLarge(f"request payload of {size} bytes exceeds the limit of "
                              f"{max_payload} bytes", ref=req_id)
    return Request(_int(req_id, "request id"), _str(name, "request name"),
                   _str(target, "target", optional=True), mode,
                   _dict(headers, "headers"), frames[1])


def _decode_reply(header: list, frames: Sequence, max_payload: int) -> Reply:
    _expect_frames(frames, REPLY, 2)
    reply_to, headers, source = _fields(header, 3, REPLY)
    size = len(_buffer(frames[1]))
    if size > max_payload:
        raise PayloadTooLarge(f"reply payload of {size} bytes exceeds the limit of "
                              f"{max_payload} bytes", ref=reply_to)
    return Reply(_str(reply_to, "reply subject"), _dict(headers, "headers"), frames[1],
                 _str(source, "source", optional=True) or "")


def _decode_error(header: list, frames: Sequence, max_payload: int) -> Error:
    _expect_frames(frames, ERROR, 1)
    code, message, ref = _fields(header, 3, ERROR)
    return Error(_str(code, "error code"), _str(message, "error message"), ref)


def _decode_ping(header: list, frames: Sequence, max_payload: int) -> Ping:
    _expect_frames(frames, PING, 1)
    (token,) = _fields(header, 1, PING)
    return Ping(token or 0)


def _decode_pong(header: list, frames: Sequence, max_payload: int) -> Pong:
    _expect_frames(frames, PONG, 1)
    (token,) = _fields(header, 1, PONG)
    return Pong(token or 0)


def _decode_bye(header: list, frames: Sequence, max_payload: int) -> Bye:
    _expect_frames(frames, BYE, 1)
    return Bye()


def _decode_link(header: list, frames: Sequence, max_payload: int) -> Link:
    _expect_frames(frames, LINK, 1)
    version, token, name, groups, tags, address, join = _fields(header, 7, LINK)
    version = _int(version, "protocol version")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"protocol version {version} is not supported (this node speaks "
            f"{PROTOCOL_VERSION})")
    return Link(version, _str(token, "token", optional=True), _str(name, "node name"),
                _strs(groups, "groups"), _strs(tags, "tags"),
                _str(address, "address", optional=True) or "", join is True)


def _decode_linked(header: list, frames: Sequence, max_payload: int) -> Linked:
    _expect_frames(frames, LINKED, 1)
    node, ancestors, siblings = _fields(header, 3, LINKED)
    return Linked(_str(node, "node"), _pairs(ancestors, "linked ancestors"),
                  _pairs(siblings, "linked siblings"))


def _pairs(value: Any, what: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(
            isinstance(a, list) and len(a) == 2 and all(isinstance(x, str) for x in a)
            for a in value):
        raise FieldError(f"{what} must be a list of [name, address]")
    return [tuple(a) for a in value]


def _decode_redirect(header: list, frames: Sequence, max_payload: int) -> Redirect:
    _expect_frames(frames, REDIRECT, 1)
    node, address = _fields(header, 2, REDIRECT)
    return Redirect(_str(node, "node"), _str(address, "address"))


def _decode_stats(header: list, frames: Sequence, max_payload: int) -> Stats:
    _expect_frames(frames, STATS, 1)
    (info,) = _fields(header, 1, STATS)
    return Stats(_dict(info, "stats") or {})


def _decode_interest(header: list, frames: Sequence, max_payload: int) -> Interest:
    _expect_frames(frames, INTEREST, 1)
    seq, ops, full = _fields(header, 3, INTEREST)
    if not isinstance(ops, list):
        raise FieldError("interest ops must be a list of [add, pattern, queue]")
    out = []
    for op in ops:
        if not isinstance(op, list) or len(op) != 3 or op[0] not in (0, 1):
            raise FieldError("interest ops must be a list of [add, pattern, queue]")
        out.append((bool(op[0]), _str(op[1], "pattern"),
                    _str(op[2], "queue", optional=True)))
    if full not in (None, True, False):
        raise FieldError("interest snapshot flag must be true or false")
    if full and not all(add for add, _, _ in out):
        raise FieldError("an interest snapshot holds only additions")
    return Interest(_int(seq, "interest sequence"), out, bool(full))


def _decode_resync(header: list, frames: Sequence, max_payload: int) -> Resync:
    _expect_frames(frames, RESYNC, 1)
    (seq,) = _fields(header, 1, RESYNC)
    return Resync(_int(seq, "resync sequence"))


_DECODERS = {
    HELLO: _decode_hello,
    READY: _decode_ready,
    SUB: _decode_sub,
    UNSUB: _decode_unsub,
    PUB: _decode_batch,
    DELIVER: _decode_batch,
    REQUEST: _decode_request,
    REPLY: _decode_reply,
    ERROR: _decode_error,
    PING: _decode_ping,
    PONG: _decode_pong,
    BYE: _decode_bye,
    LINK: _decode_link,
    LINKED: _decode_linked,
    REDIRECT: _decode_redirect,
    INTEREST: _decode_interest,
    STATS: _decode_stats,
    FORWARD: _decode_batch,
    RESYNC: _decode_resync,
}


def inbox_subject(node: str, client_id: str, req_id: int) -> str:
    """The reply subject of a request: routes back to one client of one node."""
    return f"$inbox.{node}.{client_id}.{req_id}"


def parse_inbox(subject: str) -> tuple[str, str, int] | None:
    """(node, client_id, req_id) of an inbox subject, or None if it is not one."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "$inbox":
        return None
    try:
        return parts[1], parts[2], int(parts[3])
    except ValueError:
        return None
