"""What bench.durable's workers share across systems: the shapes, the subject space,
the latency stamp and the hand-over between a latency publisher and its consumer.

Owns no broker and no client library: bench.durable_jetstream and
bench.durable_treescale drive their systems with these.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection

#: Every durable (TreeScale) and the stream (JetStream) take this pattern.
SUBJECTS = "bench.>"
PROBE = b"probe"
_STAMP = struct.Struct("<cd")


@dataclass(frozen=True)
class Shape:
    """One measurement. ``kind``: publish | consume | latency; ``tree``: leaf -> root
    -> leaf instead of one node; ``count`` is bounded by ``timeout`` too."""

    name: str
    kind: str
    size: int
    count: int
    tree: bool = False
    timeout: float = 60.0


SHAPES: dict[str, Shape] = {s.name: s for s in (
    Shape("publish-100B", "publish", 100, 100_000),
    Shape("publish-1MiB", "publish", 1 << 20, 300),
    Shape("consume-100B", "consume", 100, 50_000),
    Shape("latency-1node", "latency", 100, 1_000),
    Shape("latency-tree", "latency", 100, 1_000, tree=True),
)}
#: Latency events before the measured ones (connection and cache warm-up).
WARMUP = 50


def select(names: list[str], scale: float) -> list[Shape]:
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shapes {unknown}; known: {list(SHAPES)}")
    return [replace(SHAPES[n], count=max(1, int(SHAPES[n].count * scale))) for n in names]


def stamped(size: int) -> bytes:
    """A latency event: the publisher's CLOCK_MONOTONIC (system-wide) padded to ``size``."""
    head = _STAMP.pack(b"T", time.monotonic())
    return head + b"x" * max(0, size - len(head))


def stamp_of(data: bytes) -> float:
    return _STAMP.unpack_from(data)[1]


def recv(conn: Connection, timeout: float) -> str | None:
    """The next word from the other side of the hand-over, or None after ``timeout``."""
    return conn.recv() if conn.poll(max(0.0, timeout)) else None
