"""Which node schedules: the lease, its terms, and the fencing of stale orders. Pure.

Owns: the rule that at most one scheduler is obeyed. A node may schedule only while
it leads the tree (the root, or the acting root after the root died: healing.py
gives one per tree) and holds the lease. It claims the lease only after hearing no
other holder for ``LEASE_TTL`` seconds, with a term above every term it has seen; it
announces it every ``ANNOUNCE`` seconds. Every node obeys the highest ``(term,
holder)`` it has seen, from announcements and orders alike, and refuses an order of
a lower one: an old scheduler cut off by a partition, or slow to notice it lost the
tree, is not obeyed by a node that heard its successor. A scheduler that hears a
higher lease steps down at once. Must not touch: the bus, clocks (``now`` comes in).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEASE_TTL = 2.0  # a lease not heard of for this long is gone
ANNOUNCE = 0.5  # a holder says so this often


@dataclass
class Lease:
    """A node's view of the lease: who holds it, at which term, heard when."""

    holder: str = ""
    term: int = 0
    heard_at: float = -math.inf

    @property
    def rank(self) -> tuple[int, str]:
        return (self.term, self.holder)

    def hear(self, holder: str, term: int, now: float) -> bool:
        """An announcement or an order of ``(term, holder)``: True if it is obeyed
        (not lower than the highest seen), and then it is the lease."""
        if (term, holder) < self.rank:
            return False
        self.holder, self.term, self.heard_at = holder, term, now
        return True

    def live(self, now: float, ttl: float = LEASE_TTL) -> bool:
        return bool(self.holder) and now - self.heard_at < ttl

    def held_by(self, me: str, now: float, ttl: float = LEASE_TTL) -> bool:
        return self.holder == me and self.live(now, ttl)

    def may_claim(self, me: str, now: float, since: float, ttl: float = LEASE_TTL
                  ) -> bool:
        """Whether ``me`` (leading the tree since ``since``) may take the lease now:
        nobody else's is live, and ``me`` has listened for a whole ``ttl``."""
        if self.holder == me:
            return True
        return not self.live(now, ttl) and now - since >= ttl

    def claim(self, me: str, now: float, floor: int = 0) -> int:
        """Take the lease: a term above every one seen (and ``floor``, the term of the
        stored specs); returns it."""
        if self.holder != me or not self.live(now):
            self.term = max(self.term, floor) + 1
        self.holder, self.heard_at = me, now
        return self.term
