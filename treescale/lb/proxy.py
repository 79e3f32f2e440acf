"""The userspace backend: an asyncio TCP/UDP balancer running in one thread.

Works on any machine (no kernel feature, no privilege beyond binding the VIP's port)
and implements every scheduler, ``lc`` included, because it sees each connection
open and close. TCP connections are spliced both ways with half-close passed on;
UDP datagrams from one client address form a session bound to one real server,
dropped after ``UDP_IDLE`` seconds of silence.

Scale from zero: a TCP connection to a service with no real server and a ``hold``
waits (its bytes buffered) until real servers appear or the hold runs out (then it is
closed and counted in ``hold_expired``). While connections wait, ``on_wanted(vs)``
is called on this loop's thread, at most once per ``WANTED_INTERVAL`` per service; it
must not block (the lb service hands it to a worker of its own). A UDP datagram that
finds no real server asks the same way but is dropped, never held. Per service the
proxy counts the connections (TCP) and sessions (UDP) it accepted and when the last
one came (``traffic``), for whoever culls idle services.

Must not touch: the bus (``on_wanted`` is the only way out), the desired state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from treescale.lb.model import (
    LbError,
    RealServer,
    VirtualService,
    make_scheduler,
    wanted_due,
)

log = logging.getLogger("treescale.lb.proxy")

CONNECT_TIMEOUT = 3.0
UDP_IDLE = 30.0
UDP_SESSIONS = 4096  # per virtual service; beyond, new clients' datagrams are dropped
UDP_PENDING = 64  # datagrams held while a session's socket opens
CHUNK = 64 * 1024
CALL_TIMEOUT = 10.0


Wanted = Callable[[VirtualService], None]


@dataclass
class Traffic:
    """What one virtual service saw; kept across listener restarts, dropped on remove."""

    connections_total: int = 0
    last_connection: float | None = None  # wall clock (time.time())
    hold_expired: int = 0
    held: int = 0  # connections waiting for a real server now
    wanted_at: float | None = None  # monotonic time of the last "wanted"

    def to_dict(self) -> dict:
        return {"connections_total": self.connections_total,
                "last_connection": self.last_connection,
                "held": self.held, "hold_expired": self.hold_expired}


class ProxyBackend:
    """One listener per virtual service, all on one event loop thread."""

    name = "proxy"

    def __init__(self, on_wanted: Wanted | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.on_wanted = on_wanted
        self._listeners: dict[str, _Listener] = {}
        self._traffic: dict[str, Traffic] = {}
        self._thread = threading.Thread(target=self._run, daemon=True, name="lb-proxy")
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _call(self, coro: Coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT)

    def apply(self, vs: VirtualService) -> None:
        self._call(self._apply(vs))

    async def _apply(self, vs: VirtualService) -> None:
        current = self._listeners.get(vs.key)
        if current is not None and current.vs.scheduler == vs.scheduler:
            current.update(vs)
            return
        if current is not None:
            await current.close()
            del self._listeners[vs.key]
        traffic = self._traffic.setdefault(vs.key, Traffic())
        listener = (_TcpListener if vs.proto == "tcp" else _UdpListener)(
            vs, traffic, self._wanted)
        try:
            await listener.start()
        except OSError as exc:
            raise LbError(f"proxy cannot listen on {vs.key}: {exc.strerror or exc}") from None
        self._listeners[vs.key] = listener

    def remove(self, vs: VirtualService) -> None:
        self._call(self._remove(vs.key))

    async def _remove(self, key: str) -> None:
        listener = self._listeners.pop(key, None)
        self._traffic.pop(key, None)
        if listener is not None:
            await listener.close()

    def _wanted(self, vs: VirtualService) -> None:
        if self.on_wanted is None:
            return
        try:
            self.on_wanted(vs)
        except Exception:  # the proxy goes on holding: the next tick asks again
            log.exception("%s: asking for real servers failed", vs.key)

    def active(self, vs: VirtualService) -> dict[str, int] | None:
        async def count() -> dict[str, int]:
            listener = self._listeners.get(vs.key)
            if listener is None:
                return {}
            return {r.key: listener.active[r.key] for r in listener.vs.reals}
        return self._call(count())

    def traffic(self, vs: VirtualService) -> dict | None:
        """Connections accepted, the last one's time, held and expired ones."""
        async def read() -> dict | None:
            t = self._traffic.get(vs.key)
            return t.to_dict() if t is not None and vs.key in self._listeners else None
        return self._call(read())

    def installed(self, vs: VirtualService) -> bool:
        async def listening() -> bool:
            return vs.key in self._listeners
        return self._call(listening())

    def close(self) -> None:
        async def stop_all() -> None:
            for key in list(self._listeners):
                await self._remove(key)
        with contextlib.suppress(Exception):
            self._call(stop_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class _Listener:
    """A virtual service's scheduler, open-connection counts and traffic."""

    def __init__(self, vs: VirtualService, traffic: Traffic, wanted: Wanted) -> None:
        self.vs = vs
        self.scheduler = make_scheduler(vs.scheduler, vs.reals)
        self.active: Counter[str] = Counter()
        self.traffic, self._wanted = traffic, wanted
        self._changed = asyncio.Event()  # set (and replaced) when the reals change

    def update(self, vs: VirtualService) -> None:
        self.vs = vs
        self.scheduler.update(vs.reals)
        self._changed.set()
        self._changed = asyncio.Event()

    def accepted(self) -> None:
        self.traffic.connections_total += 1
        self.traffic.last_connection = time.time()

    def want(self) -> None:
        """Ask for real servers, unless this service asked less than a tick ago."""
        now = time.monotonic()
        if self.vs.hold > 0 and wanted_due(self.traffic.wanted_at, now):
            self.traffic.wanted_at = now
            self._wanted(self.vs)

    async def wait_for_reals(self) -> bool:
        """Hold a connection until there is a real server (True) or the hold is over."""
        deadline = time.monotonic() + self.vs.hold
        self.traffic.held += 1
        try:
            while not self.scheduler.reals:
                self.want()
                left = deadline - time.monotonic()
                if left <= 0:
                    self.traffic.hold_expired += 1
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(1.0, left))
            return True
        finally:
            self.traffic.held -= 1

    def pick(self, client_ip: str, tried: set[str]) -> RealServer | None:
        """The next server for a client, skipping those that just refused it."""
        for _ in range(max(1, len(self.scheduler.reals))):
            real = self.scheduler.pick(client_ip, self.active)
            if real is None or real.key not in tried:
                return real
        return None

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _TcpListener(_Listener):
    def __init__(self, vs: VirtualService, traffic: Traffic, wanted: Wanted) -> None:
        super().__init__(vs, traffic, wanted)
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.vs.address, self.vs.port,
                                                 reuse_address=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        client_ip = writer.get_extra_info("peername")[0]
        tried: set[str] = set()
        self.accepted()
        try:
            if self.vs.hold > 0 and not self.scheduler.reals \
                    and not await self.wait_for_reals():
                return  # nobody came in time: close the connection
            while True:
                real = self.pick(client_ip, tried)
                if real is None:
                    return  # nobody to serve it: close the connection
                try:
                    up_reader, up_writer = await asyncio.wait_for(
                        asyncio.open_connection(real.address, real.port), CONNECT_TIMEOUT)
                    break
                except (TimeoutError, OSError) as exc:
                    log.info("%s: real server %s refused: %s", self.vs.key, real.key, exc)
                    tried.add(real.key)
            self.active[real.key] += 1
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                self.active[real.key] -= 1
                up_writer.close()
        finally:
            writer.close()
            self.tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then pass the half-close on; on error close both ways."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        writer.close()


