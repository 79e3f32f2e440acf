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

Every change returns the ``Update``s to send, so the broker stays a thin loop. A
change costs what it changes, not what the node holds: every held pattern sits in a
trie (``PatternIndex``) that answers "which held patterns cover this one" and "which
does it cover" by walking only the branches that can match, so a SUB among 100 000
others costs about what it costs among ten (bench/subscribe_scale.py).

Must not touch: sockets, sequence numbers, snapshots (brokers/exchange.py), event
routing (routing.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from treescale.routing import WILDCARD_ONE, WILDCARD_REST, split_pattern

LOCAL = "local"

Key = tuple[str, str | None]  # (pattern, queue)
_WILD = (WILDCARD_ONE, WILDCARD_REST)


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
    if w and n and w[0] in _WILD and n[0].startswith("$"):
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


# -- the index: held patterns in a trie, queried by cover ---------------------------

_NONE: Mapping = MappingProxyType({})  # what a node has until it needs a dict of its own


class _Node:
    __slots__ = ("children", "here", "rest")

    def __init__(self) -> None:
        self.children: Mapping[str, _Node] = _NONE  # literal tokens, and "*"
        self.here: Mapping[str | None, Key] = _NONE  # queue -> key ending here
        self.rest: Mapping[str | None, Key] = _NONE  # queue -> key: this prefix + ">"


def _put(node: _Node, slot: str, name: str | None, value: object) -> None:
    entries = getattr(node, slot)
    if entries is _NONE:
        entries = {}
        setattr(node, slot, entries)
    entries[name] = value


def _drop(node: _Node, slot: str, name: str | None) -> None:
    entries = getattr(node, slot)
    if name in entries:
        del entries[name]
        if not entries:
            setattr(node, slot, _NONE)


class PatternIndex:
    """Keys by pattern tokens. ``covering`` and ``covered`` are ``_covers`` turned
    into walks: they visit only the branches a cover can take, so their cost is the
    pattern's depth and the answers, not the number of keys held. Where ``covered``
    may visit more than it finds: a '*' visits every child at its level, unless a
    literal token after it is held by fewer keys (then only those are checked), and
    a '>' visits every key below it, of any queue."""

    def __init__(self) -> None:
        self.root = _Node()
        self.tokens: dict[Key, tuple[str, ...]] = {}
        # (position >= 1, literal token) -> the keys whose pattern has it there: a
        # set, or the key itself while it is the only one (most tokens are an id: a
        # set each would be one more object per key for the garbage collector)
        self.postings: dict[tuple[int, str], Key | set[Key]] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, tokens: tuple[str, ...], key: Key) -> None:
        if key in self.tokens:
            return
        self.tokens[key] = tokens
        postings = self.postings
        for at in range(1, len(tokens)):
            if tokens[at] not in _WILD:
                held = postings.setdefault((at, tokens[at]), key)
                if type(held) is set:
                    held.add(key)
                elif held != key:
                    postings[(at, tokens[at])] = {held, key}
        node = self.root
        last = len(tokens) - 1
        for i, tok in enumerate(tokens):
            if i == last and tok == WILDCARD_REST:
                _put(node, "rest", key[1], key)
                return
            nxt = node.children.get(tok)
            if nxt is None:
                nxt = _Node()
                _put(node, "children", tok, nxt)
            node = nxt
        _put(node, "here", key[1], key)

    def discard(self, key: Key) -> None:
        tokens = self.tokens.pop(key, None)
        if tokens is None:
            return
        postings = self.postings
        for at in range(1, len(tokens)):
            posting = (at, tokens[at])
            held = postings.get(posting)
            if type(held) is set:
                held.discard(key)
                if len(held) == 1:
                    postings[posting] = next(iter(held))
            elif held == key:
                del postings[posting]
        path: list[tuple[_Node, str]] = []
        node = self.root
        last = len(tokens) - 1
        for i, tok in enumerate(tokens):
            if i == last and tok == WILDCARD_REST:
                _drop(node, "rest", key[1])
                break
            path.append((node, tok))
            node = node.children[tok]
        else:
            _drop(node, "here", key[1])
        for parent, tok in reversed(path):  # prune what no key needs any more
            child = parent.children[tok]
            if child.children or child.here or child.rest:
                break
            _drop(parent, "children", tok)

    def covering(self, n: tuple[str, ...], key: Key) -> Iterator[Key]:
        """Keys of ``key``'s queue, other than ``key``, whose pattern covers ``n``."""
        queue, size = key[1], len(n)
        system = n[0].startswith("$")
        stack = [(self.root, 0)]
        while stack:
            node, i = stack.pop()
            wild_ok = i > 0 or not system  # a leading wildcard never sees $-names
            if i < size and wild_ok and node.rest:
                found = node.rest.get(queue)  # this prefix + '>': 1+ tokens after it
                if found is not None and found != key:
                    yield found
            if i == size:
                found = node.here.get(queue)
                if found is not None and found != key:
                    yield found
                continue
            tok = n[i]
            if tok == WILDCARD_REST:
                continue  # only '>' covers '>': the rest entries above
            child = node.children.get(tok)
            if child is not None:
                stack.append((child, i + 1))
            if tok != WILDCARD_ONE and wild_ok:
                star = node.children.get(WILDCARD_ONE)
                if star is not None:
                    stack.append((star, i + 1))

    def covered(self, w: tuple[str, ...], key: Key) -> Iterator[Key]:
        """Keys of ``key``'s queue, other than ``key``, whose pattern ``w`` covers.

        From the node its literal prefix leads to, the walk goes on unless a literal
        token after the first wildcard is rarer there: then the keys holding that
        token at that position are checked one by one (``*.orders.42`` looks at the
        few keys with ``42`` third, not at every application's branch)."""
        first = next((i for i, tok in enumerate(w) if tok in _WILD), None)
        if first is None:
            return  # a pattern without wildcards covers only itself
        node: _Node | None = self.root
        for tok in w[:first]:
            node = node.children.get(tok)
            if node is None:
                return
        walk = len(node.children) + 1  # what the walk visits at its first wildcard
        rare = self._rarest(w, first)
        if rare is not None and len(rare) < walk:
            queue, tokens = key[1], self.tokens
            for found in rare:
                if found[1] == queue and found != key and _covers(w, tokens[found]):
                    yield found
            return
        yield from self._walk_covered(node, w, first, key)

    def _rarest(self, w: tuple[str, ...], first: int) -> Collection[Key] | None:
        """The fewest keys that hold one of ``w``'s literal tokens after ``first`` at
        its position (every key ``w`` covers is among them); None if it has none."""
        rare: Collection[Key] | None = None
        for j in range(first + 1, len(w)):
            if w[j] in _WILD:
                continue
            held = self.postings.get((j, w[j]), _NOTHING)
            if type(held) is tuple:
                held = (held,)
            if rare is None or len(held) < len(rare):
                rare = held
        return rare

    def _walk_covered(self, start: _Node, w: tuple[str, ...], depth: int,
                      key: Key) -> Iterator[Key]:
        queue, size = key[1], len(w)
        stack = [(start, depth)]
        while stack:
            node, i = stack.pop()
            if i == size:
                found = node.here.get(queue)
                if found is not None and found != key:
                    yield found
                continue
            tok = w[i]
            if tok == WILDCARD_REST:
                for found in _below(node, queue, skip_system=i == 0):
                    if found != key:
                        yield found
            elif tok == WILDCARD_ONE:
                for t, child in node.children.items():
                    if i or not t.startswith("$"):
                        stack.append((child, i + 1))
            else:
                child = node.children.get(tok)
                if child is not None:
                    stack.append((child, i + 1))


