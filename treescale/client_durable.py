"""A client's side of durable delivery, without any I/O. Pure.

Owns: the durable events this client published and the node has not confirmed yet
(numbered by a client seq, ``cseq``, kept in cseq order, resent whole after a new
session: the node de-duplicates them by id), the refusals not yet reported, the
durable subscriptions to resume after a new session, the acks and naks waiting to
leave, and the checking of a durable subscription's arguments. What goes out is
coalesced: ``take`` returns one DPUB (or a few, if large) and one DACK per durable,
whatever was queued since the last call.

Must not touch: sockets, clocks, threads or event loops (a shell that publishes from
several threads hands in a lock), the meaning of the node's messages or the events
built from them (treescale.client_core), waiting for anything (the shells).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections import deque
from collections.abc import Iterable
from typing import Any

from treescale import protocol as P

DPUB_BYTES = 1 << 20  # about this many payload bytes in one DPUB
MAX_UNCONFIRMED = 10_000  # durable events a client keeps before publish blocks
STARTS = ("new", "all", "seq", "time")


def subscribe_args(durable: str, pattern: str, queue: str | None = None,
                   start: str | int = "new", seq: int | None = None,
                   time: float | None = None, ack_wait: float = 30.0,
                   max_pending: int = 1000, max_age: float | None = None,
                   max_bytes: int | None = None) -> dict:
    """The DCTL ``subscribe`` args for these choices (ValueError for bad ones):
    ``start`` is "new", "all", or a seq (an int, like ``seq=N``); ``time=T`` starts
    at the first event stored at or after T (epoch seconds)."""
    if not isinstance(durable, str) or not durable or len(durable) > P.MAX_ID:
        raise ValueError(f"a durable name must hold 1..{P.MAX_ID} characters")
    if isinstance(start, int) and not isinstance(start, bool):
        if seq is not None and seq != start:
            raise ValueError("give the start seq once (start=N or seq=N)")
        seq, start = start, "seq"
    if seq is not None and time is not None:
        raise ValueError("start at a seq or at a time, not both")
    if seq is not None:
        if start not in ("new", "seq"):
            raise ValueError(f"start={start!r} and seq={seq} contradict each other")
        start = "seq"
    elif time is not None:
        if start not in ("new", "time"):
            raise ValueError(f"start={start!r} and time={time} contradict each other")
        start = "time"
    if start not in STARTS or (start == "seq" and seq is None) or \
            (start == "time" and time is None):
        raise ValueError("start must be 'new', 'all', a seq (start=N, seq=N) or a time "
                         f"(time=T), got {start!r}")
    if seq is not None and (not isinstance(seq, int) or seq < 0):
        raise ValueError(f"a start seq must be a number >= 0, got {seq!r}")
    if ack_wait <= 0 or max_pending < 1:
        raise ValueError("ack_wait must be > 0 seconds and max_pending >= 1")
    return {"durable": durable, "pattern": pattern, "queue": queue, "start": start,
            "seq": int(seq or 0), "time": float(time or 0.0),
            "ack_wait": float(ack_wait), "max_pending": int(max_pending),
            "max_age": None if max_age is None else float(max_age),
            "max_bytes": None if max_bytes is None else int(max_bytes)}


def replay_args(name: str, seq: int | None, time: float | None) -> dict:
    """The DCTL ``replay`` args: exactly one of ``seq`` and ``time``."""
    if (seq is None) == (time is None):
        raise ValueError("replay from a seq or from a time (exactly one of them)")
    return {"durable": name, "seq": int(seq)} if seq is not None else \
        {"durable": name, "time": float(time)}


class DurableState:
    """What one client keeps for durable delivery between its I/O wakeups.

    ``publish``, ``ack`` and ``nak`` may be called from any thread (under ``lock``);
    the rest runs on the I/O side.
    """

    def __init__(self, lock: Any = None, max_unconfirmed: int = MAX_UNCONFIRMED) -> None:
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.max_unconfirmed = max_unconfirmed
        self.prefix = os.urandom(8).hex()  # default ids: PREFIX:CSEQ
        self.cseqs = itertools.count(1)
        self.last_cseq = 0
        self.unconfirmed: dict[int, P.DurableEvent] = {}  # by cseq, in cseq order
        self.unsent: deque[int] = deque()  # cseqs to send in this session, in order
        self.refused: dict[int, tuple[str, str, str]] = {}  # cseq -> (id, code, message)
        self.acks: deque[tuple[str, int, float | None]] = deque()  # (durable, seq, nak delay)
        self.subs: dict[str, dict] = {}  # durable name -> its subscribe args (resume)

    # ------------------------------------------------------------ publishing

    def publish(self, name: str, payload: Any, headers: dict | None,
                event_id: str | None) -> tuple[int, str]:
        """Keep a durable event until the node confirms it; (its cseq, its id)."""
        if event_id is not None and (not isinstance(event_id, str) or not event_id
                                     or len(event_id) > P.MAX_ID):
            raise ValueError(f"an event id must hold 1..{P.MAX_ID} characters")
        if payload.__class__ is not bytes:
            payload = bytes(payload)  # kept for resends: the caller may reuse its buffer
        with self.lock:
            cseq = next(self.cseqs)
            self.last_cseq = cseq
            eid = event_id or f"{self.prefix}:{cseq}"
            self.unconfirmed[cseq] = P.DurableEvent(cseq, eid, name, payload, headers)
            self.unsent.append(cseq)
        return cseq, eid

    def has_room(self) -> bool:
        return len(self.unconfirmed) < self.max_unconfirmed

    def has_work(self) -> bool:
        """Anything to send (events or acks)?"""
        return bool(self.unsent) or bool(self.acks)

    def session_started(self) -> None:
        """A new session: every unconfirmed event goes again, in cseq order."""
        with self.lock:
            self.unsent = deque(self.unconfirmed)

    def take(self) -> list[list]:
        """The messages for what was queued since the last call: DPUBs (at most
        MAX_DURABLE_BATCH events and about DPUB_BYTES of payload each), then one DACK
        per durable."""
        return [*self._dpubs(), *self._dacks()]

    def _dpubs(self) -> list[list]:
        with self.lock:
            unsent, self.unsent = self.unsent, deque()
            events = [self.unconfirmed[c] for c in unsent if c in self.unconfirmed]
        out, batch, size = [], [], 0
        for ev in events:
            n = len(ev.payload)
            if batch and (len(batch) >= P.MAX_DURABLE_BATCH or size + n > DPUB_BYTES):
                out.append(P.encode_dpub(batch))
                batch, size = [], 0
            batch.append(ev)
            size += n
        if batch:
            out.append(P.encode_dpub(batch))
        return out

    def on_confirm(self, msg: P.DurableConfirm) -> None:
        """Confirmed events are done; refused ones are done too, and kept as failures
        for ``flush``/``wait`` to report."""
        with self.lock:
            for cseq in msg.confirmed:
                self.unconfirmed.pop(cseq, None)
            for cseq, code, message in msg.refused:
                ev = self.unconfirmed.pop(cseq, None)
                if ev is not None:
                    self.refused[cseq] = (ev.id, code, message)

    def outcome(self, upto: int, only: int | None = None) -> tuple[int, list]:
        """(unconfirmed count, refusals) of the events with cseq <= ``upto`` (or of
        the one event ``only``); the refusals returned are forgotten: reported once."""
        with self.lock:
            if only is not None:
                left = int(only in self.unconfirmed)
                refused = [self.refused.pop(only)] if only in self.refused else []
                return left, refused
            left = 0
            for cseq in self.unconfirmed:
                if cseq > upto:
                    break
                left += 1
            mine = [c for c in self.refused if c <= upto]
            return left, [self.refused.pop(c) for c in mine]

    def settled(self, upto: int, only: int | None = None) -> bool:
        """No event with cseq <= ``upto`` (or the event ``only``) awaits a confirm."""
        if only is not None:
            return only not in self.unconfirmed
        first = next(iter(self.unconfirmed), None)
        return first is None or first > upto

    # ------------------------------------------------------------ acks

    def ack(self, durable: str, seq: int) -> None:
        self.acks.append((durable, seq, None))

    def nak(self, durable: str, seq: int, delay: float = 0.0) -> None:
        if not 0 <= delay <= 86400:
            raise ValueError("a nak's delay must be 0..86400 seconds")
        self.acks.append((durable, seq, float(delay)))

    def _dacks(self) -> list[list]:
        if not self.acks:
            return []
        per: dict[str, tuple[list, list]] = {}
        pop = self.acks.popleft
        while True:
            try:
                durable, seq, delay = pop()
            except IndexError:
                break
            acks, naks = per.setdefault(durable, ([], []))
            if delay is None:
                acks.append(seq)
            else:
                naks.append((seq, delay))
        out = []
        step = P.MAX_DURABLE_BATCH
        for durable, (acks, naks) in per.items():
            for i in range(0, max(len(acks), len(naks)), step):
                out.append(P.encode_dack(durable, acks[i:i + step], naks[i:i + step]))
        return out

    # ------------------------------------------------------------ subscriptions

    def resume_args(self) -> Iterable[tuple[str, dict]]:
        """The durable subscriptions to send again after a new session."""
        return list(self.subs.items())
