"""The WebSocket gateway: browsers and Node.js programs as ordinary sessions of a node.

Owns: the WebSocket/HTTP listener (``websocket_port``), TLS on it, the relay of each
WebSocket session to the node, what a session may send the gateway itself (binary
messages only, within ``websocket_max_message``, well framed), keep-alive pings, and
the dashboard's files on the same port (what to serve is http.py's).

Each WebSocket session is relayed to the node over a ZeroMQ DEALER of its own, one
connection per session, message for message (framing.py). The node cannot tell it
from any client: the same hello, tokens, permissions, limits, slow-consumer policy
and durable subscriptions, and a session the node ends (a bad token, hello_timeout)
ends its WebSocket. Why a relay and not a session type inside the node: the node's
loop stays the one place that decides anything, nothing in it knows WebSockets, and
the gateway runs on a thread (and ZeroMQ context) of its own, so the node's loop
never waits on a browser; BENCHMARKS.md measures what it costs.

Must not touch: sessions, auth or routing (the node's); the meaning of messages.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from treescale.config import ConfigError, NodeConfig
from treescale.web import framing
from treescale.web.http import (
    SECURITY_HEADERS,
    STATIC_ROOT,
    SUBPROTOCOL,
    content_security_policy,
    content_type,
    origin_refusal,
    static_file,
)

log = logging.getLogger("treescale.web")

START_TIMEOUT = 10.0  # seconds for the listener to bind
CONNECT_TIMEOUT = 5.0  # seconds for a session's connection to its node
CLOSE_TIMEOUT = 3.0

# WebSocket close codes (RFC 6455 and the private range 4000-4999).
NORMAL, GOING_AWAY, UNSUPPORTED, TRY_AGAIN = 1000, 1001, 1003, 1013
NODE_ENDED = 4001  # the node closed the session's connection (after its error, if any)


def error_message(code: str, message: str) -> bytes:
    """A protocol error (kind 9) from the gateway itself, framed for WebSocket."""
    return framing.encode([msgpack.packb([9, code, message, None])])


@dataclass
class GatewaySettings:
    """What the gateway needs from its node's configuration."""

    host: str
    port: int
    node_address: str  # where sessions connect: the node's ipc or loopback endpoint
    max_message: int
    max_sessions: int
    ping_interval: float
    origins: tuple[str, ...] = ()
    tls: ssl.SSLContext | None = None
    client_keys: dict = field(default_factory=dict)  # CURVE: the node's own keypair
    static_root: Path = STATIC_ROOT

    @classmethod
    def from_config(cls, config: NodeConfig, node_address: str,
                    client_keys: dict) -> GatewaySettings:
        return cls(host=config.websocket_host or config.host,
                   port=config.websocket_port or 0, node_address=node_address,
                   max_message=config.websocket_max_message,
                   max_sessions=config.max_sessions,
                   ping_interval=config.websocket_ping_interval,
                   origins=config.websocket_origins, tls=tls_context(config),
                   client_keys=client_keys)


def tls_context(config: NodeConfig) -> ssl.SSLContext | None:
    """The server TLS context of ``websocket_tls_cert``/``_key`` (None: plain ws://);
    a ConfigError naming the file when it cannot be loaded."""
    cert, key = config.websocket_tls_cert, config.websocket_tls_key
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError(f"node {config.name}: websocket_tls_cert and websocket_tls_key "
                          "go together (wss:// needs both)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"node {config.name}: cannot load websocket_tls_cert {cert!r} "
                          f"/ websocket_tls_key {key!r}: {exc}") from None
    return context


