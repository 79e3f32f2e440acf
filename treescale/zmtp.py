"""A ZMTP 3 DEALER over a plain socket, for a thread's request session.

Owns: the ZeroMQ wire protocol on the client's side of one connection (the greeting,
the NULL mechanism's READY, frames, PING/PONG), over a blocking TCP or Unix socket
that the calling thread reads and writes itself.

Why: with libzmq, every message a thread sends wakes libzmq's I/O thread, and every
message it receives is handed over by that thread: two thread wake-ups per message,
which on the machines measured cost more than the node's whole routing of it
(BENCHMARKS.md, request/reply). A request is one small message whose latency is the
point, sent by a thread that then only waits for the answer; on its own socket the
kernel wakes that thread directly. The node's side stays libzmq: to it this is an
ordinary DEALER (the same greeting, routing id and frames).

Must not touch: what the messages mean (client_core), CURVE (a client with keys uses
libzmq: the NULL mechanism only here).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any

SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
GREETING = SIGNATURE + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
MORE, LONG, COMMAND = 0x01, 0x02, 0x04
_LONG_SIZE = struct.Struct(">Q")


class ZmtpError(ConnectionError):
    """The peer broke the protocol or closed the connection."""


def parse_endpoint(endpoint: str) -> tuple[int, Any]:
    """``tcp://HOST:PORT`` or ``ipc://PATH`` -> (address family, address)."""
    if endpoint.startswith("ipc://"):
        return socket.AF_UNIX, endpoint[len("ipc://"):]
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return family, (host, int(port))
    raise ValueError(f"{endpoint!r}: a request session needs tcp:// or ipc://")


def ready_command(routing_id: bytes) -> bytes:
    """The NULL mechanism's READY with our socket type and routing id, as a frame."""
    body = b"\x05READY" + _property(b"Socket-Type", b"DEALER") + _property(
        b"Identity", routing_id)
    return _frame_header(COMMAND, len(body)) + body


def encode_message(frames: list) -> bytes:
    """Frames (bytes-like) as one ZMTP message on the wire."""
    parts: list = []
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        data = memoryview(frame).cast("B") if not isinstance(frame, bytes) else frame
        parts.append(_frame_header(MORE if i < last else 0, len(data)))
        parts.append(data)
    return b"".join(parts)


def _property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value


def _frame_header(flags: int, size: int) -> bytes:
    if size < 256:
        return bytes((flags, size))
    return bytes((flags | LONG,)) + _LONG_SIZE.pack(size)


class ZmtpDealer:
    """One connection to a node, read and written by the calling thread only."""

    def __init__(self, endpoint: str, routing_id: bytes, timeout: float,
                 max_message: int) -> None:
        family, address = parse_endpoint(endpoint)
        self.max_message = max_message
        self._buf = bytearray()
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(address)
            if family != socket.AF_UNIX:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(GREETING)
            greeting = self._read(64, time.monotonic() + timeout)
            if greeting[:1] != b"\xff" or greeting[9:10] != b"\x7f" or greeting[10] < 3:
                raise ZmtpError("the peer does not speak ZMTP 3")
            if greeting[12:32].rstrip(b"\x00") != b"NULL":
                raise ZmtpError("the node wants a security mechanism (CURVE): use keys")
            self.sock.sendall(ready_command(routing_id))
            self._read_frame(time.monotonic() + timeout)  # the node's READY
        except BaseException:
            self.sock.close()
            raise

    def send(self, frames: list, deadline: float) -> None:
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            self.sock.sendall(encode_message(frames))
        except TimeoutError:
            raise TimeoutError("no room to send to the node") from None

    def recv(self, deadline: float) -> list[bytes] | None:
        """The next message's frames; None if ``deadline`` passed first."""
        frames: list[bytes] = []
        size = 0
        while True:
            try:
                flags, body = self._read_frame(deadline)
            except TimeoutError:
                if frames:  # the rest of a message is as good as here: wait for it
                    flags, body = self._read_frame(time.monotonic() + 5.0)
                else:
                    return None
            if flags & COMMAND:
                if body[:5] == b"\x04PING":
                    self._pong(body, deadline)
                continue
            frames.append(body)
            size += len(body)
            if size > self.max_message:
                raise ZmtpError(f"a message above {self.max_message} bytes from the node")
            if not flags & MORE:
                return frames

    def close(self) -> None:
        self.sock.close()

    # ----------------------------------------------------------------- plumbing

    def _pong(self, ping: bytes, deadline: float) -> None:
        # PING: 2-byte TTL then up to 16 bytes of context, echoed in the PONG
        context = ping[7:23]
        body = b"\x04PONG" + context
        self.send_raw(_frame_header(COMMAND, len(body)) + body, deadline)

    def send_raw(self, data: bytes, deadline: float) -> None:
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        self.sock.sendall(data)

    def _read_frame(self, deadline: float) -> tuple[int, bytes]:
        """One whole frame, consumed only once all of it is here: a deadline that
        passes half-way leaves the stream where it was."""
        self._fill(2, deadline)
        buf = self._buf
        flags = buf[0]
        if flags & ~(MORE | LONG | COMMAND):
            raise ZmtpError(f"a frame with unknown flags {flags:#x}")
        if flags & LONG:
            self._fill(9, deadline)
            head, size = 9, _LONG_SIZE.unpack_from(buf, 1)[0]
        else:
            head, size = 2, buf[1]
        if size > self.max_message:
            raise ZmtpError(f"a frame of {size} bytes from the node (limit "
                            f"{self.max_message})")
        self._fill(head + size, deadline)
        body = bytes(buf[head:head + size])
        del buf[:head + size]
        return flags, body

    def _read(self, n: int, deadline: float) -> bytes:
        self._fill(n, deadline)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _fill(self, n: int, deadline: float) -> None:
        """Read until ``n`` bytes are buffered (TimeoutError at ``deadline``)."""
        buf = self._buf
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from the node")
            self.sock.settimeout(left)
            chunk = self.sock.recv(max(65536, n - len(buf)))
            if not chunk:
                raise ZmtpError("the node closed the connection")
            buf += chunk


