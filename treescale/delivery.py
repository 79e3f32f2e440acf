"""What is owed to whom, as values: a link's custody window and a durable
subscription's deliveries. Pure: the node passes the clock in.

Owns: ``Owed`` — the events a node still owes one neighbour (kept until that neighbour
acknowledged them), of which at most ``window`` are in flight, resent in order after a
reconnect; ``Durable`` — a durable subscription's pending events, which of them are out
with which member until ``ack_wait``, naks and their delays, the ``max_pending`` window,
turns among a queue group's members, and retention (``max_age``, ``max_bytes``).

Must not touch: storage, sockets, clocks (``now`` is an argument). The node's rooms
(brokers/custody.py, brokers/durables.py) store what these decide and send it.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field


class Owed:
    """Events owed to one neighbour: ``seqs`` (ours, in order), ``inflight`` (sent,
    not yet acknowledged), ``queue`` (not yet sent since the link came up)."""

    __slots__ = ("seqs", "inflight", "queue", "window")

    def __init__(self, window: int, seqs: Iterable[int] = ()) -> None:
        self.window = window
        self.seqs: dict[int, None] = dict.fromkeys(sorted(seqs))
        self.inflight: dict[int, float] = {}  # seq -> when it was sent
        self.queue: deque[int] = deque(self.seqs)

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, seq: int) -> None:
        if seq not in self.seqs:
            self.seqs[seq] = None
            self.queue.append(seq)

    def restart(self) -> None:
        """The link came (back) up: nothing is in flight, everything owed goes again,
        oldest first (the neighbour drops what it already has by id)."""
        self.inflight.clear()
        self.queue = deque(sorted(self.seqs))

    def next_batch(self, limit: int, now: float = 0.0) -> list[int]:
        """What may go now: up to ``limit`` events, and no more than the window."""
        room = min(limit, self.window - len(self.inflight))
        out = []
        queue, seqs = self.queue, self.seqs
        while room > 0 and queue:
            seq = queue.popleft()
            if seq in seqs and seq not in self.inflight:
                out.append(seq)
                self.inflight[seq] = now
                room -= 1
        return out

    def unsent(self, seqs: list[int]) -> None:
        """A send failed (the socket was full): these go first next time."""
        for seq in reversed(seqs):
            self.inflight.pop(seq, None)
            self.queue.appendleft(seq)

    def expire(self, now: float, timeout: float) -> int:
        """Sent more than ``timeout`` ago and still not acknowledged (the ack or the
        forward was lost, or the neighbour is full): they go again, first."""
        late = [seq for seq, sent in self.inflight.items() if now - sent > timeout]
        self.unsent(late)
        return len(late)

    def acked(self, seqs: Iterable[int]) -> list[int]:
        """The neighbour has these: what we no longer owe (the ones we did owe)."""
        done = []
        for seq in seqs:
            if self.seqs.pop(seq, 0) is None:
                done.append(seq)
            self.inflight.pop(seq, None)
        return done


@dataclass(slots=True)
class Pending:
    """One event a durable still has to see acknowledged."""

    size: int
    time: float
    deliveries: int = 0  # how many times it went out before
    member: Hashable | None = None  # who has it now (None: waiting)
    deadline: float = 0.0  # when it goes again: ack_wait, or a nak's delay


@dataclass
class Durable:
    """A durable subscription's delivery state (its node stores the rest).

    ``pending`` holds every event not yet acknowledged; of those, ``outstanding`` are
    out with a member until their deadline, ``ready`` wait for a turn (in order),
    ``delayed`` wait for a nak's delay to pass.
    """

    name: str
    pattern: str
    queue: str | None = None
    ack_wait: float = 30.0
    max_pending: int = 1000
    max_age: float | None = None
    max_bytes: int | None = None
    pending: dict[int, Pending] = field(default_factory=dict)  # arrival order
    outstanding: dict[int, None] = field(default_factory=dict)
    ready: deque = field(default_factory=deque)
    delayed: list = field(default_factory=list)  # heap of (deadline, seq)
    members: list = field(default_factory=list)
    turn: int = 0
    acked: int = 0
    delivered: int = 0
    redelivered: int = 0
    overflow: int = 0
    last_seq: int = 0
    bytes: int = 0

    # -- events in ---------------------------------------------------------------

    def add(self, seq: int, size: int, time: float, deliveries: int = 0) -> None:
        if seq not in self.pending:
            self.pending[seq] = Pending(size, time, deliveries)
            self.bytes += size
            self.ready.append(seq)
            self.last_seq = max(self.last_seq, seq)

    @property
    def unacked(self) -> int:
        return len(self.outstanding)

    # -- members -----------------------------------------------------------------

    def attach(self, member: Hashable) -> list[Hashable]:
        """A client attaches; without a queue it takes the durable over: the members
        it replaced are returned (their events go again, to it)."""
        replaced: list = []
        if member in self.members:
            return replaced
        if self.queue is None:
            replaced = list(self.members)
            for old in replaced:
                self.detach(old)
        self.members.append(member)
        return replaced

    def detach(self, member: Hashable) -> None:
        """A member left: what it had not acknowledged goes to the others now, marked
        as delivered before."""
        if member in self.members:
            self.members.remove(member)
        back = [s for s in self.outstanding if self.pending[s].member == member]
        for seq in reversed(back):
            self._back(seq)

    def _back(self, seq: int) -> None:
        p = self.pending[seq]
        p.member = None
        p.deadline = 0.0
        self.outstanding.pop(seq, None)
        self.ready.appendleft(seq)

    # -- out ---------------------------------------------------------------------

    def due(self, now: float) -> list[tuple[Hashable, int, int]]:
        """``(member, seq, deliveries before)`` to send now: expired ones (ack_wait or
        a nak's delay) and waiting ones, oldest first, within ``max_pending`` events
        out at once, members in turn."""
        back = [s for s in self.outstanding if self.pending[s].deadline <= now]
        for seq in back:
            p = self.pending[seq]
            p.member, p.deadline = None, 0.0
            self.outstanding.pop(seq)
        delayed = self.delayed
        while delayed and delayed[0][0] <= now:
            _, seq = heapq.heappop(delayed)
            p = self.pending.get(seq)
            if p is not None and p.member is None and p.deadline and p.deadline <= now:
                p.deadline = 0.0
                back.append(seq)
        back.sort()  # what goes again goes first, and oldest first among itself
        self.ready.extendleft(reversed(back))
        if not self.members:
            return []
        out = []
        room = self.max_pending - len(self.outstanding)
        members, ready, pending = self.members, self.ready, self.pending
        while room > 0 and ready:
            seq = ready.popleft()
            p = pending.get(seq)
            if p is None or p.member is not None or p.deadline:
                continue  # acked, dropped, out already, or delayed
            member = members[self.turn % len(members)]
            self.turn += 1
            p.member = member
            p.deadline = now + self.ack_wait
            self.outstanding[seq] = None
            out.append((member, seq, p.deliveries))
            if p.deliveries:
                self.redelivered += 1
            p.deliveries += 1
            self.delivered += 1
            room -= 1
        return out

    def next_deadline(self) -> float | None:
        """When ``due`` has something again without any new event or ack."""
        times = [self.pending[s].deadline for s in self.outstanding]
        if self.delayed:
            times.append(self.delayed[0][0])
        return min(times) if times else None

    def ack(self, seq: int) -> bool:
        """Done with ``seq``: True if it was pending."""
        p = self.pending.pop(seq, None)
        if p is None:
            return False
        self.outstanding.pop(seq, None)
        self.bytes -= p.size
        self.acked += 1
        return True

    def nak(self, seq: int, delay: float, now: float) -> bool:
        """Give ``seq`` back: it goes again after ``delay`` (to any member)."""
        p = self.pending.get(seq)
        if p is None:
            return False
        self._back(seq)
        if delay > 0:
            self.ready.popleft()
            p.deadline = now + delay
            heapq.heappush(self.delayed, (p.deadline, seq))
        return True

    # -- retention ---------------------------------------------------------------

    def overflowing(self, now: float) -> list[int]:
        """Pending events retention drops (oldest first): older than ``max_age``,
        then beyond ``max_bytes``. The caller tells (``$sys.durable.overflow``)."""
        drop = []
        if self.max_age is not None:
            drop = [s for s, p in self.pending.items() if now - p.time > self.max_age]
        if self.max_bytes is not None:
            total = self.bytes - sum(self.pending[s].size for s in drop)
            skip = set(drop)
            # a replay adds older seqs after newer ones: pending is not in seq order
            for s, p in (sorted(self.pending.items()) if total > self.max_bytes else ()):
                if total <= self.max_bytes:
                    break
                if s not in skip:
                    drop.append(s)
                    total -= p.size
        drop.sort()
        for s in drop:
            self.bytes -= self.pending.pop(s).size
            self.outstanding.pop(s, None)
        self.overflow += len(drop)
        return drop

    def settings(self) -> dict:
        return {"pattern": self.pattern, "queue": self.queue, "ack_wait": self.ack_wait,
                "max_pending": self.max_pending, "max_age": self.max_age,
                "max_bytes": self.max_bytes, "acked": self.acked,
                "delivered": self.delivered, "redelivered": self.redelivered,
                "overflow": self.overflow, "last_seq": self.last_seq}
