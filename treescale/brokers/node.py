"""The node: one ROUTER socket, one event loop, and the intake that feeds its rooms.

Owns: the sockets and the loop (each wakeup drains every ready message, up to
``DRAIN_LIMIT``, then sends at most one message per destination), the sessions of
this node's connections and their end, dispatching each message — after the gate
(gate.py) said the peer may send it — to the room that owns its concept, the node's
own ``$sys`` events, housekeeping, and the report it publishes once a second.

The rooms, one concept each: handshake.py (hello → session), gate.py (who may send
what), fanout.py (routing and output: the hot path), links.py (one Link per
neighbour), exchange.py (interest), placement.py (joiners), parent.py (the parent link
and healing, driving treescale/healing.py), requests.py (request/reply), custody.py
and durables.py (durable events and subscriptions), hosting.py (services and metrics
beside the loop), sessions.py (a client's state), curve.py (CURVE: keys, ZAP,
revocation).

Must not touch: the meaning of messages (treescale/protocol.py), routing rules
(treescale/routing.py), interest rules (treescale/interest.py): those are pure.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import NoReturn

import zmq

from treescale import frames as F
from treescale import protocol as P
from treescale import subjects
from treescale.auth import AuthHook, hook_from_config
from treescale.brokers import gate
from treescale.brokers.connections import Connections
from treescale.brokers.curve import Curve
from treescale.brokers.custody import Custody
from treescale.brokers.exchange import InterestExchange
from treescale.brokers.fanout import Fanout
from treescale.brokers.handshake import Handshake
from treescale.brokers.hosting import Hosting, limit_malloc_arenas
from treescale.brokers.links import LINK_TIMEOUT, Link, Links
from treescale.brokers.listener import listen, remove_ipc
from treescale.brokers.parent import ParentLink
from treescale.brokers.placement import Placement
from treescale.brokers.report import report
from treescale.brokers.requests import Requests
from treescale.brokers.sessions import Session
from treescale.config import ConfigError, NodeConfig
from treescale.frames import EVENTS, NOBLOCK, POLLIN, SRCFD, monitor_events, recv_frames
from treescale.metrics import CLIENTS, SERVICES, ProcessUsage, Traffic
from treescale.routing import PatternError, RoutingTable, TargetError

log = logging.getLogger("treescale.node")

DRAIN_LIMIT = 2000
HOUSEKEEPING_INTERVAL = 1.0
GONE = ("disconnected", "unreachable")  # sessions that ended with their connection
_PUB_HEADER = P.PUB_HEADER
DURABLE_FROM_CLIENTS = (P.DurablePublish, P.DurableControl, P.DurableAck)
DURABLE_FROM_LINKS = (P.CustodyForward, P.CustodyAck, P.Probe, P.ProbeAnswer)


class Node:
    """A TreeScale node serving clients and child nodes on one TCP port."""

    def __init__(self, config: NodeConfig, auth: AuthHook | None = None,
                 context: zmq.Context | None = None) -> None:
        refusal = config.bind_refusal()
        if refusal is not None:  # before any socket: nothing listens, nothing to undo
            raise ConfigError(refusal)
        self.config = config
        self.name = config.name
        self.ctx = context or zmq.Context.instance()
        self.table = RoutingTable(config.name, config.groups, config.tags)
        self.sessions: dict[bytes, Session] = {}
        self.by_client_id: dict[str, bytes] = {}
        self.fds: dict[int, bytes] = {}  # a session's connection fd -> its routing id
        self.started = time.time()
        self.stats = {"events_in": 0, "events_out": 0, "no_route": 0, "dropped": 0,
                      "errors_sent": 0, "batches_in": 0, "bad_replies": 0}
        self.traffic = Traffic()  # counted per batch, per class and link
        self._usage = ProcessUsage()
        self.cpu: tuple[float, int] = (0.0, 0)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        # CURVE (keys_dir): before the socket binds, and the ZAP handler before both.
        self.curve = Curve.for_node(self)
        # The ROUTER every client and child connects to: TCP, and ipc_path (listener.py).
        self.sock, self.endpoint, self.ipc_endpoint = listen(self.ctx, config, self.curve)
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        # Sessions end when their connection closes, not only by silence: the
        # ROUTER's monitor reports the file descriptor, SRCFD maps it back.
        # Accepted connections are counted until ready (connections.py).
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED
                                                    | zmq.EVENT_ACCEPTED)
        self.connections = Connections(self)
        # The rooms (see the module docstring); fanout keeps references to the
        # tables above, so they are made last.
        self.links = Links(self)
        self.exchange = InterestExchange(self)
        self.placement = Placement(self)
        self.parent = ParentLink(self)
        self.requests = Requests(self)
        self.handshake = Handshake(self, auth or hook_from_config(config.auth_settings()))
        self.hosting = Hosting(self)
        self.fanout = Fanout(self)
        self.custody = Custody(self)  # durable events: restores what it stored

    # ------------------------------------------------------------------ lifecycle

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the loop to finish (safe from any thread or a signal handler)."""
        self._stop.set()
        self.wake()

    def wake(self) -> None:
        """Wake the loop from another thread (an auth result, a stop)."""
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self, on_ready: Callable[[Node], None] | None = None) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        zap = self.curve.zap if self.curve is not None else None
        if zap is not None:
            poller.register(zap, zmq.POLLIN)
        up = self.parent.sock
        if up is not None:
            poller.register(up, zmq.POLLIN)
            poller.register(self.parent.monitor, zmq.POLLIN)
        next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
        try:
            self.hosting.start_listeners()  # /metrics, the WebSocket gateway
        except (OSError, ConfigError):
            self.close()
            raise
        log.info("node %s listening on %s", self.name, self.endpoint)
        if on_ready:
            on_ready(self)
        self.hosting.start_services()
        fanout = self.fanout
        guard = self._guard  # nothing a peer sends or does may end the loop
        try:
            while not self._stop.is_set():
                wait = 1 if fanout.slow or self.custody.busy else self.links.wait()
                for sock, _ in poller.poll(wait):
                    if sock is self.sock:
                        guard(self._drain)
                    elif sock is up:
                        guard(self.parent.drain)
                    elif sock is self.parent.monitor:
                        guard(self.parent.on_monitor)
                    elif sock is self.monitor:
                        guard(self._on_monitor)
                    elif sock is zap:
                        guard(self.curve.on_zap)
                    else:
                        guard(self._drain_wake)
                if fanout.slow:
                    guard(fanout.retry_parked)
                now = time.monotonic()
                guard(self.parent.tick, now)  # healing deadlines, our pings
                guard(self.links.tick, now)  # silent children
                guard(self.connections.tick, now)
                if now >= next_housekeeping:
                    guard(self._housekeeping, now)
                    next_housekeeping = now + HOUSEKEEPING_INTERVAL
                if fanout.out:  # after the timers: what they emitted leaves now
                    guard(fanout.flush)
                if self.exchange.pending:
                    self.exchange.flush()  # the interest this wakeup changed, per link
                guard(self.custody.flush)  # one commit + fsync, then confirms and sends
        finally:
            self.close()

    def _guard(self, step: Callable, *args) -> None:
        """Run one step of the loop; a failure is logged, and the loop goes on."""
        try:
            step(*args)
        except Exception:
            log.exception("node %s failed in %s", self.name,
                          getattr(step, "__qualname__", step))

    def close(self) -> None:
        self.hosting.close()
        self.custody.close()
        self.handshake.close()
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close()
        remove_ipc(self.ipc_endpoint)
        self.parent.close()
        if self.curve is not None:
            self.curve.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        log.info("node %s stopped (%s)", self.name, self.stats)

    # --------------------------------------------------------------------- intake

    def _drain(self) -> None:
        sock = self.sock
        ready = sock.getsockopt
        closed = self.monitor.getsockopt
        handle = self._handle
        for _ in range(DRAIN_LIMIT):
            try:
                frames = recv_frames(sock, NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                # ZeroMQ reports a connection's close to the monitor before it frees
                # the fd, so before any later connection can send: ending sessions
                # first means no message is ever taken for a closed connection's.
                if closed(EVENTS) & POLLIN:
                    self._on_monitor()
                handle(frames)
            except Exception:  # one bad message must not take the node down
                log.exception("node %s failed on a message", self.name)
            if not ready(EVENTS) & POLLIN:  # cheaper than a zmq.Again per wakeup
                break
        if self.fanout.out:
            self.fanout.flush()

    def _drain_wake(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        self.handshake.finish_pending()

    def _handle(self, frames: list) -> None:
        rid = frames[0].bytes
        if len(frames) < 2:
            return  # an empty message carries nothing to answer
        session = self.sessions.get(rid)
        if session is not None and session.fd is not None and \
                frames[1].get(SRCFD) != session.fd:
            # The routing id came back on another connection: the session's own
            # connection is gone, and whoever this is has not said hello.
            self.drop_session(rid, "disconnected")
            session = None
        if session is not None and session.ready:
            session.last_seen = time.monotonic()
            # Fast path: a client's publish batch (header is exactly [PUB]).
            if frames[1].bytes == _PUB_HEADER and not session.is_link:
                self._on_publish(session, frames)
                return
        elif not self.connections.may_speak(rid, frames):
            return
        try:
            msg = P.decode(frames[1:], self.config.max_payload)
        except P.ProtocolError as exc:
            self.send_error(rid, exc.code, str(exc), exc.ref)
            return
        refusal = gate.admit(session, msg)
        if refusal is not None:
            if isinstance(msg, P.Ping):  # unreachable: pings are always admitted
                return
            self.send_error(rid, refusal.code, refusal.message, refusal.ref)
            return
        if isinstance(msg, P.Hello | P.Link):
            self.handshake.on_hello(rid, msg, frames)
        elif session is None or not session.ready:
            self._before_ready(rid, session, msg)
        elif session.is_link:
            self.on_link_message(self.links.get(rid), msg, frames[1:])
        else:
            self._on_client_message(session, msg)

    def _before_ready(self, rid: bytes, session: Session | None, msg: object) -> None:
        """A ping or a bye from a connection without a ready session."""
        if isinstance(msg, P.Ping):
            self.send(rid, P.encode_pong(msg.token))
            if session is None:
                # A client we forgot (idle timeout, restart) learns it from its
                # heartbeat and says hello again.
                self.send_error(rid, subjects.NOT_READY, "unknown client: send hello")

    def _on_client_message(self, session: Session, msg: object) -> None:
        rid = session.routing_id
        if isinstance(msg, P.Batch):
            # Reaches here only when the header was not the canonical [PUB].
            refusal = gate.may_publish(session, msg.meta.names)
            if refusal is not None:
                self.send_error(rid, refusal.code, refusal.message, refusal.ref)
                return
            self.fanout.route_batch(session, msg.meta, [msg.meta_frame, msg.body,
                                                        *msg.large])
        elif isinstance(msg, P.Subscribe):
            self.subscribe(session, msg.pattern, msg.queue)
        elif isinstance(msg, P.Unsubscribe):
            self.exchange.unsubscribe(rid, msg.pattern, msg.queue)
        elif isinstance(msg, P.Request):
            self.requests.on_request(session, msg)
        elif isinstance(msg, P.Reply):
            self.requests.on_reply(session, msg)
        elif isinstance(msg, DURABLE_FROM_CLIENTS):
            self.custody.on_client(session, msg)
        elif isinstance(msg, P.Ping):
            self.send(rid, P.encode_pong(msg.token))
        elif isinstance(msg, P.Bye):
            self.drop_session(rid, "bye")

    def _on_publish(self, session: Session, frames: list) -> None:
        if len(frames) < 4:
            self.send_error(session.routing_id, subjects.BAD_FRAME_COUNT,
                            "pub takes a header, a meta and a body frame "
                            f"(then one frame per large payload), got {len(frames) - 1}")
            return
        try:
            view = P.decode_events(frames[2], frames[3], frames[4:],
                                   self.config.max_payload)
        except P.ProtocolError as exc:
            self.send_error(session.routing_id, exc.code, str(exc), exc.ref)
            return
        refusal = gate.may_publish(session, view.names)
        if refusal is not None:
            self.send_error(session.routing_id, refusal.code, refusal.message,
                            refusal.ref)
            return
        self.fanout.route_batch(session, view, frames[2:])

    def on_link_message(self, link: Link | None, msg: object, frames: list) -> None:
        """What a neighbour node says on its link (the gate let it through)."""
        if link is None:  # a ready child session whose link never came up
            return
        if isinstance(msg, P.Batch):
            link.events_in += msg.meta.n
            self.fanout.route_batch(self.sessions.get(link.member), msg.meta,
                                    [msg.meta_frame, msg.body, *msg.large],
                                    origin=link.member, sources=msg.sources)
        elif isinstance(msg, P.Interest):
            self.exchange.on_interest(link, msg)
        elif isinstance(msg, DURABLE_FROM_LINKS):
            self.custody.on_link(link, msg)
        elif isinstance(msg, P.Resync):
            self.exchange.on_resync(link, msg)
        elif isinstance(msg, P.PlacementInfo):
            self.placement.on_placement(link, msg)
        elif isinstance(msg, P.Ping):
            self.links.send(link.member, P.encode_pong(msg.token))
        elif isinstance(msg, P.Bye):
            self.drop_session(link.member, "bye")
        elif isinstance(msg, P.Error):
            log.warning("node %s says: %r %r", link.neighbour, msg.code, msg.message[:200])

    def subscribe(self, session: Session, pattern: str, queue: str | None) -> None:
        """A client's SUB (or one of its hello's subs): each stands alone."""
        refusal = gate.may_subscribe(session, pattern)
        if refusal is not None:
            self.send_error(session.routing_id, refusal.code, refusal.message,
                            refusal.ref)
            return
        refused = self.exchange.over_limit(session.routing_id, pattern, queue)
        if refused is not None:
            self.send_error(session.routing_id, subjects.MAX_SUBSCRIPTIONS, refused,
                            pattern)
            return
        try:
            self.exchange.subscribe(session.routing_id, pattern, queue)
        except PatternError as exc:
            self.send_error(session.routing_id, exc.code, str(exc), pattern)

    # ------------------------------------------------------------------ sessions

    def new_client_id(self) -> str:
        """A client id the node assigns (it appears in inbox subjects and ``$sys``
        events): random, unrelated to the connection's routing id, so knowing it
        gives no way into the session."""
        while True:
            cid = secrets.token_hex(8)
            if cid not in self.by_client_id:
                return cid

    def add_session(self, session: Session) -> None:
        self.sessions[session.routing_id] = session
        if session.fd is not None:
            self.fds[session.fd] = session.routing_id

    def forget_session(self, rid: bytes, close: bool = False) -> None:
        """A session that never got anywhere (refused, redirected): forget it now;
        ``close``: its connection too, once the answer has left (a denied peer)."""
        session = self.sessions.pop(rid, None)
        if session is None:
            return
        if self.fds.get(session.fd) == rid:
            del self.fds[session.fd]
        if close:
            self.connections.refused(session.fd, time.monotonic())

    def drop_session(self, rid: bytes, reason: str) -> None:
        """End a session: its routes, interest, queued output and link go with it."""
        session = self.sessions.pop(rid, None)
        if session is None:
            return
        if self.fds.get(session.fd) == rid:
            del self.fds[session.fd]
        self.by_client_id.pop(session.client_id, None)
        if session.ready and reason not in GONE:  # still connected: hello_timeout
            self.connections.session_ended(session.fd, rid, time.monotonic())
        if session.is_link:
            self.links.down(rid, reason)
        else:
            self.exchange.forget_client(rid)
            self.custody.durables.client_gone(rid)
        self.table.remove_member(rid)
        self.fanout.forget(rid)
        if session.ready and not session.quiet:
            self.emit(subjects.CLIENT_DISCONNECT, {"node": self.name,
                                                   "client": session.name,
                                                   "id": session.client_id,
                                                   "reason": reason})

    def _on_monitor(self) -> None:
        """A connection was accepted (counted until ready), or closed: its session
        (a client's or a child link's) ends now, not after a timeout."""
        for event in monitor_events(self.monitor):
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.connections.accepted(event["value"], time.monotonic())
                continue
            self.connections.disconnected(event["value"])
            rid = self.fds.get(event["value"])
            if rid is not None:
                self.drop_session(rid, "disconnected")

    def traffic_class(self, session: Session) -> str:
        return SERVICES if session.is_service else CLIENTS

    # ------------------------------------------------------------ sending

    def emit(self, name: str, data: dict) -> None:
        """Publish a system event from this node to whoever subscribed."""
        try:
            dests = self.table.destinations(name)
        except (PatternError, TargetError):
            return
        if dests:
            self.fanout.queue_single(self.name, name, P.packb(data), None, 0, None, None,
                                     dests)

    def send(self, rid: bytes, frames: list) -> None:
        try:
            F.send_frames(self.sock, [rid, *frames], NOBLOCK)
        except zmq.ZMQError:
            pass  # a control message to a vanished or stuck peer: nothing to keep

    def send_error(self, rid: bytes, code: str, message: str, ref=None) -> None:
        self.stats["errors_sent"] += 1
        log.debug("error to %s: %s %s", rid.hex(), code, message)
        self.send(rid, P.encode_error(code, message, ref))

    # ------------------------------------------------------------ once a second

    def _housekeeping(self, now: float) -> None:
        guard = self._guard  # each duty on its own: one failing skips no other
        guard(self._expire_sessions, now)
        if self.curve is not None:
            guard(self.curve.sweep)
        guard(self.placement.tree_changed)  # also keeps our session alive at the parent
        guard(self.exchange.send_owed_snapshots)
        guard(self.custody.housekeeping, now)
        self.cpu = self._usage.sample()
        guard(lambda: self.emit(subjects.NODE_STATS, report(self)))

    def _expire_sessions(self, now: float) -> None:
        for rid, session in list(self.sessions.items()):
            # Children report every second; five silent seconds is a dead link even
            # when no socket event said so (a close can be missed behind a reused fd).
            limit = LINK_TIMEOUT if session.is_link else self.config.client_timeout
            if now - session.last_seen > limit:
                self.drop_session(rid, "timeout")


def serve(cfg: NodeConfig, announce: Callable[[Node], object] | None = None) -> NoReturn:
    """Run a node as the whole process (`tsctl node start`, a node `tsctl up` forks):
    SIGTERM or SIGINT stops it cleanly, then the process exits 0. ``announce`` is
    called once the node is bound (its endpoint known)."""
    limit_malloc_arenas()  # before the node's first thread
    n = Node(cfg)
    n.install_signal_handlers()
    logging.getLogger("treescale").setLevel(logging.INFO)
    if announce is not None:
        announce(n)
    n.run()
    # The node has closed its socket and services in order. A service thread still
    # blocked somewhere (an engine stream, a starting client) must not keep the
    # process alive: a supervisor's SIGTERM means exit now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
