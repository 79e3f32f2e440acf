"""The hot path: route batches of events and send each destination one message a round.

Owns: ``Segment`` (the events of one batch bound for one destination), routing a
batch whole when every event goes to the same set of destinations (decided from the
batch's distinct names alone) and splitting it otherwise, mode ``one`` across links
(the ``$queues`` header), the per-round output queue, merging small segments per
destination, sending, and the bounded queue of a slow client (park, retry, drop and
tell). A big batch is forwarded as it came: no copy, no re-encode; a payload is
opaque bytes here.

Must not touch: sessions' life cycle (node.py), interest (exchange.py), who may send
what (gate.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from itertools import repeat
from typing import TYPE_CHECKING, Any

import zmq

from treescale import protocol as P
from treescale import subjects
from treescale.brokers.links import PARENT
from treescale.frames import NOBLOCK, send_frames
from treescale.metrics import LINKS
from treescale.routing import PatternError, TargetError

if TYPE_CHECKING:
    from treescale.brokers.node import Node
    from treescale.brokers.sessions import Session

log = logging.getLogger("treescale.node")

MERGE_BELOW = 64  # segments with fewer events are packed together per destination
QUEUES_HEADER = "$queues"  # on a forwarded mode-one event: the groups left to serve


class Segment:
    """Events of one source batch bound for one destination in this round.

    ``frames`` (meta, body, large...) is set when the whole batch goes to the
    destination and can be forwarded untouched; otherwise ``events`` holds the
    event tuples to pack. ``source`` is the publisher's name, or a forwarded batch's
    ``[source, count]`` runs.
    """

    __slots__ = ("source", "n", "frames", "events")

    def __init__(self, source: Any, n: int, frames: list | None,
                 events: list | None = None) -> None:
        self.source = source
        self.n = n
        self.frames = frames
        self.events = events


class Fanout:
    """Routing and output of one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.table = node.table
        self.stats = node.stats
        self.traffic = node.traffic
        self.sessions = node.sessions
        self.links = node.links.by_member
        self.out: dict[bytes, list[Segment]] = {}  # this round's output
        self.slow: set[bytes] = set()  # clients with parked messages
        self.own_inboxes = node.requests.own_inboxes

    # -- routing ----------------------------------------------------------------------

    def route_batch(self, session: Session | None, view: P.BatchView, frames: list,
                    origin: bytes | None = None, sources: list | None = None) -> None:
        """Route a batch: whole to each destination when every event goes to the same
        set (the common case), else split.

        ``origin`` is the tree link a forwarded batch came in on (never sent back
        there); ``sources`` its publisher runs.
        """
        n = view.n
        stats = self.stats
        stats["events_in"] += n
        stats["batches_in"] += 1
        if origin is not None:
            self.traffic.count_in(LINKS, self.node.links.key(origin), view)
        else:
            self.traffic.count_in(self.node.traffic_class(session), None, view)
        errors: dict = {}
        queues_for: dict = {}  # (link, event) -> queue groups that link must serve
        if session is not None:
            session.events_in += n
        source: Any = sources if sources else session.name
        by_dest: dict = {}
        if view.extras is None:
            name_dests = []
            for name in view.names:
                route = self._lookup(name, None, errors)
                dests = route.everyone if route is not None else ()
                if origin is not None and origin in dests:
                    dests = tuple(d for d in dests if d != origin)
                name_dests.append(dests)
            first = name_dests[0] if name_dests else ()
            if not errors and all(d == first for d in name_dests):
                if not first:
                    stats["no_route"] += n
                for dest in first:
                    self.queue(dest, Segment(source, n, frames))
                return
            index = view.index if view.index is not None else repeat(0, n)
            for i, ni in enumerate(index):
                for dest in name_dests[ni]:
                    by_dest.setdefault(dest, []).append(i)
        else:
            self._route_extended(view, origin, errors, by_dest, queues_for)
        if session is not None and not session.is_link:
            for message, code in errors.items():
                self.node.send_error(session.routing_id, code, message)
        routed = set()
        for idx in by_dest.values():
            routed.update(idx)
        stats["no_route"] += n - len(routed)
        if by_dest:
            self._queue_parts(view, source, by_dest, queues_for)

    def _route_extended(self, view: P.BatchView, origin: bytes | None, errors: dict,
                        by_dest: dict, queues_for: dict) -> None:
        """Events with targets or modes: each on its own route."""
        names = list(view.name_column())
        for i in range(view.n):
            target, mode, _reply, headers = view.extra(i)
            route = self._lookup(names[i], target, errors)
            if route is None:
                continue
            if mode == 0:
                for dest in route.everyone:
                    if dest != origin:
                        by_dest.setdefault(dest, []).append(i)
                continue
            # mode one: a node upstream may have chosen for some queue groups
            # already; it says which ones are left to this branch.
            allowed = headers.get(QUEUES_HEADER) if origin and headers else None
            if allowed is not None and not isinstance(allowed, list):
                allowed = None  # not a list of groups: choose for every group here
            for dest, q in self.table.pick_groups(route, origin, allowed):
                idx = by_dest.setdefault(dest, [])
                if not idx or idx[-1] != i:
                    idx.append(i)
                if dest in self.links:
                    queues_for.setdefault((dest, i), []).append(q)

    def _queue_parts(self, view: P.BatchView, source: Any, by_dest: dict,
                     queues_for: dict) -> None:
        """A split batch: each destination gets its events, each with its publisher
        (a forwarded batch may hold several publishers' runs)."""
        events = view.events()
        per_event = [src for src, count in source for _ in range(count)] \
            if isinstance(source, list) else None
        for dest, idx in by_dest.items():
            if dest in self.links:
                chosen = [_with_queues(events[i], queues_for.get((dest, i)))
                          for i in idx]
            else:
                chosen = [_without_queues(events[i]) for i in idx]
            part = source if per_event is None else _runs_of(per_event, idx)
            self.queue(dest, Segment(part, len(idx), None, chosen))

    def _lookup(self, name: str, target: str | None, errors: dict):
        """The route of (name, target), or None after noting the error for the sender."""
        route = self.table.cache.get((name, target))
        if route is None:
            # Only genuine inboxes of ours are ever routed, so a cached route is one
            # (see requests.py): the check costs nothing once a name is known.
            if name.startswith(self.own_inboxes) and not self.node.requests.genuine(name):
                errors[self.node.requests.forged(name)] = subjects.PERMISSION_DENIED
                return None
            try:
                route = self.table.lookup(name, target)
            except (PatternError, TargetError) as exc:
                errors[str(exc)] = exc.code
                return None
        return route

    def queue_single(self, source: str, name: str, payload: Any, target: str | None,
                     mode: int, reply: str | None, headers: dict | None,
                     dests) -> None:
        """One event (a request, a reply, a system event) to ``dests``."""
        seg = Segment(source, 1, P.encode_single(name, payload, target, mode, reply,
                                                 headers))
        for dest in dests:
            self.queue(dest, seg)

    # -- output -----------------------------------------------------------------------

    def queue(self, dest: bytes, seg: Segment) -> None:
        segs = self.out.get(dest)
        if segs is None:
            self.out[dest] = [seg]
        else:
            segs.append(seg)

    def forget(self, dest: bytes) -> None:
        """A destination left: nothing more goes to it this round."""
        self.out.pop(dest, None)
        self.slow.discard(dest)

    def flush(self) -> None:
        """Send this round's output: a big batch is forwarded as it came (no copy, no
        re-encode); runs of small segments for one destination are packed into one."""
        out, self.out = self.out, {}
        for dest, segs in out.items():
            try:
                self._flush_one(dest, segs)
            except Exception:  # one destination's failure must not cost the others
                log.exception("node %s failed sending to %r", self.node.name, dest)

    def _flush_one(self, dest: bytes, segs: list[Segment]) -> None:
        run: list[Segment] = []
        header = P.encode_forward_header if dest in self.links else \
            P.encode_deliver_header
        for s in segs:
            if s.frames is not None and s.n >= MERGE_BELOW:
                if run:
                    self._deliver_merged(dest, run, header)
                    run = []
                self._deliver(dest, [header(_runs(s)), *s.frames], s.n)
            else:
                run.append(s)
        if run:
            if len(run) == 1 and run[0].frames is not None:
                s = run[0]
                self._deliver(dest, [header(_runs(s)), *s.frames], s.n)
            else:
                self._deliver_merged(dest, run, header)

    def _deliver_merged(self, dest: bytes, run: list[Segment], header: Callable) -> None:
        for frames, n in _merge(run, header):
            self._deliver(dest, frames, n)

    def _deliver(self, dest: bytes, frames: list, n_events: int) -> None:
        if dest == PARENT:
            self._send_up(frames, n_events)
            return
        session = self.sessions.get(dest)
        if session is None:
            return
        if session.pending:
            self._park(session, frames, n_events)
            return
        try:
            send_frames(self.node.sock, [dest, *frames], NOBLOCK)
        except zmq.Again:
            self._park(session, frames, n_events)
            return
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self.node.drop_session(dest, "unreachable")
                return
            raise
        self._sent(session, n_events, frames)

    def _sent(self, session: Session, n_events: int, frames: list) -> None:
        session.events_out += n_events
        self.stats["events_out"] += n_events
        if session.is_link:
            self.traffic.count_out(LINKS, (session.name, "child"), n_events, frames)
        else:
            self.traffic.count_out(self.node.traffic_class(session), None, n_events,
                                   frames)

    def _send_up(self, frames: list, n_events: int) -> None:
        link = self.links.get(PARENT)
        if link is None:
            self.stats["no_route"] += n_events
            return
        try:
            send_frames(self.node.parent.sock, frames, NOBLOCK)
        except zmq.Again:
            # The parent link is saturated. Credit-based flow control will slow the
            # publishers instead; until then the loss is counted, never silent.
            self.stats["dropped"] += n_events
            return
        link.events_out += n_events
        self.stats["events_out"] += n_events
        self.traffic.count_out(LINKS, (link.neighbour, "parent"), n_events, frames)

    # -- slow consumers ---------------------------------------------------------------

    def _park(self, session: Session, frames: list, n_events: int) -> None:
        config = self.node.config
        size = sum(len(P.as_buffer(f)) for f in frames)
        self.slow.add(session.routing_id)
        if not session.park(frames, n_events, size, config.slow_consumer_bytes,
                            config.slow_consumer_messages):
            self.stats["dropped"] += n_events
            if not session.slow:
                session.slow = True
                self.node.emit(subjects.CLIENT_SLOW, {
                    "node": self.node.name, "client": session.name,
                    "id": session.client_id, "pending_bytes": session.pending_bytes,
                    "pending_messages": len(session.pending)})

    def retry_parked(self) -> None:
        """Send what slow clients can take now; tell each that caught up what it lost."""
        for rid in list(self.slow):
            session = self.sessions.get(rid)
            if session is None:
                self.slow.discard(rid)
                continue
            while True:
                item = session.unpark()
                if item is None:
                    break
                try:
                    send_frames(self.node.sock, [rid, *item[0]], NOBLOCK)
                except zmq.Again:
                    session.requeue(item)
                    break
                except zmq.ZMQError:
                    self.node.drop_session(rid, "unreachable")
                    break
                self._sent(session, item[1], item[0])
            if not session.pending and rid in self.sessions:
                self.slow.discard(rid)
                if session.slow:
                    self._tell_losses(session)

    def _tell_losses(self, session: Session) -> None:
        config = self.node.config
        session.slow = False
        lost, session.dropped = session.dropped, 0
        self.node.send_error(
            session.routing_id, subjects.SLOW_CONSUMER,
            f"{lost} event(s) were dropped for this client because it read slower "
            f"than they arrived (buffer limit {config.slow_consumer_bytes} bytes / "
            f"{config.slow_consumer_messages} messages)", lost)

    def parked(self) -> tuple[int, int]:
        """(messages, bytes) parked for slow clients now."""
        sessions = [self.sessions[r] for r in list(self.slow) if r in self.sessions]
        return (sum(len(s.pending) for s in sessions),
                sum(s.pending_bytes for s in sessions))


