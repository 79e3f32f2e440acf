"""Multipart send/receive without pyzmq's per-frame Python overhead.

``Socket.send_multipart``/``recv_multipart`` do IntFlag arithmetic and type checks for
every frame; on the node's hot path that cost more than routing itself (15 us against
3 us for a three-frame message on the reference machine). These do the same with plain
ints. Semantics are pyzmq's: ``zmq.Frame`` objects are sent without copying.
"""

from __future__ import annotations

import struct
from typing import Any

import zmq
from zmq.backend import Socket as _BackendSocket

# The Cython methods themselves: the sugar layer's wrappers cost as much as the call.
_send = _BackendSocket.send
_recv = _BackendSocket.recv
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE)
RCVMORE = int(zmq.RCVMORE)
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
POLLOUT = int(zmq.POLLOUT)
SRCFD = int(zmq.SRCFD)  # Frame.get(SRCFD): the connection a message came on


def send_frames(sock: zmq.Socket, frames: list, flags: int = 0) -> None:
    """Send ``frames`` as one message (raises zmq.Again with NOBLOCK when full).

    With NOBLOCK only the first frame can raise Again: once a message has started,
    ZeroMQ accepts the rest of it.
    """
    more = flags | SNDMORE
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _send(sock, frame, more if i < last else flags)


def recv_frames(sock: zmq.Socket, flags: int = 0, copy: bool = True) -> list[Any]:
    """Receive one whole message; ``copy=False`` gives zmq.Frame objects."""
    if copy:
        parts = [_recv(sock, flags)]
        get = sock.getsockopt
        while get(RCVMORE):
            parts.append(_recv(sock, 0))
        return parts
    frame = _recv(sock, flags, False)
    parts = [frame]
    while frame.more:
        frame = _recv(sock, 0, False)
        parts.append(frame)
    return parts


def recv_views(sock: zmq.Socket, flags: int = 0, copied: int = 3) -> list[Any]:
    """Receive one whole message: its first ``copied`` frames as bytes, the rest as
    memoryviews of the received frames, without a copy.

    What a client wants from a DELIVER: the header and the batch's columns are small
    and parsed, large payloads travel in their own frames and are handed on as they
    are (copying and faulting in 1 MiB per event cost more than the two hops did).
    """
    parts = [_recv(sock, flags)]
    get = sock.getsockopt
    while get(RCVMORE):
        if len(parts) < copied:
            parts.append(_recv(sock, 0))
        else:
            parts.append(_recv(sock, 0, False).buffer)
    return parts


def as_views(frames: list, copied: int = 3) -> list[Any]:
    """``recv_views`` for frames already received with ``copy=False`` (asyncio)."""
    return [f.bytes if i < copied else f.buffer for i, f in enumerate(frames)]


def parse_monitor_message(msg: list[bytes]) -> dict:
    """One socket-monitor event (``event``, ``value``, ``endpoint``), as pyzmq's
    ``zmq.utils.monitor`` parses it. Not imported from there: that module imports
    ``zmq.asyncio`` and with it asyncio, megabytes a node has no other use for."""
    if len(msg) != 2 or len(msg[0]) != 6:
        raise RuntimeError(f"Invalid event message format: {msg}")
    event, value = struct.unpack("=hi", msg[0])
    return {"event": zmq.Event(event), "value": zmq.Event(value), "endpoint": msg[1]}


def monitor_events(monitor: zmq.Socket) -> list[dict]:
    """Every event waiting on a socket monitor, parsed (``event``, ``value``...)."""
    events = []
    while True:
        try:
            events.append(parse_monitor_message(monitor.recv_multipart(NOBLOCK)))
        except zmq.Again:
            return events
