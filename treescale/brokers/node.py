"""The node: one ROUTER socket, one event loop, the routing table in the middle.

Each wakeup drains every message that is ready (up to ``DRAIN_LIMIT``), routes whole
batches, and then sends at most one message per destination: a batch that goes
entirely to one set of clients is forwarded with its original meta/body/large frames
(no copy, no re-encode); anything else is regrouped per destination and packed once.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from typing import Any

import zmq

from treescale import protocol as P
from treescale.auth import AuthHook, ClientIdentity, Decision, hook_from_config
from treescale.brokers.sessions import AUTHENTICATING, READY, Session, client_id_of
from treescale.config import NodeConfig
from treescale.frames import EVENTS, NOBLOCK, POLLIN, monitor_events, recv_frames, send_frames
from treescale.interest import LOCAL, InterestTable
from treescale.metrics import CLIENTS, LINKS, SERVICES, ProcessUsage, Traffic
from treescale.routing import PatternError, RoutingTable, TargetError, split_pattern
from treescale.subjects import SVC_PREFIX as SERVICE_PREFIX

log = logging.getLogger("treescale.node")

DRAIN_LIMIT = 2000
HOUSEKEEPING_INTERVAL = 1.0
MERGE_BELOW = 64  # segments with fewer events are packed together per destination
PARENT = b"\x00parent"  # routing-table member id of the link to our parent
QUEUES_HEADER = "$queues"  # on a forwarded mode-one event: the groups left to serve
LINK_TIMEOUT = 5.0  # seconds without a word from a child node before it is dropped
# After losing the link to the root: how long its children wait for the connection to
# come back before the smallest of them takes over. A killed root refuses the
# reconnects at once; a root that is only slow (a loaded machine missing a heartbeat)
# answers, and no second root is made.
ROOT_GRACE = 1.0
REHOME_ATTEMPT = 2.0  # seconds to wait for an ancestor to accept us before the next
SERVICES_CLOSE_TIMEOUT = 5.0  # a stop never waits longer than this on the services


class Segment:
    """Events of one source batch bound for one destination in this round.

    ``frames`` (meta, body, large...) is set when the whole batch goes to the
    destination and can be forwarded untouched; otherwise ``events`` holds the
    event tuples to pack.
    """

    __slots__ = ("source", "n", "frames", "events")

    def __init__(self, source: str, n: int, frames: list | None,
                 events: list | None = None) -> None:
        self.source = source
        self.n = n
        self.frames = frames
        self.events = events


class Node:
    """A TreeScale node serving clients on one TCP port."""

    def __init__(self, config: NodeConfig, auth: AuthHook | None = None,
                 context: zmq.Context | None = None) -> None:
        self.config = config
        self.name = config.name
        self.ctx = context or zmq.Context.instance()
        self.table = RoutingTable(config.name, config.groups, config.tags)
        self.auth = auth or hook_from_config(config.auth_settings())
        self.sessions: dict[bytes, Session] = {}
        self.by_client_id: dict[str, bytes] = {}
        self.started = time.time()
        self._service_secret = secrets.token_hex(16)
        self.services: list = []
        self._services_lock = threading.Lock()
        self._services_closed = False
        self.service_context = None
        self.stats = {"events_in": 0, "events_out": 0, "bytes_in": 0, "no_route": 0,
                      "dropped": 0, "errors_sent": 0, "batches_in": 0}
        # Metrics: counted per batch; RTT to the parent; this process's CPU/memory.
        self.traffic = Traffic()
        self._service_ids: set[bytes] = set()
        self.rtt: float | None = None
        self.rtt_ewma: float | None = None
        self._rtt_parent: str | None = None
        self._usage = ProcessUsage()
        self._cpu: tuple[float, int] = (0.0, 0)
        self.metrics_server = None
        self._out: dict[bytes, list[Segment]] = {}
        self._slow_ids: set[bytes] = set()
        self._stop = threading.Event()
        self._auth_results: queue.SimpleQueue = queue.SimpleQueue()
        self._auth_pool: ThreadPoolExecutor | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.setsockopt(zmq.LINGER, 500)
        self.sock.setsockopt(zmq.SNDHWM, 100)  # messages are batches: bound memory
        _heartbeats(self.sock)
        self.sock.setsockopt(zmq.RCVHWM, 1000)
        # A hard cap far above max_payload protects memory; the node itself answers
        # anything between max_payload and this cap with a readable error.
        self.sock.setsockopt(zmq.MAXMSGSIZE, 2 * config.max_payload + (1 << 20))
        self.endpoint = config.bind_address
        if config.port == 0:
            port = self.sock.bind_to_random_port(f"tcp://{config.host}")
            self.endpoint = f"tcp://{config.host}:{port}"
        else:
            self.sock.bind(self.endpoint)
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        # Tree links: member id -> neighbour node name, and interest bookkeeping.
        self.links: dict[bytes, str] = {}
        self.interest = InterestTable()
        self._seq_out: dict[bytes, int] = {}
        self._seq_in: dict[bytes, int] = {}
        self._snapshot_due: set[bytes] = set()  # links whose interest send was dropped
        self._resyncing: set[bytes] = set()  # links we asked for a snapshot
        self.interest.add(LOCAL, f"$inbox.{self.name}.>")  # replies find their way back
        self.up: zmq.Socket | None = None
        self.up_monitor: zmq.Socket | None = None
        if config.parent:
            self.up = self.ctx.socket(zmq.DEALER)
            self.up.setsockopt(zmq.ROUTING_ID, f"node:{self.name}".encode())
            self.up.setsockopt(zmq.LINGER, 500)
            self.up.setsockopt(zmq.RECONNECT_IVL, 50)
            self.up.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            _heartbeats(self.up)
            self.up_monitor = self.up.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
            self.up.connect(config.parent)
        # Where to re-attach if the parent dies: [(name, address)], nearest first.
        self.ancestors: list[tuple[str, str]] = []
        self._parent_address = config.parent
        self._rehome_at: float | None = None  # deadline for the current attempt
        self._rehome_queue: list[tuple[str, str]] = []
        self._rehome_plan: list[tuple[str, str]] = []  # candidates, tried in turn
        self._root_grace_until: float | None = None  # root link lost: take over then
        self._root_unconfirmed = False  # lost the root, not linked to it again yet
        # Child links are told dead by their socket closing, not only by silence:
        # the ROUTER's monitor reports the file descriptor, SRCFD maps it back.
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._link_fds: dict[int, bytes] = {}
        self._pending_links: dict[bytes, P.Link] = {}
        self._child_open: dict[bytes, int] = {}  # child -> its subtree's open depth
        self._tree_open: int | None = None  # depth of the tree's shallowest open slot
        self.siblings: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the loop to finish (safe from any thread or a signal handler)."""
        self._stop.set()
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
        if self.up is not None:
            poller.register(self.up, zmq.POLLIN)
            poller.register(self.up_monitor, zmq.POLLIN)
        next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
        if self.config.metrics_port is not None:
            self._start_metrics()
        log.info("node %s listening on %s", self.name, self.endpoint)
        if on_ready:
            on_ready(self)
        threading.Thread(target=self._start_services, daemon=True,
                         name="services").start()
        try:
            while not self._stop.is_set():
                timeout = 1 if self._slow_ids else 250
                for sock, _ in poller.poll(timeout):
                    if sock is self.sock:
                        self._drain()
                    elif sock is self.up:
                        self._drain_up()
                    elif sock is self.up_monitor:
                        self._on_up_monitor()
                    elif sock is self.monitor:
                        self._on_monitor()
                    else:
                        self._drain_wake()
                if self._slow_ids:
                    self._retry_pending()
                if self._out:
                    self._flush()
                now = time.monotonic()
                if self._root_grace_until is not None and now >= self._root_grace_until:
                    self._root_grace_until = None
                    if PARENT not in self.links:
                        self._root_unconfirmed = False
                        self._root_lost()
                if now >= next_housekeeping:
                    self._housekeeping(now)
                    next_housekeeping = now + HOUSEKEEPING_INTERVAL
        finally:
            self.close()

    def _start_services(self) -> None:
        """The machine services run as clients of this node (after its loop runs)."""
        from treescale.services import SERVICES, ServiceContext, load_factory

        address = self.endpoint.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:")
        self.service_context = ServiceContext(address, self.name, self.config,
                                              self._service_secret)
        wanted = SERVICES if self.config.services is None else self.config.services
        for name in wanted:
            if self._stop.is_set():
                return
            try:
                service = load_factory(SERVICES[name])(self.service_context)
                with self._services_lock:
                    if not self._services_closed:
                        self.services.append(service)
                        continue
                service.close()  # the node closed while this one was starting
                return
            except Exception as exc:
                if self._stop.is_set():  # stopped while the service was starting
                    log.info("node %s stopping: service %s not started (%s)", self.name,
                             name, exc)
                    return
                log.exception("node %s could not start service %s", self.name, name)

    def _close_services(self, services: list) -> None:
        for service in services:
            try:
                service.close()
            except Exception:
                log.exception("closing a service")
        if self.service_context is not None:
            self.service_context.close()

    def _start_metrics(self) -> None:
        """Serve /metrics on the node's host (port 0: a free one, logged and reported
        in the stats as metrics_port)."""
        from treescale.metrics import MetricsServer

        try:
            self.metrics_server = MetricsServer(self, self.config.host,
                                                self.config.metrics_port)
        except OSError as exc:
            self.close()
            raise OSError(f"metrics port {self.config.metrics_port} on "
                          f"{self.config.host}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        with self._services_lock:  # a service still starting closes itself
            self._services_closed = True
            services = list(self.services)
        closer = threading.Thread(target=self._close_services, args=(services,),
                                  daemon=True, name="close-services")
        closer.start()
        closer.join(SERVICES_CLOSE_TIMEOUT)
        if closer.is_alive():
            log.warning("node %s: services still closing after %gs; going on",
                        self.name, SERVICES_CLOSE_TIMEOUT)
        if self._auth_pool is not None:
            self._auth_pool.shutdown(wait=False, cancel_futures=True)
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close()
        if self.up is not None:
            self.up.disable_monitor()
            self.up_monitor.close(0)
            self.up.close()
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
        handle = self._handle
        for _ in range(DRAIN_LIMIT):
            try:
                frames = recv_frames(sock, NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                handle(frames)
            except Exception:  # one bad message must not take the node down
                log.exception("node %s failed on a message", self.name)
            if not ready(EVENTS) & POLLIN:  # cheaper than a zmq.Again per wakeup
                break
        if self._out:
            self._flush()

    def _drain_wake(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        while True:
            try:
                rid, hello, decision = self._auth_results.get_nowait()
            except queue.Empty:
                break
            self._finish_hello(rid, hello, decision)

    def _handle(self, frames: list) -> None:
        rid = frames[0].bytes
        if len(frames) < 2:
            return  # an empty message carries nothing to answer
        session = self.sessions.get(rid)
        if session is not None and session.state == READY:
            session.last_seen = time.monotonic()
            # Fast path: a publish batch (header is exactly [PUB]).
            if frames[1].bytes == P._PUB_HEADER:
                self._on_publish(session, frames)
                return
        try:
            msg = P.decode(frames[1:], self.config.max_payload)
        except P.ProtocolError as exc:
            self._send_error(rid, exc.code, str(exc), exc.ref)
            return
        if isinstance(msg, P.Hello | P.Link):
            if isinstance(msg, P.Link):
                self._pending_links[rid] = msg
                try:
                    self._link_fds[frames[1].get(zmq.SRCFD)] = rid
                except zmq.ZMQError:
                    pass  # no fd on this transport: heartbeats still find a dead link
            self._on_hello(rid, msg, frames[0])
            return
        if session is None or session.state != READY:
            if isinstance(msg, P.Ping):
                self._send(rid, P.encode_pong(msg.token))
                if session is None:
                    # A client we forgot (idle timeout, restart) learns it from its
                    # heartbeat and says hello again.
                    self._send_error(rid, "not_ready", "unknown client: send hello")
            elif not isinstance(msg, P.Bye):
                self._send_error(
                    rid, "not_ready",
                    f"{type(msg).__name__.lower()} before ready: send hello first "
                    "and wait for ready")
            return
        if session.is_link:
            self._on_link_message(rid, msg, frames[1:])
            return
        if isinstance(msg, P.Batch):
            # Reaches here only when the header was not the canonical [PUB].
            self._route_batch(session, msg.meta, [msg.meta_frame, msg.body, *msg.large])
        elif isinstance(msg, P.Subscribe):
            self._on_subscribe(session, msg.pattern, msg.queue)
        elif isinstance(msg, P.Unsubscribe):
            if self.table.unsubscribe(rid, msg.pattern, msg.queue):
                self._send_interest(self.interest.remove(LOCAL, msg.pattern, msg.queue))
        elif isinstance(msg, P.Request):
            self._on_request(session, msg)
        elif isinstance(msg, P.Reply):
            self._on_reply(session, msg)
        elif isinstance(msg, P.Ping):
            self._send(rid, P.encode_pong(msg.token))
        elif isinstance(msg, P.Bye):
            self._drop_session(rid, "bye")
        else:
            self._send_error(rid, "unexpected", f"a client may not send "
                             f"{type(msg).__name__.lower()} messages")

    # ------------------------------------------------------------------ handshake

    def _on_hello(self, rid: bytes, hello: P.Hello, frame) -> None:
        if rid in self.sessions:
            self._drop_session(rid, "re-hello")
        cid = client_id_of(rid)
        is_link = isinstance(hello, P.Link)
        session = Session(rid, cid, hello.name or f"client-{cid}",
                          groups=hello.groups, tags=hello.tags,
                          channels=() if is_link else hello.channels,
                          last_seen=time.monotonic(),
                          quiet=is_link or bool(hello.options.get("direct")),
                          is_link=is_link)
        self.sessions[rid] = session
        address = ""
        try:
            address = frame.get("Peer-Address")
        except Exception:  # not every transport reports a peer address
            pass
        who = ClientIdentity(session.name, session.groups, session.tags, session.channels,
                             address or "")
        if not is_link and hello.options.get("service") == self._service_secret:
            session.quiet = True  # one of this node's own services
            self._service_ids.add(rid)
            self._finish_hello(rid, hello, Decision(True, "service", frozenset({"*"})))
            return
        if not self.auth.blocking:
            self._finish_hello(rid, hello, self.auth.check(hello.token, who))
            return
        if self._auth_pool is None:
            self._auth_pool = ThreadPoolExecutor(4, thread_name_prefix="auth")

        def work() -> None:
            decision = self.auth.check(hello.token, who)
            self._auth_results.put((rid, hello, decision))
            try:
                os.write(self._wake_w, b"a")
            except OSError:
                pass

        self._auth_pool.submit(work)

    def _finish_hello(self, rid: bytes, hello: P.Hello, decision: Decision) -> None:
        session = self.sessions.get(rid)
        if session is None or session.state != AUTHENTICATING:
            return
        if not decision.allowed:
            del self.sessions[rid]
            code = "token_required" if not hello.token else "bad_token"
            self._send_error(rid, code, f"authentication failed: {decision.reason}")
            self._emit("$sys.client.denied", {"node": self.name, "client": session.name,
                                              "reason": decision.reason})
            return
        session.state = READY
        session.permissions = decision.permissions
        if session.is_link:
            self._accept_child(session)
            return
        self.by_client_id[session.client_id] = rid
        self.table.add_member(rid, hello.groups, hello.tags, hello.channels)
        self.table.subscribe(rid, f"$inbox.{self.name}.{session.client_id}.*")
        for pattern, q in hello.subs:
            self._on_subscribe(session, pattern, q)
        limits = {"max_payload": self.config.max_payload,
                  "large_payload": P.LARGE_PAYLOAD,
                  "client_timeout": self.config.client_timeout}
        self._send(rid, P.encode_ready(self.name, session.client_id, limits))
        if not session.quiet:
            self._emit("$sys.client.connect", {"node": self.name, "client": session.name,
                                               "id": session.client_id})

    def _on_subscribe(self, session: Session, pattern: str, q: str | None) -> None:
        if pattern.startswith("$inbox"):
            self._send_error(session.routing_id, "bad_pattern",
                             f"pattern {pattern!r}: inboxes are private", pattern)
            return
        try:
            added = self.table.subscribe(session.routing_id, pattern, q)
        except PatternError as exc:
            self._send_error(session.routing_id, exc.code, str(exc), pattern)
            return
        if added:
            self._send_interest(self.interest.add(LOCAL, pattern, q))

    def _drop_session(self, rid: bytes, reason: str) -> None:
        session = self.sessions.pop(rid, None)
        if session is None:
            return
        self.by_client_id.pop(session.client_id, None)
        if session.is_link:
            self._link_down(rid, reason)
        else:
            member = self.table.members.get(rid)
            for pattern, q in list(member.subs) if member else ():
                if not pattern.startswith("$inbox."):
                    self._send_interest(self.interest.remove(LOCAL, pattern, q))
        self.table.remove_member(rid)
        self._out.pop(rid, None)
        self._slow_ids.discard(rid)
        self._service_ids.discard(rid)
        if session.state == READY and not session.quiet:
            self._emit("$sys.client.disconnect", {"node": self.name,
                                                  "client": session.name,
                                                  "id": session.client_id,
                                                  "reason": reason})

    # -------------------------------------------------------------------- routing

    def _on_publish(self, session: Session, frames: list) -> None:
        if len(frames) < 4:
            self._send_error(session.routing_id, "bad_frame_count",
                             "pub takes a header, a meta and a body frame "
                             f"(then one frame per large payload), got {len(frames) - 1}")
            return
        try:
            view = P.decode_events(frames[2], frames[3], frames[4:],
                                   self.config.max_payload)
        except P.ProtocolError as exc:
            self._send_error(session.routing_id, exc.code, str(exc), exc.ref)
            return
        if not self._may_publish(session, view.names):
            return
        self._route_batch(session, view, frames[2:])

    def _may_publish(self, session: Session, names: list, ref: Any = None) -> bool:
        """Reserved names need a permission: ``$svc.S…`` needs ``S`` (exec, docker…);
        ``$sys.…`` (what nodes and services say about the fabric, which the monitor
        and the load balancer believe) needs ``sys``. Links and services carry ``*``."""
        perms = session.permissions
        if "*" in perms:
            return True
        for name in names:
            if name.startswith(SERVICE_PREFIX):
                needed = name[len(SERVICE_PREFIX):].split(".", 1)[0]
            elif name.startswith("$sys."):
                needed = "sys"
            else:
                continue
            if needed not in perms:
                self._send_error(session.routing_id, "permission_denied",
                                 f"{name!r}: this client's token does not allow "
                                 f"{needed}", name if ref is None else ref)
                return False
        return True

    def _lookup(self, session: Session | None, name: str, target: str | None,
                errors: dict):
        """The route of (name, target), or None after noting the error for the sender."""
        route = self.table.cache.get((name, target))
        if route is None:
            try:
                route = self.table.lookup(name, target)
            except (PatternError, TargetError) as exc:
                errors[str(exc)] = exc.code
                return None
        return route

    def _route_batch(self, session: Session | None, view: P.BatchView, frames: list,
                     origin: bytes | None = None, sources: list | None = None) -> None:
        """Route a batch: whole to each destination when every event goes to the same
        set (the common case, decided from the distinct names alone), else split.

        ``origin`` is the tree link a forwarded batch came in on (never sent back
        there); ``sources`` its publisher runs.
        """
        n = view.n
        self.stats["events_in"] += n
        self.stats["batches_in"] += 1
        if origin is not None:
            self.traffic.count_in(LINKS, self._link_key(origin), view)
        else:
            self.traffic.count_in(SERVICES if session.routing_id in self._service_ids
                                  else CLIENTS, None, view)
        errors: dict = {}
        queues_for: dict = {}  # (link, event) -> queue groups that link must serve
        if session is not None:
            session.events_in += n
        source: Any = sources if sources else session.name
        by_dest: dict = {}
        if view.extras is None:
            name_dests = []
            for name in view.names:
                route = self._lookup(session, name, None, errors)
                dests = route.everyone if route is not None else ()
                if origin is not None and origin in dests:
                    dests = tuple(d for d in dests if d != origin)
                name_dests.append(dests)
            first = name_dests[0] if name_dests else ()
            if not errors and all(d == first for d in name_dests):
                if not first:
                    self.stats["no_route"] += n
                for dest in first:
                    self._queue(dest, Segment(source, n, frames))
                return
            index = view.index if view.index is not None else repeat(0, n)
            for i, ni in enumerate(index):
                for dest in name_dests[ni]:
                    by_dest.setdefault(dest, []).append(i)
        else:
            names = list(view.name_column())
            for i in range(n):
                target, mode, _reply, headers = view.extra(i)
                route = self._lookup(session, names[i], target, errors)
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
                for dest, q in self.table.pick_groups(route, origin, allowed):
                    idx = by_dest.setdefault(dest, [])
                    if not idx or idx[-1] != i:
                        idx.append(i)
                    if dest in self.links:
                        queues_for.setdefault((dest, i), []).append(q)
        if session is not None and not session.is_link:
            for message, code in errors.items():
                self._send_error(session.routing_id, code, message)
        routed = set()
        for idx in by_dest.values():
            routed.update(idx)
        self.stats["no_route"] += n - len(routed)
        if not by_dest:
            return
        events = view.events()
        # A forwarded batch may hold several publishers' events (runs): each part of
        # a split keeps the publisher of each of its events.
        per_event = [src for src, count in source for _ in range(count)] \
            if isinstance(source, list) else None
        for dest, idx in by_dest.items():
            if dest in self.links:
                chosen = [_with_queues(events[i], queues_for.get((dest, i)))
                          for i in idx]
            else:
                chosen = [_without_queues(events[i]) for i in idx]
            part = source if per_event is None else _runs_of(per_event, idx)
            self._queue(dest, Segment(part, len(idx), None, chosen))

    def _queue(self, dest: bytes, seg: Segment) -> None:
        segs = self._out.get(dest)
        if segs is None:
            self._out[dest] = [seg]
        else:
            segs.append(seg)

    def _flush(self) -> None:
        """Send this round's output: a big batch is forwarded as it came (no copy, no
        re-encode); runs of small segments for one destination are packed into one."""
        out, self._out = self._out, {}
        for dest, segs in out.items():
            run: list[Segment] = []
            header = P.encode_forward_header if dest in self.links else \
                P.encode_deliver_header
            for s in segs:
                if s.frames is not None and s.n >= MERGE_BELOW:
                    if run:
                        self._deliver(dest, *_merge(run, header))
                        run = []
                    self._deliver(dest, [header(_runs(s)), *s.frames], s.n)
                else:
                    run.append(s)
            if run:
                if len(run) == 1 and run[0].frames is not None:
                    s = run[0]
                    self._deliver(dest, [header(_runs(s)), *s.frames], s.n)
                else:
                    self._deliver(dest, *_merge(run, header))

    def _deliver(self, dest: bytes, frames: list, n_events: int) -> None:
        if dest is PARENT or dest == PARENT:
            self._send_up(frames, n_events)
            return
        session = self.sessions.get(dest)
        if session is None:
            return
        if session.pending:
            self._park(session, frames, n_events)
            return
        try:
            send_frames(self.sock, [dest, *frames], NOBLOCK)
        except zmq.Again:
            self._park(session, frames, n_events)
            return
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self._drop_session(dest, "unreachable")
                return
            raise
        session.events_out += n_events
        self.stats["events_out"] += n_events
        self._count_out(session, n_events, frames)

    def _count_out(self, session: Session, n_events: int, frames: list) -> None:
        if session.is_link:
            self.traffic.count_out(LINKS, (session.name, "child"), n_events, frames)
        else:
            self.traffic.count_out(SERVICES if session.routing_id in self._service_ids
                                   else CLIENTS, None, n_events, frames)

    def _link_key(self, member: bytes) -> tuple[str, str]:
        """(neighbour, role) of a tree link: the label of its traffic counters."""
        return self.links.get(member, "?"), "parent" if member == PARENT else "child"

    def _park(self, session: Session, frames: list, n_events: int) -> None:
        size = sum(len(P._buffer(f)) for f in frames)
        self._slow_ids.add(session.routing_id)
        if not session.park(frames, n_events, size, self.config.slow_consumer_bytes,
                            self.config.slow_consumer_messages):
            self.stats["dropped"] += n_events
            if not session.slow:
                session.slow = True
                self._emit("$sys.client.slow", {
                    "node": self.name, "client": session.name, "id": session.client_id,
                    "pending_bytes": session.pending_bytes,
                    "pending_messages": len(session.pending)})

    def _retry_pending(self) -> None:
        for rid in list(self._slow_ids):
            session = self.sessions.get(rid)
            if session is None:
                self._slow_ids.discard(rid)
                continue
            while True:
                item = session.unpark()
                if item is None:
                    break
                try:
                    send_frames(self.sock, [rid, *item[0]], NOBLOCK)
                except zmq.Again:
                    session.requeue(item)
                    break
                except zmq.ZMQError:
                    self._drop_session(rid, "unreachable")
                    break
                session.events_out += item[1]
                self.stats["events_out"] += item[1]
                self._count_out(session, item[1], item[0])
            if not session.pending and rid in self.sessions:
                self._slow_ids.discard(rid)
                if session.slow:
                    session.slow = False
                    lost, session.dropped = session.dropped, 0
                    self._send_error(
                        rid, "slow_consumer",
                        f"{lost} event(s) were dropped for this client because it read "
                        f"slower than they arrived (buffer limit "
                        f"{self.config.slow_consumer_bytes} bytes / "
                        f"{self.config.slow_consumer_messages} messages)", lost)

    # ----------------------------------------------------------------- tree links

    def _accept_child(self, session: Session) -> None:
        rid = session.routing_id
        children = sum(1 for m in self.links if m != PARENT)
        if session.name == self.name or session.name in {n for n, _ in self.ancestors}:
            self.sessions.pop(rid, None)
            self._pending_links.pop(rid, None)
            self._send_error(rid, "cycle", f"node {session.name} is {self.name} itself or "
                             "one of its ancestors: linking would make a cycle")
            return
        joining = getattr(self._pending_links.get(rid), "join", False)
        shallower = (joining and PARENT in self.links and self._tree_open is not None
                     and self._tree_open < self._depth())
        if children >= self.config.max_children or shallower:
            self.sessions.pop(rid, None)
            self._pending_links.pop(rid, None)
            # A node higher up has room: send the joiner up; else down to the child
            # whose subtree has the shallowest open slot.
            target = (self.links[PARENT], self._parent_address) if shallower \
                else self._open_child()
            if target is None:
                self._send_error(rid, "full", f"node {self.name} already has {children} "
                                 f"children (max_children {self.config.max_children})")
            else:
                self._send(rid, P.encode_redirect(*target))
            return
        session.address = getattr(self._pending_links.pop(rid, None), "address", "")
        # LINKED first: the child must know us before our interest reaches it.
        self._send(rid, P.encode_linked(self.name, self._ancestry(), self._children()))
        self._link_up(rid, session.name)
        self._tell_children(skip=rid)

    def _depth(self) -> int:
        return len(self.ancestors) + 1 if PARENT in self.links else 0

    def _tree_changed(self) -> None:
        """Our subtree or the tree above changed: tell the parent how deep our
        nearest open slot is, and the children how deep the tree's shallowest one is
        (absolute), so that joins land level by level without a coordinator."""
        mine = self._open_depth()
        if PARENT in self.links:
            self._send_link(PARENT, P.encode_stats({"open_depth": mine}))
        else:
            self._tree_open = mine  # the root's view is the whole tree's
        if self._tree_open is not None:
            for member in self.links:
                if member != PARENT:
                    self._send(member, P.encode_stats({"tree_open": self._tree_open}))

    def _open_depth(self) -> int:
        """How far below us the nearest node with room for a child is (0: here)."""
        if sum(1 for m in self.links if m != PARENT) < self.config.max_children:
            return 0
        depths = [self._child_open.get(m, 0) for m in self.links if m != PARENT]
        return 1 + min(depths, default=0)

    def _open_child(self) -> tuple[str, str] | None:
        """The child to send a joiner to: the one whose subtree has the shallowest
        open slot (then the fewest-known depth ties by name), so the tree stays
        shallow and balanced whoever the joiner asked."""
        options = [(self._child_open.get(m, 0), s.name, s.address)
                   for m, s in self.sessions.items() if s.is_link and s.state == READY
                   and s.address]
        if not options:
            return None
        _, name, address = min(options)
        return name, address

    def _children(self) -> list[tuple[str, str]]:
        return sorted((s.name, s.address) for s in self.sessions.values()
                      if s.is_link and s.state == READY)

    def _tell_children(self, skip: bytes | None = None) -> None:
        """(Re-)send LINKED to every child: our ancestry and their siblings, so that
        each can re-attach by itself if we die."""
        siblings = self._children()
        ancestry = self._ancestry()
        for member in self.links:
            if member != PARENT and member != skip:
                self._send(member, P.encode_linked(self.name, ancestry, siblings))

    def _ancestry(self) -> list[tuple[str, str]]:
        """What a child must know to outlive us: our parent and its ancestors."""
        if PARENT not in self.links or not self._parent_address:
            return []
        return [(self.links[PARENT], self._parent_address), *self.ancestors]

    def _link_up(self, member: bytes, neighbour: str) -> None:
        self.links[member] = neighbour
        self._seq_out[member] = 0
        self._seq_in[member] = 0
        self._snapshot_due.discard(member)
        self._resyncing.discard(member)
        self.table.add_member(member, link=True)
        self._send_interest(self.interest.add_link(member))
        self._tree_changed()
        self._emit("$sys.node.up", {"node": neighbour, "detected_by": self.name,
                                    "role": "parent" if member == PARENT else "child"})

    def _link_down(self, member: bytes, reason: str) -> None:
        neighbour = self.links.pop(member, None)
        if neighbour is None:
            return
        self._seq_out.pop(member, None)
        self._seq_in.pop(member, None)
        self._snapshot_due.discard(member)
        self._resyncing.discard(member)
        self.table.remove_member(member)
        self._out.pop(member, None)
        self._send_interest(self.interest.drop_link(member))
        self._link_fds = {fd: m for fd, m in self._link_fds.items() if m != member}
        self._child_open.pop(member, None)
        if member != PARENT:
            self._tell_children()  # the remaining children's siblings changed
        self._tree_changed()
        self._emit("$sys.node.down", {"node": neighbour, "detected_by": self.name,
                                      "reason": reason,
                                      "role": "parent" if member == PARENT else "child"})

    def _send_interest(self, updates: list) -> None:
        """Tell each link what changed, one numbered INTEREST message per link."""
        per_link: dict = {}
        for u in updates:
            per_link.setdefault(u.link, []).append((u.add, u.pattern, u.queue))
        for link, ops in per_link.items():
            if link in self.links:
                if link in self._snapshot_due:
                    continue  # the snapshot that is due will carry this change too
                self._seq_out[link] += 1
                if not self._send_link(link, P.encode_interest(self._seq_out[link], ops)):
                    self._snapshot_due.add(link)

    def _send_snapshot(self, link: bytes) -> None:
        """Everything we advertise to ``link``, replacing what it heard before."""
        self._seq_out[link] += 1
        keys = sorted(self.interest.advertised.get(link, ()), key=lambda k: (k[0], k[1] or ""))
        if self._send_link(link, P.encode_interest(self._seq_out[link],
                                                   [(True, p, q) for p, q in keys], full=True)):
            self._snapshot_due.discard(link)
        else:
            self._snapshot_due.add(link)  # still full: housekeeping tries again

    def _send_link(self, member: bytes, frames: list) -> bool:
        """Send a control message on a link; False if it had to be dropped."""
        sock, out = (self.up, frames) if member == PARENT else (self.sock, [member, *frames])
        try:
            send_frames(sock, out, NOBLOCK)
            return True
        except zmq.ZMQError:
            log.warning("link to %s is full or gone; control message dropped",
                        self.links.get(member))
            return False

    def _on_link_message(self, member: bytes, msg, frames: list) -> None:
        """Interest changes and forwarded events from a neighbour node."""
        if isinstance(msg, P.Interest):
            self._on_interest(member, msg)
        elif isinstance(msg, P.Resync):
            log.warning("link to %s lost our interest after #%d: sending a snapshot",
                        self.links.get(member), msg.seq)
            self._send_snapshot(member)
        elif isinstance(msg, P.Batch):
            self._route_batch(self.sessions.get(member), msg.meta,
                              [msg.meta_frame, msg.body, *msg.large], origin=member,
                              sources=msg.sources)
        elif isinstance(msg, P.Ping):
            self._send_link(member, P.encode_pong(msg.token))
        elif isinstance(msg, P.Pong) and member == PARENT:
            self._on_parent_pong(msg.token)
        elif isinstance(msg, P.Stats):
            depth = msg.info.get("open_depth")
            if isinstance(depth, int) and member != PARENT:
                before = self._open_depth()
                self._child_open[member] = depth
                if self._open_depth() != before:
                    self._tree_changed()
            tree_open = msg.info.get("tree_open")
            if isinstance(tree_open, int) and member == PARENT \
                    and tree_open != self._tree_open:
                self._tree_open = tree_open
                self._tree_changed()
        elif isinstance(msg, P.Bye):
            self._drop_session(member, "bye")
        elif isinstance(msg, P.Error):
            log.warning("node %s says: %s %s", self.links.get(member), msg.code,
                        msg.message)

    def _on_interest(self, member: bytes, msg: P.Interest) -> None:
        if member not in self.links:
            log.warning("interest from an unlinked neighbour ignored")
            return
        expected = self._seq_in.get(member, 0) + 1
        if msg.full:
            self._resyncing.discard(member)
            self._seq_in[member] = msg.seq
            self._replace_interest(member, msg.ops)
            return
        if member in self._resyncing:
            return  # the snapshot asked for will supersede this
        if msg.seq != expected:
            # An update went missing (a full link dropped it): ask for the whole state.
            log.warning("interest gap on link to %s: got #%d, expected #%d; resyncing",
                        self.links.get(member), msg.seq, expected)
            self._resyncing.add(member)
            self._send_link(member, P.encode_resync(expected - 1))
            return
        self._seq_in[member] = msg.seq
        updates: list = []
        for add, pattern, q in msg.ops:
            try:
                if add:
                    self.table.subscribe(member, pattern, q)
                    updates += self.interest.add(member, pattern, q)
                else:
                    self.table.unsubscribe(member, pattern, q)
                    updates += self.interest.remove(member, pattern, q)
            except PatternError as exc:
                log.warning("bad interest from %s: %s", self.links.get(member), exc)
        self._send_interest(updates)

    def _replace_interest(self, member: bytes, ops: list) -> None:
        """A link's snapshot: make its routes and advertised interest exactly ``ops``."""
        keys = set()
        for _, pattern, q in ops:
            try:
                split_pattern(pattern)
                keys.add((pattern, q))
            except PatternError as exc:
                log.warning("bad interest from %s: %s", self.links.get(member), exc)
        before = set(self.interest.held.get(member, ()))
        for pattern, q in before - keys:
            self.table.unsubscribe(member, pattern, q)
        for pattern, q in keys - before:
            self.table.subscribe(member, pattern, q)
        self._send_interest(self.interest.replace(member, keys))

    def _drain_up(self) -> None:
        """Messages from our parent."""
        for _ in range(DRAIN_LIMIT):
            try:
                frames = recv_frames(self.up, NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                msg = P.decode(frames, self.config.max_payload)
            except P.ProtocolError as exc:
                log.warning("bad message from parent: %s", exc)
                continue
            try:
                self._on_parent_message(msg, frames)
            except Exception:  # one bad message must not take the node down
                log.exception("node %s failed on a message from its parent", self.name)
        if self._out:
            self._flush()

    def _on_parent_message(self, msg, frames: list) -> None:
        if isinstance(msg, P.Linked):
            self.ancestors = list(msg.ancestors)
            self.siblings = list(msg.siblings)
            if PARENT in self.links:
                self._tell_children()  # our ancestry changed: pass it down
                return
            self._rehome_at = None
            self._rehome_queue = []
            self._root_unconfirmed = False
            self._link_up(PARENT, msg.node)
            self._tell_children()
        elif isinstance(msg, P.Redirect) and PARENT not in self.links:
            log.info("node %s redirected to %s at %s", self.name, msg.node, msg.address)
            self._move_parent(msg.address)
        elif isinstance(msg, P.Error) and msg.code == "not_ready":
            # The parent lost our session (it restarted, or timed us out): link again.
            self._link_down(PARENT, "parent forgot us")
            self._send_link(PARENT, self._link_message())
        elif isinstance(msg, P.Error) and PARENT not in self.links:
            log.error("parent refused the link: %s %s", msg.code, msg.message)
            if self._rehome_at is not None:
                self._rehome_next()
        else:
            self._on_link_message(PARENT, msg, frames)

    def _on_up_monitor(self) -> None:
        for info in monitor_events(self.up_monitor):
            event = info["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._root_grace_until = None  # whoever is there is alive: no take-over
                self._send_link(PARENT, self._link_message())
            elif event == zmq.EVENT_DISCONNECTED:
                was_linked = PARENT in self.links
                self._link_down(PARENT, "disconnected")
                if was_linked and self.ancestors:
                    # Re-attach to the nearest live ancestor; our own children stay.
                    self._rehome_plan = list(self.ancestors)
                    self._rehome_queue = []
                    self._rehome_next()
                elif was_linked or self._root_unconfirmed:
                    # (unconfirmed: it answered the reconnect but died before LINKED)
                    self._root_unconfirmed = True
                    self._root_grace_until = time.monotonic() + ROOT_GRACE

    def _root_lost(self) -> None:
        """Our parent was the root. Its children agree without talking: the one with
        the smallest name becomes the root, the others attach under it."""
        successor = min([*self.siblings, (self.name, self.endpoint)])
        if successor[0] == self.name:
            # We lead until the old root answers again (it restarted, or the partition
            # healed): the parent socket keeps dialling it, and when it answers we
            # link under it again, our subtree with us. One tree, not two.
            log.warning("root lost: node %s takes over as root", self.name)
            self._rehome_at = None
            self.ancestors, self.siblings = [], []
            self._emit("$sys.node.root", {"node": self.name, "previous": "lost"})
            self._tell_children()
            return
        self._rehome_plan = [successor]
        self._rehome_queue = []
        self._rehome_next()

    def _link_message(self) -> list:
        return P.encode_link(self.name, self.config.parent_token, self.config.groups,
                             self.config.tags, self.endpoint, self.config.join)

    def _rehome_next(self) -> None:
        """Point the parent link at the next ancestor to try (cycling back to the
        original parent when all were tried)."""
        if not self._rehome_queue:
            self._rehome_queue = list(self._rehome_plan)
        if not self._rehome_queue:
            return
        name, address = self._rehome_queue.pop(0)
        log.warning("node %s re-attaching under %s at %s", self.name, name, address)
        self._move_parent(address)
        self._rehome_at = time.monotonic() + REHOME_ATTEMPT

    def _move_parent(self, address: str) -> None:
        """Point the parent link at another node (the LINK is sent on connect)."""
        if self._parent_address:
            try:
                self.up.disconnect(self._parent_address)
            except zmq.ZMQError:
                pass
        self._parent_address = address
        self.up.connect(address)

    def _on_monitor(self) -> None:
        """A child link's socket closed: it is down now, not after a timeout."""
        for event in monitor_events(self.monitor):
            rid = self._link_fds.get(event["value"])
            if rid is None or rid not in self.sessions:
                continue
            # The fd may already belong to a newer connection (the OS reuses numbers
            # and monitor events trail messages): a ping tells. ROUTER_MANDATORY makes
            # a send to a vanished peer fail at once.
            try:
                send_frames(self.sock, [rid, *P.encode_ping(0)], NOBLOCK)
            except zmq.ZMQError:
                self._link_fds.pop(event["value"], None)
                self._drop_session(rid, "disconnected")

    def _send_up(self, frames: list, n_events: int) -> None:
        if PARENT not in self.links:
            self.stats["no_route"] += n_events
            return
        try:
            send_frames(self.up, frames, NOBLOCK)
        except zmq.Again:
            # The parent link is saturated. Credit-based flow control will slow the
            # publishers instead; until then the loss is counted, never silent.
            self.stats["dropped"] += n_events
            return
        self.stats["events_out"] += n_events
        self.traffic.count_out(LINKS, (self.links[PARENT], "parent"), n_events, frames)

    # --------------------------------------------------------- request / reply

    def _on_request(self, session: Session, req: P.Request) -> None:
        if not self._may_publish(session, [req.name], req.req_id):
            return  # a request to $svc.S needs what a publish there needs
        reply_to = P.inbox_subject(self.name, session.client_id, req.req_id)
        try:
            route = self.table.lookup(req.name, req.target)
        except (PatternError, TargetError) as exc:
            self._send_error(session.routing_id, exc.code, str(exc), req.req_id)
            return
        dests = route.everyone if req.mode == P.MODE_ALL else self.table.pick(route)
        if not dests:
            self._send_error(session.routing_id, "no_responders",
                             f"no subscriber for request {req.name!r}", req.req_id)
            return
        self._queue_single(session.name, req.name, req.payload, req.target, req.mode,
                           reply_to, req.headers, dests)

    def _on_reply(self, session: Session, rep: P.Reply) -> None:
        inbox = P.parse_inbox(rep.reply_to)
        if inbox is None:
            self._send_error(session.routing_id, "bad_field",
                             f"{rep.reply_to!r} is not a reply subject")
            return
        if inbox[0] == self.name:
            rid = self.by_client_id.get(inbox[1])
            dests: tuple = (rid,) if rid is not None else ()
        else:  # another node's inbox: its $inbox.NODE.> interest shows the way
            dests = self.table.destinations(rep.reply_to)
        if not dests:
            # The requester is gone (or timed out and left): nothing to deliver to.
            self.stats["no_route"] += 1
            return
        self._queue_single(session.name, rep.reply_to, rep.payload, None, 0, None,
                           rep.headers, dests)

    def _queue_single(self, source: str, name: str, payload, target, mode, reply,
                      headers, dests) -> None:
        seg = Segment(source, 1, P.encode_single(name, payload, target, mode, reply,
                                                 headers))
        for dest in dests:
            self._queue(dest, seg)

    # ------------------------------------------------------------ node's own events

    def _emit(self, name: str, data: dict) -> None:
        """Publish a system event from this node to whoever subscribed."""
        try:
            dests = self.table.destinations(name)
        except (PatternError, TargetError):
            return
        if dests:
            self._queue_single(self.name, name, P.packb(data), None, 0, None, None, dests)

    def _send(self, rid: bytes, frames: list) -> None:
        try:
            send_frames(self.sock, [rid, *frames], NOBLOCK)
        except zmq.ZMQError:
            pass  # a control message to a vanished or stuck peer: nothing to keep

    def _send_error(self, rid: bytes, code: str, message: str, ref=None) -> None:
        self.stats["errors_sent"] += 1
        log.debug("error to %s: %s %s", rid.hex(), code, message)
        self._send(rid, P.encode_error(code, message, ref))

    def _housekeeping(self, now: float) -> None:
        for rid, session in list(self.sessions.items()):
            # Children report every second; five silent seconds is a dead link even
            # when no socket event said so (a close can be missed behind a reused fd).
            limit = LINK_TIMEOUT if session.is_link else self.config.client_timeout
            if now - session.last_seen > limit:
                self._drop_session(rid, "timeout")
        self._tree_changed()  # also keeps our session alive at the parent
        for link in list(self._snapshot_due):
            if link in self.links:
                self._send_snapshot(link)
        if (PARENT not in self.links and self._rehome_at is not None
                and now > self._rehome_at):
            self._rehome_next()  # that ancestor did not take us: try the next
        self._cpu = self._usage.sample()
        if PARENT in self.links:  # the pong carries the send time back: link RTT
            self._send_link(PARENT, P.encode_ping(time.monotonic_ns()))
        self._emit("$sys.node.stats", self.snapshot())

    def _on_parent_pong(self, token: int) -> None:
        rtt = (time.monotonic_ns() - token) / 1e9
        if not 0 <= rtt < 60:
            return  # not one of our timing pings
        if self._rtt_parent != self.links.get(PARENT):  # re-homed: start afresh
            self._rtt_parent, self.rtt_ewma = self.links.get(PARENT), None
        self.rtt = rtt
        self.rtt_ewma = rtt if self.rtt_ewma is None else 0.8 * self.rtt_ewma + 0.2 * rtt

    def snapshot(self) -> dict:
        """What this node says about itself once a second ($sys.node.stats)."""
        clients = sum(1 for s in self.sessions.values()
                      if s.state == READY and not s.is_link and not s.quiet)
        return {"node": self.name, "address": self.endpoint,
                "parent": self.links.get(PARENT),
                "children": sorted(n for m, n in self.links.items() if m != PARENT),
                "groups": list(self.config.groups), "tags": list(self.config.tags),
                "uptime": round(time.time() - self.started, 1),
                "clients": clients,
                "subscriptions": sum(len(self.table.members[m].subs) - 1
                                     for m, s in self.sessions.items()
                                     if s.state == READY and not s.is_link
                                     and not s.quiet and m in self.table.members),
                "slow_clients": len(self._slow_ids),
                "pending_messages": sum(len(self.sessions[r].pending)
                                        for r in list(self._slow_ids) if r in self.sessions),
                "pending_bytes": sum(self.sessions[r].pending_bytes
                                     for r in list(self._slow_ids) if r in self.sessions),
                "depth": self._depth(),
                "rtt": self.rtt if PARENT in self.links else None,
                "rtt_ewma": self.rtt_ewma if PARENT in self.links else None,
                "cpu_percent": self._cpu[0], "rss_bytes": self._cpu[1],
                "metrics_port": self.metrics_server.port if self.metrics_server else None,
                **self.stats}


def _heartbeats(sock: zmq.Socket) -> None:
    """ZMTP heartbeats: a silent peer (a pulled cable) is disconnected within 0.7-0.9 s
    (a ping every 200 ms, 700 ms to answer), which the socket monitor turns into a
    link-down. ZeroMQ's I/O thread answers pings without the GIL, so a busy node still
    does; a root that merely misses one is not replaced (ROOT_GRACE)."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, 200)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 700)
    sock.setsockopt(zmq.HEARTBEAT_TTL, 1200)


def _with_queues(event: tuple, queues: list | None) -> tuple:
    """A mode-one event going down a link, told which queue groups are still open."""
    if queues is None:
        return event
    name, payload, target, mode, reply, headers = event
    return name, payload, target, mode, reply, {**(headers or {}), QUEUES_HEADER: queues}


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
           ) -> tuple[list, int]:
    """Pack several segments for one destination into one DELIVER/FORWARD message."""
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
    meta, body, large = P.encode_events(events)
    return [header(sources), meta, body, *large], len(events)