def with_queues(headers: dict | None, queues: list) -> dict:
    """The headers of a mode-one event going down a link: the queue groups that
    branch must still serve (the node before it chose for the others)."""
    return {**(headers or {}), QUEUES_HEADER: queues}


def _with_queues(event: tuple, queues: list | None) -> tuple:
    """A mode-one event going down a link, told which queue groups are still open."""
    if queues is None:
        return event
    name, payload, target, mode, reply, headers = event
    return name, payload, target, mode, reply, with_queues(headers, queues)


def _without_queues(event: tuple) -> tuple:
    """The event as a client sees it: without the node-to-node queue note."""
    headers = event[5]
    if not headers or QUEUES_HEADER not in headers:
        return event
    rest = {k: v for k, v in headers.items() if k != QUEUES_HEADER}
    return (*event[:5], rest or None)


def _runs_of(per_event: list, idx: list) -> list:
    """[source, count] runs of the events ``idx`` (an index into ``per_event``)."""
    runs: list = []
    for i in idx:
        src = per_event[i] if i < len(per_event) else ""
        if runs and runs[-1][0] == src:
            runs[-1][1] += 1
        else:
            runs.append([src, 1])
    return runs


def _runs(seg: Segment) -> list:
    """The [source, count] runs of a segment (forwarded batches keep theirs)."""
    return seg.source if isinstance(seg.source, list) else [[seg.source, seg.n]]