WIRE_ENV = "TREESCALE_REQUEST_WIRE"  # "zmq": request sessions use libzmq as well
RECONNECT_IVL = 0.05  # seconds between attempts while the node is away (libzmq's too)
MAX_MESSAGE = 1 << 31  # the node enforces max_payload; this only bounds a broken peer


def native_wire_allowed(endpoint: str) -> bool:
    """Whether a request session to ``endpoint`` may use a ZmtpDealer (tcp:// and
    ipc:// only, unless ``$TREESCALE_REQUEST_WIRE`` is "zmq")."""
    if os.environ.get(WIRE_ENV, "") == "zmq":
        return False
    try:
        parse_endpoint(endpoint)
    except ValueError:
        return False
    return True


class ZmtpWire:
    """A request session's messages over a ZmtpDealer that comes back by itself.

    Like a libzmq DEALER it reconnects when the node goes away; the session on the
    new connection is the core's business (the node answers ``not_ready``, the core
    says hello again and resends what was unanswered)."""

    def __init__(self, endpoint: str, routing_id: bytes) -> None:
        self.endpoint = endpoint
        self.routing_id = routing_id
        self.conn: ZmtpDealer | None = None

    def recv(self, until: float) -> list[bytes] | None:
        """The next message, or None if none came before ``until`` (or the
        connection broke: the caller pings, which reconnects)."""
        conn = self._connection(until)
        if conn is None:
            return None
        try:
            return conn.recv(until)
        except OSError:
            self._drop()
            return None

    def send_now(self, frames: list) -> None:
        """Send if the node can be reached within a moment; else leave it."""
        self.send(frames, time.monotonic() + 0.5, quiet=True)

    def send(self, frames: list, deadline: float, quiet: bool = False) -> None:
        data = encode_message(frames)
        for _attempt in range(2):  # a connection found broken gets one successor
            conn = self._connection(deadline)
            if conn is None:
                break
            try:
                conn.send_raw(data, deadline)
                return
            except OSError:
                self._drop()
        if not quiet:
            raise TimeoutError("no connection to the node")

    def close(self) -> None:
        self._drop()

    def _connection(self, deadline: float) -> ZmtpDealer | None:
        while self.conn is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                self.conn = ZmtpDealer(self.endpoint, self.routing_id, min(left, 2.0),
                                       MAX_MESSAGE)
            except (OSError, ZmtpError):
                time.sleep(min(RECONNECT_IVL, max(0.0, deadline - time.monotonic())))
        return self.conn

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
