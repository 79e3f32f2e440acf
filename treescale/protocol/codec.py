"""What every message shares: msgpack in and out, frame buffers, typed decode errors and
the field checks decoders are built from. Pure.

Owns: ``packb``, ``unpack``, ``as_buffer``, the ``ProtocolError`` family (each with the
ERROR code from ``treescale.subjects`` that the sender of a bad message gets back),
``decode_header`` and the small checkers that turn a header field into a typed value
or a ``FieldError`` naming it.

Must not touch: sockets, clocks, threads, the routing table; no knowledge of any one
message kind beyond its name for error messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from treescale import subjects
from treescale.protocol.kinds import KIND_NAMES, PROTOCOL_VERSION

# ------------------------------------------------------------------------- errors


class ProtocolError(Exception):
    """A frame sequence that is not a valid TreeScale message.

    ``code`` is a stable short string that goes into the ERROR message the sender gets;
    ``ref`` (or None) says what the error is about (an event name, a request id).
    """

    code = subjects.BAD_MESSAGE

    def __init__(self, message: str, ref: Any = None) -> None:
        super().__init__(message)
        self.ref = ref


class FrameCountError(ProtocolError):
    code = subjects.BAD_FRAME_COUNT


class EncodingError(ProtocolError):
    """A frame that should be msgpack is not, or has the wrong shape."""

    code = subjects.BAD_ENCODING


class UnknownKind(ProtocolError):
    code = subjects.UNKNOWN_KIND


class VersionMismatch(ProtocolError):
    code = subjects.VERSION


class FieldError(ProtocolError):
    """A field has the wrong type or an invalid value."""

    code = subjects.BAD_FIELD


class PayloadTooLarge(ProtocolError):
    code = subjects.TOO_LARGE


class OutOfRange(FieldError):
    """A number (a depth, a sequence number, an id, a count) outside its range."""

    code = subjects.OUT_OF_RANGE


class BadCount(FieldError):
    """Counts that do not add up to what they count."""

    code = subjects.BAD_COUNT


class BadAddress(FieldError):
    """An address a node would dial that is not ``tcp://host:port``."""

    code = subjects.BAD_ADDRESS


class TooManyNames(FieldError):
    code = subjects.TOO_MANY_NAMES


# ----------------------------------------------------------------------- msgpack


def packb(obj: Any) -> bytes:
    """msgpack with bin/str kept apart (a fresh packer: safe from any thread)."""
    return msgpack.packb(obj, use_bin_type=True)


def as_buffer(frame: Any) -> Any:
    """The bytes-like content of a frame (zmq.Frame, bytes or memoryview), uncopied."""
    buf = getattr(frame, "buffer", None)
    return frame if buf is None else buf


def _limits(size: int) -> dict:
    """msgpack's container and string limits for a buffer of ``size`` bytes: nothing
    may claim more items or bytes than the buffer can hold (an item takes at least a
    byte, a map entry two), so decoding work stays proportional to the bytes
    received whatever version of msgpack defaults to what."""
    return {"max_str_len": size, "max_bin_len": size, "max_ext_len": size,
            "max_array_len": size, "max_map_len": size // 2}


def unpack(frame: Any, what: str) -> Any:
    """A msgpack frame as Python values (integer map keys allowed: ``extras`` has
    them), or EncodingError naming ``what`` frame it was."""
    buf = as_buffer(frame)
    try:
        return msgpack.unpackb(buf, raw=False, strict_map_key=False, use_list=True,
                               **_limits(len(buf)))
    except Exception as exc:  # msgpack raises several unrelated types
        raise EncodingError(f"{what} frame is not valid msgpack: {exc}") from None


def loads(data: Any) -> Any:
    """A msgpack payload from the wire (a service request, a system event) as Python
    values, with the same bounds as ``unpack``; msgpack's own exceptions propagate."""
    buf = as_buffer(data)
    return msgpack.unpackb(buf, raw=False, **_limits(len(buf)))


def decode_header(frame: Any) -> list:
    """The header frame as a list whose first item is the kind (an int)."""
    header = unpack(frame, "header")
    if not isinstance(header, list) or not header:
        raise EncodingError("header must be a non-empty msgpack array")
    if not isinstance(header[0], int) or isinstance(header[0], bool):
        raise EncodingError("header must start with the message kind (an integer)")
    return header


# ------------------------------------------------------------------ field checks


def fields(header: list, n: int) -> list:
    """Header fields after the kind, padded with None; extra trailing fields are
    ignored so that newer peers can add fields without breaking older ones."""
    rest = header[1:n + 1]
    if len(rest) < n:
        rest += [None] * (n - len(rest))
    return rest


def expect_frames(frames: Sequence, kind: int, count: int) -> None:
    if len(frames) != count:
        raise FrameCountError(
            f"{KIND_NAMES[kind]} takes {count} frame(s), got {len(frames)}")


def text(value: Any, what: str, optional: bool = False) -> str | None:
    """A str field (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise FieldError(f"{what} must be a string, got {type(value).__name__}")
    return value


def texts(value: Any, what: str) -> tuple[str, ...]:
    """A list-of-str field; nil is the empty tuple."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FieldError(f"{what} must be a list of strings")
    return tuple(value)


def mapping(value: Any, what: str) -> dict | None:
    """A map field, or None for nil."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FieldError(f"{what} must be a map, got {type(value).__name__}")
    return value


def integer(value: Any, what: str) -> int:
    """An int field (msgpack's true/false are not integers here)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise FieldError(f"{what} must be an integer, got {type(value).__name__}")
    return value


U64 = (1 << 64) - 1
I63 = (1 << 63) - 1


def bounded(value: Any, what: str, low: int, high: int) -> int:
    """An int field within ``low..high`` (OutOfRange otherwise): every number that a
    node stores, adds to or sends on must fit what the other end can encode."""
    value = integer(value, what)
    if not low <= value <= high:
        raise OutOfRange(f"{what} must be in {low}..{high}, got {value}")
    return value


MAX_ADDRESS = 255


def address(value: Any, what: str, optional: bool = False) -> str:
    """A node's ``tcp://host:port`` (port 1-65535), or "" when ``optional``: nodes
    dial what their neighbours tell them, so nothing else may pass."""
    if value is None and optional:
        return ""
    value = text(value, what)
    if value == "" and optional:
        return value
    host, sep, port = value.removeprefix("tcp://").rpartition(":")
    if (not value.startswith("tcp://") or not sep or not host or len(value) > MAX_ADDRESS
            or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536
            or any(c.isspace() or c in "/;" for c in host)):
        raise BadAddress(f"{what} must be tcp://host:port with a port in 1..65535 "
                         f"(at most {MAX_ADDRESS} characters), got {value[:80]!r}")
    return value


def check_version(value: Any) -> int:
    """The protocol version of a hello or link: an int, and the one we speak."""
    version = integer(value, "protocol version")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"protocol version {version} is not supported (this node speaks "
            f"{PROTOCOL_VERSION})")
    return version
