"""Durable interest kept for neighbours that are away.

Owns: which durables' interest each neighbour holds — the keys ``(pattern,
$durable:NODE:NAME)``, one per durable in the tree — stored so that it outlives the
link and this node's restart; and, while that neighbour is away, a stand-in member of
the routing table, ``("away", NEIGHBOUR)``, subscribed to those keys. The stand-in
keeps the interest in the tree (every other link goes on hearing it), so durable events
published anywhere during a partition, a node's restart or a neighbour's are still
owed to the neighbour and wait here in custody (custody.py re-routes them if the tree
finds another way).

A stand-in advertises its keys marked (``$durable:NODE:NAME~away``): routed like
the real ones, but never taken for proof that a durable is reachable. It goes when the
neighbour has told us its interest again; when every key it holds has come, unmarked,
from live links for ``SUPERSEDED_AFTER`` (the durables re-homed elsewhere in the tree:
a key names its durable, so no other durable can pass for it, and two stand-ins
echoing each other's keys cannot retire each other); or ``AWAY_EXPIRY`` after the
neighbour left.

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
SUPERSEDED_AFTER = 10.0  # seconds every key of a stand-in came from live links
AWAY_EXPIRY = 86400.0  # a neighbour away this long no longer holds interest here

Key = tuple[str, str]


def away_member(neighbour: str) -> tuple[str, str]:
    return ("away", neighbour)


def is_away_member(mid: object) -> bool:
    return mid.__class__ is tuple and len(mid) == 2 and mid[0] == "away"


class AwayInterest:
    """Neighbours' durable interest, and stand-ins for the absent ones."""

    def __init__(self, node: Node, store: DurableStore, saved: dict) -> None:
        self.node = node
        self.store = store
        self.held: dict[str, set[Key]] = {n: {tuple(k) for k in keys if self._foreign(k)}
                                          for n, keys in saved.items()}
        self.away: dict[str, float] = {}  # neighbour -> since when it has a stand-in
        self.back: dict[str, float] = {}  # neighbour -> link up, interest not heard yet
        self.covered: dict[str, float] = {}  # neighbour -> since its keys came elsewhere
        now = time.monotonic()
        for neighbour in list(self.held):  # at start-up every neighbour is away
            self._stand_in(neighbour, now)

    def _foreign(self, key) -> bool:
        """Not a key of our own durables (a neighbour's stand-in echoes ours back: we
        never stand in for ourselves, it would hold everything for nobody)."""
        return not subjects.is_own_durable_queue(key[1], self.node.name)

    def _stand_in(self, neighbour: str, now: float) -> None:
        keys = self.held.get(neighbour)
        if not keys or neighbour in self.away:
            return
        mid = away_member(neighbour)
        self.node.table.add_member(mid)
        for pattern, queue in sorted(keys):
            self.node.exchange.subscribe(mid, pattern, subjects.stand_in_queue(queue))
        self.away[neighbour] = now

    def _withdraw(self, neighbour: str) -> None:
        self.covered.pop(neighbour, None)
        if self.away.pop(neighbour, None) is None:
            return
        mid = away_member(neighbour)
        for pattern, queue in sorted(self.held.get(neighbour, ())):
            self.node.exchange.unsubscribe(mid, pattern, subjects.stand_in_queue(queue))
        self.node.table.remove_member(mid)

    def _forget(self, neighbour: str) -> None:
        self._withdraw(neighbour)
        if self.held.pop(neighbour, None):
            self.store.put_interest(neighbour, [])

    def stands_for(self, neighbour: str) -> bool:
        """Whether a stand-in keeps durable interest here for this absent neighbour."""
        return neighbour in self.away

    def linked(self, neighbour: str, but: Link | None = None) -> bool:
        return any(lk.neighbour == neighbour and lk is not but for lk in self.node.links)

    def link_down(self, link: Link) -> None:
        """Before the link's routes go: its durable interest stays, by a stand-in
        (not when the neighbour is linked again already: the old connection's close
        can come after the new link is up)."""
        if self.linked(link.neighbour, but=link):
            return
        self.back.pop(link.neighbour, None)
        self._stand_in(link.neighbour, time.monotonic())

    def link_up(self, link: Link) -> None:
        if link.neighbour in self.away:
            self.back[link.neighbour] = time.monotonic()

    def heard(self, link: Link) -> None:
        """The link's interest changed: remember its durable part; the stand-in goes
        (the link's own interest now covers what it stood for)."""
        routes = self.node.table.members.get(link.member)
        keys = {k for k in routes.subs if subjects.is_durable_queue(k[1])
                and self._foreign(k)} if routes is not None else set()
        neighbour = link.neighbour
        self.back.pop(neighbour, None)
        self._withdraw(neighbour)
        if keys != self.held.get(neighbour, set()):
            if keys:
                self.held[neighbour] = keys
                self.store.put_interest(neighbour, sorted(keys))
            else:
                self._forget(neighbour)

    def housekeeping(self, now: float) -> None:
        for neighbour, since in list(self.back.items()):
            if now - since > RELINK_GRACE:  # linked, and told us nothing: it has none
                link = next((lk for lk in self.node.links if lk.neighbour == neighbour),
                            None)
                if link is not None:
                    self.heard(link)
                else:
                    self.back.pop(neighbour, None)
        live = set()  # real keys from live links: never another stand-in's
        for link in self.node.links:
            routes = self.node.table.members.get(link.member)
            if routes is not None:
                live.update(k for k in routes.subs if subjects.is_durable_queue(k[1])
                            and not subjects.is_stand_in_queue(k[1]))
        for neighbour, since in list(self.away.items()):
            held = {(p, subjects.real_queue(q)) for p, q in self.held.get(neighbour, ())}
            if now - since > AWAY_EXPIRY:
                self._forget(neighbour)
            elif held <= live and not self.linked(neighbour):
                first = self.covered.setdefault(neighbour, now)
                if now - first > SUPERSEDED_AFTER:  # its durables live elsewhere now
                    self._forget(neighbour)
                    self.node.custody.superseded(neighbour)
            else:
                self.covered.pop(neighbour, None)
