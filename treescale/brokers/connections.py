"""Connections without a ready session: how many, for how long, and closing them.

Owns: the table of TCP connections on the node's ROUTER that have no ready session
(just accepted, saying hello, being authenticated, refused, or whose session ended),
keyed by file descriptor as the socket monitor reports it (EVENT_ACCEPTED,
EVENT_DISCONNECTED) and as a received frame says (SRCFD); ``max_pending_hellos``
(a connection beyond it is refused: an error if it speaks, closed soon after either
way), ``hello_timeout`` (a connection not ready in time is closed), closing a
refused peer's connection once its error had time to leave, and giving memory that
such peers cost back to the operating system.

A ROUTER cannot close one peer through ZeroMQ's API; the node shuts the TCP
connection down through a duplicate of its descriptor, and libzmq, seeing it end,
cleans up as for any disconnect. Descriptors are reused by the OS and monitor events
trail messages, so a connection is only shut down while its descriptor is still a
socket on our port with the peer address it had when it was accepted.

Must not touch: sessions' meaning (handshake.py, node.py), what peers may send
(gate.py), routing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq

from treescale import subjects

if TYPE_CHECKING:
    from treescale.brokers.node import Node

log = logging.getLogger("treescale.node")

# Seconds between a refusal's error and closing the connection: a peer that reads
# late still finds its error (libzmq drops what was unread when a pipe ends).
GRACE = 1.0
SWEEP_INTERVAL = 0.25
TRIM_INTERVAL = 2.0  # at most this often, memory freed by closed peers goes back


@dataclass(slots=True)
class Unready:
    """A connection without a ready session."""

    since: float  # accepted (or its session ended) at
    peer: tuple | None  # its peer address, checked before it is shut down
    rid: bytes | None = None  # its routing id, once it said something
    close_at: float | None = None  # refused or timed out: closed at this time
    refused: str = ""  # the limit that refused it (its error code)


def fd_of(frame) -> int | None:
    """The file descriptor of the connection a frame came on (None if unknown)."""
    try:
        return frame.get(zmq.SRCFD)
    except (zmq.ZMQError, AttributeError, TypeError):  # no fd here
        return None


def _peer(fd: int) -> tuple | None:
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            return s.getpeername()
    except OSError:
        return None


class Connections:
    """The node's connections that have no ready session, and their limits."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.unready: dict[int, Unready] = {}
        # fd -> (routing id, peer address) of a ready session's connection: the
        # peer tells a late event about that connection from one about a new one.
        self.ready: dict[int, tuple[bytes, tuple | None]] = {}
        self.open = 0  # unready entries not (yet) refused or timed out
        self.closed = 0  # connections this node shut down (a counter for the report)
        self.refusals = 0  # connections refused since the last log line about it
        self._next_log = 0.0
        self._next_sweep = 0.0
        self._freed = False
        self._next_trim = 0.0
        self._trim = _malloc_trim()

    # -- what the monitor and the messages say ---------------------------------------

    def accepted(self, fd: int, now: float) -> None:
        """A new TCP connection (EVENT_ACCEPTED)."""
        peer = _peer(fd)
        if fd in self.ready:
            if self.ready[fd][1] == peer:
                return  # its hello was handled before this event: it is ready already
            del self.ready[fd]  # that session's connection is gone; this is another
        known = self.unready.get(fd)
        if known is not None and peer is not None and known.peer == peer:
            return  # it spoke before this event came: already counted
        self._forget(fd)
        entry = Unready(now, peer)
        limit = self.node.config.max_pending_hellos
        if self.open >= limit:
            entry.refused = subjects.MAX_PENDING_HELLOS
            entry.close_at = now + GRACE
            if not self.refusals:
                log.warning("node %s: %d connections without a ready session "
                            "(max_pending_hellos %d): refusing new ones",
                            self.node.name, self.open, limit)
            self.refusals += 1
        else:
            self.open += 1
        self.unready[fd] = entry

    def disconnected(self, fd: int) -> None:
        """A connection ended (EVENT_DISCONNECTED). A ready session's entry stays
        until the session ends: this event may be older than the session."""
        self._forget(fd)

    def spoke(self, fd: int | None, rid: bytes, now: float) -> str | None:
        """A message from a connection without a ready session: None to go on, else
        why this connection was refused (the error the caller sends)."""
        if fd is None or fd in self.ready:
            return None
        entry = self.unready.get(fd)
        if entry is None:  # its EVENT_ACCEPTED is still on the way, or was missed
            self.accepted(fd, now)
            entry = self.unready[fd]
        entry.rid = rid
        if entry.peer is None:  # it was gone (or not yet there) when accepted
            entry.peer = _peer(fd)
        if not entry.refused:
            return None
        return (f"too many connections without a ready session (max_pending_hellos "
                f"{self.node.config.max_pending_hellos}): this one is closed; "
                "connect again later")

    def may_speak(self, rid: bytes, frames: list) -> bool:
        """Limits before any work on a message from a connection without a ready
        session: one refused for max_pending_hellos is told so, and nothing above
        max_hello_bytes is decoded."""
        node, now = self.node, time.monotonic()
        fd = fd_of(frames[1])
        refused = self.spoke(fd, rid, now)
        if refused is not None:
            node.send_error(rid, subjects.MAX_PENDING_HELLOS, refused)
            return False
        size = sum(map(len, frames[1:]))
        limit = node.config.max_hello_bytes
        if size > limit:
            node.send_error(rid, subjects.MAX_HELLO_BYTES,
                            f"a message of {size} bytes before ready is over "
                            f"max_hello_bytes ({limit}): refused without decoding")
            self.refused(fd, now)
            return False
        return True

    def became_ready(self, fd: int | None, rid: bytes) -> None:
        if fd is None:
            return
        entry = self.unready.get(fd)
        peer = entry.peer if entry is not None else _peer(fd)
        self._forget(fd)
        self.ready[fd] = (rid, peer)

    def session_ended(self, fd: int | None, rid: bytes, now: float) -> None:
        """A ready session ended; its connection, if still open, has none now."""
        held = self.ready.get(fd) if fd is not None else None
        if held is None or held[0] != rid:
            return
        del self.ready[fd]
        self._forget(fd)
        self.open += 1
        self.unready[fd] = Unready(now, held[1], rid)

    def refused(self, fd: int | None, now: float) -> None:
        """The peer was refused (denied, redirected, over a limit): it has had its
        answer; its connection goes once that has left."""
        entry = self.unready.get(fd) if fd is not None else None
        if entry is not None and entry.close_at is None:
            self._closing(entry, now + GRACE)
        self._freed = True

    # -- once in a while ----------------------------------------------------------------

    def tick(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL
        timeout = self.node.config.hello_timeout
        for fd, entry in list(self.unready.items()):
            if entry.close_at is None:
                if now - entry.since > timeout:
                    self._timed_out(entry, now, timeout)
            elif now >= entry.close_at:
                self._forget(fd)
                self._shut(fd, entry)
        if self.refusals and now >= self._next_log:
            self._next_log = now + 10.0
            if self.refusals > 1:
                log.warning("node %s refused %d connections (max_pending_hellos %d)",
                            self.node.name, self.refusals,
                            self.node.config.max_pending_hellos)
            self.refusals = 0
        if self._freed and now >= self._next_trim:
            self._freed = False
            self._next_trim = now + TRIM_INTERVAL
            self.trim()

    def _timed_out(self, entry: Unready, now: float, timeout: float) -> None:
        if entry.rid is not None:
            self.node.send_error(entry.rid, subjects.HELLO_TIMEOUT,
                                 f"not ready within hello_timeout ({timeout:g} s): "
                                 "closing the connection")
        self._closing(entry, now + GRACE)

    def trim(self) -> None:
        """Give freed memory back to the OS: what a refused peer's buffers took is
        freed inside libzmq's I/O thread, whose malloc arena keeps it otherwise."""
        if self._trim is not None:
            self._trim(0)

    # -- bookkeeping ------------------------------------------------------------------

    def _closing(self, entry: Unready, at: float) -> None:
        if entry.close_at is None and not entry.refused:
            self.open -= 1
        entry.close_at = at

    def _forget(self, fd: int) -> None:
        entry = self.unready.pop(fd, None)
        if entry is not None and entry.close_at is None and not entry.refused:
            self.open -= 1

    def _shut(self, fd: int, entry: Unready) -> None:
        """End the TCP connection on ``fd`` if it is still the one we accepted."""
        if fd in self.ready or entry.peer is None:
            return
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            return  # closed already
        try:
            if s.getsockname()[1] == self.node.port and s.getpeername() == entry.peer:
                s.shutdown(socket.SHUT_RDWR)
                self.closed += 1
                self._freed = True
        except OSError:
            pass
        finally:
            s.close()

    def stats(self) -> dict:
        return {"unready_connections": len(self.unready),
                "closed_connections": self.closed}


def _malloc_trim():
    """glibc's malloc_trim, or None where there is none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None
