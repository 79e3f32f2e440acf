"""The WebSocket framing of the protocol: one binary WebSocket message carries one
ZeroMQ multipart message.

Owns: turning a multipart message into one WebSocket payload and back, and what a
malformed payload is. No sockets.

The layout (docs/PROTOCOL.md, "WebSocket"): for each frame, its length as a
little-endian uint32, then its bytes. Why not a msgpack array of frames: the
gateway relays without looking inside, and length prefixes let it cut a payload into
frames as memoryviews (no copy of a large body) and join frames with one copy.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

_LENGTH = struct.Struct("<I")
PREFIX = _LENGTH.size
MAX_FRAME = (1 << 32) - 1


class FramingError(ValueError):
    """A WebSocket payload that is not a sequence of length-prefixed frames."""


def encode(frames: Sequence[bytes | memoryview]) -> bytes:
    """One WebSocket payload holding ``frames`` (bytes-like), in order."""
    parts: list[bytes | memoryview] = []
    pack = _LENGTH.pack
    for frame in frames:
        size = len(frame) if not isinstance(frame, memoryview) else frame.nbytes
        if size > MAX_FRAME:
            raise FramingError(f"a frame of {size} bytes does not fit a uint32 length")
        parts.append(pack(size))
        parts.append(frame)
    return b"".join(parts)


def decode(payload: bytes | bytearray | memoryview) -> list[memoryview]:
    """The frames of one WebSocket payload, as views into it.

    Raises FramingError naming the problem: an empty payload, a length prefix cut
    short, or a frame that claims more bytes than remain."""
    view = memoryview(payload).cast("B")
    total = view.nbytes
    if total == 0:
        raise FramingError("an empty message: a message holds at least one frame")
    frames: list[memoryview] = []
    offset = 0
    unpack = _LENGTH.unpack_from
    while offset < total:
        if total - offset < PREFIX:
            raise FramingError(f"frame {len(frames)}: its length prefix is cut short "
                               f"({total - offset} of {PREFIX} bytes)")
        (size,) = unpack(view, offset)
        offset += PREFIX
        if size > total - offset:
            raise FramingError(f"frame {len(frames)} claims {size} bytes, "
                               f"{total - offset} remain")
        frames.append(view[offset:offset + size])
        offset += size
    return frames