def _merge(segs: list[Segment], header: Callable = P.encode_deliver_header
           ) -> list[tuple[list, int]]:
    """Pack several segments for one destination into DELIVER/FORWARD messages: one,
    unless together they name more distinct events than a batch's index can hold."""
    events: list = []
    sources: list = []
    for s in segs:
        if s.events is not None:
            events.extend(s.events)
        else:
            view = P.decode_events(s.frames[0], s.frames[1], s.frames[2:], 1 << 62)
            events.extend(view.events())
        for src, count in _runs(s):
            if sources and sources[-1][0] == src:
                sources[-1][1] += count
            else:
                sources.append([src, count])
    cuts = P.split_by_names([e[0] for e in events]) if len(events) > P.MAX_NAMES \
        else (0, len(events))
    out = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        meta, body, large = P.encode_events(events[a:b])
        runs = sources if b - a == len(events) else _slice_runs(sources, a, b)
        out.append(([header(runs), meta, body, *large], b - a))
    return out


def _slice_runs(runs: list, a: int, b: int) -> list:
    """The [source, count] runs of events ``a`` to ``b`` of a batch with ``runs``."""
    out = []
    pos = 0
    for src, count in runs:
        lo, hi = max(pos, a), min(pos + count, b)
        if lo < hi:
            out.append([src, hi - lo])
        pos += count
    return out
