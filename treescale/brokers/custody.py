"""Custody of durable events: stored before confirmed, kept until every neighbour and
local durable owed them has acknowledged them, resent after a reconnect.

Owns: a client's DPUB (store, route, confirm after the commit's fsync), a neighbour's
DFORWARD (store or de-duplicate by id, route, DFACK after the fsync) and DFACK (release),
what each event was handed to already (an event is owed to a local durable once, and
to a neighbour once for each set of durables the route reaches through it: ``Marks``,
however often and from wherever it arrives again), the per-link credit window
(``durable_window`` events in flight; the rest wait in storage), re-routing what a
neighbour that went away was owed when the tree found another way, the quota
(``durable_max_bytes``: refused with ``storage_full``, never dropped), trimming events
nobody is owed after ``durable_max_age``; it holds the probe waves (probes.py) and
the neighbours' durable interest (away.py).

Must not touch: durable subscriptions' delivery (durables.py), what interest means
(exchange.py), LMDB's layout (treescale/durable_store.py).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from treescale import protocol as P
from treescale import subjects
from treescale.brokers import gate
from treescale.brokers.away import AwayInterest, is_away_member
from treescale.brokers.durables import Durables, is_durable_member
from treescale.brokers.probes import ProbeWaves
from treescale.delivery import Owed
from treescale.durable_store import DurableStore
from treescale.routing import NO_ROUTE, Route

if TYPE_CHECKING:
    from treescale.brokers.links import Link
    from treescale.brokers.node import Node
    from treescale.brokers.sessions import Session

log = logging.getLogger("treescale.node")

SEND_BATCH = 500  # durable events per DFORWARD
SEND_BYTES = 4 << 20  # and about this much payload
REROUTE_AFTER = 2.0  # seconds a neighbour is away before what it was owed is re-routed
RESEND_AFTER = 5.0  # seconds a forward may go unacknowledged on a live link
REROUTE_EVERY = 5.0  # seconds between two re-routes of one absent neighbour's events
REROUTE_BUDGET = 50_000  # events re-routed per housekeeping pass, at most (about)
# durable key sets known by digest (``keyset_digest``); one forgotten (or from before a
# restart) counts as none: an event marked with it may cross that link once more
KEYSETS_KEPT = 10_000


def link_target(neighbour: str) -> str:
    return "L:" + neighbour


def durable_keys(route: Route) -> dict:
    """member -> the durables (their real keys, ``$durable:NODE:NAME``) the route
    reaches through it, as a frozenset."""
    keys: dict = {}
    for queue, members in route.groups:
        if subjects.is_durable_queue(queue):
            key = subjects.real_queue(queue)
            for mid in members:
                keys.setdefault(mid, set()).add(key)
    return {mid: frozenset(k) for mid, k in keys.items()}


def keyset_digest(keys: frozenset) -> str:
    """A short name for a set of durable keys, the same in every process: an event
    handed to a neighbour is marked ``L:NEIGHBOUR #DIGEST`` of the durables it went
    there for, so that a copy arriving after another durable moved behind that
    neighbour goes there again (it went there for other durables only, and went no
    further), at the cost of one short mark per neighbour, however many durables."""
    return hashlib.blake2b("\n".join(sorted(keys)).encode(), digest_size=8).hexdigest()


class Marks:
    """The durable key sets an event's marks (``L:NEIGHBOUR #DIGEST``) stand for.

    A node that handed an event to a neighbour for some durables must hand a copy there
    again when another durable has moved behind that neighbour (the neighbour never
    passed it that way); a plain ``L:NEIGHBOUR`` could not tell. Kept in memory: a
    digest not known (forgotten, or from before a restart) stands for no durable, so
    such an event may cross that link once more (dropped there by id)."""

    def __init__(self) -> None:
        self.keysets: dict[str, frozenset] = {}  # digest -> durable keys
        self._last: tuple = (None, {})  # the last route: member -> (keys, digest)

    def of(self, route: Route) -> dict:
        """member -> (the durable keys the route reaches through it, their digest)."""
        if route is self._last[0]:  # routes are the table's cached values
            return self._last[1]
        out = {}
        for mid, keys in durable_keys(route).items():
            digest = keyset_digest(keys)
            if digest not in self.keysets:
                if len(self.keysets) >= KEYSETS_KEPT:
                    self.keysets.clear()
                self.keysets[digest] = keys
            out[mid] = (keys, digest)
        self._last = (route, out)
        return out

    def fresh(self, handed: set, target: str, mark: str, keys: frozenset) -> bool:
        """Whether the route reaches a durable through ``target`` that the event never
        went there for (as far as its marks are known)."""
        if mark in handed:
            return False
        went: frozenset = frozenset()
        prefix = target + " #"
        for h in handed:
            if h.startswith(prefix):
                went |= self.keysets.get(h[len(prefix):], frozenset())
        return not keys <= went


@dataclass(slots=True)
class Stored:
    """A stored durable event, without its payload (on disk)."""

    id: str
    name: str
    headers: dict | None
    time: float
    publisher: str
    size: int
    # targets it was owed to, ever; for a neighbour also ``L:NAME #DIGEST``: the
    # durables it went there for (``keyset_digest``)
    handed: set = field(default_factory=set)

    def row(self) -> list:
        return [self.id, self.name, self.headers, self.time, self.publisher, self.size,
                sorted(self.handed)]


class Custody:
    """Durable events at one node: storage, custody hop to hop, confirms."""

    def __init__(self, node: Node) -> None:
        self.node = node
        cfg = node.config
        self.store = DurableStore(cfg.resolved_durable_path, cfg.durable_sync)
        state = self.store.load()
        self.events: dict[int, Stored] = {}
        for seq, row in state["events"].items():
            eid, name, headers, t, publisher, size, handed = row
            self.events[seq] = Stored(eid, name, headers, t, publisher, size, set(handed))
        self.ids: dict[str, int] = state["ids"]
        self.next_seq: int = state["next_seq"]
        self.bytes = sum(e.size for e in self.events.values())
        self.refs: dict[int, int] = {}
        self.owed: dict[str, Owed] = {}  # neighbour -> what we owe it
        self.away: dict[str, float] = {}  # neighbour -> when its link went down
        # neighbour -> (table generation, when) of its last re-route
        self.rerouted: dict[str, tuple[int, float]] = {}
        durable_owed = {}
        for target, seqs in state["owed"].items():
            live = {s: d for s, d in seqs.items() if s in self.events}
            for s in live:
                self.refs[s] = self.refs.get(s, 0) + 1
            if target.startswith("L:"):
                self.owed[target[2:]] = Owed(cfg.durable_window, live)
                self.away[target[2:]] = time.monotonic()
            else:
                durable_owed[target[2:]] = live
        self.free: dict[int, None] = dict.fromkeys(
            sorted(s for s in self.events if not self.refs.get(s)))
        self.confirms: dict[bytes, tuple[list, list]] = {}  # session -> ok, refused
        self.facks: dict[bytes, list] = {}  # link member -> seqs to acknowledge
        self.to_pump: set[str] = set()
        self.marks = Marks()
        self.probes = ProbeWaves(node)
        self.stats = {"stored": 0, "duplicates": 0, "refused": 0, "trimmed": 0,
                      "forwarded": 0, "resent": 0}
        self.durables = Durables(node, self, state["durables"], durable_owed)
        self.interest = AwayInterest(node, self.store, state["interest"])

    # ------------------------------------------------------------------ intake

    def on_client(self, session: Session, msg: object) -> None:
        if isinstance(msg, P.DurablePublish):
            self.on_publish(session, msg)
        elif isinstance(msg, P.DurableControl):
            self.durables.on_control(session, msg)
        elif isinstance(msg, P.DurableAck):
            self.durables.on_ack(session, msg)

    def on_link(self, link: Link, msg: object) -> None:
        if isinstance(msg, P.CustodyForward):
            self.on_forward(link, msg)
        elif isinstance(msg, P.CustodyAck):
            self.on_fack(link, msg)
        elif isinstance(msg, P.Probe):
            self.probes.on_probe(link, msg)
        elif isinstance(msg, P.ProbeAnswer):
            self.probes.on_probed(link, msg)

    def on_publish(self, session: Session, msg: P.DurablePublish) -> None:
        rid = session.routing_id
        ok, refused = self.confirms.setdefault(rid, ([], []))
        names = list({e.name: 0 for e in msg.events})
        refusal = gate.may_publish(session, names)
        if refusal is None and any(subjects.is_reserved(n) for n in names):
            refusal = gate.Refusal(subjects.BAD_FIELD, "durable events take application "
                                   "names: $sys, $svc and $inbox are not stored")
        if refusal is not None:
            refused.extend((e.seq, refusal.code, refusal.message) for e in msg.events)
            return
        now = time.time()
        for ev in msg.events:
            seq = self.ids.get(ev.id)
            if seq is not None:
                self.stats["duplicates"] += 1
                ok.append(ev.seq)
                continue
            why = self._no_room(ev)
            if why is not None:
                self.stats["refused"] += 1
                refused.append((ev.seq, subjects.STORAGE_FULL, why))
                continue
            ev.time = now
            ev.publisher = session.name
            seq = self._store(ev)
            self._route(seq, None)
            self._deliver_plain(seq, ev.payload)
            ok.append(ev.seq)

    def on_forward(self, link: Link, msg: P.CustodyForward) -> None:
        acks = self.facks.setdefault(link.member, [])
        link.events_in += len(msg.events)
        for ev in msg.events:
            seq = self.ids.get(ev.id)
            if seq is None:
                if self._no_room(ev) is not None:
                    continue  # not acknowledged: the neighbour keeps it and resends
                seq = self._store(ev)
                self._route(seq, link)
                self._deliver_plain(seq, ev.payload)
            else:
                self.stats["duplicates"] += 1
                self._route(seq, link)  # it may owe it somewhere new (the tree changed)
            acks.append(ev.seq)

    def on_fack(self, link: Link, msg: P.CustodyAck) -> None:
        owed = self.owed.get(link.neighbour)
        if owed is None:
            return
        target = link_target(link.neighbour)
        for seq in owed.acked(msg.seqs):
            self.store.release(target, seq)
            self._unref(seq)
        self.to_pump.add(link.neighbour)

    # ----------------------------------------------------------------- storage

    def _no_room(self, ev: P.DurableEvent) -> str | None:
        size = len(P.as_buffer(ev.payload))
        limit = self.node.config.durable_max_bytes
        if self.bytes + size <= limit:
            return None
        self._trim_free(self.bytes + size - limit)
        if self.bytes + size <= limit:
            return None
        return (f"node {self.node.name}: durable storage is full ({self.bytes} of "
                f"{limit} bytes, durable_max_bytes) until its subscribers acknowledge "
                "what they are owed")

    def _store(self, ev: P.DurableEvent) -> int:
        seq = self.next_seq
        self.next_seq += 1
        size = len(P.as_buffer(ev.payload))
        rec = Stored(ev.id, ev.name, ev.headers, ev.time, ev.publisher, size)
        self.events[seq] = rec
        self.ids[ev.id] = seq
        self.bytes += size
        self.free[seq] = None
        self.store.put_event(seq, rec.row(), P.as_buffer(ev.payload), ev.id)
        self.stats["stored"] += 1
        return seq

    def _route(self, seq: int, origin: Link | None, again: str | None = None) -> None:
        """Owe ``seq`` to every neighbour and local durable whose interest matches and
        that it was never owed to (nor came from), and again to a neighbour it went to
        before that the route now names for a durable it did not go there for (the
        durable moved behind it: that neighbour never passed it that way).

        ``again``: the tree changed while neighbour ``again`` was away with ``seq``
        owed: every other neighbour the route names now gets it, even one that sent or
        had it before (it drops the copy by id, then routes it by its own table, which
        may now lead somewhere it never went)."""
        rec = self.events[seq]
        handed = rec.handed
        changed = False
        came_from = link_target(origin.neighbour) if origin is not None else None
        if came_from is not None and came_from not in handed:
            handed.add(came_from)
            changed = True
        try:
            route = self.node.table.lookup(rec.name)
        except Exception:  # a name the table refuses is routed nowhere
            route = NO_ROUTE
        digests = self.marks.of(route)
        links = self.node.links
        for dest in route.everyone:
            if is_durable_member(dest):
                target = "D:" + dest[1]
            elif is_away_member(dest):
                target = link_target(dest[1])
            else:
                link = links.get(dest)
                if link is None:
                    continue  # a client: plain delivery, once (``_deliver_plain``)
                target = link_target(link.neighbour)
            mark = None
            if target[0] == "L" and dest in digests:
                mark = f"{target} #{digests[dest][1]}"
            if target == came_from or target in handed:
                fresh = mark is not None and self.marks.fresh(handed, target, mark,
                                                              digests[dest][0])
                if target == came_from:  # it has it: its side is its own to route
                    if fresh:
                        handed.add(mark)
                        changed = True
                    continue
                if target[0] == "D" or target == again or (again is None
                                                           and not fresh):
                    continue
                owed = self.owed.get(target[2:])
                if owed is not None and seq in owed.seqs:
                    if fresh:  # on its way there already
                        handed.add(mark)
                        changed = True
                    continue
            handed.add(target)
            if mark is not None:
                handed.add(mark)
            changed = True
            self.owe(target, seq)
        if changed:
            self.store.update_event(seq, rec.row())

    def owe(self, target: str, seq: int, deliveries: int = 0) -> None:
        rec = self.events[seq]
        self.refs[seq] = self.refs.get(seq, 0) + 1
        self.free.pop(seq, None)
        self.store.owe(target, seq, deliveries)
        if target.startswith("L:"):
            neighbour = target[2:]
            owed = self.owed.get(neighbour)
            if owed is None:
                owed = self.owed[neighbour] = Owed(self.node.config.durable_window)
            owed.add(seq)
            if neighbour not in self.away and self._link_of(neighbour) is None:
                self.away[neighbour] = time.monotonic()  # owed by its stand-in
            self.to_pump.add(neighbour)
        else:
            self.durables.add(target[2:], seq, rec.size, rec.time, deliveries)

    def release(self, target: str, seq: int) -> None:
        """``target`` no longer needs ``seq`` (a durable's ack, retention, removal)."""
        self.store.release(target, seq)
        self._unref(seq)

    def _unref(self, seq: int) -> None:
        n = self.refs.get(seq, 0) - 1
        if n > 0:
            self.refs[seq] = n
            return
        self.refs.pop(seq, None)
        if seq in self.events:
            self.free[seq] = None

    def _trim_free(self, need: int) -> None:
        """Delete events nobody is owed, oldest first, until ``need`` bytes are free."""
        while need > 0 and self.free:
            seq = next(iter(self.free))
            need -= self.events[seq].size
            self._delete(seq)

    def _delete(self, seq: int) -> None:
        self.free.pop(seq, None)
        rec = self.events.pop(seq)
        self.bytes -= rec.size
        if self.ids.get(rec.id) == seq:
            del self.ids[rec.id]
        self.store.delete_event(seq, rec.id)
        self.stats["trimmed"] += 1

    def _deliver_plain(self, seq: int, payload) -> None:
        """A new durable event also reaches this node's plain subscribers, once, as an
        ordinary event (at most once: they hold no durable)."""
        rec = self.events[seq]
        try:
            dests = self.node.table.lookup(rec.name).everyone
        except Exception:
            return
        sessions = self.node.sessions
        plain = [d for d in dests if d in sessions and not sessions[d].is_link]
        if plain:
            self.node.fanout.queue_single(rec.publisher, rec.name, payload, None, 0,
                                          None, rec.headers, plain)

    # ------------------------------------------------------------------ links

    def link_up(self, link: Link) -> None:
        self.interest.link_up(link)
        self.away.pop(link.neighbour, None)
        self.rerouted.pop(link.neighbour, None)
        owed = self.owed.get(link.neighbour)
        if owed is not None:
            self.stats["resent"] += len(owed)
            owed.restart()
            self.to_pump.add(link.neighbour)

    def link_down(self, link: Link) -> None:
        """Called before the link's routes go (its durable interest must stay)."""
        self.interest.link_down(link)
        self.facks.pop(link.member, None)
        if link.neighbour in self.owed and not self.interest.linked(link.neighbour,
                                                                     but=link):
            self.away[link.neighbour] = time.monotonic()
        self.probes.link_down(link)

    def _link_of(self, neighbour: str) -> Link | None:
        """The neighbour's newest link (an old one may linger until its close is
        seen: custody goes on the new one)."""
        for link in reversed(list(self.node.links)):
            if link.neighbour == neighbour:
                return link
        return None

    def _pump(self, neighbour: str) -> None:
        owed = self.owed.get(neighbour)
        link = self._link_of(neighbour)
        if owed is None or link is None:
            return
        now = time.monotonic()
        while True:
            seqs = owed.next_batch(SEND_BATCH, now)
            if not seqs:
                return
            payloads = list(self.store.payloads(seqs))
            total = 0
            cut = len(seqs)
            for i, p in enumerate(payloads):
                total += len(p)
                if total > SEND_BYTES and i > 0:
                    cut = i
                    break
            if cut < len(seqs):
                owed.unsent(seqs[cut:])
                seqs, payloads = seqs[:cut], payloads[:cut]
            events = []
            for seq, payload in zip(seqs, payloads, strict=True):
                rec = self.events[seq]
                events.append(P.DurableEvent(seq, rec.id, rec.name, payload, rec.headers,
                                             rec.time, rec.publisher))
            if not self.node.links.send(link.member, P.encode_dforward(events)):
                owed.unsent(seqs)
                return  # the socket is full: housekeeping tries again
            link.events_out += len(seqs)
            self.stats["forwarded"] += len(seqs)

    # ------------------------------------------------------------------ loop

    @property
    def busy(self) -> bool:
        """Work waits on a short timer: confirms held for a group fsync."""
        return self.store.unsynced or self.store.dirty

    def flush(self) -> None:
        """End of a wakeup: one commit (and fsync) for what it changed, then the
        confirms and custody acks it covers, then what may be sent."""
        now = time.monotonic()
        if self.store.dirty or self.store.unsynced:
            if not self.store.commit(now):
                return  # a group fsync is due in a moment: confirms wait for it
        node = self.node
        if self.confirms:
            confirms, self.confirms = self.confirms, {}
            for rid, (ok, refused) in confirms.items():
                if (ok or refused) and rid in node.sessions:
                    node.send(rid, P.encode_dconfirm(ok, refused))
        if self.facks:
            facks, self.facks = self.facks, {}
            for member, seqs in facks.items():
                if seqs:
                    node.links.send(member, P.encode_dfack(seqs))
        if self.to_pump:
            pump, self.to_pump = self.to_pump, set()
            for neighbour in pump:
                self._pump(neighbour)
        out = self.durables.pump(now)
        if out:
            # How often each went out is committed before it goes (a kill must not
            # make it a first delivery again; the fsync may follow with the next one).
            self.store.commit(now)
            for member, frames in out:
                node.send(member, frames)

    def housekeeping(self, now: float) -> None:
        wall = time.time()
        self._reroute(now)
        self.interest.housekeeping(now)
        self.durables.housekeeping(now, wall)
        for neighbour, owed in self.owed.items():
            if self._link_of(neighbour) is None:
                continue
            if owed.expire(now, RESEND_AFTER):
                self.stats["resent"] += 1
            if owed.queue:
                self.to_pump.add(neighbour)  # a full socket, or unacknowledged
        max_age = self.node.config.durable_max_age
        while self.free:
            seq = next(iter(self.free))
            if wall - self.events[seq].time <= max_age:
                break
            self._delete(seq)
        self.probes.housekeeping(now)

    def _reroute(self, now: float) -> None:
        """What a neighbour away for REROUTE_AFTER was owed goes wherever the tree
        routes it now (it stays owed to that neighbour too, should it come back); again
        when the routes changed, at most every REROUTE_EVERY and REROUTE_BUDGET events
        a second (the loop keeps serving while a big backlog is re-routed). A
        neighbour no stand-in holds durable interest for (only plain subscribers were
        behind it) is released."""
        generation = self.node.table.generation
        budget = REROUTE_BUDGET
        for neighbour, since in list(self.away.items()):
            owed = self.owed.get(neighbour)
            last = self.rerouted.get(neighbour)
            if owed is None or now - since < REROUTE_AFTER or (
                    last is not None and (last[0] == generation
                                          or now - last[1] < REROUTE_EVERY)):
                continue
            if budget <= 0:
                return
            budget -= len(owed)
            if not self.interest.stands_for(neighbour):
                self.superseded(neighbour)
                continue
            self.rerouted[neighbour] = (generation, now)
            target = link_target(neighbour)
            log.info("node %s: %d durable events owed to %s (away) re-routed",
                     self.node.name, len(owed), neighbour)
            for seq in list(owed.seqs):
                self._route(seq, None, again=target)

    def superseded(self, neighbour: str) -> None:
        """No durable is reachable only through this absent neighbour any more (its
        durables re-homed, or it had none): what it was owed goes wherever the routes
        lead now, and it is owed nothing more."""
        owed = self.owed.get(neighbour)
        if owed is None:
            return
        target = link_target(neighbour)
        for seq in list(owed.seqs):
            self._route(seq, None, again=target)
        for seq in owed.acked(list(owed.seqs)):
            self.release(target, seq)
            rec = self.events.get(seq)
            if rec is not None:  # never acknowledged: it may be owed to it again
                rec.handed.difference_update([h for h in rec.handed if h == target
                                              or h.startswith(target + " ")])
                self.store.update_event(seq, rec.row())
        del self.owed[neighbour]
        self.away.pop(neighbour, None)
        self.rerouted.pop(neighbour, None)
        log.info("node %s: %s holds no durable here now: what it was owed was "
                 "re-routed", self.node.name, neighbour)

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ report

    def report(self) -> dict:
        return {**self.stats, "events": len(self.events), "bytes": self.bytes,
                "owed_links": {n: len(o) for n, o in self.owed.items() if len(o)},
                "durables": len(self.durables.subs)}