_NOTHING: frozenset = frozenset()


def _below(node: _Node, queue: str | None, skip_system: bool) -> Iterator[Key]:
    """Every key of ``queue`` with at least one token after ``node``'s depth."""
    found = node.rest.get(queue)
    if found is not None:
        yield found
    stack = [child for t, child in node.children.items()
             if not (skip_system and t.startswith("$"))]
    while stack:
        below = stack.pop()
        for entries in (below.here, below.rest):
            found = entries.get(queue)
            if found is not None:
                yield found
        stack.extend(below.children.values())


def minimal_cover(keys: Iterable[Key]) -> set[Key]:
    """The keys not covered by another key with the same queue name.

    Two different patterns never cover each other, so "covered by another" is well
    defined; each key asks the index of all of them for a cover, so the whole costs
    about one walk per key."""
    keys = set(keys)
    index = PatternIndex()
    tokens = {key: split_pattern(key[0]) for key in keys}
    for key, toks in tokens.items():
        index.add(toks, key)
    return {key for key, toks in tokens.items()
            if next(index.covering(toks, key), None) is None}


# -- the table ----------------------------------------------------------------------


def _wanted_by(holders: tuple, link: Hashable) -> bool:
    """Some source other than ``link`` holds the key: ``link``'s side must hear it."""
    return len(holders) > 1 or (len(holders) == 1 and holders[0] != link)


def _is_wild(tokens: tuple[str, ...]) -> bool:
    return WILDCARD_ONE in tokens or tokens[-1] == WILDCARD_REST


