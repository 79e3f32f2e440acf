"""The Python client: ``Client`` (threads) and ``AsyncClient`` (asyncio).

Both speak the same protocol through ``ClientCore``, which holds everything that is
not I/O: the subscriptions to restore after a reconnect, pending requests, decoding
deliveries into ``Event`` objects.

Publishes are batched without the caller asking: ``publish`` appends to a queue and
the socket side sends whatever has accumulated as one PUB batch the moment it gets to
run. A lone event goes out at once; a burst goes out as a few large batches.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import threading
import time
from array import array
from bisect import bisect_right
from collections import deque, namedtuple
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from functools import partial
from itertools import accumulate, chain, repeat
from types import MappingProxyType
from typing import Any

import msgpack
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from treescale import protocol as P
from treescale.frames import (
    EVENTS,
    NOBLOCK,
    POLLIN,
    POLLOUT,
    monitor_events,
    recv_frames,
    send_frames,
)
from treescale.routing import RoutingTable, parse_target, split_pattern

log = logging.getLogger("treescale.client")

BATCH_EVENTS = 4096
BATCH_BYTES = 1 << 20
MAX_QUEUED = 200_000  # events waiting in the client before publish() blocks
HEARTBEAT = 2.0  # seconds of silence before the client pings its node


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


_EMPTY_HEADERS: Mapping = MappingProxyType({})


_EventFields = namedtuple("_EventFields", "name data raw_headers source reply target")


class Event(_EventFields):
    """One delivered event: ``name``, ``data`` (bytes), ``headers``, ``source``,
    ``reply`` (set on requests) and ``target``.

    A named tuple underneath, so that a whole batch of events is built by C code (no
    Python ``__init__`` per event) and field access is a C descriptor.
    """

    __slots__ = ()

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
        return msgpack.unpackb(self.data, raw=False)

    def __repr__(self) -> str:
        data = bytes(self.data[:40])
        more = "..." if len(self.data) > 40 else ""
        return f"Event({self.name!r}, {data!r}{more}, source={self.source!r})"


_make_event = partial(tuple.__new__, Event)


def _mode(mode: str | int) -> int:
    if mode in ("all", P.MODE_ALL):
        return P.MODE_ALL
    if mode in ("one", P.MODE_ONE):
        return P.MODE_ONE
    raise ValueError(f"mode must be 'all' or 'one', got {mode!r}")


def _bytes(data: Any) -> Any:
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytes | bytearray | memoryview | zmq.Frame):
        return data
    raise TypeError(f"event data must be bytes (or str), got {type(data).__name__}")


def decode_batch(frames: list, max_payload: int = 1 << 62) -> list[Event]:
    """A DELIVER message -> Events, in order (built in C where it can be)."""
    return list(iter_batch(frames, max_payload))


def iter_batch(frames: list, max_payload: int = 1 << 62) -> Iterator[Event]:
    """The Events of a DELIVER message, created lazily as they are consumed."""
    header = P.decode_header(frames[0])
    sources = header[1] if len(header) > 1 else []
    view = P.decode_events(frames[1], frames[2], frames[3:], max_payload)
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


class ClientCore:
    """Protocol state of one client connection (no I/O)."""

    def __init__(self, token: str | None, name: str | None, groups: Iterable[str],
                 tags: Iterable[str], channels: Iterable[str]) -> None:
        self.token = token
        self.name = name or f"py-{os.getpid()}"
        self.groups = tuple(groups)
        self.tags = tuple(tags)
        self.channels = tuple(channels)
        self.subs: dict[tuple[str, str | None], None] = {}
        self.ready = False
        self.node = ""
        self.client_id = ""
        self.limits: dict = {}
        self.req_ids = itertools.count(1)
        self.ping_ids = itertools.count(1)
        self.routing_id = os.urandom(8)
        self.inbox_prefix = ""
        self.options: dict = {}

    def hello(self) -> list[bytes]:
        return P.encode_hello(self.name, self.token, self.groups, self.tags,
                              self.channels, list(self.subs), self.options)

    def on_ready(self, msg: P.Ready) -> None:
        self.ready = True
        self.node = msg.node
        self.client_id = msg.client_id
        self.limits = msg.limits
        self.inbox_prefix = f"$inbox.{msg.node}.{msg.client_id}."

    def outbox_entry(self, name: str, data: Any, target: str | None, mode: str | int,
                     headers: dict | None) -> tuple[Any, Any]:
        """(name slot, payload) for the outbox, checking what a bare publish skips."""
        if data.__class__ is not bytes:
            data = _bytes(data)
        if len(data) >= P.LARGE_PAYLOAD:
            self.check_size(data)
        if target is None and headers is None and mode == "all":
            return name, data
        if target is not None:
            parse_target(target)
        return _Extended(name, (target, _mode(mode), None, headers)), data

    def check_size(self, data: Any) -> None:
        limit = self.limits.get("max_payload")
        if limit is not None and len(data) > limit:
            raise ValueError(f"payload of {len(data)} bytes exceeds the node's limit of "
                             f"{limit} bytes")

    def reply_req_id(self, name: str) -> int | None:
        if self.inbox_prefix and name.startswith(self.inbox_prefix):
            try:
                return int(name[len(self.inbox_prefix):])
            except ValueError:
                return None
        return None


def configure_socket(sock: zmq.Socket, core: ClientCore) -> None:
    sock.setsockopt(zmq.ROUTING_ID, core.routing_id)
    sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue into a dead connection
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.setsockopt(zmq.RCVHWM, 1000)


MONITOR_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED


class _Extended:
    """Outbox name slot of an event that sets target, mode, reply or headers."""

    __slots__ = ("name", "extra")

    def __init__(self, name: str, extra: tuple) -> None:
        self.name = name
        self.extra = extra


_COMMAND = object()
_INBOX = "events()"  # member of a client's local subscription table: the events() queue  # outbox name slot of a control message (its frames in the data slot)


class Outbox:
    """What the application handed over and the socket has not sent yet, in call
    order, as two columns (names, data) so that packing a batch is C work.

    ``publish`` may run on any thread; ``take`` swaps the columns out under the lock.
    """

    __slots__ = ("lock", "names", "datas")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: list = []
        self.datas: list = []

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: Any, data: Any) -> None:
        with self.lock:
            self.names.append(name)
            self.datas.append(data)

    def take(self) -> tuple[list, list]:
        with self.lock:
            names, datas = self.names, self.datas
            self.names, self.datas = [], []
        return names, datas

    def has_events(self) -> bool:
        return any(n is not _COMMAND for n in self.names)


def pack_outbox(names: list, datas: list) -> Iterator[list]:
    """Messages for what ``Outbox.take`` returned, in order: runs of events become PUB
    batches (at most BATCH_EVENTS events / about BATCH_BYTES bytes each)."""
    if set(map(type, names)) == {str}:
        yield from _pack_run(names, datas, None)
        return
    start = 0
    for i, name in enumerate(names):
        if name is _COMMAND:
            if i > start:
                yield from _pack_mixed(names[start:i], datas[start:i])
            yield datas[i]
            start = i + 1
    if start < len(names):
        yield from _pack_mixed(names[start:], datas[start:])


def _pack_mixed(names: list, datas: list) -> Iterator[list]:
    extras = {}
    plain = list(names)
    for i, name in enumerate(names):
        if name.__class__ is _Extended:
            plain[i] = name.name
            extras[i] = name.extra
    if not extras:
        yield from _pack_run(plain, datas, None)
        return
    # batches with extras are cut at BATCH_EVENTS only (positions index the batch)
    for a in range(0, len(plain), BATCH_EVENTS):
        b = a + BATCH_EVENTS
        sub = {i - a: ex for i, ex in extras.items() if a <= i < b} or None
        meta, body, large = P.encode_columns(plain[a:b], datas[a:b], sub)
        yield [P._PUB_HEADER, meta, body, *map(_zero_copy, large)]


def _pack_run(names: list, datas: list, extras: dict | None) -> Iterator[list]:
    sizes = array("I", map(len, datas))
    n = len(datas)
    if n <= BATCH_EVENTS and sum(sizes) <= BATCH_BYTES:
        meta, body, large = P.encode_columns(names, datas, extras, sizes)
        yield [P._PUB_HEADER, meta, body, *map(_zero_copy, large)]
        return
    cuts = _cut_points(sizes)
    for a, b in zip(cuts, cuts[1:], strict=False):
        meta, body, large = P.encode_columns(names[a:b], datas[a:b], None, sizes[a:b])
        yield [P._PUB_HEADER, meta, body, *map(_zero_copy, large)]


def _zero_copy(payload: Any) -> Any:
    """Large payloads leave as frames that borrow the caller's buffer (no memcpy);
    small frames are cheaper to copy, so messages are sent with copy=True."""
    return zmq.Frame(payload, copy=False)


def _cut_points(sizes: array) -> list[int]:
    """Batch boundaries: every BATCH_EVENTS events or BATCH_BYTES bytes."""
    total = list(accumulate(sizes, initial=0))
    cuts = [0]
    while cuts[-1] < len(sizes):
        a = cuts[-1]
        by_bytes = bisect_right(total, total[a] + BATCH_BYTES, lo=a + 1) - 1
        cuts.append(max(a + 1, min(a + BATCH_EVENTS, by_bytes, len(sizes))))
    return cuts


# ============================================================================ sync


class DirectLink:
    """One calling thread's own connection to the node, for request() and reply().

    Publishing goes through the I/O thread, which batches. A request is the opposite
    case: one small message whose latency is the point, and handing it to another
    thread and back costs two thread wake-ups per side, more than the node hop. So
    each thread that requests or replies gets a private session (its own inbox) and
    waits for the answer on its own socket. Requests are ordered among themselves;
    to order one after earlier publishes, call ``flush()`` first.
    """

    def __init__(self, ctx: zmq.Context, address: str, parent: ClientCore) -> None:
        self.core = ClientCore(parent.token, parent.name, parent.groups, parent.tags,
                               parent.channels)
        self.core.options = {"direct": True}  # the node does not announce this session
        self.sock = ctx.socket(zmq.DEALER)
        configure_socket(self.sock, self.core)
        self.sock.connect(address)
        self.poller = zmq.Poller()  # kept: Socket.poll() builds a new one per call
        self.poller.register(self.sock, zmq.POLLIN)

    def send(self, frames: list, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._ensure_ready(deadline)
        self._send(frames, deadline)

    def call(self, req_id: int, frames: list, timeout: float, what: str) -> Event:
        """Send a request and return its reply, re-introducing ourselves once if the
        node forgot us (restart, idle timeout)."""
        deadline = time.monotonic() + timeout
        try:
            return self._call(req_id, frames, deadline)
        except TimeoutError:
            raise TimeoutError(f"{what}: no answer within {timeout:g}s") from None

    def _call(self, req_id: int, frames: list, deadline: float) -> Event:
        for attempt in (1, 2):
            self._ensure_ready(deadline)
            self._send(frames, deadline)
            while True:
                reply = self._next(deadline)
                if reply.__class__ is P.Error:
                    if reply.code == "not_ready" and attempt == 1:
                        self.core.ready = False
                        break
                    if reply.ref == req_id or reply.code == "not_ready":
                        raise error_from(reply)
                    continue
                for ev in reply:
                    if self.core.reply_req_id(ev.name) == req_id:
                        return ev
        raise TimeoutError("node keeps forgetting this client")

    def _ensure_ready(self, deadline: float) -> None:
        if self.core.ready:
            return
        self._send(self.core.hello(), deadline)
        while not self.core.ready:
            msg = self._next(deadline)
            if msg.__class__ is P.Error:
                raise error_from(msg)

    def _send(self, frames: list, deadline: float) -> None:
        try:
            send_frames(self.sock, frames, NOBLOCK)
            return
        except zmq.Again:  # not connected (yet): wait for the link, up to the deadline
            pass
        self.sock.setsockopt(zmq.SNDTIMEO, max(1, int((deadline - time.monotonic()) * 1000)))
        try:
            send_frames(self.sock, frames)
        except zmq.Again:
            raise TimeoutError("no connection to the node") from None

    def _next(self, deadline: float) -> Any:
        """The next event list or Error from the node (READY handled here)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.poller.poll(int(left * 1000) + 1):
                raise TimeoutError("no answer from the node")
            frames = recv_frames(self.sock)
            header = P.decode_header(frames[0])
            if header[0] == P.DELIVER:
                return decode_batch(frames)
            msg = P.decode(frames)
            if msg.__class__ is P.Ready:
                self.core.on_ready(msg)
                return []
            if msg.__class__ is P.Error:
                return msg

    def close(self) -> None:
        self.sock.close(linger=0)



