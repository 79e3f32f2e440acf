"""The link to our parent: its socket, and the driver of the healing state machine.

Owns: the DEALER socket that dials the parent and its monitor, the address it dials,
reading what the parent sends, the LINK we introduce ourselves with, the round-trip
time to the parent, and carrying out the actions of ``treescale.healing`` (which
decides, purely, what a handshake, a lost connection, a refusal or a deadline means).

Must not touch: child links (placement.py admits them), routing (fanout.py).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import TYPE_CHECKING

import zmq

from treescale import healing, subjects
from treescale import protocol as P
from treescale.brokers import gate
from treescale.brokers.links import PARENT
from treescale.frames import NOBLOCK, monitor_events, recv_frames

if TYPE_CHECKING:
    from treescale.brokers.node import Node

log = logging.getLogger("treescale.node")

DRAIN_LIMIT = 2000


def heartbeats(sock: zmq.Socket, liveness: healing.Liveness | None = None) -> None:
    """ZMTP heartbeats, timed by ``liveness`` (healing.Liveness): the parent link's
    socket pings every interval and drops a parent that has not answered for the
    missed pings; its pings carry that as their TTL, so the parent's libzmq closes a
    child silent past it. ZeroMQ's I/O thread sends and answers pings without the
    GIL, so a busy node still does; a root that merely misses one is not replaced
    (healing.ROOT_GRACE).

    ``liveness=None`` (the node's ROUTER): it never pings. libzmq 4.3.5 aborts the
    process when a ping timer fires on a connection whose peer filled its receive
    queue and hung up (``!_io_error``, stream_engine_base.cpp): any peer could do that.
    The TTL of a child's pings is no guarantee either: libzmq cancels it on every
    message and only a ping re-arms it, so a cable cut after a data message and before
    the next ping left the parent no timer at all (it waited LINK_TIMEOUT, 5-6 s). The
    parent therefore keeps the rule itself (links.Links.tick), on the pings of our own
    that ``ParentLink.tick`` sends every interval."""
    if liveness is None:
        sock.setsockopt(zmq.HEARTBEAT_IVL, 0)
        return
    ivl, timeout, ttl = liveness.heartbeats()
    sock.setsockopt(zmq.HEARTBEAT_IVL, ivl)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout)
    sock.setsockopt(zmq.HEARTBEAT_TTL, ttl)


class ParentLink:
    """Our side of the link to the parent (a node with no parent has no socket)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        config = node.config
        self.address = config.parent  # whom the socket dials now
        self.state = healing.ParentLinkState.for_config((node.name, node.endpoint),
                                                         bool(config.parent))
        self.liveness = healing.Liveness(config.link_ping_interval,
                                         config.link_missed_pings)
        self.next_ping = 0.0 if config.parent else math.inf  # see tick
        self.rtt: float | None = None
        self.rtt_ewma: float | None = None
        self._rtt_parent: str | None = None
        self._neighbour = ""  # the parent's name, from its LINKED
        # CURVE: the public key of whom the socket dials now, and the one a redirect
        # offered for its target (checked before we dial it)
        self.server_key: str | None = None
        self._offered_key: str | None = None
        self.sock: zmq.Socket | None = None
        self.monitor: zmq.Socket | None = None
        if config.parent:
            self.sock = node.ctx.socket(zmq.DEALER)
            # A random routing id: a predictable one ("node:NAME") could be claimed
            # by anyone while our connection is down, locking us out.
            self.sock.setsockopt(zmq.ROUTING_ID, os.urandom(16))
            self.sock.setsockopt(zmq.LINGER, 500)
            self.sock.setsockopt(zmq.RECONNECT_IVL, 50)
            self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            heartbeats(self.sock, self.liveness)
            self.monitor = self.sock.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
            if node.curve is not None:
                self.server_key = node.curve.parent_key()
                node.curve.dial_as_client(self.sock, self.server_key)
            self.sock.connect(config.parent)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.disable_monitor()
            self.monitor.close(0)
            self.sock.close()

    # -- the state machine's inputs ---------------------------------------------------

    def on_monitor(self) -> None:
        """The parent socket connected or lost its connection."""
        for info in monitor_events(self.monitor):
            now = time.monotonic()
            if info["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._carry_out(self.state.handle(healing.HANDSHAKE, now), "")
            elif info["event"] == zmq.EVENT_DISCONNECTED:
                self._carry_out(self.state.disconnected(now), "disconnected")

    def tick(self, now: float) -> None:
        """A re-homing attempt or a root grace may have run out; a ping may be due."""
        if self.state.deadline is not None and now >= self.state.deadline:
            self._carry_out(self.state.due(now), "")
        if now >= self.next_ping:
            self.next_ping = now + self.liveness.interval
            self.ping()

    @property
    def due_at(self) -> float:
        """When ``tick`` next has something to do: a ping, or a healing deadline."""
        deadline = self.state.deadline
        return self.next_ping if deadline is None else min(deadline, self.next_ping)

    def drain(self) -> None:
        """Messages from our parent."""
        node = self.node
        for _ in range(DRAIN_LIMIT):
            try:
                frames = recv_frames(self.sock, NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                msg = P.decode(frames, node.config.max_payload)
            except P.ProtocolError as exc:
                log.warning("bad message from parent: %s", exc)
                continue
            try:
                self._on_message(msg, frames)
            except Exception:  # one bad message must not take the node down
                log.exception("node %s failed on a message from its parent", node.name)
        node.fanout.flush()

    def _on_message(self, msg, frames: list) -> None:
        node, now = self.node, time.monotonic()
        refusal = gate.from_parent(msg)
        if refusal is not None:
            log.warning("parent sent %s: ignored", refusal)
            return
        if isinstance(msg, P.Linked):
            self.state.ancestors = [tuple(a) for a in msg.ancestors]
            self.state.siblings = [tuple(s) for s in msg.siblings]
            self._neighbour = msg.node
            self._carry_out(self.state.handle(healing.ACCEPTED, now), "")
        elif isinstance(msg, P.Redirect):
            if node.curve is not None and not node.curve.may_follow(msg.key):
                # checked before we dial it: our LINK (and token) goes to no one else
                log.warning("node %s refuses the redirect to %s at %s: its key %s is not "
                            "trusted (not in authorized/, or revoked)", node.name,
                            msg.node, msg.address, msg.key)
                return
            self._offered_key = msg.key
            if not self.state.linked:
                log.info("node %s redirected to %s at %s", node.name, msg.node,
                         msg.address)
            self._carry_out(self.state.redirected(msg.node, msg.address, now), "")
        elif isinstance(msg, P.Error) and msg.code == subjects.NOT_READY:
            # The parent lost our session (it restarted, or timed us out): link again.
            self._carry_out(self.state.handle(healing.FORGOTTEN, now), "parent forgot us")
        elif isinstance(msg, P.Error) and not self.state.linked:
            log.error("parent refused the link: %s %s", msg.code, msg.message)
            self._carry_out(self.state.handle(healing.REFUSED, now), "")
        elif isinstance(msg, P.Pong):
            self._on_pong(msg.token)
        else:
            link = node.links.parent
            if link is not None:
                node.on_link_message(link, msg, frames)

    # -- the state machine's outputs --------------------------------------------------

    def _carry_out(self, actions: list[str], reason: str) -> None:
        node = self.node
        for action in actions:
            if action == healing.SEND_LINK:
                self.send(self.link_message())
            elif action == healing.ATTACH:
                node.links.up(PARENT, self._neighbour, self.address or "")
            elif action == healing.DETACH:
                node.links.down(PARENT, reason)
            elif action == healing.TELL_CHILDREN:
                node.placement.tell_children()
            elif action == healing.FOLLOW:
                name, address = self.state.target
                if self.state.state == healing.REHOMING:
                    log.warning("node %s re-attaching under %s at %s", node.name, name,
                                address)
                offered, self._offered_key = self._offered_key, None
                self._dial(name, address, offered)
            elif action == healing.ANNOUNCE_ROOT:
                # We lead until the old root answers again (it restarted, or the
                # partition healed): the socket keeps dialling it, and when it answers
                # we link under it again, our subtree with us. One tree, not two.
                log.warning("root lost: node %s takes over as root", node.name)
                node.emit(subjects.NODE_ROOT, {"node": node.name, "previous": "lost"})
                node.placement.tell_children()

    def _dial(self, name: str, address: str, offered_key: str | None = None) -> None:
        """Point the parent socket at node ``name`` (the LINK is sent on connect).
        With CURVE, only with a key we trust for it: the redirect's (checked), else
        its authorized one; without one the attempt is left to expire."""
        node = self.node
        key = None
        if node.curve is not None:
            key = node.curve.parent_key_for(name, offered_key)
            if key is None:
                log.warning("node %s does not dial %s at %s: no trusted key for it in "
                            "authorized/", node.name, name, address)
                return
        if self.address:
            try:
                self.sock.disconnect(self.address)
            except zmq.ZMQError:
                pass
        self.address = address
        if key is not None:
            node.curve.dial_as_client(self.sock, key)
            self.server_key = key
        self.sock.connect(address)

    # -- sending ----------------------------------------------------------------------

    def link_message(self) -> list:
        config = self.node.config
        # parent_token: the older name of what a child presents
        return P.encode_link(self.node.name, config.parent_token or config.link_token,
                             config.groups, config.tags, self.node.endpoint, config.join,
                             ping=round(self.liveness.interval * 1000))

    def send(self, frames: list) -> bool:
        return self.node.links.send(PARENT, frames)

    def ping(self) -> None:
        """Every ping interval while linked: our session at the parent stays alive
        (it drops us after the missed pings our LINK announced), and the pong carries
        the send time back (RTT)."""
        if self.node.links.parent is not None:
            self.send(P.encode_ping(time.monotonic_ns()))

    def _on_pong(self, token: int) -> None:
        rtt = (time.monotonic_ns() - token) / 1e9
        if not 0 <= rtt < 60:
            return  # not one of our timing pings
        parent = self.node.links.neighbour(PARENT)
        if self._rtt_parent != parent:  # re-homed: start afresh
            self._rtt_parent, self.rtt_ewma = parent, None
        self.rtt = rtt
        self.rtt_ewma = rtt if self.rtt_ewma is None else 0.8 * self.rtt_ewma + 0.2 * rtt
