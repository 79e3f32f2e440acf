"""The columnar event batch: the meta, body and large frames that PUB, DELIVER and
FORWARD carry after their header. Pure.

Owns: the batch layout (``meta = [names, index, sizes, large, extras]``, the body of
small payloads back to back, one frame per large payload), the 64 KiB rule senders
follow (``LARGE_PAYLOAD``), the delivery modes an event may ask for, and the checks a
received batch must pass (``decode_events``) before a node routes it.

Must not touch: headers and message kinds (``messages``/``links`` put a batch in a
message), sockets, clocks; and payloads, which stay opaque bytes: a large one is
handed through as the caller's own object, never copied or decoded.

The columns let both ends do per-batch work in C, not per-event work in Python: a
node routes a batch from its distinct names alone and forwards the frames untouched.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable, Sequence
from itertools import accumulate, repeat
from typing import Any

import msgpack

from treescale.protocol.codec import (
    EncodingError,
    FieldError,
    FrameCountError,
    PayloadTooLarge,
    TooManyNames,
    as_buffer,
    unpack,
)

# Senders put a payload of this size or more in a frame of its own (zero-copy).
# Receivers do not enforce it: they read the ``large`` column.
LARGE_PAYLOAD = 64 * 1024

MODE_ALL = 0  # every matching subscriber
MODE_ONE = 1  # one subscriber per queue group, round-robin
MODES = {"all": MODE_ALL, "one": MODE_ONE}

# The index column is uint16: a batch names at most this many distinct events
# (senders that merge batches split them before: see ``split_by_names``).
MAX_NAMES = 65535

# (target, mode, reply, headers) of an event that sets none of them.
NO_EXTRA = (None, MODE_ALL, None, None)

# One packer reused on the hot path: cheaper than building one per msgpack.packb call.
_pack = msgpack.Packer(use_bin_type=True).pack
_U32 = struct.Struct("<I")
_BIG_ENDIAN = sys.byteorder == "big"


def le_bytes(arr: array) -> bytes:
    """Array bytes in little-endian order (the wire's), whatever this machine's."""
    if _BIG_ENDIAN:
        arr = array(arr.typecode, arr)
        arr.byteswap()
    return arr.tobytes()


def from_le(typecode: str, data: Any) -> array:
    """An array of ``typecode`` items read from little-endian bytes."""
    arr = array(typecode)
    arr.frombytes(data)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr


# ------------------------------------------------------------------------ encoding


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

    ``[names, index, sizes, large, extras]``: ``names`` are the distinct event names,
    ``index`` (uint16 LE per event, nil when there is one name) points into them,
    ``sizes`` (uint32 LE per event, large ones included) are the payload sizes,
    ``large`` lists the events whose payload is a frame of its own, and ``extras``
    maps an event's position (an int key) to ``[target, mode, reply, headers]`` for
    events that set any of them. Large payloads are returned as the caller's own
    objects (no copy).
    """
    if sizes is None:
        sizes = array("I", map(len, datas))
    if not datas:
        return _pack([[], None, b"", [], None]), b"", []
    distinct = dict.fromkeys(names_col)
    if len(distinct) == 1:
        names = [names_col[0]]
        index = None
    else:
        if len(distinct) > MAX_NAMES:
            raise ValueError(f"a batch holds at most {MAX_NAMES} distinct event names")
        names = list(distinct)
        pos = {nm: i for i, nm in enumerate(names)}
        index = le_bytes(array("H", map(pos.__getitem__, names_col)))
    return _encode(names, index, datas, extras, sizes)


def encode_named(name: str, datas: Sequence, extras: dict | None = None,
                 sizes: array | None = None,
                 top: int | None = None) -> tuple[bytes, bytes, list]:
    """``encode_columns`` for a batch whose events all have one name: no name column
    to look at, so a sender of many events under one name does no per-event work
    beyond the sizes and the join (``top``: ``max(sizes)`` if the caller has it)."""
    if sizes is None:
        sizes = array("I", map(len, datas))
    if not datas:
        return _pack([[], None, b"", [], None]), b"", []
    return _encode([name], None, datas, extras, sizes, top)


def _encode(names: list, index: bytes | None, datas: Sequence, extras: dict | None,
            sizes: array, top: int | None = None) -> tuple[bytes, bytes, list]:
    """meta, body and large frames once the name columns are known."""
    large_idx: list = []
    large: list = []
    if (max(sizes) if top is None else top) >= LARGE_PAYLOAD:
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
    return _pack([names, index, le_bytes(sizes), large_idx, extras]), body, large


def split_by_names(names_col: Sequence[str], limit: int = MAX_NAMES) -> list[int]:
    """Cut points (0, ..., len) such that no piece names more than ``limit`` distinct
    events: what a sender that merges batches must do before encoding them."""
    cuts = [0]
    seen: set = set()
    for i, name in enumerate(names_col):
        if name not in seen:
            if len(seen) == limit:
                cuts.append(i)
                seen = set()
            seen.add(name)
    cuts.append(len(names_col))
    return cuts


def encode_single(name: str, payload: Any, target: str | None = None, mode: int = 0,
                  reply: str | None = None, headers: dict | None = None) -> list:
    """meta, body and large frames of a one-event batch (requests, replies, system
    events): the same format as ``encode_columns``, without its per-batch machinery."""
    size = len(as_buffer(payload))
    extras = None
    if target is not None or mode or reply is not None or headers is not None:
        extras = {0: (target, mode, reply, headers)}
    if size >= LARGE_PAYLOAD:
        return [_pack([[name], None, _U32.pack(size), [0], extras]), b"", payload]
    return [_pack([[name], None, _U32.pack(size), [], extras]), payload]


# ------------------------------------------------------------------------ decoding


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
        buf = as_buffer(self.body)
        sizes = self.sizes
        if not self.large_idx and sizes and sizes.count(sizes[0]) == self.n:
            return list(_uniform(sizes[0], self.n).unpack(buf))
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
            return NO_EXTRA
        return self.extras.get(i, NO_EXTRA)

    def events(self, indices: Iterable[int] | None = None) -> list[tuple]:
        """Events as ``(name, payload, target, mode, reply, headers)`` tuples."""
        payloads = self.payloads()
        names = list(self.name_column())
        if indices is None:
            indices = range(self.n)
        return [(names[i], payloads[i], *self.extra(i)) for i in indices]


_UNIFORM: dict[tuple[int, int], struct.Struct] = {}


def _uniform(size: int, n: int) -> struct.Struct:
    """A Struct cutting ``n`` payloads of ``size`` bytes out of a body in one C call
    (a batch of equal sizes, the common case: several times cheaper than slicing);
    kept for the few (size, count) pairs a stream uses."""
    key = (size, n)
    cut = _UNIFORM.get(key)
    if cut is None:
        if len(_UNIFORM) >= 64:
            _UNIFORM.clear()
        cut = _UNIFORM[key] = struct.Struct(f"{size}s" * n)
    return cut


def decode_events(meta_frame: Any, body: Any, large: Sequence,
                  max_payload: int | None) -> BatchView:
    """Check a batch's meta against its frames (all C-level checks) and view it.

    Validates what a node must trust before forwarding: the columns' shapes and types,
    that the sizes add up to the body and the large frames, and that no payload is
    above ``max_payload`` (PayloadTooLarge, ``ref`` = that event's name; None: no
    limit, a client reading what its node checked). Where a payload travels (body or
    own frame) is whatever ``large`` says, whatever its size.
    """
    meta = unpack(meta_frame, "meta")
    if not isinstance(meta, list) or len(meta) < 5:
        raise EncodingError("meta must be [names, index, sizes, large, extras]")
    names, index, sizes_raw, large_idx, extras = meta[:5]
    if not isinstance(names, list) or not all(n.__class__ is str for n in names):
        raise FieldError("meta names must be a list of strings")
    if len(names) > MAX_NAMES:
        raise TooManyNames(f"a batch names at most {MAX_NAMES} distinct events, "
                           f"got {len(names)}")
    if not isinstance(sizes_raw, bytes) or len(sizes_raw) % 4:
        raise FieldError("meta sizes must be uint32 values packed as bin")
    sizes = from_le("I", sizes_raw)
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
        idx = from_le("H", index)
        if n and max(idx) >= len(names):
            raise FieldError("meta index points past the names list")
    if n and max_payload is not None and max(sizes) > max_payload:
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
        if len(as_buffer(frame)) != sizes[i]:
            raise FieldError(f"large payload frame of event {i} holds "
                             f"{len(as_buffer(frame))} bytes, meta says {sizes[i]}")
    small_total = sum(sizes) - sum(sizes[i] for i in large_idx)
    if small_total != len(as_buffer(body)):
        raise FieldError(f"body holds {len(as_buffer(body))} bytes but the meta "
                         f"declares {small_total}")
    if extras is not None:
        _check_extras(extras, n)
    return BatchView(names, idx, sizes, large_idx, extras, body, large)


def _check_extras(extras: Any, n: int) -> None:
    """Validate ``extras`` in place, turning each value into a tuple."""
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
