"""A session: one connection's state on a node, and its bounded outbound queue.

Owns: what a node knows of a client or child connection (identity, permissions,
counters) and the queue parked behind a full socket. Must not touch: sockets.

ZeroMQ keeps a per-peer queue of its own (SNDHWM messages). When it is full, the node
parks further messages for that client in ``Session.pending``; when that is full too,
events for the client are dropped, *counted*, and announced: the node publishes
``$sys.client.slow`` once per episode and, when the client has caught up, sends it an
error ``slow_consumer`` saying how many events it lost. A slow client never slows the
publishers or the other subscribers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

# Session states
AUTHENTICATING = "authenticating"
READY = "ready"


@dataclass(slots=True)
class Session:
    routing_id: bytes
    client_id: str
    name: str
    state: str = AUTHENTICATING
    groups: tuple = ()
    tags: tuple = ()
    channels: tuple = ()
    last_seen: float = 0.0
    pending: deque = field(default_factory=deque)  # (frames, n_events, n_bytes)
    pending_bytes: int = 0
    dropped: int = 0  # events dropped in the current slow episode
    dropped_total: int = 0
    slow: bool = False
    quiet: bool = False  # a client's direct request link: not announced on $sys
    is_link: bool = False  # a child node, not a client
    is_service: bool = False  # one of this node's own services
    fd: int | None = None  # the connection's file descriptor: the session is its own
    address: str = ""  # a child node's own listening address
    permissions: frozenset = frozenset()  # from the auth hook's decision
    events_out: int = 0
    events_in: int = 0

    @property
    def ready(self) -> bool:
        return self.state == READY

    def park(self, frames: list, n_events: int, n_bytes: int, max_bytes: int,
             max_messages: int) -> bool:
        """Queue a message behind a full socket; False if it had to be dropped."""
        if self.pending_bytes + n_bytes > max_bytes or len(self.pending) >= max_messages:
            self.dropped += n_events
            self.dropped_total += n_events
            return False
        self.pending.append((frames, n_events, n_bytes))
        self.pending_bytes += n_bytes
        return True

    def unpark(self) -> tuple | None:
        if not self.pending:
            return None
        item = self.pending.popleft()
        self.pending_bytes -= item[2]
        return item

    def requeue(self, item: tuple) -> None:
        self.pending.appendleft(item)
        self.pending_bytes += item[2]
