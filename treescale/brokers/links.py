"""One object per tree neighbour, and bringing links up and down.

Owns: the ``Link`` record of each neighbour (parent or child) — its name and role,
the interest sequence numbers in both directions, whether a snapshot is owed or asked
for, the depth of its subtree's open slot, its socket's file descriptor and counters —
and the steps every link goes through when it comes up or goes down (routes, interest,
placement news, ``$sys.node.up``/``down``). Also how a control message is sent on a link,
and dropping a child that went silent (``tick``: ``healing.Liveness`` of the interval
its LINK announced, checked when its deadline is due).

Must not touch: what interest means (treescale/brokers/exchange.py), where joiners go
(placement.py), when the parent link heals (parent.py).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq

from treescale import subjects
from treescale.frames import NOBLOCK, send_frames
from treescale.healing import Liveness

if TYPE_CHECKING:
    from treescale.brokers.node import Node

log = logging.getLogger("treescale.node")

PARENT = b"\x00parent"  # routing-table member id of the link to our parent
# Seconds without a word before a child link's session ends, whatever its LINK said;
# the only limit for a child that announced no ping interval (an older node).
LINK_TIMEOUT = 5.0
IDLE_WAIT = 0.25  # the loop's longest sleep (seconds) when nothing is due sooner


@dataclass(slots=True)
class Link:
    """A live link to a neighbour node."""

    member: bytes  # its member id in the routing table (PARENT for the parent)
    neighbour: str  # the node at the other end
    address: str = ""  # where it listens (children say so in LINK; the parent's dial)
    seq_out: int = 0  # last INTEREST number we sent on this link
    seq_in: int = 0  # last INTEREST number we took in order
    snapshot_due: bool = False  # an INTEREST send was dropped: a snapshot is owed
    resyncing: bool = False  # we asked for a snapshot: updates wait for it
    open_depth: int = 0  # a child: how far below it the nearest free slot is
    liveness: Liveness | None = None  # a child: when its silence is death (its LINK)
    events_in: int = 0
    events_out: int = 0

    @property
    def role(self) -> str:
        return "parent" if self.member == PARENT else "child"

    @property
    def is_parent(self) -> bool:
        return self.member == PARENT


class Links:
    """The node's live links by member id, and their life cycle."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.by_member: dict[bytes, Link] = {}
        self.check_at = math.inf  # when the next child may have gone silent too long

    def __contains__(self, member: object) -> bool:
        return member in self.by_member

    def __iter__(self):
        return iter(self.by_member.values())

    def get(self, member: bytes) -> Link | None:
        return self.by_member.get(member)

    def neighbour(self, member: bytes) -> str | None:
        link = self.by_member.get(member)
        return link.neighbour if link is not None else None

    @property
    def parent(self) -> Link | None:
        return self.by_member.get(PARENT)

    def children(self) -> list[Link]:
        return [link for link in self.by_member.values() if not link.is_parent]

    def key(self, member: bytes) -> tuple[str, str]:
        """(neighbour, role) of a link: the label of its traffic counters."""
        link = self.by_member.get(member)
        return (link.neighbour, link.role) if link else ("?", "child")

    def up(self, member: bytes, neighbour: str, address: str = "",
           ping: int | None = None) -> Link:
        """Bring a link up; ``ping``: a child's announced interval (ms), if any."""
        node = self.node
        link = Link(member, neighbour, address)
        if ping is not None:
            link.liveness = Liveness(ping / 1000, node.config.link_missed_pings)
            self.check_at = 0.0  # work out its deadline on the next wakeup
        self.by_member[member] = link
        node.table.add_member(member, link=True)
        node.exchange.link_up(link)
        node.custody.link_up(link)  # what it is owed goes again, oldest first
        node.placement.tree_changed()
        node.emit(subjects.NODE_UP, {"node": neighbour, "detected_by": node.name,
                                     "role": link.role})
        return link

    def down(self, member: bytes, reason: str) -> None:
        node = self.node
        link = self.by_member.pop(member, None)
        if link is None:
            return
        node.custody.link_down(link)  # first: its durable interest stays
        node.table.remove_member(member)
        node.fanout.forget(member)
        node.exchange.link_down(member)
        if not link.is_parent:
            node.placement.tell_children()  # the remaining children's siblings changed
        node.placement.tree_changed()
        node.emit(subjects.NODE_DOWN, {"node": link.neighbour, "detected_by": node.name,
                                       "reason": reason, "role": link.role})

    def tick(self, now: float) -> None:
        """Drop every child silent past its deadline (its missed pings), when the
        earliest deadline is due: not once a second, which added up to a second."""
        if now < self.check_at:
            return
        self.check_at = math.inf
        sessions = self.node.sessions
        for link in self.children():
            session = sessions.get(link.member)
            if link.liveness is None or session is None:
                continue
            if link.liveness.dead(session.last_seen, now):
                self.node.drop_session(link.member, "timeout")
            else:
                self.check_at = min(self.check_at, link.liveness.deadline(session.last_seen))

    def wait(self) -> int:
        """How long (ms) the loop may sleep: until a child's deadline or what the
        parent link has due (a ping, a healing deadline), at most IDLE_WAIT."""
        due = min(self.check_at, self.node.parent.due_at) - time.monotonic()
        return max(0, math.ceil(1000 * min(due, IDLE_WAIT)))

    def send(self, member: bytes, frames: list) -> bool:
        """Send a control message on a link; False if it had to be dropped."""
        node = self.node
        if member == PARENT:
            sock, out = node.parent.sock, frames
        else:
            sock, out = node.sock, [member, *frames]
        if sock is None:
            return False
        try:
            send_frames(sock, out, NOBLOCK)
            return True
        except zmq.ZMQError:
            log.warning("link to %s is full or gone; control message dropped",
                        self.neighbour(member))
            return False
