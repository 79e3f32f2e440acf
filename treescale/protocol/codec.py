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


# ----------------------------------------------------------------------- msgpack


def packb(obj: Any) -> bytes:
    """msgpack with bin/str kept apart (a fresh packer: safe from any thread)."""
    return msgpack.packb(obj, use_bin_type=True)


def as_buffer(frame: Any) -> Any:
    """The bytes-like content of a frame (zmq.Frame, bytes or memoryview), uncopied."""
    buf = getattr(frame, "buffer", None)
    return frame if buf is None else buf


def unpack(frame: Any, what: str) -> Any:
    """A msgpack frame as Python values (integer map keys allowed: ``extras`` has
    them), or EncodingError naming ``what`` frame it was."""
    try:
        return msgpack.unpackb(as_buffer(frame), raw=False, strict_map_key=False,
                               use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise EncodingError(f"{what} frame is not valid msgpack: {exc}") from None


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


def check_version(value: Any) -> int:
    """The protocol version of a hello or link: an int, and the one we speak."""
    version = integer(value, "protocol version")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"protocol version {version} is not supported (this node speaks "
            f"{PROTOCOL_VERSION})")
    return version
