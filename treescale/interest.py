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
from functools import lru_cache

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


def _is_wild(key: Key) -> bool:
    return any(tok in (WILDCARD_ONE, WILDCARD_REST) for tok in _tokens(key[0]))


@lru_cache(maxsize=65536)
def _tokens(pattern: str) -> tuple[str, ...]:
    return split_pattern(pattern)


def _covers_key(wide: Key, narrow: Key) -> bool:
    """Same queue name, and the wide pattern matches every name the narrow one does."""
    return wide[1] == narrow[1] and wide != narrow and _covers(_tokens(wide[0]),
                                                               _tokens(narrow[0]))


def minimal_cover(keys: Iterable[Key]) -> set[Key]:
    """The keys not covered by another key with the same queue name.

    Two different patterns never cover each other, so "covered by another" is well
    defined; only a pattern with a wildcard covers anything, so literal keys are
    checked against the (few) minimal wildcard keys only."""
    keys = set(keys)
    wild = [k for k in keys if _is_wild(k)]
    top = [w for w in wild if not any(_covers_key(o, w) for o in wild)]
    return set(top) | {k for k in keys if not _is_wild(k)
                       and not any(_covers_key(w, k) for w in top)}


class InterestTable:
    """Subscriptions per source, and what has been advertised to each link.

    Kept incrementally: a change touches only the links whose view it changes, and a
    literal pattern (most of them: ``$svc.exec.n42``, ``$inbox.n42.>``'s siblings) is
    checked only against the wildcard patterns already told, so a node with a
    thousand subscriptions in the tree does not redo a quadratic cover per change."""

    def __init__(self) -> None:
        self.held: dict[Hashable, Counter] = {LOCAL: Counter()}
        self.advertised: dict[Hashable, set[Key]] = {}
        self._holders: dict[Key, set] = {}  # key -> sources holding it
        self._wild_told: dict[Hashable, set[Key]] = {}  # wildcard keys in advertised

    @property
    def links(self) -> list[Hashable]:
        return list(self.advertised)

    def add_link(self, link: Hashable) -> list[Update]:
        """A new neighbour: everything it must be told (its initial snapshot)."""
        for key in self.held.setdefault(link, Counter()):
            self._holders.setdefault(key, set()).add(link)
        self.advertised[link] = set()
        self._wild_told[link] = set()
        delta: dict = {}
        for key in self.wanted(link):
            self._tell(link, key, delta)
        return self._updates(delta)

    def drop_link(self, link: Hashable) -> list[Update]:
        """A neighbour died: withdraw what came through it from everyone else."""
        self.advertised.pop(link, None)
        self._wild_told.pop(link, None)
        delta: dict = {}
        for key in self.held.pop(link, Counter()):
            self._lose(link, key, delta)
        return self._updates(delta)

    def add(self, source: Hashable, pattern: str, queue: str | None = None) -> list[Update]:
        split_pattern(pattern)
        held = self.held.setdefault(source, Counter())
        key = (pattern, queue)
        held[key] += 1
        if held[key] > 1:
            return []
        delta: dict = {}
        self._gain(source, key, delta)
        return self._updates(delta)

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
        delta: dict = {}
        self._lose(source, key, delta)
        return self._updates(delta)

    def replace(self, source: Hashable, keys: Iterable[Key]) -> list[Update]:
        """Set a source's whole interest at once (a link's snapshot after a gap)."""
        new = set(keys)
        old = set(self.held.get(source, ()))
        self.held[source] = Counter(new)
        delta: dict = {}
        for key in old - new:
            self._lose(source, key, delta)
        for key in new - old:
            self._gain(source, key, delta)
        return self._updates(delta)

    def wanted(self, link: Hashable) -> set[Key]:
        """What ``link`` should have been told: the minimal cover of all other sources."""
        return minimal_cover(k for k, holders in self._holders.items()
                             if holders - {link})

    def _updates(self, delta: dict) -> list[Update]:
        return _updates_of(delta, self.advertised)

    # -- the incremental core: each keeps advertised[L] == wanted(L) for every link L

    def _gain(self, source: Hashable, key: Key, delta: dict) -> None:
        holders = self._holders.setdefault(key, set())
        for link in self.advertised:
            if link != source and not holders - {link}:
                self._tell(link, key, delta)  # new to link's side of the tree
        holders.add(source)

    def _lose(self, source: Hashable, key: Key, delta: dict) -> None:
        holders = self._holders.get(key, set())
        holders.discard(source)
        for link in self.advertised:
            if link != source and not holders - {link}:
                self._untell(link, key, delta)  # nobody on link's other sides wants it
        if not holders:
            self._holders.pop(key, None)

    def _tell(self, link: Hashable, key: Key, delta: dict) -> None:
        """``key`` joined what ``link`` should hear: say it unless already covered."""
        told, wild = self.advertised[link], self._wild_told[link]
        if key in told or any(_covers_key(w, key) for w in wild):
            return
        if _is_wild(key):
            for narrow in [k for k in told if _covers_key(key, k)]:
                told.discard(narrow)
                wild.discard(narrow)
                _note(delta, link, narrow, False)
            wild.add(key)
        told.add(key)
        _note(delta, link, key, True)

    def _untell(self, link: Hashable, key: Key, delta: dict) -> None:
        """``key`` left what ``link`` should hear: withdraw it, and say what it hid."""
        told = self.advertised[link]
        if key not in told:
            return  # a wider key covers it, and that key is still wanted
        told.discard(key)
        _note(delta, link, key, False)
        if _is_wild(key):
            self._wild_told[link].discard(key)
            hidden = [k for k, holders in self._holders.items()
                      if holders - {link} and _covers_key(key, k)]
            for k in minimal_cover(hidden):
                self._tell(link, k, delta)


def _note(delta: dict, link: Hashable, key: Key, add: bool) -> None:
    """Record a change for ``link``; an add and a remove of one key cancel out."""
    changes = delta.setdefault(link, {})
    if changes.get(key) is (not add):
        del changes[key]
    else:
        changes[key] = add


def _updates_of(delta: dict, links: Iterable[Hashable]) -> list[Update]:
    updates = []
    for link in links:
        changes = delta.get(link)
        if not changes:
            continue
        for add in (False, True):  # withdrawals first, as before
            for pattern, queue in sorted((k for k, a in changes.items() if a is add),
                                         key=_order):
                updates.append(Update(link, add, pattern, queue))
    return updates


def _order(key: Key) -> tuple[str, str]:
    return key[0], key[1] or ""
