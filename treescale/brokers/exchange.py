"""The interest exchange: what each link is told this subtree wants, and what it says.

Owns: turning subscription changes (local clients' SUB/UNSUB, a neighbour's INTEREST)
into numbered INTEREST messages per link, one per link per wakeup of the loop however
many changes it read (``flush``: a client sending 100k SUBs must not queue 100k
messages on every link, whose queue holds 100 before sends are dropped); the snapshot that replaces a link's view
when an update went missing (a gap makes the receiver send RESYNC; a dropped send makes
the sender owe one); applying a neighbour's INTEREST to the routing table. What to
advertise is decided by the pure ``treescale.interest.InterestTable``; this module only
numbers, sends and applies.

Must not touch: event routing (fanout.py) or how links come and go (links.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from treescale import protocol as P
from treescale import subjects
from treescale.interest import LOCAL, InterestTable
from treescale.routing import PatternError, split_pattern

if TYPE_CHECKING:
    from treescale.brokers.links import Link
    from treescale.brokers.node import Node

log = logging.getLogger("treescale.node")


class InterestExchange:
    """Interest in and out of one node's links."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.table = InterestTable()
        # link -> key -> add: what each link must still hear (changes cancel out)
        self.pending: dict[bytes, dict[tuple[str, str | None], bool]] = {}
        self.table.add(LOCAL, subjects.node_inboxes(node.name))  # replies find us

    # -- local subscriptions ----------------------------------------------------------

    def subscribe(self, member: bytes, pattern: str, queue: str | None) -> None:
        """A local client subscribes; raises PatternError for a bad pattern."""
        if self.node.table.subscribe(member, pattern, queue):
            self.queue_updates(self.table.add(LOCAL, pattern, queue))

    def over_limit(self, member: bytes, pattern: str, queue: str | None) -> str | None:
        """Why a local session may not add this subscription (max_subscriptions; its
        private inbox does not count), or None."""
        routes = self.node.table.members.get(member)
        limit = self.node.config.max_subscriptions
        if routes is None or (pattern, queue) in routes.subs or len(routes.subs) <= limit:
            return None
        return (f"this session already has {limit} subscriptions (max_subscriptions "
                f"{limit}): {pattern!r} refused")

    def unsubscribe(self, member: bytes, pattern: str, queue: str | None) -> None:
        if self.node.table.unsubscribe(member, pattern, queue):
            self.queue_updates(self.table.remove(LOCAL, pattern, queue))

    def forget_client(self, member: bytes) -> None:
        """A client left: withdraw what it had asked for (not its private inbox)."""
        routes = self.node.table.members.get(member)
        for pattern, queue in list(routes.subs) if routes else ():
            if not subjects.is_inbox(pattern):
                self.queue_updates(self.table.remove(LOCAL, pattern, queue))

    # -- links coming and going -------------------------------------------------------

    def link_up(self, link: Link) -> None:
        self.queue_updates(self.table.add_link(link.member))

    def link_down(self, member: bytes) -> None:
        self.pending.pop(member, None)  # nobody left to tell
        self.queue_updates(self.table.drop_link(member))

    # -- out --------------------------------------------------------------------------

    def queue_updates(self, updates: list) -> None:
        """Queue what changed for each link; ``flush`` sends it."""
        pending = self.pending
        for u in updates:
            changes = pending.setdefault(u.link, {})
            key = (u.pattern, u.queue)
            if changes.get(key) is (not u.add):
                del changes[key]  # told and withdrawn before the link heard either
            else:
                changes[key] = u.add

    def flush(self) -> None:
        """Tell each link what changed, one numbered INTEREST message per link (the
        loop calls this once per wakeup)."""
        pending, self.pending = self.pending, {}
        links = self.node.links
        for member, changes in pending.items():
            link = links.get(member)
            if not changes or link is None or link.snapshot_due:
                continue  # nothing, gone, or the snapshot that is due will carry this
            ops = [(add, p, q) for (p, q), add in sorted(
                changes.items(), key=lambda c: (c[1], c[0][0], c[0][1] or ""))]
            link.seq_out += 1
            if not links.send(member, P.encode_interest(link.seq_out, ops)):
                link.snapshot_due = True

    def send_snapshot(self, link: Link) -> None:
        """Everything we advertise to ``link``, replacing what it heard before."""
        self.pending.pop(link.member, None)  # the snapshot says it all
        link.seq_out += 1
        keys = sorted(self.table.advertised.get(link.member, ()),
                      key=lambda k: (k[0], k[1] or ""))
        ops = [(True, p, q) for p, q in keys]
        # Still full: housekeeping tries again.
        link.snapshot_due = not self.node.links.send(
            link.member, P.encode_interest(link.seq_out, ops, full=True))

    def send_owed_snapshots(self) -> None:
        for link in list(self.node.links):
            if link.snapshot_due:
                self.send_snapshot(link)

    # -- in ---------------------------------------------------------------------------

    def on_resync(self, link: Link, msg: P.Resync) -> None:
        log.warning("link to %s lost our interest after #%d: sending a snapshot",
                    link.neighbour, msg.seq)
        self.send_snapshot(link)

    def on_interest(self, link: Link, msg: P.Interest) -> None:
        if msg.full:
            link.resyncing = False
            link.seq_in = msg.seq
            self._replace(link, msg.ops)
            return
        if link.resyncing:
            return  # the snapshot asked for will supersede this
        expected = link.seq_in + 1
        if msg.seq != expected:
            # An update went missing (a full link dropped it): ask for the whole state.
            log.warning("interest gap on link to %s: got #%d, expected #%d; resyncing",
                        link.neighbour, msg.seq, expected)
            link.resyncing = True
            self.node.links.send(link.member, P.encode_resync(expected - 1))
            return
        link.seq_in = msg.seq
        routes, member = self.node.table, link.member
        held = routes.members[member].subs if member in routes.members else set()
        limit = self.node.config.max_interest
        refused = 0
        updates: list = []
        for add, pattern, q in msg.ops:
            try:
                if add:
                    if len(held) >= limit and (pattern, q) not in held:
                        refused += 1
                        continue
                    routes.subscribe(member, pattern, q)
                    updates += self.table.add(member, pattern, q)
                else:
                    routes.unsubscribe(member, pattern, q)
                    updates += self.table.remove(member, pattern, q)
            except PatternError as exc:
                log.warning("bad interest from %s: %s", link.neighbour, exc)
        self._over_limit(link, refused)
        self.queue_updates(updates)
        self.node.custody.interest.heard(link)

    def _over_limit(self, link: Link, refused: int) -> None:
        """Tell a link that some of its interest was refused (max_interest)."""
        if not refused:
            return
        limit = self.node.config.max_interest
        log.warning("link to %s is over max_interest (%d): %d entries refused",
                    link.neighbour, limit, refused)
        self.node.links.send(link.member, P.encode_error(
            subjects.MAX_INTEREST, f"{refused} interest entries refused: this link "
            f"already holds {limit} here (max_interest {limit})", refused))

    def _replace(self, link: Link, ops: list) -> None:
        """A link's snapshot: make its routes and advertised interest exactly ``ops``
        (the first ``max_interest`` of them)."""
        keys = set()
        limit = self.node.config.max_interest
        for _, pattern, q in ops:
            try:
                split_pattern(pattern)
                keys.add((pattern, q))
            except PatternError as exc:
                log.warning("bad interest from %s: %s", link.neighbour, exc)
        if len(keys) > limit:
            refused = len(keys) - limit
            keys = set(sorted(keys, key=lambda k: (k[0], k[1] or ""))[:limit])
            self._over_limit(link, refused)
        member, routes = link.member, self.node.table
        before = set(self.table.held.get(member, ()))
        for pattern, q in before - keys:
            routes.unsubscribe(member, pattern, q)
        for pattern, q in keys - before:
            routes.subscribe(member, pattern, q)
        self.queue_updates(self.table.replace(member, keys))
        self.node.custody.interest.heard(link)