class Gateway:
    """The WebSocket listener of one node, on a thread of its own."""

    def __init__(self, settings: GatewaySettings, name: str = "node") -> None:
        self.settings = settings
        self.name = name
        self.port: int | None = None
        self.sessions = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"websocket-{name}")
        self._zmq = zmq.asyncio.Context()  # its own I/O thread, not the node's

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> int:
        """Bind and serve; the bound port. Raises OSError (the port is taken...)."""
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise OSError(f"websocket port {self.settings.port}: not bound after "
                          f"{START_TIMEOUT:g}s")
        if self._failure is not None:
            self._zmq.term()
            raise self._failure
        return self.port  # type: ignore[return-value]

    def close(self) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopped.set)
            except RuntimeError:
                pass  # the loop ended meanwhile
        self._thread.join(CLOSE_TIMEOUT + 1)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(), or logged once running
            if not self._ready.is_set():
                self._failure = exc
                self._ready.set()
            else:
                log.exception("node %s: websocket gateway failed", self.name)
        finally:
            self._zmq.destroy(linger=0)

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        s = self.settings
        logging.getLogger("websockets").setLevel(logging.WARNING)  # not a line a session
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        async with serve(self._session, s.host, s.port, subprotocols=[SUBPROTOCOL],
                         process_request=self._process_request, compression=None,
                         max_size=s.max_message, max_queue=64,
                         write_limit=(1 << 20), ping_interval=s.ping_interval,
                         ping_timeout=s.ping_interval, close_timeout=CLOSE_TIMEOUT,
                         server_header=None, ssl=s.tls) as server:
            self.port = server.sockets[0].getsockname()[1]
            scheme = "wss" if s.tls else "ws"
            log.info("node %s: websocket gateway on %s://%s:%d", self.name, scheme,
                     s.host, self.port)
            self._ready.set()
            await self._stopped.wait()
            server.close(code=GOING_AWAY, reason="the node is stopping")
            await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT)

    # ------------------------------------------------------------------- HTTP side

    def _process_request(self, connection: Any, request: Any) -> Any:
        """Before the handshake: the dashboard's files for plain HTTP requests; the
        origin rule and the session limit for upgrades."""
        headers = request.headers
        if headers.get("Upgrade", "").lower() != "websocket":
            return self._static(connection, request.path)
        refusal = origin_refusal(headers.get("Origin"), headers.get("Host"),
                                 self.settings.origins)
        if refusal is not None:
            log.info("node %s: websocket refused: %s", self.name, refusal)
            return connection.respond(403, refusal + "\n")
        if self.sessions >= self.settings.max_sessions:
            return connection.respond(503, f"max_sessions: {self.settings.max_sessions} "
                                      "websocket sessions already open\n")
        return None

    def _static(self, connection: Any, path: str) -> Any:
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        found = static_file(path, self.settings.static_root)
        if found is None:
            return connection.respond(404, "not found\n")
        body = found.read_bytes()
        headers = Headers([("Content-Type", content_type(found)),
                           ("Content-Length", str(len(body))),
                           ("Content-Security-Policy", content_security_policy(body, found)),
                           *SECURITY_HEADERS])
        return Response(200, "OK", headers, body)

    # --------------------------------------------------------------- the sessions

    async def _session(self, ws: Any) -> None:
        self.sessions += 1
        sock = self._zmq.socket(zmq.DEALER)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        try:
            self._configure(sock)
            sock.connect(self.settings.node_address)
            if not await _connected(monitor):
                await ws.close(TRY_AGAIN, "the node does not answer")
                return
            relays = [asyncio.ensure_future(c) for c in (
                self._upstream(ws, sock), self._downstream(ws, sock),
                _node_ended(monitor))]
            done, pending = await asyncio.wait(relays, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            code, reason = NORMAL, ""
            for task in done:
                code, reason = task.result() or (code, reason)
            if code == NODE_ENDED:  # what the node said last (its error) goes first
                await _forward_queued(ws, sock)
            await ws.close(code, reason)
        finally:
            self.sessions -= 1
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)

    def _configure(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, -1)  # one connection per session, never two
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.MAXMSGSIZE, -1)
        keys = self.settings.client_keys
        if keys.get("keypair") is not None:
            public, secret = keys["keypair"].as_bytes()
            sock.curve_secretkey, sock.curve_publickey = secret, public
            sock.curve_serverkey = keys["server_key"].encode()

    async def _upstream(self, ws: Any, sock: zmq.asyncio.Socket) -> tuple[int, str] | None:
        """WebSocket -> node. Waits on the node's queue (back-pressure on the
        browser's TCP connection), never on anything else."""
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in ws:
                if isinstance(message, str):
                    await ws.send(error_message(
                        "text_frame", "this port takes binary WebSocket messages only "
                        "(one protocol message each, docs/PROTOCOL.md)"))
                    return UNSUPPORTED, "binary messages only"
                try:
                    frames = framing.decode(message)
                except framing.FramingError as exc:
                    await ws.send(error_message("bad_frame", str(exc)))
                    continue
                await sock.send_multipart(frames, copy=False)
        except ConnectionClosed:
            pass
        return None

    async def _downstream(self, ws: Any, sock: zmq.asyncio.Socket) -> None:
        """Node -> WebSocket: one WebSocket message per multipart message. A slow
        browser slows this loop, the node's queue for the session fills, and the
        node's slow-consumer policy takes over (docs/PROTOCOL.md)."""
        from websockets.exceptions import ConnectionClosed

        encode = framing.encode
        try:
            while True:
                frames = await sock.recv_multipart(copy=False)
                await ws.send(encode([f.buffer for f in frames]))
        except ConnectionClosed:
            return None


async def _forward_queued(ws: Any, sock: zmq.asyncio.Socket) -> None:
    """Send on what the node queued for the session before it closed it."""
    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            if asyncio.isfuture(frames):
                frames = await frames
            await ws.send(framing.encode([f.buffer for f in frames]))
    except (zmq.Again, ConnectionClosed):
        pass


async def _connected(monitor: zmq.asyncio.Socket) -> bool:
    """Whether the session's connection to the node came up in time."""
    from zmq.utils.monitor import parse_monitor_message

    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            while True:
                event = parse_monitor_message(await monitor.recv_multipart())
                if event["event"] == zmq.EVENT_CONNECTED:
                    return True
    except TimeoutError:
        return False


async def _node_ended(monitor: zmq.asyncio.Socket) -> tuple[int, str]:
    """Returns once the node closed the session's connection."""
    from zmq.utils.monitor import parse_monitor_message

    while True:
        event = parse_monitor_message(await monitor.recv_multipart())
        if event["event"] == zmq.EVENT_DISCONNECTED:
            return NODE_ENDED, "the node ended the session"
