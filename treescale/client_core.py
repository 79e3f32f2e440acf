"""What a client's messages mean, without any I/O: the sans-I/O core of every client.

Owns: the state of one client session (identity, subscriptions to restore after a
reconnect, requests waiting for replies), the meaning of each message a node sends a
client (``ClientCore.receive`` turns it into *actions*), what each ERROR code means to
a client (the only place that decides it), ``Event`` and the decoding of deliveries
into events (a durable subscription's too: ``DurableDelivery``), and the exceptions
clients raise. The durable bookkeeping (unconfirmed publishes, acks, subscriptions to
resume) is treescale.client_durable's; this module says what DCONFIRM, DCTLR and
DDELIVER mean for it.

Must not touch: sockets, clocks, threads or event loops; it imports none of zmq,
socket, time, threading, asyncio. ``Client``, ``DirectLink`` (treescale.client,
treescale.client_direct) and ``AsyncClient`` (treescale.aio) do the I/O and carry
out the actions; none of them interprets a node's message itself.
"""

from __future__ import annotations

import itertools
import os
from collections import namedtuple
from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from itertools import chain, repeat
from operator import itemgetter
from types import MappingProxyType
from typing import Any, NamedTuple

from treescale import protocol as P
from treescale import subjects as S
from treescale.client_durable import DurableState
from treescale.routing import parse_target

# ------------------------------------------------------------------- exceptions


