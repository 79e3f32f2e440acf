"""What ``batches()`` hands out: ``EventBatch``, one delivery seen as columns. Pure.

Owns: the column view of one delivery as it came off the wire (a DELIVER's source
runs and its batch, decoded per batch, never per event unless asked), the same view
over events the client had to take apart (replies taken out, handlers served, durable
deliveries), and ``batch_of``, which turns any delivery the core hands out into one.

Must not touch: sockets, threads, event loops (the clients hand their inbox items
over), the wire layout (treescale.protocol.batch), the meaning of messages
(treescale.client_core).

Why columns: an application that counts, forwards or bulk-decodes a stream pays per
batch what ``events()`` pays per event (an ``Event`` each); iterating a batch still
gives those ``Event``s to code that wants them.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from itertools import accumulate, groupby
from typing import Any

from treescale import protocol as P
from treescale.client_core import Deliver, Event, events_of


class EventBatch:
    """One delivery: ``len(batch)`` events in order, as columns.

    ``names`` the distinct names, ``name(i)`` event i's; ``payloads`` every payload
    (bytes or memoryviews of the received frame, built on first use); ``sources`` the
    wire's runs of ``(source, count)`` and ``source(i)``; ``sizes`` the payload sizes
    (an array, no payload touched); ``iter(batch)`` the ``Event``s (``DurableDelivery``
    for a durable subscription's, with ``ack()``).
    """

    __slots__ = ("_header", "_view", "_events", "_payloads", "_ends")

    def __init__(self, header: list, view: P.BatchView) -> None:
        self._header = header
        self._view: P.BatchView | None = view
        self._events: tuple | None = None
        self._payloads: list | None = None
        self._ends: list | None = None  # cumulative counts of the source runs

    @classmethod
    def of_frames(cls, frames: list) -> EventBatch:
        """The view of a DELIVER message as received (header, meta, body, large...),
        checked but for max_payload (its node checked that)."""
        return cls(P.decode_header(frames[0]),
                   P.decode_events(frames[1], frames[2], frames[3:], None))

    @classmethod
    def of_events(cls, events: Sequence[Event]) -> EventBatch:
        """The same view over events already built (the client looked inside)."""
        batch = cls([], None)
        batch._events = tuple(events)
        return batch

    def __len__(self) -> int:
        return self._view.n if self._events is None else len(self._events)

    def __iter__(self) -> Iterator[Event]:
        if self._events is not None:
            return iter(self._events)
        return events_of(self._header, self._view)

    def __repr__(self) -> str:
        return f"EventBatch({len(self)} events, names={self.names[:5]!r})"

    @property
    def names(self) -> list[str]:
        """The distinct event names, in order of first appearance."""
        if self._events is None:
            return list(self._view.names)
        return list(dict.fromkeys(ev.name for ev in self._events))

    def name(self, i: int) -> str:
        """The name of event ``i``."""
        if self._events is not None:
            return self._events[i].name
        view = self._view
        i = self._at(i)
        return view.names[0] if view.index is None else view.names[view.index[i]]

    @property
    def payloads(self) -> list:
        """Every payload, in order: slices of the received body (memoryviews) and the
        large payloads' own frames."""
        if self._payloads is None:
            if self._events is None:
                self._payloads = self._view.payloads()
            else:
                self._payloads = [ev.data for ev in self._events]
        return self._payloads

    @property
    def sizes(self) -> Sequence[int]:
        """Every payload's size in bytes (the wire's column: no payload is built)."""
        if self._events is None:
            return self._view.sizes
        return [len(ev.data) for ev in self._events]

    @property
    def nbytes(self) -> int:
        """The payloads' bytes in all."""
        return sum(self.sizes)

    @property
    def sources(self) -> list[tuple[str, int]]:
        """Who published the events: runs of ``(source, count)``, in order."""
        if self._events is None:
            runs = self._header[1] if len(self._header) > 1 else []
            return [(source, count) for source, count in runs]
        return [(s, len(list(run))) for s, run in
                groupby(ev.source for ev in self._events)]

    def source(self, i: int) -> str:
        """The publisher of event ``i`` (its name, or ``client-<id>``)."""
        if self._events is not None:
            return self._events[i].source
        i = self._at(i)
        runs = self._header[1] if len(self._header) > 1 else []
        if len(runs) == 1:
            return runs[0][0]
        if self._ends is None:
            self._ends = list(accumulate(count for _, count in runs))
        return runs[bisect_right(self._ends, i)][0]

    def _at(self, i: int) -> int:
        """``i`` as a position (negative counts from the end, like a list's)."""
        n = self._view.n
        if not -n <= i < n:
            raise IndexError(f"event {i} of a batch of {n}")
        return i % n


def batch_of(item: Any) -> EventBatch:
    """The batch of one inbox item: a delivery as received (columns over its frames)
    or events the client built (``Deliver`` after a look inside, ``DeliverDurable``)."""
    if item.__class__ is Deliver and item.frames is not None:
        return EventBatch.of_frames(item.frames)
    return EventBatch.of_events(tuple(item.iter_events()))
