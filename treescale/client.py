"""The blocking client: ``Client``, whose background thread owns the socket.

Owns: the I/O of the sync client (its thread, its outbox wake-ups, handing events to
``events()`` or to subscription handlers) and the public surface applications call.
What the node's messages mean is decided by ``ClientCore.receive``
(treescale.client_core); this module only carries out the actions it returns.
Requests go over per-thread sessions (treescale.client_direct).

Must not touch: the meaning of messages or error codes (client_core), the outbox
packing (client_io). ``AsyncClient`` lives in treescale.aio (loaded on first use);
it and the core's names are re-exported here, so ``from treescale.client import …`` keeps working.

Publishes are batched without the caller asking: ``publish`` appends to a queue and
the socket side sends whatever has accumulated as one PUB batch the moment it gets to
run. A lone event goes out at once; a burst goes out as a few large batches.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import zmq

from treescale import client_core as core
from treescale import protocol as P
from treescale import subjects
from treescale.client_batch_api import BatchSurface
from treescale.client_core import (
    AuthError,
    ClientCore,
    DeliveryError,
    Event,
    NodeError,
    NoResponders,
)
from treescale.client_direct import DirectLink, ReplyStream
from treescale.client_durable import MAX_UNCONFIRMED
from treescale.client_durable_api import DurableSurface
from treescale.client_io import (
    BYE,
    COMMAND,
    KEY_REFUSED,
    MAX_QUEUED,
    MONITOR_EVENTS,
    PAYLOADS,
    ClientCurve,
    Outbox,
    configure_socket,
    pack_outbox,
    token_or_env,
)
from treescale.frames import (
    EVENTS,
    NOBLOCK,
    POLLIN,
    POLLOUT,
    monitor_events,
    recv_views,
    send_frames,
)
from treescale.routing import RoutingTable, split_pattern

if TYPE_CHECKING:
    from treescale.aio import AsyncClient

__all__ = ["AsyncClient", "AuthError", "Client", "DeliveryError", "DirectLink", "Event",
           "NodeError", "NoResponders", "ReplyStream"]

log = logging.getLogger("treescale.client")


def __getattr__(name: str) -> Any:
    """``AsyncClient`` on first use: asyncio costs a process that never uses it (a node,
    its services) megabytes of memory and milliseconds of start."""
    if name == "AsyncClient":
        from treescale.aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_INBOX = "events()"  # member of a client's local subscription table: the events() queue


class Client(DurableSurface, BatchSurface):
    """A blocking client; a background thread owns the socket.

    >>> with Client("tcp://127.0.0.1:8888", name="app") as c:
    ...     c.subscribe("orders.>")
    ...     c.publish("orders.created", b"42")
    ...     for ev in c.events(timeout=1):
    ...         print(ev.name, ev.data)

    ``server_key`` (the node's CURVE public key, z85 or a key file; default
    ``$TREESCALE_SERVER_KEY``) encrypts the connection, with ``keypair`` ((public,
    secret) z85) or an ephemeral one. ``max_unconfirmed``: durable events kept
    unconfirmed before ``publish(durable=True)`` blocks.
    """

    def __init__(self, address: str, token: str | None = None, name: str | None = None,
                 groups: Iterable[str] = (), tags: Iterable[str] = (),
                 channels: Iterable[str] = (), timeout: float = 10.0,
                 on_error: Any = None, context: zmq.Context | None = None,
                 options: dict | None = None, server_key: str | None = None,
                 keypair: Any = None, max_unconfirmed: int = MAX_UNCONFIRMED) -> None:
        self.address = address
        self.curve = ClientCurve.of(server_key, keypair)
        self.core = ClientCore(token_or_env(token), name, groups, tags, channels, options,
                               PAYLOADS, threading.Lock(), max_unconfirmed)
        self.core.acker = self
        self._durable_init()
        self.on_error = on_error
        self.errors: deque[NodeError] = deque(maxlen=100)
        self._ctx = context or zmq.Context.instance()
        self._outbox = Outbox()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._current: Iterator[Event] = iter(())
        self._pings: dict[int, list] = {}  # flush token -> [threading.Event, error]
        self._sleeping = False
        self._woken = False
        self._closing = False
        self._ready = threading.Event()
        self._room = threading.Event()
        self._room.set()
        self._fatal: Exception | None = None
        self._local = threading.local()
        self._links: list[DirectLink] = []
        # Which of this client's subscriptions an arriving event matches: the inbox
        # (events()) or a handler. Consulted only once a handler exists.
        self._local_subs = RoutingTable("client")
        self._local_lock = threading.Lock()
        self._has_handlers = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._thread = threading.Thread(target=self._io_loop, name="treescale-client",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self._shutdown()
            raise TimeoutError(f"no answer from a TreeScale node at {address} within "
                               f"{timeout:g}s")
        if self._fatal is not None:
            self._shutdown()
            raise self._fatal

    # ------------------------------------------------------------ public surface

    @property
    def node(self) -> str:
        return self.core.node

    def publish(self, name: str, data: Any = b"", target: str | None = None,
                mode: str | int = "all", headers: dict | None = None, *,
                durable: bool = False, id: str | None = None, wait: bool = False,
                timeout: float = 10.0) -> str | None:
        """Queue an event; it leaves with the next batch (at once if the link is idle).
        ``durable=True``: see ``DurableSurface.publish_durable`` (returns its id)."""
        if durable:
            return self.publish_durable(name, data, target, mode, headers, id, wait,
                                        timeout)
        slot = name
        if (data.__class__ is not bytes or target is not None or headers is not None
                or mode != "all" or len(data) >= P.LARGE_PAYLOAD):
            slot, data = self.core.outbox_entry(name, data, target, mode, headers)
        box = self._outbox
        with box.lock:
            box.names.append(slot)
            box.datas.append(data)
        if len(box.names) > MAX_QUEUED:
            self._wait_for_room()
        if self._sleeping and not self._woken:
            self._wake()

    def subscribe(self, pattern: str, queue: str | None = None,
                  timeout: float | None = None,
                  handler: Callable[[Event], Any] | None = None, *,
                  durable: str | None = None, **durable_choices: Any) -> dict | None:
        """Subscribe; when this returns, the node routes matching events to us.

        ``durable="NAME"``: see ``DurableSurface.subscribe_durable`` (its options
        are keywords here too).

        Without ``handler`` the events come out of ``events()``. With one, the client's
        I/O thread calls ``handler(event)`` as each arrives: no hand-off to another
        thread, which is what a request responder wants. A handler must be quick and
        must not wait on this client (``subscribe``/``flush`` raise RuntimeError
        there); ``publish``, ``reply`` and ``request`` are fine.
        """
        split_pattern(pattern)
        if durable is not None:
            return self.subscribe_durable(pattern, durable, queue, timeout, handler,
                                          **durable_choices)
        if durable_choices:
            raise TypeError(f"{', '.join(durable_choices)}: only for durable=NAME")
        timeout = 10.0 if timeout is None else timeout
        self.core.subs[(pattern, queue)] = None
        with self._local_lock:
            member = _INBOX if handler is None else handler
            if member not in self._local_subs.members:
                self._local_subs.add_member(member)
            self._local_subs.subscribe(member, pattern, queue)
            self._has_handlers = any(m is not _INBOX for m in self._local_subs.members)
        self._command(P.encode_sub(pattern, queue))
        self._ping(timeout)
        return None

    def unsubscribe(self, pattern: str, queue: str | None = None,
                    timeout: float = 10.0) -> None:
        self.core.subs.pop((pattern, queue), None)
        with self._local_lock:
            for member in list(self._local_subs.members):
                self._local_subs.unsubscribe(member, pattern, queue)
        self._command(P.encode_unsub(pattern, queue))
        self._ping(timeout)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the node has processed everything sent so far and confirmed
        every durable event published before this call (DeliveryError saying how
        many were refused or are still unconfirmed after ``timeout`` s; each failure
        is reported once)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("flush cannot wait inside a subscription handler")
        self._ping(self._flush_durable(timeout))

    def _ping(self, timeout: float) -> None:
        """Wait until the node has processed everything sent so far."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("flush cannot wait inside a subscription handler")
        token, frames = self.core.ping()
        slot = self._pings[token] = [threading.Event(), None]
        self._command(frames)
        if not slot[0].wait(timeout):
            self._pings.pop(token, None)
            raise TimeoutError(f"flush: no answer within {timeout:g}s")
        if slot[1] is not None:
            raise slot[1]

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Received events, in order; stops after ``timeout`` seconds without one."""
        while True:
            # An iterator over the rest of the current batch: a consumer that stops
            # early leaves the remaining events there for the next call.
            yield from self._current
            item = self._next_delivery(timeout)
            if item is None:
                return
            self._current = item.iter_events()

    def _next_delivery(self, timeout: float | None) -> Any:
        """The next inbox item (a delivery), or None: timed out, or the client closed."""
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def next_event(self, timeout: float | None = None) -> Event | None:
        for ev in self.events(timeout):
            return ev
        return None

    def request(self, name: str, data: Any = b"", timeout: float = 5.0,
                target: str | None = None, mode: str | int = "one",
                headers: dict | None = None) -> Event:
        """Send a request and wait for the first reply (NoResponders if nobody listens)."""
        with self.request_stream(name, data, target=target, mode=mode, headers=headers,
                                 timeout=timeout, replies=1) as replies:
            ev = replies.get()
        if ev is None:
            raise TimeoutError(f"request {name!r}: no answer within {timeout:g}s")
        return ev

    def request_stream(self, name: str, data: Any = b"", *, target: str | None = None,
                       mode: str | int = "all", headers: dict | None = None,
                       timeout: float = 5.0, replies: int | None = None) -> ReplyStream:
        """Send a request whose replies stream in: several responders (``mode="all"``,
        e.g. a group target) and/or several replies each.

        >>> with c.request_stream("svc.scan", b"", target="group:web", timeout=3) as rs:
        ...     for ev in rs:  # every reply until 3 s have passed
        ...         print(ev.source, ev.data)

        The stream ends after ``timeout`` seconds, or after ``replies`` replies if
        given; ``rs.get(t)`` waits at most ``t`` seconds for the next one. Replies go
        to this client's private inbox (``$inbox.NODE.CLIENT.REQ``), which no other
        client can subscribe to. Read the stream on the thread that called this.
        """
        return self._link().open(name, data, target, mode, headers, timeout, replies)

    def reply(self, event: Event, data: Any = b"", headers: dict | None = None,
              timeout: float = 5.0) -> None:
        """Answer a request event; call it several times to stream replies.

        Replies leave in call order with everything else this client sends, so the
        replies to one request keep their order whichever threads send them.
        ``timeout`` is not used (replies are queued like publishes); it stays for
        callers that pass it."""
        frames = self.core.reply(event, data, headers)
        if self._closing:
            raise ConnectionError("client closed")
        self._command(frames)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, say goodbye, stop the I/O thread."""
        if self._closing:
            return
        self._closing = True
        self._command(P.encode_bye())
        self._thread.join(timeout)
        self._shutdown()
        for link in self._links:
            link.close()

    def _link(self) -> DirectLink:
        link = getattr(self._local, "link", None)
        if link is None:
            if self._closing:
                raise ConnectionError("client closed")
            link = self._local.link = DirectLink(self._ctx, self.address, self.core,
                                                 self._report, self.curve)
            self._links.append(link)
        return link

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----------------------------------------------------------------- plumbing

    def _wake(self) -> None:
        self._woken = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _command(self, frames: list) -> None:
        self._outbox.add(COMMAND, frames)
        if threading.current_thread() is not self._thread:  # the I/O thread is awake
            self._wake()

    def _poke(self) -> None:
        """Durable events or acks are queued: wake the I/O thread if it sleeps."""
        if self._sleeping and not self._woken:
            self._wake()

    def _io_thread(self) -> threading.Thread:
        return self._thread

    def _deliver(self, action: Any) -> None:
        self._inbox.put(action)

    def _wait_for_room(self) -> None:
        self._room.clear()
        self._wake()
        while len(self._outbox) > MAX_QUEUED // 2 and not self._closing:
            self._room.wait(0.5)
            self._room.clear()

    def _shutdown(self) -> None:
        self._closing = True
        self._wake()
        self._thread.join(2.0)
        self._inbox.put(None)  # the wake pipe is the I/O thread's to close, when it ends

    def _io_loop(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        configure_socket(sock, self.core, self.curve)
        monitor = sock.get_monitor_socket(MONITOR_EVENTS)
        sock.connect(self.address)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        out: deque = deque()  # encoded messages waiting for socket room
        # The node drops a client it has not heard from for client_timeout: what
        # counts is what we sent, so receiving events does not postpone the ping.
        last_said = time.monotonic()
        bye_sent = False
        mask = POLLIN
        try:
            while True:
                core = self.core
                if core.ready and not out:
                    # Durable first: acks queued before close() precede its bye.
                    if core.durable.has_work():  # one DPUB, one DACK per durable
                        out.extend(core.durable.take())
                    if self._outbox.names:
                        out.extend(pack_outbox(*self._outbox.take()))
                self._sleeping = not out and not (core.ready and (
                    self._outbox.names or core.durable.has_work()))
                if self._sleeping:
                    timeout = core.ping_every * 1000
                else:
                    timeout = 0 if core.ready and not out else 50
                want = POLLIN | POLLOUT if out and core.ready else POLLIN
                if want != mask:
                    poller.modify(sock, want)
                    mask = want
                ready = dict(poller.poll(timeout))
                self._sleeping = False
                self._woken = False
                if self._wake_r in ready:
                    try:
                        os.read(self._wake_r, 65536)
                    except BlockingIOError:
                        pass
                if monitor in ready:
                    self._on_monitor(monitor, sock)
                if ready.get(sock, 0) & POLLIN:
                    self._receive(sock)
                if core.ready:
                    while out:
                        try:
                            send_frames(sock, out[0], NOBLOCK)
                        except zmq.Again:
                            break
                        msg = out.popleft()
                        last_said = time.monotonic()
                        if msg[0] == BYE:
                            bye_sent = True
                    if not self._room.is_set() and len(self._outbox) < MAX_QUEUED // 2:
                        self._room.set()
                    if self._closing and bye_sent and not out:
                        break
                    if time.monotonic() - last_said > core.ping_every and not out:
                        send_frames(sock, P.encode_ping(0), NOBLOCK)
                        last_said = time.monotonic()
                elif self._closing and not self._outbox.has_events():
                    break
        except zmq.ZMQError as exc:
            if not self._closing:
                log.error("client I/O stopped: %s", exc)
        finally:
            sock.disable_monitor()
            monitor.close(0)
            sock.close()
            self._inbox.put(None)
            for slot in list(self._pings.values()):
                slot[1] = ConnectionError("client closed")
                slot[0].set()
            self._durable_closed()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)

    def _on_monitor(self, monitor: zmq.Socket, sock: zmq.Socket) -> None:
        for info in monitor_events(monitor):
            event = info["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                sock.send_multipart(self.core.hello())
            elif event == zmq.EVENT_DISCONNECTED:
                self.core.session_lost()
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and not self._ready.is_set():
                self._fatal = core.AuthError(subjects.BAD_KEY, KEY_REFUSED)
                self._ready.set()
                self._closing = True

    def _receive(self, sock: zmq.Socket) -> None:
        ready = sock.getsockopt
        receive = self.core.receive
        deliver = core.Deliver
        for _ in range(1000):
            try:
                frames = recv_views(sock, NOBLOCK)
            except zmq.Again:
                return
            try:
                actions = receive(frames)
            except P.ProtocolError as exc:
                log.warning("bad message from node: %s", exc)
                actions = ()
            for action in actions:
                if action.__class__ is deliver:
                    if self._has_handlers:
                        self._run_handlers(action)
                    else:
                        self._inbox.put(action)  # decoded by the consumer thread
                else:
                    self._carry_out(action, sock)
            if not ready(EVENTS) & POLLIN:  # cheaper than a zmq.Again per wakeup
                return

    def _carry_out(self, action: Any, sock: zmq.Socket) -> None:
        """Do what the core decided a message from the node calls for."""
        kind = action.__class__
        if kind is core.Pong:
            slot = self._pings.pop(action.token, None)
            if slot:
                slot[0].set()
        elif kind is core.Ready:
            self._ready.set()
        elif kind is core.ResendHello or kind is core.Send:
            sock.send_multipart(action.frames)
        elif kind is core.ReportError:
            self._report(action.error)
        elif kind is core.Refused:
            self._fatal = action.error
            self._ready.set()
            self._closing = True
        else:
            self.carry_out_durable(action)
        # Waiter actions do not come: this session makes no requests (DirectLink does).

    def _report(self, err: NodeError) -> None:
        """An error for the application: ``errors``, then ``on_error`` or the log."""
        self.errors.append(err)
        if self.on_error is not None:
            self.on_error(err)
        else:
            log.warning("node error: %s", err)

    def _run_handlers(self, delivery: core.Deliver) -> None:
        """Give each event to the handlers whose patterns match it; the rest (and
        events that also match a handler-less subscription) go to ``events()``."""
        events = list(delivery.iter_events())
        rest = []
        with self._local_lock:
            lookup = self._local_subs.lookup
            routes = [lookup(ev.name).everyone for ev in events]
        for ev, members in zip(events, routes, strict=True):
            for member in members:
                if member is _INBOX:
                    rest.append(ev)
                    continue
                try:
                    member(ev)
                except Exception:  # a handler's bug must not stop the client
                    log.exception("subscription handler %r failed on %s", member, ev.name)
        if rest:
            self._inbox.put(core.Deliver(None, tuple(rest)))
