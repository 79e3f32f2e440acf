"""Interest propagation between nodes: what each tree link must be told. Pure.

A node hears subscriptions from *sources*: its local clients (one source, ``LOCAL``)
and each tree link (interest the neighbour advertised for its side of the tree). It
must tell each link the interest of every *other* source, so that an event crosses a
link only toward a side that wants it. Two rules keep the traffic small:

* reference counting: a pattern is advertised while any other source holds it, and
  withdrawn when the last one lets go;
* subsumption: a link already told ``orders.>`` is not told ``orders.created`` (for
  the same queue name); if ``orders.>`` is withdrawn, the narrower patterns it was
  hiding are advertised then.

Every change returns the ``Update``s to send, so the broker stays a thin loop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from treescale.routing import WILDCARD_ONE, WILDCARD_REST, split_pattern

LOCAL = "local"

Key = tuple[str, str | None]  # (pattern, queue)


@dataclass(frozen=True, slots=True)
class Update:
    link: Hashable
    add: bool
    pattern: str
    queue: str | None


def covers(wide: str, narrow: str) -> bool:
    """True if every name matching ``narrow`` also matches ``wide``."""
    return _covers(split_pattern(wide), split_pattern(narrow))


def _covers(w: tuple[str, ...], n: tuple[str, ...]) -> bool:
    if w and n and w[0] in (WILDCARD_ONE, WILDCARD_REST) and n[0].startswith("$"):
        return False  # a leading wildcard never matches $-names (routing's rule)
    for i, tok in enumerate(w):
        if tok == WILDCARD_REST:
            return len(n) > i  # '>' takes one or more of whatever remains
        if i >= len(n):
            return False
        if n[i] == WILDCARD_REST:
            return False  # only '>' covers '>'
        if tok != WILDCARD_ONE and tok != n[i]:
            return False
    return len(w) == len(n)


def minimal_cover(keys: Iterable[Key]) -> set[Key]:
    """The keys not covered by another key with the same queue name."""
    keys = set(keys)
    # Two different patterns never cover each other, so "covered by another" is
    # well defined. Quadratic; it runs on subscription changes, not per event.
    return {(pattern, queue) for pattern, queue in keys
            if not any(q == queue and p != pattern and covers(p, pattern)
                       for p, q in keys)}


class InterestTable:
    """Subscriptions per source, and what has been advertised to each link."""

    def __init__(self) -> None:
        self.held: dict[Hashable, Counter] = {LOCAL: Counter()}
        self.advertised: dict[Hashable, set[Key]] = {}

    @property
    def links(self) -> list[Hashable]:
        return list(self.advertised)

    def add_link(self, link: Hashable) -> list[Update]:
        """A new neighbour: everything it must be told (its initial snapshot)."""
        self.held.setdefault(link, Counter())
        self.advertised[link] = set()
        return self._refresh([link])

    def drop_link(self, link: Hashable) -> list[Update]:
        """A neighbour died: withdraw what came through it from everyone else."""
        self.advertised.pop(link, None)
        self.held.pop(link, None)
        return self._refresh(self.links)

    def add(self, source: Hashable, pattern: str, queue: str | None = None) -> list[Update]:
        split_pattern(pattern)
        held = self.held.setdefault(source, Counter())
        held[(pattern, queue)] += 1
        if held[(pattern, queue)] > 1:
            return []
        return self._refresh(self._others(source))

    def remove(self, source: Hashable, pattern: str,
               queue: str | None = None) -> list[Update]:
        held = self.held.get(source)
        key = (pattern, queue)
        if not held or key not in held:
            return []
        held[key] -= 1
        if held[key] > 0:
            return []
        del held[key]
        return self._refresh(self._others(source))

    def replace(self, source: Hashable, keys: Iterable[Key]) -> list[Update]:
        """Set a source's whole interest at once (a link's snapshot after a gap)."""
        self.held[source] = Counter(set(keys))
        return self._refresh(self._others(source))

    def wanted(self, link: Hashable) -> set[Key]:
        """What ``link`` should have been told: the minimal cover of all other sources."""
        union: set[Key] = set()
        for source, held in self.held.items():
            if source != link:
                union.update(held)
        return minimal_cover(union)

    def _others(self, source: Hashable) -> list[Hashable]:
        return [link for link in self.advertised if link != source]

    def _refresh(self, links: Iterable[Hashable]) -> list[Update]:
        updates = []
        for link in links:
            want = self.wanted(link)
            have = self.advertised[link]
            for pattern, queue in sorted(have - want, key=_order):
                updates.append(Update(link, False, pattern, queue))
            for pattern, queue in sorted(want - have, key=_order):
                updates.append(Update(link, True, pattern, queue))
            self.advertised[link] = want
        return updates


def _order(key: Key) -> tuple[str, str]:
    return key[0], key[1] or ""
