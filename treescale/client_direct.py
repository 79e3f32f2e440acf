"""A calling thread's own session with its node, for requests and their replies.

Owns: ``DirectLink`` (one DEALER socket per thread that makes requests; the thread
waits for the replies on that socket) and ``ReplyStream`` (the replies to one
request, as they arrive). What each message from the node means is decided by the
link's ``ClientCore``; the link only sends, waits and files the replies.

Must not touch: the client's I/O thread, its outbox or its subscriptions
(treescale.client), and it never reads a reply stream from another thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from treescale import client_core as core
from treescale import protocol as P
from treescale.client_core import ClientCore, Event, NodeError
from treescale.client_io import ClientCurve, configure_socket
from treescale.frames import NOBLOCK, recv_frames, send_frames

log = logging.getLogger("treescale.client")

class DirectLink:
    """One calling thread's own connection to the node, for requests.

    Publishing goes through the client's I/O thread, which batches. A request is the
    opposite case: one small message whose latency is the point, and handing it to
    another thread and back costs two thread wake-ups per side, more than the node
    hop. So each thread that requests gets a private session (its own inbox) and
    waits for the answers on its own socket. Requests are ordered among themselves;
    to order one after earlier publishes, call ``flush()`` first.
    """

    def __init__(self, ctx: zmq.Context, address: str, parent: ClientCore,
                 report: Callable[[NodeError], None],
                 curve: ClientCurve | None = None) -> None:
        # The node does not announce this session on $sys.client.*; a node's own
        # service keeps its marker (on a node with auth it has no token to show).
        service = {k: v for k, v in parent.options.items() if k == "service"}
        self.core = parent.sibling({**service, "direct": True})
        self.sock = ctx.socket(zmq.DEALER)
        configure_socket(self.sock, self.core, curve)
        self.sock.connect(address)
        self.poller = zmq.Poller()  # kept: Socket.poll() builds a new one per call
        self.poller.register(self.sock, zmq.POLLIN)
        self.owner = threading.get_ident()
        self.report = report
        self.last_heard = 0.0  # when the node last said anything on this session
        self._boxes: dict[int, deque] = {}  # req_id -> replies not yet taken

    def open(self, name: str, data: Any, target: str | None, mode: str | int,
             headers: dict | None, timeout: float, replies: int | None) -> ReplyStream:
        """Send a request; its replies come out of the returned stream."""
        deadline = time.monotonic() + timeout
        try:
            self._ensure_ready(deadline)
            req_id, frames = self.core.request(name, data, target, mode, headers, replies)
            self._boxes[req_id] = deque()
            try:
                self._send(frames, deadline)
            except BaseException:
                self.forget(req_id)
                raise
        except TimeoutError:
            raise TimeoutError(f"request {name!r}: no answer within {timeout:g}s") from None
        return ReplyStream(self, req_id, deadline)

    def take(self, req_id: int, deadline: float) -> Event | None:
        """The next reply to ``req_id``; None once it ended or ``deadline`` passed."""
        if threading.get_ident() != self.owner:
            raise RuntimeError("a reply stream is read on the thread that made the request")
        box = self._boxes.get(req_id)
        if box is None:
            return None
        while not box:
            if not self._pump(deadline):
                return None
        if box[0] is core.END_OF_STREAM:
            return None  # left in the box: every later take ends at once
        item = box.popleft()
        if isinstance(item, Exception):
            raise item
        return item

    def forget(self, req_id: int) -> None:
        self.core.forget(req_id)
        self._boxes.pop(req_id, None)

    def close(self) -> None:
        self.sock.close(linger=0)

    # ----------------------------------------------------------------- plumbing

    def _ensure_ready(self, deadline: float) -> None:
        core = self.core
        # A session silent for half the node's client_timeout may be forgotten by
        # now; a request sent into it would be refused, a reply to it lost. Hello again.
        stale_after = core.limits.get("client_timeout", 15.0) / 2
        if core.ready and time.monotonic() - self.last_heard > stale_after:
            core.session_lost()
        if core.ready:
            return
        self._send(core.hello(), deadline)
        while not core.ready:
            if not self._pump(deadline):
                raise TimeoutError("no answer from the node")

    def _pump(self, deadline: float) -> bool:
        """Wait for one message from the node and carry out what it means; False if
        the deadline came first. Pings while it waits, so that the node keeps the
        session of a thread that waits long (a command that runs for minutes)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.poller.poll(int(min(left, self.core.ping_every) * 1000) + 1):
                break
            if self.core.ready:
                self._send_now(P.encode_ping(0))
        frames = recv_frames(self.sock)
        self.last_heard = time.monotonic()
        try:
            actions = self.core.receive(frames)
        except P.ProtocolError as exc:
            log.warning("bad message from node: %s", exc)
            return True
        for action in actions:
            self._carry_out(action, deadline)
        return True

    def _carry_out(self, action: Any, deadline: float) -> None:
        kind = action.__class__
        if kind is core.ResolveWaiter or kind is core.FailWaiter:
            box = self._boxes.get(action.ref)
            if box is not None:
                box.extend(action.items())
        elif kind is core.ResendHello or kind is core.Resend:
            self._send(action.frames, deadline)
        elif kind is core.Refused:
            raise action.error
        elif kind is core.ReportError:
            self.report(action.error)
        # Ready, Pong: the core noted them. Deliver: a direct session subscribes to
        # nothing, so only replies arrive, and the core took those.

    def _send_now(self, frames: list) -> None:
        try:
            send_frames(self.sock, frames, NOBLOCK)
        except zmq.Again:
            pass  # a heartbeat can wait for the next one

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


class ReplyStream:
    """The replies to one request (``Client.request_stream``), as they arrive.

    Iterate it to get every reply until the request's timeout (or its last wanted
    reply), or take them one at a time with ``get(timeout)``. A node's refusal
    (``NoResponders``, ``permission_denied``…) is raised from there. ``close()``, or
    leaving its ``with`` block, stops listening: later replies are dropped. Read it on
    the thread that made the request (the replies arrive on that thread's socket).
    """

    def __init__(self, link: DirectLink, req_id: int, deadline: float) -> None:
        self._link = link
        self.req_id = req_id
        self.deadline = deadline  # time.monotonic() after which no reply is awaited

    def get(self, timeout: float | None = None) -> Event | None:
        """The next reply, waiting at most ``timeout`` seconds (None: until the
        request's deadline); None if none came or the stream is over."""
        deadline = self.deadline
        if timeout is not None:
            deadline = min(deadline, time.monotonic() + timeout)
        return self._link.take(self.req_id, deadline)

    def __iter__(self) -> Iterator[Event]:
        while (ev := self.get()) is not None:
            yield ev

    def close(self) -> None:
        self._link.forget(self.req_id)

    def __enter__(self) -> ReplyStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
