"""Durable interest kept for neighbours that are away.

Owns: which durable patterns each neighbour holds (its interest in the durables'
queue, ``$durable``), stored so that it outlives the link and this node's restart; and,
while that neighbour is away, a stand-in member of the routing table,
``("away", NEIGHBOUR)``, subscribed to those patterns. The stand-in keeps the interest
in the tree (every other link goes on hearing it), so durable events published
anywhere during a partition, a node's restart or a neighbour's, are still owed to the
neighbour and wait here in custody. It goes when the neighbour has told us its
interest again, or ``AWAY_EXPIRY`` after it left.

Must not touch: what is owed (custody.py), how interest is exchanged (exchange.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from treescale import subjects

if TYPE_CHECKING:
    from treescale.brokers.links import Link
    from treescale.brokers.node import Node
    from treescale.durable_store import DurableStore

RELINK_GRACE = 5.0  # seconds after a link is back before a silent neighbour's stand-in goes
AWAY_EXPIRY = 86400.0  # a neighbour away this long no longer holds interest here


def away_member(neighbour: str) -> tuple[str, str]:
    return ("away", neighbour)


def is_away_member(mid: object) -> bool:
    return mid.__class__ is tuple and len(mid) == 2 and mid[0] == "away"


class AwayInterest:
    """Neighbours' durable interest, and stand-ins for the absent ones."""

    def __init__(self, node: Node, store: DurableStore, saved: dict) -> None:
        self.node = node
        self.store = store
        self.held: dict[str, set[str]] = {n: set(p) for n, p in saved.items()}
        self.away: dict[str, float] = {}  # neighbour -> since when it has a stand-in
        self.back: dict[str, float] = {}  # neighbour -> link up, interest not heard yet
        now = time.monotonic()
        for neighbour in self.held:  # at start-up every neighbour is away
            self._stand_in(neighbour, now)

    def _stand_in(self, neighbour: str, now: float) -> None:
        patterns = self.held.get(neighbour)
        if not patterns or neighbour in self.away:
            return
        mid = away_member(neighbour)
        self.node.table.add_member(mid)
        for pattern in sorted(patterns):
            self.node.exchange.subscribe(mid, pattern, subjects.DURABLE_QUEUE)
        self.away[neighbour] = now

    def _withdraw(self, neighbour: str) -> None:
        if self.away.pop(neighbour, None) is None:
            return
        mid = away_member(neighbour)
        for pattern in sorted(self.held.get(neighbour, ())):
            self.node.exchange.unsubscribe(mid, pattern, subjects.DURABLE_QUEUE)
        self.node.table.remove_member(mid)

    def link_down(self, link: Link) -> None:
        """Before the link's routes go: its durable interest stays, by a stand-in."""
        self.back.pop(link.neighbour, None)
        self._stand_in(link.neighbour, time.monotonic())

    def link_up(self, link: Link) -> None:
        if link.neighbour in self.away:
            self.back[link.neighbour] = time.monotonic()

    def heard(self, link: Link) -> None:
        """The link's interest changed: remember its durable part; the stand-in goes
        (the link's own interest now covers what it stood for)."""
        routes = self.node.table.members.get(link.member)
        patterns = {p for p, q in routes.subs if q == subjects.DURABLE_QUEUE} \
            if routes is not None else set()
        neighbour = link.neighbour
        if patterns != self.held.get(neighbour, set()):
            self.held[neighbour] = patterns
            self.store.put_interest(neighbour, sorted(patterns))
            if not patterns:
                del self.held[neighbour]
        self.back.pop(neighbour, None)
        self._withdraw(neighbour)

    def housekeeping(self, now: float) -> None:
        for neighbour, since in list(self.back.items()):
            if now - since > RELINK_GRACE:  # linked, and told us nothing: it has none
                link = next((lk for lk in self.node.links if lk.neighbour == neighbour),
                            None)
                if link is not None:
                    self.heard(link)
                else:
                    self.back.pop(neighbour, None)
        for neighbour, since in list(self.away.items()):
            if now - since > AWAY_EXPIRY:
                self._withdraw(neighbour)
                self.held.pop(neighbour, None)
                self.store.put_interest(neighbour, [])