class _UdpListener(_Listener):
    def __init__(self, vs: VirtualService, traffic: Traffic, wanted: Wanted) -> None:
        super().__init__(vs, traffic, wanted)
        self.front: asyncio.DatagramTransport | None = None
        self.sessions: dict[tuple, _UdpSession] = {}
        self.sweeper: asyncio.Task | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.front, _ = await loop.create_datagram_endpoint(
            lambda: _Front(self), local_addr=(self.vs.address, self.vs.port))
        self.sweeper = loop.create_task(self._sweep())

    def update(self, vs: VirtualService) -> None:
        super().update(vs)
        keys = {r.key for r in vs.reals}
        for client, session in list(self.sessions.items()):
            if session.real.key not in keys:  # its server left: the next datagram picks again
                self.end(client)

    async def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        for client in list(self.sessions):
            self.end(client)
        if self.front is not None:
            self.front.close()

    def received(self, data: bytes, client: tuple) -> None:
        session = self.sessions.get(client)
        if session is None:
            real = self.pick(client[0], set())
            if real is None:
                self.want()  # datagrams are not held: ask, and drop this one
                return
            if len(self.sessions) >= UDP_SESSIONS:
                return
            session = self.sessions[client] = _UdpSession(self, client, real)
            self.active[real.key] += 1
            self.accepted()
        session.send(data)

    def end(self, client: tuple) -> None:
        session = self.sessions.pop(client, None)
        if session is not None:
            self.active[session.real.key] -= 1
            session.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(UDP_IDLE / 3)
            idle_since = time.monotonic() - UDP_IDLE
            for client, session in list(self.sessions.items()):
                if session.last < idle_since:
                    self.end(client)


class _Front(asyncio.DatagramProtocol):
    def __init__(self, listener: _UdpListener) -> None:
        self.listener = listener

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.listener.received(data, addr)


class _UdpSession(asyncio.DatagramProtocol):
    """One client's datagrams to one real server, and the replies back."""

    def __init__(self, listener: _UdpListener, client: tuple, real: RealServer) -> None:
        self.listener, self.client, self.real = listener, client, real
        self.last = time.monotonic()
        self.pending: list[bytes] | None = []
        self.transport: asyncio.DatagramTransport | None = None
        loop = asyncio.get_running_loop()
        self.opening = loop.create_task(loop.create_datagram_endpoint(
            lambda: self, remote_addr=(real.address, real.port)))
        self.opening.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.info("%s: cannot reach real server %s: %s", self.listener.vs.key,
                     self.real.key, task.exception())
            if self.listener.sessions.get(self.client) is self:
                self.listener.end(self.client)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        for data in self.pending or ():
            transport.sendto(data)
        self.pending = None

    def send(self, data: bytes) -> None:
        self.last = time.monotonic()
        if self.transport is None:
            if self.pending is not None and len(self.pending) < UDP_PENDING:
                self.pending.append(data)
        else:
            self.transport.sendto(data)

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.last = time.monotonic()
        front = self.listener.front
        if front is not None:
            front.sendto(data, self.client)

    def error_received(self, exc: Exception) -> None:
        log.info("%s: real server %s: %s", self.listener.vs.key, self.real.key, exc)

    def close(self) -> None:
        self.opening.cancel()
        if self.transport is not None:
            self.transport.close()
