"""Durable subscriptions at one node: kept in its store, with interest in the tree while
their clients are away, delivered with acks.

Owns: DCTL (subscribe: create or resume, with its start position, and answer only
once the probe wave says every live node has the interest; unsubscribe; ls, info, rm,
replay), each durable's member in the routing table (``("durable", NAME)``, queue
``$durable:NODE:NAME``), which clients are attached (a queue group shares a durable; without a
queue a new subscriber takes it over), DDELIVER within ``max_pending`` and again after
``ack_wait`` or a nak's delay, DACK, retention (``max_age``, ``max_bytes``:
``$sys.durable.overflow``), and what ``tsctl durable info`` shows.

Must not touch: custody and storage of the events themselves (custody.py), delivery
rules (treescale/delivery.py: pure).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from treescale import protocol as P
from treescale import subjects
from treescale.brokers import gate
from treescale.delivery import Durable
from treescale.permissions import matches
from treescale.routing import PatternError, split_name, split_pattern

if TYPE_CHECKING:
    from treescale.brokers.custody import Custody
    from treescale.brokers.node import Node
    from treescale.brokers.sessions import Session

log = logging.getLogger("treescale.node")

DELIVER_BATCH = 500
CHECK_EVERY = 0.05  # seconds: how late an expired ack_wait or nak delay may go again
MAX_NAME = 128
STARTS = ("new", "all", "seq", "time")


def member_of(name: str) -> tuple[str, str]:
    return ("durable", name)


def is_durable_member(mid: object) -> bool:
    return mid.__class__ is tuple and len(mid) == 2 and mid[0] == "durable"


class DurableRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _number(args: dict, key: str, default: Any, low: float, high: float,
            integer: bool = False) -> Any:
    value = args.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or \
            not low <= value <= high or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise DurableRefused(subjects.BAD_FIELD, f"{key} must be {kind} in "
                             f"{low:g}..{high:g}, got {value!r}")
    return value


class Durables:
    """The durable subscriptions living at one node."""

    def __init__(self, node: Node, custody: Custody, states: dict, owed: dict) -> None:
        self.node = node
        self.custody = custody
        self.subs: dict[str, Durable] = {}
        self.created: dict[str, float] = {}
        self.attached: dict[bytes, set[str]] = {}  # session -> durables it receives
        for name, state in states.items():
            d = self._make(name, state)
            for seq, deliveries in sorted(owed.get(name, {}).items()):
                rec = custody.events[seq]
                d.add(seq, rec.size, rec.time, deliveries)
        self.dirty: set[str] = set()
        self.next_check = 0.0  # when ack_wait deadlines are looked at again

    def _make(self, name: str, state: dict) -> Durable:
        d = Durable(name, state["pattern"], state.get("queue"),
                    state.get("ack_wait", 30.0), state.get("max_pending", 1000),
                    state.get("max_age"), state.get("max_bytes"))
        for key in ("acked", "delivered", "redelivered", "overflow", "last_seq"):
            setattr(d, key, state.get(key, 0))
        self.subs[name] = d
        self.created[name] = state.get("created", time.time())
        mid = member_of(name)
        self.node.table.add_member(mid)
        self.node.exchange.subscribe(mid, d.pattern,
                                     subjects.durable_queue(self.node.name, name))
        return d

    def _save(self, d: Durable) -> None:
        self.custody.store.put_durable(d.name, {**d.settings(),
                                                "created": self.created[d.name]})

    # ---------------------------------------------------------------- events

    def add(self, name: str, seq: int, size: int, when: float, deliveries: int) -> None:
        d = self.subs.get(name)
        if d is not None:
            d.add(seq, size, when, deliveries)
            self.dirty.add(name)

    def pump(self, now: float) -> list:
        """What is due (new events, and those whose ack_wait or delay passed), as
        ``(member, frames)`` to send once the store has committed their counts."""
        names = self.dirty
        if now >= self.next_check:  # deadlines: at most every CHECK_EVERY
            self.next_check = now + CHECK_EVERY
            names = names | {n for n, d in self.subs.items()
                             if d.members and (t := d.next_deadline()) is not None
                             and t <= now}
        if not names:
            return []
        self.dirty = set()
        out: list = []
        for name in names:
            d = self.subs.get(name)
            if d is not None and d.members:
                out += self._messages(d, d.due(now))
        return out

    def _messages(self, d: Durable, due: list) -> list:
        custody = self.custody
        target = "D:" + d.name
        by_member: dict = {}
        out: list = []
        for member, seq, before in due:
            by_member.setdefault(member, []).append((seq, before))
            custody.store.owe(target, seq, before + 1)  # how often it went out
        for member, items in by_member.items():
            for i in range(0, len(items), DELIVER_BATCH):
                part = items[i:i + DELIVER_BATCH]
                seqs = [s for s, _ in part]
                events = []
                for (seq, before), payload in zip(part, custody.store.payloads(seqs),
                                                  strict=True):
                    rec = custody.events[seq]
                    events.append(P.DurableEvent(seq, rec.id, rec.name, payload,
                                                 rec.headers, rec.time, rec.publisher,
                                                 before))
                out.append((member, P.encode_ddeliver(d.name, events)))
        return out

    def on_ack(self, session: Session, msg: P.DurableAck) -> None:
        d = self.subs.get(msg.durable)
        if d is None or msg.durable not in self.attached.get(session.routing_id, ()):
            return  # removed meanwhile, or never this client's: nothing to release
        target = "D:" + d.name
        for seq in msg.acks:
            if d.ack(seq):
                self.custody.release(target, seq)
        now = time.monotonic()
        for seq, delay in msg.naks:
            d.nak(seq, delay, now)
        self.dirty.add(d.name)
        self._save(d)

    def client_gone(self, rid: bytes) -> None:
        for name in self.attached.pop(rid, ()):
            d = self.subs.get(name)
            if d is not None:
                d.detach(rid)
                self.dirty.add(name)

    def housekeeping(self, now: float, wall: float) -> None:
        for d in self.subs.values():
            if d.max_age is None and d.max_bytes is None:
                continue
            dropped = d.overflowing(wall)
            if not dropped:
                continue
            for seq in dropped:
                self.custody.release("D:" + d.name, seq)
            self._save(d)
            self.node.emit(subjects.DURABLE_OVERFLOW, {
                "node": self.node.name, "durable": d.name, "dropped": len(dropped),
                "overflow": d.overflow, "first": dropped[0], "last": dropped[-1]})

    # ---------------------------------------------------------------- control

    def on_control(self, session: Session, msg: P.DurableControl) -> None:
        rid = session.routing_id
        try:
            if msg.op == "subscribe":
                self._subscribe(session, msg)
                return  # answered when the probe wave is back
            result = getattr(self, "_op_" + msg.op)(session, msg.args)
        except DurableRefused as exc:
            self.node.send(rid, P.encode_dctlr(msg.req_id, False, [exc.code, str(exc)]))
            return
        self.node.send(rid, P.encode_dctlr(msg.req_id, True, result))

    def _named(self, args: dict) -> Durable:
        name = args.get("durable")
        if not isinstance(name, str) or name not in self.subs:
            raise DurableRefused(subjects.NO_DURABLE, f"node {self.node.name} has no "
                                 f"durable {str(name)[:MAX_NAME]!r}")
        return self.subs[name]

    def _may_see(self, session: Session, d: Durable) -> None:
        refusal = gate.may_subscribe(session, d.pattern)
        if refusal is not None:
            raise DurableRefused(refusal.code, refusal.message)

    def _subscribe(self, session: Session, msg: P.DurableControl) -> None:
        args = msg.args
        name = args.get("durable")
        pattern = args.get("pattern")
        queue = args.get("queue")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME or \
                any(c.isspace() for c in name):
            raise DurableRefused(subjects.BAD_FIELD, f"a durable name is 1..{MAX_NAME} "
                                 "characters without spaces")
        if not isinstance(pattern, str) or (queue is not None
                                            and not isinstance(queue, str)):
            raise DurableRefused(subjects.BAD_FIELD, "pattern must be a string and "
                                 "queue a string or nil")
        try:
            split_pattern(pattern)
        except PatternError as exc:
            raise DurableRefused(exc.code, str(exc)) from None
        refusal = gate.may_subscribe(session, pattern)
        if refusal is not None:
            raise DurableRefused(refusal.code, refusal.message)
        d = self.subs.get(name)
        created = d is None
        if d is not None:
            if (d.pattern, d.queue) != (pattern, queue):
                raise DurableRefused(subjects.DURABLE_MISMATCH, (
                    f"durable {name!r} on node {self.node.name} is {d.pattern!r} "
                    f"(queue {d.queue!r}), not {pattern!r} (queue {queue!r}): remove it "
                    "first (tsctl durable rm) or use another name"))
        else:
            if len(self.subs) >= self.node.config.max_durables:
                raise DurableRefused(subjects.DURABLE_LIMIT, (
                    f"node {self.node.name} holds {len(self.subs)} durables "
                    f"(max_durables)"))
            state = {"pattern": pattern, "queue": queue,
                     "ack_wait": _number(args, "ack_wait", 30.0, 0.001, 86400.0),
                     "max_pending": _number(args, "max_pending", 1000, 1, 1_000_000,
                                            integer=True),
                     "max_age": _number(args, "max_age", None, 0.001, 1e10),
                     "max_bytes": _number(args, "max_bytes", None, 1, 1 << 50, True),
                     "created": time.time()}
            start = args.get("start", "new")
            if start not in STARTS:
                raise DurableRefused(subjects.BAD_FIELD, "start must be one of "
                                     + ", ".join(STARTS))
            first = self._first_of(start, args)
            d = self._make(name, state)
            self._save(d)
            if first is not None:
                self._backfill(d, first)
        rid = session.routing_id
        for old in d.attach(rid):
            self.attached.get(old, set()).discard(name)
        self.attached.setdefault(rid, set()).add(name)
        self.dirty.add(name)

        def answer(nodes: int) -> None:
            if rid in self.node.sessions:
                self.node.send(rid, P.encode_dctlr(msg.req_id, True, {
                    **self._info(d), "created": created, "nodes": nodes}))
        self.custody.probes.start(answer)

    def _first_of(self, start: str, args: dict) -> tuple[str, float] | None:
        if start == "new":
            return None
        if start == "all":
            return ("seq", 0)
        if start == "seq":
            return ("seq", _number(args, "seq", 0, 0, 1 << 62, integer=True))
        return ("time", _number(args, "time", 0.0, 0.0, 1e11))

    def _backfill(self, d: Durable, first: tuple[str, float], redelivery: bool = False
                  ) -> int:
        """Owe ``d`` what the store still has from ``first`` on (replay, or a new
        durable's start): marked as delivered before when it is a replay."""
        key, value = first
        pattern = split_pattern(d.pattern)
        target = "D:" + d.name
        n = 0
        for seq, rec in list(self.custody.events.items()):
            if (seq if key == "seq" else rec.time) < value or seq in d.pending:
                continue
            if not matches(pattern, split_name(rec.name)):
                continue
            rec.handed.add(target)
            self.custody.owe(target, seq, 1 if redelivery else 0)
            n += 1
        self.dirty.add(d.name)
        return n

    def _op_unsubscribe(self, session: Session, args: dict) -> dict:
        d = self._named(args)
        self.attached.get(session.routing_id, set()).discard(d.name)
        d.detach(session.routing_id)
        self.dirty.add(d.name)
        return {"durable": d.name, "detached": True}

    def _op_ls(self, session: Session, args: dict) -> dict:
        return {"durables": [self._info(d) for d in self.subs.values()
                             if gate.may_subscribe(session, d.pattern) is None]}

    def _op_info(self, session: Session, args: dict) -> dict:
        d = self._named(args)
        self._may_see(session, d)
        return self._info(d)

    def _op_rm(self, session: Session, args: dict) -> dict:
        d = self._named(args)
        self._may_see(session, d)
        target = "D:" + d.name
        for seq in list(d.pending):
            self.custody.release(target, seq)
        for rid in d.members:
            self.attached.get(rid, set()).discard(d.name)
        del self.subs[d.name]
        self.created.pop(d.name, None)
        mid = member_of(d.name)
        self.node.exchange.unsubscribe(mid, d.pattern,
                                       subjects.durable_queue(self.node.name, d.name))
        self.node.table.remove_member(mid)
        self.custody.store.delete_durable(d.name)
        return {"removed": d.name, "node": self.node.name}

    def _op_replay(self, session: Session, args: dict) -> dict:
        d = self._named(args)
        self._may_see(session, d)
        if args.get("time") is not None:
            first = ("time", _number(args, "time", 0.0, 0.0, 1e11))
        else:
            first = ("seq", _number(args, "seq", 0, 0, 1 << 62, integer=True))
        return {"durable": d.name, "replayed": self._backfill(d, first, True)}

    def _info(self, d: Durable) -> dict:
        events = self.custody.events
        oldest = min((events[s].time for s in d.pending), default=None)
        return {"durable": d.name, "node": self.node.name, "pattern": d.pattern,
                "queue": d.queue, "stored": len(d.pending), "pending": len(d.pending)
                - d.unacked, "unacked": d.unacked, "redelivered": d.redelivered,
                "bytes": d.bytes, "oldest": oldest, "members": len(d.members),
                "overflow": d.overflow, "acked": d.acked, "delivered": d.delivered,
                "ack_wait": d.ack_wait, "max_pending": d.max_pending,
                "max_age": d.max_age, "max_bytes": d.max_bytes, "last_seq": d.last_seq,
                "created_at": self.created.get(d.name)}
