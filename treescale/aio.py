"""The asyncio client: ``AsyncClient``, the same surface as ``Client`` with ``await``.

Owns: the I/O of the asyncio client (its reader, connection watcher and heartbeat
tasks, the outbox flushed when the loop goes idle) and ``AsyncReplyStream``. What the
node's messages mean is decided by ``ClientCore.receive`` (treescale.client_core);
this module only carries out the actions it returns.

Must not touch: threads or blocking calls (everything here runs on the event loop),
the meaning of messages or error codes (client_core), the outbox packing (client_io).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import zmq
import zmq.asyncio

from treescale import client_core as core
from treescale import protocol as P
from treescale import subjects
from treescale.client_batch import EventBatch, batch_of
from treescale.client_core import AuthError, ClientCore, Event, NodeError
from treescale.client_durable import MAX_UNCONFIRMED, replay_args, subscribe_args
from treescale.client_io import (
    BATCH_EVENTS,
    BYE,
    KEY_REFUSED,
    MAX_QUEUED,
    MONITOR_EVENTS,
    PAYLOADS,
    ClientCurve,
    Outbox,
    configure_socket,
    pack_many,
    pack_outbox,
    token_or_env,
)
from treescale.frames import as_views, parse_monitor_message
from treescale.routing import split_pattern

log = logging.getLogger("treescale.client")

class AsyncClient:
    """The asyncio client: the same surface as ``Client`` with ``await``.

    >>> async with AsyncClient("tcp://127.0.0.1:8888") as c:
    ...     await c.subscribe("orders.>")
    ...     await c.publish("orders.created", b"42")
    ...     async for ev in c.events(timeout=1):
    ...         print(ev.name)

    ``server_key`` and ``keypair``: CURVE, as for ``Client``.
    """

    def __init__(self, address: str, token: str | None = None, name: str | None = None,
                 groups: Iterable[str] = (), tags: Iterable[str] = (),
                 channels: Iterable[str] = (), timeout: float = 10.0,
                 on_error: Any = None, context: zmq.asyncio.Context | None = None,
                 server_key: str | None = None, keypair: Any = None,
                 max_unconfirmed: int = MAX_UNCONFIRMED) -> None:
        self.address = address
        self.curve = ClientCurve.of(server_key, keypair)
        self.timeout = timeout
        self.core = ClientCore(token_or_env(token), name, groups, tags, channels,
                               payload_types=PAYLOADS, max_unconfirmed=max_unconfirmed)
        self.core.acker = self
        self._confirm_waiters: set[asyncio.Future] = set()  # woken by each DCONFIRM
        self._controls: dict[int, asyncio.Future] = {}  # DCTL req_id -> its answer
        self.on_error = on_error
        self.errors: deque[NodeError] = deque(maxlen=100)
        self._ctx = context or zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None
        self._monitor: zmq.asyncio.Socket | None = None
        self._outbox = Outbox()
        self._flush_scheduled = False
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._current: Iterator[Event] = iter(())
        self._replies: dict[int, asyncio.Queue] = {}  # req_id -> its replies
        self._pings: dict[int, asyncio.Future] = {}  # flush token -> done when answered
        self._ready: asyncio.Future | None = None  # the first ready (or the refusal)
        self._is_ready = asyncio.Event()  # the session is ready now
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
        configure_socket(sock, self.core, self.curve)
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
                      mode: str | int = "all", headers: dict | None = None, *,
                      durable: bool = False, id: str | None = None, wait: bool = False,
                      timeout: float = 10.0) -> str | None:
        """``durable=True``: as ``Client.publish_durable`` (returns the event's id)."""
        if durable:
            if target is not None or mode != "all":
                raise ValueError("a durable event goes to every durable subscription "
                                 "that matches: no target or mode")
            while not self.core.durable.has_room() and not self._closed:
                await self._confirm_changed(None)
            cseq, eid = self.core.publish_durable(name, data, headers, id)
            self._poke()
            if wait:
                await self._wait_confirms(cseq, timeout, only=cseq)
            return eid
        self._outbox.add(*self.core.outbox_entry(name, data, target, mode, headers))
        if len(self._outbox) >= BATCH_EVENTS:
            await self._flush_queue()
            await self._wait_for_room()
        else:
            self._poke()
        return None

    async def publish_many(self, names: str | Iterable[str], payloads: Iterable,
                           target: str | None = None, mode: str | int = "all",
                           headers: dict | None = None) -> int:
        """As ``Client.publish_many``: the batches are encoded here and sent at once
        (awaiting the socket's room, which is the back-pressure). Returns the count."""
        count = 0
        for message, n in pack_many(self.core, names, payloads, target, mode, headers):
            self._outbox.add_encoded(message, n)
            count += n
            await self._flush_queue()
            await self._wait_for_room()
        return count

    async def _wait_for_room(self) -> None:
        """While the node is away nothing leaves: past MAX_QUEUED queued events,
        wait for it (back-pressure, like ``Client.publish``), never grow without bound."""
        while len(self._outbox) > MAX_QUEUED and not self._closed:
            if self.core.ready:
                await self._flush_queue()
            else:
                await self._is_ready.wait()

    async def subscribe(self, pattern: str, queue: str | None = None, *,
                        durable: str | None = None, timeout: float | None = None,
                        **durable_choices: Any) -> dict | None:
        """``durable="NAME"``: as ``Client.subscribe_durable`` (the node's answer)."""
        split_pattern(pattern)
        if durable is not None:
            args = subscribe_args(durable, pattern, queue, **durable_choices)
            return await self._control("subscribe", args,
                                       15.0 if timeout is None else timeout)
        if durable_choices:
            raise TypeError(f"{', '.join(durable_choices)}: only for durable=NAME")
        self.core.subs[(pattern, queue)] = None
        await self._command(P.encode_sub(pattern, queue))
        await self._ping(10.0 if timeout is None else timeout)
        return None

    async def unsubscribe(self, pattern: str, queue: str | None = None) -> None:
        self.core.subs.pop((pattern, queue), None)
        await self._command(P.encode_unsub(pattern, queue))
        await self._ping(10.0)

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until the node has processed everything sent so far and confirmed
        every durable event published before this call (DeliveryError if not)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        upto = self.core.durable.last_cseq
        if upto:
            await self._wait_confirms(upto, timeout)
        await self._ping(max(0.0, timeout - (loop.time() - start)))

    async def _ping(self, timeout: float) -> None:
        """Wait until the node has processed everything sent so far."""
        token, frames = self.core.ping()
        fut = self._pings[token] = asyncio.get_running_loop().create_future()
        try:
            await self._command(frames)
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(f"flush: no answer within {timeout:g}s") from None
        finally:
            self._pings.pop(token, None)

    async def events(self, timeout: float | None = None) -> AsyncIterator[Event]:
        while True:
            # The rest of the current batch stays there if the consumer stops early.
            for ev in self._current:
                yield ev
            batch = await self._next_delivery(timeout)
            if batch is None:
                return
            self._current = batch.iter_events()

    async def _next_delivery(self, timeout: float | None) -> Any:
        """The next inbox item (a delivery), or None: timed out, or the client closed."""
        try:
            return await asyncio.wait_for(self._inbox.get(), timeout)
        except TimeoutError:
            return None

    async def batches(self, timeout: float | None = None) -> AsyncIterator[EventBatch]:
        """As ``Client.batches``: one ``EventBatch`` per delivery, from the inbox
        ``events()`` drains too (what it left of its current delivery first)."""
        rest = tuple(self._current)
        if rest:
            yield EventBatch.of_events(rest)
        while (item := await self._next_delivery(timeout)) is not None:
            yield batch_of(item)

    async def request(self, name: str, data: Any = b"", timeout: float = 5.0,
                      target: str | None = None, mode: str | int = "one",
                      headers: dict | None = None) -> Event:
        """Send a request and wait for the first reply (NoResponders if nobody listens)."""
        async with await self.request_stream(name, data, target=target, mode=mode,
                                             headers=headers, timeout=timeout,
                                             replies=1) as replies:
            ev = await replies.get()
        if ev is None:
            raise TimeoutError(f"request {name!r}: no answer within {timeout:g}s")
        return ev

    async def request_stream(self, name: str, data: Any = b"", *,
                             target: str | None = None, mode: str | int = "all",
                             headers: dict | None = None, timeout: float = 5.0,
                             replies: int | None = None) -> AsyncReplyStream:
        """Send a request whose replies stream in (see ``Client.request_stream``):
        ``async for ev in await c.request_stream(...)`` until ``timeout`` seconds
        passed (or ``replies`` replies came)."""
        req_id, frames = self.core.request(name, data, target, mode, headers, replies)
        box = self._replies[req_id] = asyncio.Queue()
        stream = AsyncReplyStream(self, req_id, box,
                                  asyncio.get_running_loop().time() + timeout)
        try:
            await self._command(frames)
        except BaseException:
            stream.close()
            raise
        return stream

    async def reply(self, event: Event, data: Any = b"", headers: dict | None = None) -> None:
        """Answer a request event; call it several times to stream replies."""
        await self._command(self.core.reply(event, data, headers))

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
        closed = ConnectionError("client closed")
        for fut in [*self._pings.values(), *self._controls.values()]:
            if not fut.done():
                fut.set_exception(closed)
        self._wake_confirm_waiters()
        for box in self._replies.values():
            box.put_nowait(closed)
            box.put_nowait(core.END_OF_STREAM)

    # ------------------------------------------------------------- durable

    def ack(self, event: Event) -> None:
        """Acknowledge a durable event (not a coroutine: ``ev.ack()`` works too)."""
        if event.durable is not None:
            self.core.ack(event)
            self._poke()

    def nak(self, event: Event, delay: float = 0.0) -> None:
        """Give a durable event back: it comes again after ``delay`` seconds."""
        if event.durable is not None:
            self.core.ack(event, float(delay))
            self._poke()

    async def durables(self, timeout: float = 10.0) -> list[dict]:
        return list((await self._control("ls", {}, timeout)).get("durables", []))

    async def durable_info(self, name: str, timeout: float = 10.0) -> dict:
        return await self._control("info", {"durable": name}, timeout)

    async def durable_remove(self, name: str, timeout: float = 10.0) -> dict:
        return await self._control("rm", {"durable": name}, timeout)

    async def durable_replay(self, name: str, seq: int | None = None,
                             time: float | None = None, timeout: float = 10.0) -> dict:
        return await self._control("replay", replay_args(name, seq, time), timeout)

    async def durable_unsubscribe(self, name: str, timeout: float = 10.0) -> dict:
        return await self._control("unsubscribe", {"durable": name}, timeout)

    async def _control(self, op: str, args: dict, timeout: float) -> dict:
        req_id, frames = self.core.control(op, args)
        fut = self._controls[req_id] = asyncio.get_running_loop().create_future()
        try:
            await self._command(frames)
            result = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self.core.forget_control(req_id)
            raise TimeoutError(f"durable {op}: no answer from node {self.core.node} "
                               f"within {timeout:g}s") from None
        finally:
            self._controls.pop(req_id, None)
        return result if isinstance(result, dict) else {}

    async def _confirm_changed(self, timeout: float | None) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._confirm_waiters.add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            self._confirm_waiters.discard(fut)

    async def _wait_confirms(self, upto: int, timeout: float, only: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        state = self.core.durable
        while not state.settled(upto, only) and not self._closed:
            left = deadline - loop.time()
            if left <= 0:
                break
            await self._confirm_changed(left)
        err = self.core.delivery_error(upto, timeout, only)
        if err is not None:
            raise err

    def _end_stream(self, req_id: int) -> None:
        self.core.forget(req_id)
        self._replies.pop(req_id, None)

    # ----------------------------------------------------------------- plumbing

    def _poke(self) -> None:
        """Something is queued: send it once the loop gets to it (one wakeup)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._schedule_flush)

    def _schedule_flush(self) -> None:
        self._flush_scheduled = False
        if self._outbox.names or self.core.durable.has_work():
            self._spawn(self._flush_queue())

    def _wake_confirm_waiters(self) -> None:
        for fut in self._confirm_waiters:
            if not fut.done():
                fut.set_result(None)

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.ensure_future(coro))
        self._tasks = [t for t in self._tasks if not t.done()]

    async def _flush_queue(self) -> None:
        if not self.core.ready:
            return
        if self.core.durable.has_work():  # one DPUB, one DACK per durable
            for msg in self.core.durable.take():
                await self._send(msg)
        if self._outbox.names:
            for msg in pack_outbox(*self._outbox.take()):
                await self._send(msg)

    async def _command(self, frames: list) -> None:
        """Send a control message after the publishes queued before it."""
        await self._flush_queue()
        await self._send(frames)

    async def _send(self, frames: list) -> None:
        if not self.core.ready and frames[0] != BYE:
            # Hold control messages until the node knows us again.
            await asyncio.wait_for(self._is_ready.wait(), self.timeout)
        async with self._sending:
            await self._sock.send_multipart(frames)

    async def _watch_connection(self) -> None:
        while True:
            msg = await self._monitor.recv_multipart()
            event = parse_monitor_message(msg)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                await self._sock.send_multipart(self.core.hello())
            elif event == zmq.EVENT_DISCONNECTED:
                self.core.session_lost()
                self._is_ready.clear()
            elif (event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and self._ready is not None
                  and not self._ready.done()):
                self._ready.set_exception(AuthError(subjects.BAD_KEY, KEY_REFUSED))

    async def _heartbeat(self) -> None:
        while True:
            await self._is_ready.wait()  # client_timeout comes with the ready
            await asyncio.sleep(self.core.ping_every)
            if self.core.ready:
                await self._sock.send_multipart(P.encode_ping(0))

    async def _reader(self) -> None:
        sock = self._sock
        receive = self.core.receive
        while True:
            frames = as_views(await sock.recv_multipart(copy=False))
            try:
                actions = receive(frames)
            except P.ProtocolError as exc:
                log.warning("bad message from node: %s", exc)
                continue
            for action in actions:
                self._carry_out(action)

    def _carry_out(self, action: Any) -> None:
        """Do what the core decided a message from the node calls for."""
        kind = action.__class__
        if kind is core.Deliver or kind is core.DeliverDurable:
            self._inbox.put_nowait(action)
        elif kind is core.Confirmed:
            self._wake_confirm_waiters()
        elif kind is core.ControlDone:
            fut = self._controls.get(action.ref)
            if fut is not None and not fut.done():
                if action.error is not None:
                    fut.set_exception(action.error)
                else:
                    fut.set_result(action.result)
        elif kind is core.ResolveWaiter or kind is core.FailWaiter:
            box = self._replies.get(action.ref)
            if box is not None:
                for item in action.items():
                    box.put_nowait(item)
        elif kind is core.Pong:
            fut = self._pings.get(action.token)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif kind is core.Ready:
            self._is_ready.set()
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(True)
            if self._outbox.names or self.core.durable.has_work():
                self._schedule_flush()
        elif kind is core.ResendHello:
            self._is_ready.clear()
            self._spawn(self._sock.send_multipart(action.frames))
        elif kind is core.Send:
            self._spawn(self._sock.send_multipart(action.frames))
        elif kind is core.Resend:
            self._spawn(self._send(action.frames))
        elif kind is core.Refused:
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(action.error)
        elif kind is core.ReportError:
            self.errors.append(action.error)
            if self.on_error is not None:
                self.on_error(action.error)
            else:
                log.warning("node error: %s", action.error)


class AsyncReplyStream:
    """The replies to one ``AsyncClient.request_stream``, as they arrive:
    ``async for`` them (until the deadline or the last wanted reply) or
    ``await get(timeout)``; ``close()`` or ``async with`` stops listening."""

    def __init__(self, client: AsyncClient, req_id: int, box: asyncio.Queue,
                 deadline: float) -> None:
        self._client = client
        self._box = box
        self._over = False
        self.req_id = req_id
        self.deadline = deadline  # loop.time() after which no reply is awaited

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next reply, waiting at most ``timeout`` seconds (None: until the
        request's deadline); None if none came or the stream is over."""
        if self._over:
            return None
        left = self.deadline - asyncio.get_running_loop().time()
        if timeout is not None:
            left = min(left, timeout)
        try:
            item = self._box.get_nowait()
        except asyncio.QueueEmpty:
            if left <= 0:
                return None
            try:
                item = await asyncio.wait_for(self._box.get(), left)
            except TimeoutError:
                return None
        if item is core.END_OF_STREAM:
            self._over = True
            return None
        if isinstance(item, Exception):
            raise item
        return item

    async def __aiter__(self) -> AsyncIterator[Event]:
        while (ev := await self.get()) is not None:
            yield ev

    def close(self) -> None:
        self._client._end_stream(self.req_id)

    async def __aenter__(self) -> AsyncReplyStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