class NodeError(Exception):
    """An error the node sent back (``code`` says which, e.g. ``bad_pattern``)."""

    def __init__(self, code: str, message: str, ref: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.ref = ref


class AuthError(NodeError):
    """The node refused this client's token."""


class NoResponders(NodeError):
    """A request found no subscriber."""


class DeliveryError(Exception):
    """Durable events the node did not confirm: ``refused`` lists (id, code, message)
    of those it refused (e.g. ``storage_full``), ``unconfirmed`` counts those still
    without an answer when the wait ended."""

    def __init__(self, unconfirmed: int, refused: list[tuple[str, str, str]],
                 node: str = "", timeout: float | None = None) -> None:
        self.unconfirmed = unconfirmed
        self.refused = list(refused)
        total = unconfirmed + len(self.refused)
        parts = []
        if self.refused:
            why = list(dict.fromkeys(f"{code}: {message}" for _, code, message
                                     in self.refused))
            more = f"; {len(why) - 3} more" if len(why) > 3 else ""
            by = f" by node {node}" if node else ""
            parts.append(f"{len(self.refused)} refused{by} ({'; '.join(why[:3])}{more})")
        if unconfirmed:
            after = f" after {timeout:.1f} s" if timeout is not None else ""
            parts.append(f"{unconfirmed} unconfirmed{after}")
        super().__init__(f"{total} durable event{'s' if total != 1 else ''} not "
                         f"confirmed: {', '.join(parts)}")


def node_error(code: str, message: str, ref: Any = None) -> NodeError:
    """The exception that stands for an ERROR message with this code."""
    if code in S.AUTH_ERRORS:
        return AuthError(code, message, ref)
    if code == S.NO_RESPONDERS:
        return NoResponders(code, message, ref)
    return NodeError(code, message, ref)


# ----------------------------------------------------------------------- events

_EMPTY_HEADERS: Mapping = MappingProxyType({})

_EventFields = namedtuple("_EventFields", "name data raw_headers source reply target")


class Event(_EventFields):
    """One delivered event: ``name``, ``data``, ``headers``, ``source``, ``reply`` (set
    on requests) and ``target``.

    ``data`` is bytes, or for a payload of ``protocol.LARGE_PAYLOAD`` (64 KiB) or more a
    read-only memoryview of the frame it arrived in: no copy of a large payload is made
    on its way to the application (``bytes(ev.data)`` makes one where needed).

    A named tuple underneath, so that a whole batch of events is built by C code (no
    Python ``__init__`` per event) and field access is a C descriptor.
    """

    __slots__ = ()
    # What a durable delivery sets (DurableDelivery): class attributes here, so that
    # an ordinary event costs nothing more to build.
    seq: int | None = None
    id: str | None = None
    durable: str | None = None
    time: float | None = None
    deliveries = 0
    redelivered = False

    def __new__(cls, name: str, data: Any, headers: Mapping | None = None,
                source: str = "", reply: str | None = None,
                target: str | None = None) -> Event:
        return tuple.__new__(cls, (name, data, headers or None, source, reply, target))

    @property
    def headers(self) -> Mapping:
        """Headers (a mapping, maybe empty)."""
        h = self[2]
        return _EMPTY_HEADERS if h is None else h

    def json(self) -> Any:
        """The payload decoded as msgpack (the convention for structured data)."""
        return P.loads(self.data)

    def ack(self) -> None:
        """Acknowledge a durable event (nothing to do for an ordinary one)."""

    def nak(self, delay: float = 0.0) -> None:
        """Ask for a durable event again after ``delay`` seconds (ordinary: nothing)."""

    def __repr__(self) -> str:
        data = bytes(self.data[:40])
        more = "..." if len(self.data) > 40 else ""
        return f"Event({self.name!r}, {data!r}{more}, source={self.source!r})"


class DurableDelivery(Event):
    """An event of a durable subscription: ``seq`` (its place in the durable's log),
    ``id`` (the publisher's dedup key), ``durable`` (the subscription's name), ``time``
    (when it was first stored), ``deliveries`` (this one included) and
    ``redelivered``; ``ack()``/``nak(delay)`` answer it through the client that got
    it. The Event fields come first: it is an Event for everything else."""

    __slots__ = ()
    seq = property(itemgetter(6))
    id = property(itemgetter(7))
    durable = property(itemgetter(8))
    time = property(itemgetter(9))
    deliveries = property(lambda self: self[10] + 1)
    redelivered = property(lambda self: self[10] > 0)

    def ack(self) -> None:
        self[11].ack(self)

    def nak(self, delay: float = 0.0) -> None:
        self[11].nak(self, delay)

    def __repr__(self) -> str:
        again = ", redelivered" if self.redelivered else ""
        return f"DurableDelivery({self.durable!r} #{self.seq}, {self.name!r}{again})"


_make_event = partial(tuple.__new__, Event)
_NO_LIMIT = None  # decode_events: no max_payload check (the node made it)


def decode_batch(frames: list, max_payload: int | None = _NO_LIMIT) -> list[Event]:
    """A DELIVER message -> Events, in order (built in C where it can be)."""
    return list(iter_batch(frames, max_payload))


def iter_batch(frames: list, max_payload: int | None = _NO_LIMIT) -> Iterator[Event]:
    """The Events of a DELIVER message, created lazily as they are consumed."""
    view = P.decode_events(frames[1], frames[2], frames[3:], max_payload)
    return events_of(P.decode_header(frames[0]), view)


def events_of(header: list, view: P.BatchView) -> Iterator[Event]:
    """The Events of a decoded DELIVER (its header's source runs, its batch)."""
    sources = header[1] if len(header) > 1 else []
    n = view.n
    if len(sources) == 1:
        source_col: Iterable = repeat(sources[0][0], n)
    else:
        source_col = chain.from_iterable(repeat(s, c) for s, c in sources)
    events = map(_make_event, zip(view.name_column(), view.payloads(), repeat(None),
                                  source_col, repeat(None), repeat(None)))
    if not view.extras:
        return events
    events = list(events)
    for i, (target, _mode, reply, headers) in view.extras.items():
        e = events[i]
        events[i] = Event(e[0], e[1], headers, e[3], reply, target)
    return iter(events)


# ---------------------------------------------------------------------- actions
# What ``ClientCore.receive`` asks the I/O shell to do. Plain named tuples: a shell
# dispatches on the class (``action.__class__ is Deliver`` first: the hot path).


class Deliver(NamedTuple):
    """Events for the application: the DELIVER message as received (``frames``,
    decoded only where the events are consumed, off the I/O thread) or, when the core
    had to look inside it, the events left once replies were taken out."""

    frames: list | None
    events: tuple = ()

    def iter_events(self) -> Iterator[Event]:
        return iter_batch(self.frames) if self.frames is not None else iter(self.events)


class Ready(NamedTuple):
    """The node accepted our hello (again): this session may send anything now."""

    node: str
    client_id: str
    limits: dict


class Pong(NamedTuple):
    """The node has processed everything sent before the ping with this token."""

    token: int


END_OF_STREAM = object()  # filed after a request's last reply (or its error)


class ResolveWaiter(NamedTuple):
    """A reply to request ``ref``; ``last``: no more will come (it wanted no more)."""

    ref: int
    event: Event
    last: bool

    def items(self) -> tuple:
        """What to file in the request's reply box, in order."""
        return (self.event, END_OF_STREAM) if self.last else (self.event,)


class FailWaiter(NamedTuple):
    """Request ``ref`` is over without (more) replies: raise ``error`` to its caller."""

    ref: int
    error: Exception

    def items(self) -> tuple:
        """What to file in the request's reply box, in order."""
        return (self.error, END_OF_STREAM)


class ResendHello(NamedTuple):
    """The node forgot this session (restart, idle timeout): introduce ourselves."""

    frames: list


class Send(NamedTuple):
    """Frames to send now (subscriptions that did not fit in the hello)."""

    frames: list


class Resend(NamedTuple):
    """Send request ``ref`` again: the node dropped it with our old session."""

    ref: int
    frames: list


class Refused(NamedTuple):
    """The node refused our first hello (the token): connecting fails with ``error``."""

    error: NodeError


class ReportError(NamedTuple):
    """An error for the application (``client.errors``, ``on_error``)."""

    error: NodeError


class DeliverDurable(NamedTuple):
    """Events of a durable subscription (DurableDelivery), for ``events()``."""

    events: tuple

    def iter_events(self) -> Iterator[Event]:
        return iter(self.events)


class Confirmed(NamedTuple):
    """The node confirmed (or refused) durable events: waiters may look again."""

    count: int


class ControlDone(NamedTuple):
    """Durable control request ``ref`` is answered: ``result`` (a map), or ``error``
    to raise to its caller."""

    ref: int
    result: Any
    error: Exception | None


# ------------------------------------------------------------------------- core

PAYLOAD_TYPES: tuple[type, ...] = (bytes, bytearray, memoryview)
# Subscriptions a hello carries, in bytes of patterns: a node's max_hello_bytes is
# 64 KiB by default, and the hello's identity needs room too.
HELLO_SUBS_BYTES = 16 * 1024
HEARTBEAT = 2.0  # the longest silence before a client pings its node


def ping_interval(limits: Mapping) -> float:
    """Seconds of silence before a client pings: a third of the node's client_timeout
    (so a slow tick or two cannot get a live idle client forgotten), at most HEARTBEAT.
    A value that is no positive number (a node's mistake) leaves HEARTBEAT."""
    timeout = limits.get("client_timeout")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
            or not timeout > 0:
        return HEARTBEAT
    return max(0.05, min(HEARTBEAT, timeout / 3))


class _Pending:
    """A request waiting for replies: enough to send it again and to know its end."""

    __slots__ = ("frames", "limit", "received", "resends", "resend_due")

    def __init__(self, frames: list, limit: int | None) -> None:
        self.frames = frames
        self.limit = limit  # replies wanted (None: until the caller stops listening)
        self.received = 0
        self.resends = 1  # a node that lost our session gets it once more
        self.resend_due = False


class Extended:
    """Outbox name slot of an event that sets target, mode, reply or headers."""

    __slots__ = ("name", "extra")

    def __init__(self, name: str, extra: tuple) -> None:
        self.name = name
        self.extra = extra


def wire_mode(mode: str | int) -> int:
    """``"all"``/``"one"`` (or the protocol's numbers) -> the protocol's number."""
    if mode in ("all", P.MODE_ALL):
        return P.MODE_ALL
    if mode in ("one", P.MODE_ONE):
        return P.MODE_ONE
    raise ValueError(f"mode must be 'all' or 'one', got {mode!r}")


class ClientCore:
    """Protocol state of one client session, and what each message from the node
    means for it (``receive``). No I/O: the caller sends what methods return."""

    def __init__(self, token: str | None, name: str | None, groups: Iterable[str] = (),
                 tags: Iterable[str] = (), channels: Iterable[str] = (),
                 options: dict | None = None,
                 payload_types: tuple[type, ...] = PAYLOAD_TYPES,
                 durable_lock: Any = None, max_unconfirmed: int = 10_000) -> None:
        self.token = token
        self.name = name or f"py-{os.getpid()}"
        self.groups = tuple(groups)
        self.tags = tuple(tags)
        self.channels = tuple(channels)
        self.options: dict = dict(options or {})
        self.payload_types = payload_types
        self.subs: dict[tuple[str, str | None], None] = {}
        self.subs_after_ready: list = []  # did not fit in the last hello
        self.ready = False
        self.was_ready = False  # once ready, a refused hello is reported, not fatal
        self.node = ""
        self.client_id = ""
        self.limits: dict = {}
        self.ping_every = HEARTBEAT  # seconds of silence before a ping (the node's limits)
        self.inbox_prefix = ""
        self.req_ids = itertools.count(1)
        self.ping_ids = itertools.count(1)
        # Our own random routing id, never derived from or shown as the client id:
        # the node binds the session to this connection, and a peer-chosen id avoids
        # ZeroMQ generating one (its generated ids can collide with a chosen one).
        self.routing_id = os.urandom(16)
        self.pending: dict[int, _Pending] = {}
        self.expects_replies = False  # set by the first request: deliveries get a look
        self.durable = DurableState(durable_lock, max_unconfirmed)
        self.controls: dict[int, tuple[str, dict, list]] = {}  # DCTL req_id -> op, args
        self.acker: Any = None  # what a durable event's ack()/nak() calls (the client)

    def sibling(self, options: dict) -> ClientCore:
        """A core for another session of the same client (same token and identity)."""
        return ClientCore(self.token, self.name, self.groups, self.tags, self.channels,
                          options, self.payload_types)

    # ------------------------------------------------------------ what to send

    def hello(self) -> list[bytes]:
        """Our hello, with as many subscriptions as keep it small (a node refuses a
        hello over its max_hello_bytes); the rest follow the ready as SUBs."""
        subs = list(self.subs)
        size = 0
        for i, (pattern, queue) in enumerate(subs):
            size += len(pattern) + len(queue or "") + 8
            if size > HELLO_SUBS_BYTES:
                subs, self.subs_after_ready = subs[:i], subs[i:]
                break
        else:
            self.subs_after_ready = []
        return P.encode_hello(self.name, self.token, self.groups, self.tags,
                              self.channels, subs, self.options)

    def session_lost(self) -> None:
        """The connection dropped (or may have gone stale): hello is due again."""
        self.ready = False

    def payload(self, data: Any) -> Any:
        """``data`` as a payload (str is encoded); TypeError for anything else."""
        if isinstance(data, str):
            return data.encode()
        if isinstance(data, self.payload_types):
            return data
        raise TypeError(f"event data must be bytes (or str), got {type(data).__name__}")

    def check_size(self, data: Any) -> None:
        limit = self.limits.get("max_payload")
        if limit is not None and len(data) > limit:
            raise ValueError(f"payload of {len(data)} bytes exceeds the node's limit of "
                             f"{limit} bytes")

    def outbox_entry(self, name: str, data: Any, target: str | None, mode: str | int,
                     headers: dict | None) -> tuple[Any, Any]:
        """(name slot, payload) for the outbox, checking what a bare publish skips."""
        if data.__class__ is not bytes:
            data = self.payload(data)
        if len(data) >= P.LARGE_PAYLOAD:
            self.check_size(data)
        extra = self.extra(target, mode, headers)
        return (name if extra is None else Extended(name, extra)), data

    def extra(self, target: str | None, mode: str | int,
              headers: dict | None) -> tuple | None:
        """The (target, mode, reply, headers) an event carries on the wire (checked),
        None when it sets none of them (the common case costs nothing)."""
        if target is None and headers is None and mode == "all":
            return None
        if target is not None:
            parse_target(target)
        return (target, wire_mode(mode), None, headers)

    def request(self, name: str, data: Any, target: str | None, mode: str | int,
                headers: dict | None, replies: int | None) -> tuple[int, list]:
        """(req_id, frames) of a new request, now awaiting ``replies`` replies (None:
        any number, until ``forget``)."""
        data = self.payload(data)
        self.check_size(data)
        req_id = next(self.req_ids)
        frames = P.encode_request(req_id, name, data, target, wire_mode(mode), headers)
        self.pending[req_id] = _Pending(frames, replies)
        self.expects_replies = True
        return req_id, frames

    def forget(self, req_id: int) -> None:
        """The caller stopped listening: later replies to ``req_id`` are dropped."""
        self.pending.pop(req_id, None)

    def reply(self, event: Event, data: Any, headers: dict | None) -> list:
        """The frames that answer request ``event``."""
        if not event.reply:
            raise ValueError(f"event {event.name!r} is not a request (no reply subject)")
        return P.encode_reply(event.reply, self.payload(data), headers)

    def ping(self) -> tuple[int, list]:
        """(token, frames) of a ping; ``Pong(token)`` comes back after what was sent."""
        token = next(self.ping_ids)
        return token, P.encode_ping(token)

    def publish_durable(self, name: str, data: Any, headers: dict | None,
                        event_id: str | None) -> tuple[int, str]:
        """Keep a durable event for the next DPUB (and resends until confirmed): (its
        cseq, to wait for, and its id)."""
        data = self.payload(data)
        self.check_size(data)
        return self.durable.publish(name, data, headers, event_id)

    def control(self, op: str, args: dict) -> tuple[int, list]:
        """(req_id, frames) of a durable control request; ``ControlDone(req_id, ...)``
        answers it. A subscribe is remembered (and resumed after a new session)."""
        req_id = next(self.req_ids)
        frames = P.encode_dctl(req_id, op, args)
        self.controls[req_id] = (op, args, frames)
        if op == "subscribe":
            self.durable.subs[args["durable"]] = args
        elif op == "unsubscribe":
            self.durable.subs.pop(args["durable"], None)
        return req_id, frames

    def forget_control(self, req_id: int) -> None:
        """The caller stopped waiting: the answer is dropped (a subscribe is not
        resumed)."""
        op, args, _ = self.controls.pop(req_id, ("", {}, []))
        if op == "subscribe" and self.durable.subs.get(args["durable"]) is args:
            del self.durable.subs[args["durable"]]

    def ack(self, event: Event, delay: float | None = None) -> None:
        """Queue the ack (``delay`` None) or nak of a durable event; ordinary: nothing."""
        if event.durable is None:
            return
        if delay is None:
            self.durable.ack(event.durable, event.seq)
        else:
            self.durable.nak(event.durable, event.seq, delay)

    def delivery_error(self, upto: int, timeout: float | None,
                       only: int | None = None) -> DeliveryError | None:
        """What a wait for confirms ends with: None if all were confirmed, else the
        DeliveryError (refusals it reports are not reported again)."""
        left, refused = self.durable.outcome(upto, only)
        if not left and not refused:
            return None
        return DeliveryError(left, refused, self.node, timeout)

    # ------------------------------------------------------ what came in means

    def receive(self, frames: list) -> list:
        """The actions one message from the node calls for, in order. Raises
        ``protocol.ProtocolError`` for a message that is not one."""
        header = P.decode_header(frames[0])
        if header[0] == P.DELIVER:
            if not self.expects_replies:
                return [Deliver(frames)]
            return self._deliveries(header, frames)
        msg = P.decode(frames)
        kind = msg.__class__
        if kind is P.Error:
            return self._on_error(msg)
        if kind is P.Pong:
            return [Pong(msg.token)]
        if kind is P.Ready:
            return self._on_ready(msg)
        if kind is P.DurableDeliver:
            return [self._on_ddeliver(msg)]
        if kind is P.DurableConfirm:
            self.durable.on_confirm(msg)
            return [Confirmed(len(msg.confirmed) + len(msg.refused))]
        if kind is P.DurableControlReply:
            return self._on_dctlr(msg)
        return []  # a node's ping to a client needs no answer

    def _on_ddeliver(self, msg: P.DurableDeliver) -> DeliverDurable:
        name, acker = msg.durable, self.acker or self
        return DeliverDurable(tuple(
            tuple.__new__(DurableDelivery, (e.name, e.payload, e.headers or None,
                                            e.publisher, None, None, e.seq, e.id, name,
                                            e.time, e.deliveries, acker))
            for e in msg.events))

    def _on_dctlr(self, msg: P.DurableControlReply) -> list:
        op, args, _ = self.controls.pop(msg.req_id, ("", {}, []))
        if msg.ok:
            if not op:
                return []  # nobody waits (any more)
            return [] if op == "resume" else [ControlDone(msg.req_id, msg.result, None)]
        result = msg.result
        if isinstance(result, list) and len(result) == 2:
            err = node_error(str(result[0]), str(result[1]), msg.req_id)
        else:
            err = NodeError(S.BAD_MESSAGE, f"a durable control reply without [code, "
                            f"message]: {str(result)[:200]}")
        if op == "subscribe" and self.durable.subs.get(args["durable"]) is args:
            del self.durable.subs[args["durable"]]  # never made: nothing to resume
        if op == "resume" or not op:
            return [ReportError(err)] if op else []
        return [ControlDone(msg.req_id, None, err)]

    def _deliveries(self, header: list, frames: list) -> list:
        """Replies out of a delivery (looked for by name, per batch), the rest as is."""
        view = P.decode_events(frames[1], frames[2], frames[3:], _NO_LIMIT)
        prefix = self.inbox_prefix
        if not prefix or not any(n.startswith(prefix) for n in view.names):
            return [Deliver(frames)]
        actions: list = []
        rest = []
        for ev in events_of(header, view):
            if not ev.name.startswith(prefix):
                rest.append(ev)
                continue
            action = self._on_reply(ev, ev.name[len(prefix):])
            if action is not None:
                actions.append(action)
        if rest:
            actions.append(Deliver(None, tuple(rest)))
        return actions

    def _on_reply(self, ev: Event, suffix: str) -> ResolveWaiter | None:
        req_id = S.reply_req_id(suffix)  # the suffix is REQ_ID.CAPABILITY
        pending = self.pending.get(req_id)
        if pending is None:
            return None  # a late reply: nobody listens any more (never an app event)
        pending.received += 1
        last = pending.limit is not None and pending.received >= pending.limit
        if last:
            del self.pending[req_id]
        return ResolveWaiter(req_id, ev, last)

    def _on_ready(self, msg: P.Ready) -> list:
        self.ready = self.was_ready = True
        self.node = msg.node
        self.client_id = msg.client_id
        self.limits = msg.limits
        self.ping_every = ping_interval(msg.limits)
        self.inbox_prefix = S.inbox_prefix(msg.node, msg.client_id)
        # Before Ready: what is sent on ready must not overtake these subscriptions.
        actions: list = [Send(P.encode_sub(p, q)) for p, q in self.subs_after_ready]
        self.subs_after_ready = []
        actions.append(Ready(msg.node, msg.client_id, msg.limits))
        for req_id, pending in self.pending.items():
            if pending.resend_due:
                pending.resend_due = False
                actions.append(Resend(req_id, pending.frames))
        actions.extend(self._durable_session())
        return actions

    def _durable_session(self) -> list:
        """A new session: durable subscriptions resume (an unanswered subscribe goes
        again with its own req_id), control requests the old one left unanswered go
        again if asking twice is harmless (else their outcome is unknown: they fail),
        and every unconfirmed durable event is due again (``durable.take``)."""
        self.durable.session_started()
        for req_id in [r for r, c in self.controls.items() if c[0] == "resume"]:
            del self.controls[req_id]  # the old session's: a new resume goes below
        actions: list = []
        waiting = {args["durable"]: req_id
                   for req_id, (op, args, _) in list(self.controls.items())
                   if op == "subscribe"}
        for name, args in self.durable.resume_args():
            if name in waiting:
                continue
            req_id = next(self.req_ids)
            frames = P.encode_dctl(req_id, "subscribe", args)
            self.controls[req_id] = ("resume", args, frames)
            actions.append(Send(frames))
        for req_id, (op, _args, frames) in list(self.controls.items()):
            if op in ("subscribe", "unsubscribe", "ls", "info"):
                actions.append(Send(frames))
            elif op in ("rm", "replay"):
                del self.controls[req_id]
                actions.append(ControlDone(req_id, None, ConnectionError(
                    f"durable {op}: the session with the node was lost before it "
                    "answered; it may or may not have been done")))
        return actions

    def _on_error(self, msg: P.Error) -> list:
        """The one place that decides what an error code means to a client."""
        err = node_error(msg.code, msg.message, msg.ref)
        if msg.code == S.NOT_READY:
            return self._on_not_ready(err)
        if msg.code in S.REFUSALS and not self.was_ready:
            return [Refused(err)]
        if msg.code == S.AUTH_PENDING:
            return []  # a second hello crossed the first: its answer is on the way
        ref = msg.ref
        if msg.code in S.REQUEST_ERRORS and type(ref) is int and ref in self.pending:
            del self.pending[ref]
            return [FailWaiter(ref, err)]
        if type(ref) is int and ref in self.controls:
            op, args, _ = self.controls.pop(ref)
            if op == "subscribe" and self.durable.subs.get(args["durable"]) is args:
                del self.durable.subs[args["durable"]]
            if op != "resume":
                return [ControlDone(ref, None, err)]
        return [ReportError(err)]

    def _on_not_ready(self, err: NodeError) -> list:
        """The node does not know this session. Hello again if we thought it did;
        requests it dropped unanswered go once more after the next ready (a request
        that already got replies keeps its inbox: same client id after hello)."""
        actions: list = []
        if self.ready:
            self.ready = False
            actions.append(ResendHello(self.hello()))
        for req_id, pending in list(self.pending.items()):
            if pending.received:
                continue
            if pending.resends:
                pending.resends -= 1
                pending.resend_due = True
            else:
                del self.pending[req_id]
                actions.append(FailWaiter(req_id, err))
        return actions or [ReportError(err)]
