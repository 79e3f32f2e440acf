"""The batch part of the blocking ``Client``'s surface: ``publish_many`` and
``batches()``.

Owns: ``BatchSurface``, a mixin of ``Client`` (treescale.client), split out so that the
class stays within the size the architecture test allows. It relies on ``Client``'s
``core``, ``_outbox``, ``_next_delivery``, ``_current``, ``_wait_for_room``, ``_wake``,
``_sleeping`` and ``_woken``, the same hand-offs ``publish`` and ``events()`` use.

Must not touch: the socket (the I/O thread's), the wire layout (the batches are
encoded by treescale.client_io ``pack_many``, read by treescale.client_batch).

Mixed delivery: ``batches()`` and ``events()`` drain one inbox, a delivery (one
DELIVER from the node, or what handlers and replies left of it) being one item; each
item goes to whichever asks first, and what an ``events()`` loop left of its current
delivery comes out of ``batches()`` first, so order is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from treescale.client_batch import EventBatch, batch_of
from treescale.client_core import ClientCore
from treescale.client_io import MAX_QUEUED, Outbox, pack_many


class BatchSurface:
    """What ``Client`` offers for events in batches (see the methods)."""

    core: ClientCore
    _outbox: Outbox
    _next_delivery: Callable[[float | None], Any]
    _current: Iterator
    _sleeping: bool
    _woken: bool

    def publish_many(self, names: str | Iterable[str], payloads: Iterable,
                     target: str | None = None, mode: str | int = "all",
                     headers: dict | None = None) -> int:
        """Queue many events at once: ``names`` one name for all or one per payload.
        They are encoded here, straight into PUB batches (no per-event Python work),
        and leave in call order with everything else; blocks like ``publish`` while
        MAX_QUEUED events wait. Returns how many were queued. Ordinary events only:
        durable ones go one by one through ``publish(durable=True)``."""
        box, count = self._outbox, 0
        for message, n in pack_many(self.core, names, payloads, target, mode, headers):
            box.add_encoded(message, n)
            count += n
            if len(box) > MAX_QUEUED:
                self._wait_for_room()
        if count and self._sleeping and not self._woken:
            self._wake()
        return count

    def batches(self, timeout: float | None = None) -> Iterator[EventBatch]:
        """Received events a delivery at a time, as columns (``EventBatch``); stops
        after ``timeout`` seconds without one. Drains the same inbox as ``events()``:
        what an ``events()`` loop left of its current delivery comes first."""
        rest = tuple(self._current)
        if rest:
            yield EventBatch.of_events(rest)
        while (item := self._next_delivery(timeout)) is not None:
            yield batch_of(item)
