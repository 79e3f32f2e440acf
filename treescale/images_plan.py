"""The flow control of an image transfer: which byte ranges to ask for next. Pure.

What has arrived is kept as a value; treescale.services.images does the I/O.

A transfer of ``total`` bytes is cut into chunks of at most ``chunk`` bytes; at most
``window`` of them are asked for at once, so the receiver never holds more than
``window * chunk`` bytes in flight, whatever the image's size. Chunks may arrive in any
order (each is written at its offset); a short answer puts the rest of its range back
at the front of the queue.

Owns: the range queue, the in-flight set, the received count.
Must not touch: sockets, files, clocks, threads (a pure module).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class PlanError(ValueError):
    """An answer that does not fit what was asked (a bug or a misbehaving source)."""


@dataclass
class ChunkPlan:
    """The bookkeeping of one transfer of ``total`` bytes."""

    total: int
    chunk: int = 1 << 20
    window: int = 4
    received: int = 0
    _next: int = 0  # the first offset never handed out
    _retry: list[tuple[int, int]] = field(default_factory=list)  # ranges to ask again
    _flight: dict[int, int] = field(default_factory=dict)  # offset -> length asked

    def __post_init__(self) -> None:
        if self.total < 0 or self.chunk <= 0 or self.window <= 0:
            raise ValueError("total >= 0, chunk > 0 and window > 0")

    @property
    def done(self) -> bool:
        return self.received == self.total

    @property
    def in_flight(self) -> int:
        return len(self._flight)

    def next_requests(self) -> list[tuple[int, int]]:
        """The (offset, length) ranges to ask for now, filling the window."""
        out = []
        while len(self._flight) < self.window:
            if self._retry:
                offset, length = self._retry.pop(0)
            elif self._next < self.total:
                offset, length = self._next, min(self.chunk, self.total - self._next)
                self._next += length
            else:
                break
            self._flight[offset] = length
            out.append((offset, length))
        return out

    def arrived(self, offset: int, nbytes: int) -> None:
        """``nbytes`` came for the range asked at ``offset`` (fewer than asked: the rest
        is asked again; none at all is a source that lost data, refused)."""
        asked = self._flight.get(offset)
        if asked is None:
            raise PlanError(f"an answer for offset {offset}, which was not asked for")
        if not 0 < nbytes <= asked:
            raise PlanError(f"{nbytes} bytes at offset {offset}: asked for {asked}")
        del self._flight[offset]
        self.received += nbytes
        if nbytes < asked:
            self._retry.insert(0, (offset + nbytes, asked - nbytes))

    def failed(self, offset: int) -> None:
        """The request at ``offset`` got no answer: ask for its range again."""
        asked = self._flight.pop(offset, None)
        if asked is None:
            raise PlanError(f"no request in flight at offset {offset}")
        self._retry.insert(0, (offset, asked))