class InterestTable:
    """Subscriptions per source, and what has been advertised to each link.

    Invariant, for every link L: ``advertised[L]`` is the minimal cover of the keys
    some source other than L holds ("wanted by L"). Kept incrementally: a key joining
    or leaving L's wanted set is told or withdrawn unless a wider wanted key hides it,
    and a wildcard told or withdrawn hides or reveals only the keys the index says it
    covers."""

    def __init__(self) -> None:
        self.held: dict[Hashable, Counter] = {LOCAL: Counter()}
        self.advertised: dict[Hashable, set[Key]] = {}
        # every key some source holds -> those sources (a tuple: one or two, mostly)
        self._holders: dict[Key, tuple] = {}
        # the same keys, by pattern, while there is a link to tell (a node without
        # links pays nothing for it; the first link builds it from _holders)
        self._index = PatternIndex()

    @property
    def links(self) -> list[Hashable]:
        return list(self.advertised)

    def add_link(self, link: Hashable) -> list[Update]:
        """A new neighbour: everything it must be told (its initial snapshot)."""
        holders, index = self._holders, self._index
        if not self.advertised:
            for key in holders:
                index.add(split_pattern(key[0]), key)
        for key in self.held.setdefault(link, Counter()):
            self._hold(link, key)
        told = self.advertised[link] = set()
        delta: dict = {}
        for key, tokens in index.tokens.items():
            if _wanted_by(holders[key], link) and not any(
                    _wanted_by(holders[w], link) for w in index.covering(tokens, key)):
                told.add(key)
                _note(delta, link, key, True)
        return self._updates(delta)

    def drop_link(self, link: Hashable) -> list[Update]:
        """A neighbour died: withdraw what came through it from everyone else."""
        self.advertised.pop(link, None)
        delta: dict = {}
        for key in self.held.pop(link, Counter()):
            self._lose(link, key, delta)
        if not self.advertised:
            self._index = PatternIndex()  # nobody to tell: see __init__
        return self._updates(delta)

    def add(self, source: Hashable, pattern: str, queue: str | None = None) -> list[Update]:
        tokens = split_pattern(pattern)
        held = self.held.setdefault(source, Counter())
        key = (pattern, queue)
        held[key] += 1
        if held[key] > 1:
            return []
        delta: dict = {}
        self._gain(source, key, delta, tokens)
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
                             if _wanted_by(holders, link))

    def _updates(self, delta: dict) -> list[Update]:
        return _updates_of(delta, self.advertised) if delta else []

    def _hold(self, source: Hashable, key: Key,
              tokens: tuple[str, ...] | None = None) -> tuple:
        """Make ``source`` a holder of ``key``; the holders before it."""
        before = self._holders.get(key)
        if before is None:
            before = ()
            if self.advertised:
                self._index.add(tokens or split_pattern(key[0]), key)
        if source not in before:
            self._holders[key] = (*before, source)
        return before

    # -- the incremental core: each keeps advertised[L] == wanted(L)'s cover for all L

    def _gain(self, source: Hashable, key: Key, delta: dict,
              tokens: tuple[str, ...] | None = None) -> None:
        before = self._hold(source, key, tokens)
        newly = [link for link in self.advertised
                 if link != source and not _wanted_by(before, link)]
        if not newly:
            return  # every link already hears it (or there are none)
        holders, index = self._holders, self._index
        tokens = index.tokens[key]
        wider = list(index.covering(tokens, key))
        narrower: list[Key] | None = None
        for link in newly:  # new to link's side of the tree
            if wider and any(_wanted_by(holders[w], link) for w in wider):
                continue  # hidden by a wider key that link already hears
            told = self.advertised[link]
            told.add(key)
            _note(delta, link, key, True)
            if _is_wild(tokens):
                if narrower is None:
                    narrower = list(index.covered(tokens, key))
                for n in narrower:
                    if n in told:  # now hidden by key
                        told.discard(n)
                        _note(delta, link, n, False)

    def _lose(self, source: Hashable, key: Key, delta: dict) -> None:
        holders, index = self._holders, self._index
        before = holders.get(key)
        if before is None:
            return
        after = tuple(h for h in before if h != source)
        if after:
            holders[key] = after
        if not self.advertised:  # nobody to tell, no index
            if not after:
                del holders[key]
            return
        tokens = index.tokens[key]
        narrower: list[Key] | None = None
        wider_of: dict[Key, list[Key]] = {}
        for link, told in self.advertised.items():
            if link == source or _wanted_by(after, link) or key not in told:
                continue  # still wanted there, or hidden by a wider key anyway
            told.discard(key)  # nobody on link's other sides wants it
            _note(delta, link, key, False)
            if not _is_wild(tokens):
                continue
            if narrower is None:
                narrower = list(index.covered(tokens, key))
            for n in narrower:  # what key hid, unless another wider key still does
                if n in told or not _wanted_by(holders[n], link):
                    continue
                wider = wider_of.get(n)
                if wider is None:
                    wider = wider_of[n] = list(index.covering(index.tokens[n], n))
                if not any(_wanted_by(holders[w], link) for w in wider if w != key):
                    told.add(n)
                    _note(delta, link, n, True)
        if not after:
            del holders[key]
            index.discard(key)


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