class Client:
    """A blocking client; a background thread owns the socket.

    >>> with Client("tcp://127.0.0.1:8888", name="app") as c:
    ...     c.subscribe("orders.>")
    ...     c.publish("orders.created", b"42")
    ...     for ev in c.events(timeout=1):
    ...         print(ev.name, ev.data)
    """

    def __init__(self, address: str, token: str | None = None, name: str | None = None,
                 groups: Iterable[str] = (), tags: Iterable[str] = (),
                 channels: Iterable[str] = (), timeout: float = 10.0,
                 on_error: Any = None, context: zmq.Context | None = None,
                 options: dict | None = None) -> None:
        self.address = address
        self.core = ClientCore(token, name, groups, tags, channels)
        self.core.options = dict(options or {})
        self.on_error = on_error
        self.errors: deque[NodeError] = deque(maxlen=100)
        self._ctx = context or zmq.Context.instance()
        self._outbox = Outbox()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._current: Iterator[Event] = iter(())
        self._waiters: dict[Any, list] = {}  # req_id / ("ping", n) -> [Event, result]
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
                mode: str | int = "all", headers: dict | None = None) -> None:
        """Queue an event; it leaves with the next batch (at once if the link is idle)."""
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

    def subscribe(self, pattern: str, queue: str | None = None, timeout: float = 10.0,
                  handler: Callable[[Event], Any] | None = None) -> None:
        """Subscribe; when this returns, the node routes matching events to us.

        Without ``handler`` the events come out of ``events()``. With one, the client's
        I/O thread calls ``handler(event)`` as each arrives: no hand-off to another
        thread, which is what a request responder wants. A handler must be quick and
        must not wait on this client (``subscribe``/``flush`` raise RuntimeError
        there); ``publish``, ``reply`` and ``request`` are fine.
        """
        split_pattern(pattern)
        self.core.subs[(pattern, queue)] = None
        with self._local_lock:
            member = _INBOX if handler is None else handler
            if member not in self._local_subs.members:
                self._local_subs.add_member(member)
            self._local_subs.subscribe(member, pattern, queue)
            self._has_handlers = any(m is not _INBOX for m in self._local_subs.members)
        self._command(P.encode_sub(pattern, queue))
        self.flush(timeout)

    def unsubscribe(self, pattern: str, queue: str | None = None,
                    timeout: float = 10.0) -> None:
        self.core.subs.pop((pattern, queue), None)
        with self._local_lock:
            for member in list(self._local_subs.members):
                self._local_subs.unsubscribe(member, pattern, queue)
        self._command(P.encode_unsub(pattern, queue))
        self.flush(timeout)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the node has processed everything sent so far."""
        token = next(self.core.ping_ids)
        self._call(("ping", token), P.encode_ping(token), timeout, "flush")

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Received events, in order; stops after ``timeout`` seconds without one."""
        while True:
            # An iterator over the rest of the current batch: a consumer that stops
            # early leaves the remaining events there for the next call.
            yield from self._current
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                return
            if item is None:
                return
            self._current = iter_batch(item) if item.__class__ is list else iter(item)

    def next_event(self, timeout: float | None = None) -> Event | None:
        for ev in self.events(timeout):
            return ev
        return None

    def request(self, name: str, data: Any = b"", timeout: float = 5.0,
                target: str | None = None, mode: str | int = "one",
                headers: dict | None = None) -> Event:
        """Send a request and wait for the first reply (NoResponders if nobody listens)."""
        data = _bytes(data)
        self.core.check_size(data)
        link = self._link()
        req_id = next(link.core.req_ids)
        return link.call(req_id, P.encode_request(req_id, name, data, target, _mode(mode),
                                                  headers), timeout, f"request {name!r}")

    def reply(self, event: Event, data: Any = b"", headers: dict | None = None,
              timeout: float = 5.0) -> None:
        """Answer a request event (goes straight out from the calling thread)."""
        if not event.reply:
            raise ValueError(f"event {event.name!r} is not a request (no reply subject)")
        self._link().send(P.encode_reply(event.reply, _bytes(data), headers), timeout)

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
            link = self._local.link = DirectLink(self._ctx, self.address, self.core)
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
        self._outbox.add(_COMMAND, frames)
        self._wake()

    def _call(self, key: Any, frames: list, timeout: float, what: str) -> Any:
        if threading.current_thread() is self._thread:
            raise RuntimeError(f"{what} cannot wait inside a subscription handler")
        slot = [threading.Event(), None]
        self._waiters[key] = slot
        self._command(frames)
        if not slot[0].wait(timeout):
            self._waiters.pop(key, None)
            raise TimeoutError(f"{what}: no answer within {timeout:g}s")
        if isinstance(slot[1], Exception):
            raise slot[1]
        return slot[1]

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
        self._inbox.put(None)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _io_loop(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        configure_socket(sock, self.core)
        monitor = sock.get_monitor_socket(MONITOR_EVENTS)
        sock.connect(self.address)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        out: deque = deque()  # encoded messages waiting for socket room
        last_heard = time.monotonic()
        bye_sent = False
        mask = POLLIN
        try:
            while True:
                core = self.core
                if core.ready and not out and self._outbox.names:
                    out.extend(pack_outbox(*self._outbox.take()))
                self._sleeping = not out and not (core.ready and self._outbox.names)
                if self._sleeping:
                    timeout = HEARTBEAT * 1000
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
                    last_heard = time.monotonic()
                    self._receive(sock)
                if core.ready:
                    while out:
                        try:
                            send_frames(sock, out[0], NOBLOCK)
                        except zmq.Again:
                            break
                        msg = out.popleft()
                        if msg[0] == _BYE:
                            bye_sent = True
                    if not self._room.is_set() and len(self._outbox) < MAX_QUEUED // 2:
                        self._room.set()
                    if self._closing and bye_sent and not out:
                        break
                    if time.monotonic() - last_heard > HEARTBEAT and not out:
                        send_frames(sock, P.encode_ping(0), NOBLOCK)
                        last_heard = time.monotonic()
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
            for slot in list(self._waiters.values()):
                slot[1] = ConnectionError("client closed")
                slot[0].set()

    def _on_monitor(self, monitor: zmq.Socket, sock: zmq.Socket) -> None:
        for info in monitor_events(monitor):
            event = info["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                sock.send_multipart(self.core.hello())
            elif event == zmq.EVENT_DISCONNECTED:
                self.core.ready = False

    def _receive(self, sock: zmq.Socket) -> None:
        ready = sock.getsockopt
        for _ in range(1000):
            try:
                frames = recv_frames(sock, NOBLOCK)
            except zmq.Again:
                return
            try:
                self._dispatch(frames, sock)
            except P.ProtocolError as exc:
                log.warning("bad message from node: %s", exc)
            if not ready(EVENTS) & POLLIN:  # cheaper than a zmq.Again per wakeup
                return

    def _dispatch(self, frames: list, sock: zmq.Socket) -> None:
        header = P.decode_header(frames[0])
        kind = header[0]
        if kind == P.DELIVER:
            if not self._has_handlers:
                self._inbox.put(frames)  # decoded by the consumer thread
                return
            self._run_handlers(decode_batch(frames))
            return
        msg = P.decode(frames)
        if isinstance(msg, P.Ready):
            self.core.on_ready(msg)
            self._ready.set()
        elif isinstance(msg, P.Pong):
            slot = self._waiters.pop(("ping", msg.token), None)
            if slot:
                slot[0].set()
        elif isinstance(msg, P.Error):
            self._on_node_error(msg, sock)

    def _run_handlers(self, events: list[Event]) -> None:
        """Give each event to the handlers whose patterns match it; the rest (and
        events that also match a handler-less subscription) go to ``events()``."""
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
            self._inbox.put(tuple(rest))

    def _on_node_error(self, msg: P.Error, sock: zmq.Socket) -> None:
        err = error_from(msg)
        if msg.code == "not_ready" and self.core.ready:
            # The node lost our session (restart, timeout): introduce ourselves again.
            self.core.ready = False
            sock.send_multipart(self.core.hello())
            return
        if isinstance(err, AuthError) and not self._ready.is_set():
            self._fatal = err
            self._ready.set()
            self._closing = True
            return
        slot = self._waiters.pop(msg.ref, None) if msg.ref is not None else None
        if slot is not None and msg.code in ("no_responders", "bad_target", "bad_pattern",
                                             "too_large"):
            slot[1] = err
            slot[0].set()
            return
        self.errors.append(err)
        if self.on_error is not None:
            self.on_error(err)
        else:
            log.warning("node error: %s", err)


_BYE = P.encode_bye()[0]


def error_from(msg: P.Error) -> NodeError:
    if msg.code in ("bad_token", "token_required"):
        return AuthError(msg.code, msg.message, msg.ref)
    if msg.code == "no_responders":
        return NoResponders(msg.code, msg.message, msg.ref)
    return NodeError(msg.code, msg.message, msg.ref)


# =========================================================================== async


class AsyncClient:
    """The asyncio client: the same surface as ``Client`` with ``await``.

    >>> async with AsyncClient("tcp://127.0.0.1:8888") as c:
    ...     await c.subscribe("orders.>")
    ...     await c.publish("orders.created", b"42")
    ...     async for ev in c.events(timeout=1):
    ...         print(ev.name)
    """

    def __init__(self, address: str, token: str | None = None, name: str | None = None,
                 groups: Iterable[str] = (), tags: Iterable[str] = (),
                 channels: Iterable[str] = (), timeout: float = 10.0,
                 on_error: Any = None, context: zmq.asyncio.Context | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.core = ClientCore(token, name, groups, tags, channels)
        self.on_error = on_error
        self.errors: deque[NodeError] = deque(maxlen=100)
        self._ctx = context or zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None
        self._monitor: zmq.asyncio.Socket | None = None
        self._outbox = Outbox()
        self._flush_scheduled = False
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._current: deque = deque()
        self._waiters: dict[Any, asyncio.Future] = {}
        self._ready: asyncio.Future | None = None
        self._tasks: list[asyncio.Task] = []
        self._sending = asyncio.Lock()
        self._closed = False

    @property
    def node(self) -> str:
        return self.core.node

    async def connect(self) -> AsyncClient:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        sock = self._ctx.socket(zmq.DEALER)
        configure_socket(sock, self.core)
        self._monitor = sock.get_monitor_socket(MONITOR_EVENTS)
        sock.connect(self.address)
        self._sock = sock
        self._tasks = [asyncio.create_task(self._reader()),
                       asyncio.create_task(self._watch_connection()),
                       asyncio.create_task(self._heartbeat())]
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.timeout)
        except TimeoutError:
            await self.close()
            raise TimeoutError(f"no answer from a TreeScale node at {self.address} "
                               f"within {self.timeout:g}s") from None
        except AuthError:
            await self.close()
            raise
        return self

    async def __aenter__(self) -> AsyncClient:
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def publish(self, name: str, data: Any = b"", target: str | None = None,
                      mode: str | int = "all", headers: dict | None = None) -> None:
        self._outbox.add(*self.core.outbox_entry(name, data, target, mode, headers))
        if len(self._outbox) >= BATCH_EVENTS:
            await self._flush_queue()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._schedule_flush)

    async def subscribe(self, pattern: str, queue: str | None = None) -> None:
        split_pattern(pattern)
        self.core.subs[(pattern, queue)] = None
        await self._command(P.encode_sub(pattern, queue))
        await self.flush()

    async def unsubscribe(self, pattern: str, queue: str | None = None) -> None:
        self.core.subs.pop((pattern, queue), None)
        await self._command(P.encode_unsub(pattern, queue))
        await self.flush()

    async def flush(self, timeout: float = 10.0) -> None:
        token = next(self.core.ping_ids)
        await self._call(("ping", token), P.encode_ping(token), timeout, "flush")

    async def events(self, timeout: float | None = None) -> AsyncIterator[Event]:
        while True:
            while self._current:
                yield self._current.popleft()
            try:
                batch = await asyncio.wait_for(self._inbox.get(), timeout)
            except TimeoutError:
                return
            if batch is None:
                return
            self._current.extend(batch)

    async def request(self, name: str, data: Any = b"", timeout: float = 5.0,
                      target: str | None = None, mode: str | int = "one",
                      headers: dict | None = None) -> Event:
        data = _bytes(data)
        self.core.check_size(data)
        req_id = next(self.core.req_ids)
        return await self._call(req_id, P.encode_request(req_id, name, data, target,
                                                         _mode(mode), headers),
                                timeout, f"request {name!r}")

    async def reply(self, event: Event, data: Any = b"", headers: dict | None = None) -> None:
        if not event.reply:
            raise ValueError(f"event {event.name!r} is not a request (no reply subject)")
        await self._command(P.encode_reply(event.reply, _bytes(data), headers))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sock is not None and self.core.ready:
            try:
                await self._flush_queue()
                await self._sock.send_multipart(P.encode_bye())
            except zmq.ZMQError:
                pass
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        if self._sock is not None:
            self._sock.disable_monitor()
            self._sock.close(linger=2000)
        if self._monitor is not None:
            self._monitor.close(0)
        self._inbox.put_nowait(None)
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionError("client closed"))

    # ----------------------------------------------------------------- plumbing

    def _schedule_flush(self) -> None:
        self._flush_scheduled = False
        if self._outbox.names:
            self._tasks.append(asyncio.ensure_future(self._flush_queue()))
            self._tasks = [t for t in self._tasks if not t.done()]

    async def _flush_queue(self) -> None:
        if not self._outbox.names or not self.core.ready:
            return
        for msg in pack_outbox(*self._outbox.take()):
            await self._send(msg)

    async def _command(self, frames: list) -> None:
        """Send a control message after the publishes queued before it."""
        await self._flush_queue()
        await self._send(frames)

    async def _send(self, frames: list) -> None:
        if not self.core.ready and frames[0] not in (_BYE,):
            # Hold control messages until the node knows us again.
            await asyncio.wait_for(asyncio.shield(self._ready_now()), self.timeout)
        async with self._sending:
            await self._sock.send_multipart(frames)

    async def _ready_now(self) -> None:
        while not self.core.ready:
            await asyncio.sleep(0.01)

    async def _call(self, key: Any, frames: list, timeout: float, what: str) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self._waiters[key] = fut
        await self._command(frames)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(f"{what}: no answer within {timeout:g}s") from None
        finally:
            self._waiters.pop(key, None)

    async def _watch_connection(self) -> None:
        while True:
            msg = await self._monitor.recv_multipart()
            event = parse_monitor_message(msg)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                await self._sock.send_multipart(self.core.hello())
            elif event == zmq.EVENT_DISCONNECTED:
                self.core.ready = False

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            if self.core.ready:
                await self._sock.send_multipart(P.encode_ping(0))

    async def _reader(self) -> None:
        sock = self._sock
        while True:
            frames = await sock.recv_multipart()
            try:
                self._dispatch(frames)
            except P.ProtocolError as exc:
                log.warning("bad message from node: %s", exc)

    def _dispatch(self, frames: list) -> None:
        header = P.decode_header(frames[0])
        if header[0] == P.DELIVER:
            events = decode_batch(frames)
            if self._waiters:
                events = [e for e in events if not self._resolve_reply(e)]
            if events:
                self._inbox.put_nowait(events)
            return
        msg = P.decode(frames)
        if isinstance(msg, P.Ready):
            self.core.on_ready(msg)
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(True)
            if self._outbox.names:
                self._schedule_flush()
        elif isinstance(msg, P.Pong):
            fut = self._waiters.get(("ping", msg.token))
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif isinstance(msg, P.Error):
            err = error_from(msg)
            if msg.code == "not_ready" and self.core.ready:
                self.core.ready = False
                asyncio.ensure_future(self._sock.send_multipart(self.core.hello()))
                return
            if isinstance(err, AuthError) and self._ready is not None \
                    and not self._ready.done():
                self._ready.set_exception(err)
                return
            fut = self._waiters.get(msg.ref) if msg.ref is not None else None
            if fut is not None and not fut.done() and msg.code in (
                    "no_responders", "bad_target", "bad_pattern", "too_large"):
                fut.set_exception(err)
                return
            self.errors.append(err)
            if self.on_error is not None:
                self.on_error(err)
            else:
                log.warning("node error: %s", err)

    def _resolve_reply(self, ev: Event) -> bool:
        req_id = self.core.reply_req_id(ev.name)
        if req_id is None:
            return False
        fut = self._waiters.get(req_id)
        if fut is not None and not fut.done():
            fut.set_result(ev)
        return True
