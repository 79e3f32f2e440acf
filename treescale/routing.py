"""Subscriptions and the compiled routing table. Pure: no sockets, no clock.

A *member* is anything a node delivers to: a client today, a tree link later. Members
subscribe to *patterns*: dot-separated tokens where ``*`` matches exactly one token and
a final ``>`` matches one or more trailing tokens (NATS semantics).

Routing semantics:

* mode ``all``: every member with at least one matching subscription gets the event
  once, whatever its queue names.
* mode ``one``: matching subscriptions are grouped by queue name (subscriptions without
  a queue form one group of their own); each group gets the event exactly once, at a
  member picked round-robin.
* a *target* narrows the members first: ``node:NAME`` (members of that node),
  ``group:G``, ``tag:T`` (the member's or this node's groups/tags), ``channel:C``.
* names whose first token starts with ``$`` (``$sys.…``, ``$inbox.…``) are matched only
  by patterns that spell that first token out: ``>`` does not see them.

``lookup`` results are cached per ``(name, target)``; the cache is dropped whenever
the generation counter moves (a subscription or member changed).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

WILDCARD_ONE = "*"
WILDCARD_REST = ">"
TARGET_KINDS = ("node", "group", "tag", "channel")


class PatternError(ValueError):
    """An invalid subscription pattern or event name."""

    code = "bad_pattern"


class TargetError(ValueError):
    """An invalid target string."""

    code = "bad_target"


def split_pattern(pattern: str) -> tuple[str, ...]:
    """The tokens of a subscription pattern, or PatternError saying what is wrong."""
    if not isinstance(pattern, str) or not pattern:
        raise PatternError("pattern must be a non-empty string")
    tokens = tuple(pattern.split("."))
    for i, tok in enumerate(tokens):
        if not tok:
            raise PatternError(f"pattern {pattern!r} has an empty token")
        if tok == WILDCARD_REST:
            if i != len(tokens) - 1:
                raise PatternError(f"pattern {pattern!r}: '>' must be the last token")
        elif tok != WILDCARD_ONE and ("*" in tok or ">" in tok):
            raise PatternError(
                f"pattern {pattern!r}: wildcards must be whole tokens ({tok!r})")
        if any(c.isspace() for c in tok):
            raise PatternError(f"pattern {pattern!r} contains white space")
    return tokens


def split_name(name: str) -> tuple[str, ...]:
    """The tokens of an event name (no wildcards allowed), or PatternError."""
    if not isinstance(name, str) or not name:
        raise PatternError("event name must be a non-empty string")
    tokens = tuple(name.split("."))
    for tok in tokens:
        if not tok:
            raise PatternError(f"event name {name!r} has an empty token")
        if "*" in tok or ">" in tok:
            raise PatternError(f"event name {name!r} must not contain wildcards")
        if any(c.isspace() for c in tok):
            raise PatternError(f"event name {name!r} contains white space")
    return tokens


def parse_target(target: str | None) -> tuple[str, str] | None:
    """``"group:web"`` -> ``("group", "web")``; None stays None."""
    if target is None:
        return None
    kind, sep, value = target.partition(":")
    if not sep or kind not in TARGET_KINDS or not value:
        raise TargetError(
            f"target {target!r} must be node:NAME, group:G, tag:T or channel:C")
    return kind, value


@dataclass(frozen=True, slots=True)
class Route:
    """Where an event goes: ``everyone`` for mode all, ``groups`` for mode one."""

    everyone: tuple
    groups: tuple  # ((queue_key, (member, ...)), ...)


NO_ROUTE = Route((), ())


@dataclass(slots=True)
class Member:
    id: Hashable
    groups: frozenset = frozenset()
    tags: frozenset = frozenset()
    channels: frozenset = frozenset()
    subs: set = field(default_factory=set)  # {(pattern, queue)}
    # A tree link: targets are judged by the nodes beyond it, so it admits them all
    # (its interest still decides whether an event crosses).
    link: bool = False


class _TrieNode:
    __slots__ = ("children", "star", "rest", "here")

    def __init__(self) -> None:
        self.children: dict[str, _TrieNode] = {}
        self.star: _TrieNode | None = None
        self.rest: dict[tuple, int] = {}  # subscriptions ending in '>' at this level
        self.here: dict[tuple, int] = {}  # subscriptions ending exactly here


class RoutingTable:
    """Members, their subscriptions, and a compiled (cached) lookup."""

    def __init__(self, node_name: str, node_groups: Iterable[str] = (),
                 node_tags: Iterable[str] = (), cache_size: int = 100_000) -> None:
        self.node_name = node_name
        self.node_groups = frozenset(node_groups)
        self.node_tags = frozenset(node_tags)
        self.members: dict[Hashable, Member] = {}
        self.generation = 0
        # The hot path reads ``cache`` directly: ``cache.get((name, target))``.
        self.cache: dict[tuple, Route] = {}
        self._cache_size = cache_size
        self._root = _TrieNode()
        self._rr: dict[Hashable, int] = {}

    # ----------------------------------------------------------------- membership

    def add_member(self, mid: Hashable, groups: Iterable[str] = (),
                   tags: Iterable[str] = (), channels: Iterable[str] = (),
                   link: bool = False) -> Member:
        if mid in self.members:
            self.remove_member(mid)
        m = Member(mid, frozenset(groups), frozenset(tags), frozenset(channels),
                   link=link)
        self.members[mid] = m
        self._changed()
        return m

    def remove_member(self, mid: Hashable) -> None:
        m = self.members.pop(mid, None)
        if m is None:
            return
        for pattern, queue in list(m.subs):
            self._trie_remove(split_pattern(pattern), (mid, queue))
        self._changed()

    def subscribe(self, mid: Hashable, pattern: str, queue: str | None = None) -> bool:
        """Add a subscription; False if the member already had it."""
        tokens = split_pattern(pattern)
        m = self.members[mid]
        if (pattern, queue) in m.subs:
            return False
        m.subs.add((pattern, queue))
        node = self._root
        for i, tok in enumerate(tokens):
            if tok == WILDCARD_REST and i == len(tokens) - 1:
                node.rest[(mid, queue)] = 1
                break
            if tok == WILDCARD_ONE:
                if node.star is None:
                    node.star = _TrieNode()
                node = node.star
            else:
                node = node.children.setdefault(tok, _TrieNode())
        else:
            node.here[(mid, queue)] = 1
        self._changed()
        return True

    def unsubscribe(self, mid: Hashable, pattern: str, queue: str | None = None) -> bool:
        """Remove a subscription; False if the member did not have it."""
        m = self.members.get(mid)
        if m is None or (pattern, queue) not in m.subs:
            return False
        m.subs.discard((pattern, queue))
        self._trie_remove(split_pattern(pattern), (mid, queue))
        self._changed()
        return True

    def subscription_count(self) -> int:
        return sum(len(m.subs) for m in self.members.values())

    def _trie_remove(self, tokens: tuple[str, ...], key: tuple) -> None:
        path = []
        node = self._root
        for i, tok in enumerate(tokens):
            if tok == WILDCARD_REST and i == len(tokens) - 1:
                node.rest.pop(key, None)
                break
            path.append((node, tok))
            nxt = node.star if tok == WILDCARD_ONE else node.children.get(tok)
            if nxt is None:
                return
            node = nxt
        else:
            node.here.pop(key, None)
        # prune empty branches so the trie does not grow without bound
        for parent, tok in reversed(path):
            child = parent.star if tok == WILDCARD_ONE else parent.children.get(tok)
            if child is None or child.children or child.star or child.rest or child.here:
                break
            if tok == WILDCARD_ONE:
                parent.star = None
            else:
                del parent.children[tok]

    def _changed(self) -> None:
        self.generation += 1
        self.cache.clear()

    # -------------------------------------------------------------------- lookup

    def matching(self, name: str) -> set[tuple]:
        """Every ``(member, queue)`` subscription matching ``name`` (validated)."""
        tokens = split_name(name)
        found: set[tuple] = set()
        self._collect(self._root, tokens, 0, found)
        return found

    def _collect(self, node: _TrieNode, tokens: tuple[str, ...], i: int,
                 found: set) -> None:
        if i == 0 and tokens[0].startswith("$"):
            # System names ($sys, $inbox) are never caught by a leading wildcard: a
            # subscriber must name them (the MQTT rule).
            child = node.children.get(tokens[0])
            if child is not None:
                self._collect(child, tokens, 1, found)
            return
        if node.rest and i < len(tokens):
            found.update(node.rest)
        if i == len(tokens):
            found.update(node.here)
            return
        child = node.children.get(tokens[i])
        if child is not None:
            self._collect(child, tokens, i + 1, found)
        if node.star is not None:
            self._collect(node.star, tokens, i + 1, found)

    def _admits(self, member: Member, target: tuple[str, str] | None) -> bool:
        if target is None or member.link:
            return True
        kind, value = target
        if kind == "node":
            return value == self.node_name
        if kind == "group":
            return value in member.groups or value in self.node_groups
        if kind == "tag":
            return value in member.tags or value in self.node_tags
        return value in member.channels

    def lookup(self, name: str, target: str | None = None) -> Route:
        """The compiled route of ``(name, target)``; raises PatternError/TargetError."""
        key = (name, target)
        route = self.cache.get(key)
        if route is not None:
            return route
        parsed = parse_target(target)
        subs = self.matching(name)
        members = self.members
        everyone: dict = {}
        groups: dict[str | None, list] = {}
        for mid, queue in subs:
            if not self._admits(members[mid], parsed):
                continue
            everyone[mid] = None
            groups.setdefault(queue, []).append(mid)
        if not everyone:
            route = NO_ROUTE
        else:
            route = Route(
                tuple(sorted(everyone, key=repr)),
                tuple((q, tuple(sorted(set(ms), key=repr)))
                      for q, ms in sorted(groups.items(), key=lambda kv: kv[0] or "")))
        if len(self.cache) >= self._cache_size:
            self.cache.clear()
        self.cache[key] = route
        return route

    def pick(self, route: Route, exclude: Hashable = None) -> tuple:
        """Members that get a mode-``one`` event: one per queue group, round-robin.

        ``exclude`` is the link an event came in on: it never goes back there.
        """
        return tuple(dict.fromkeys(m for m, _ in self.pick_groups(route, exclude)))

    def pick_groups(self, route: Route, exclude: Hashable = None,
                    queues: Iterable | None = None) -> list[tuple]:
        """``(member, queue)`` chosen for each queue group of a mode-``one`` route,
        limited to ``queues`` when an upstream node already chose for the others."""
        chosen = []
        rr = self._rr
        if len(rr) >= self._cache_size:
            rr.clear()
        for group in route.groups:
            if queues is not None and group[0] not in queues:
                continue
            members = group[1]
            if exclude is not None and exclude in members:
                members = tuple(m for m in members if m != exclude)
                if not members:
                    continue
                group = (group[0], members)
            # One counter per (queue, members): routes that share the same members
            # share the turn; a narrower route cannot starve a member of a wider one.
            n = rr.get(group, 0)
            rr[group] = n + 1
            chosen.append((members[n % len(members)], group[0]))
        return chosen

    def destinations(self, name: str, target: str | None = None, mode: int = 0) -> tuple:
        """Members that get an event (applies round-robin for mode one)."""
        route = self.lookup(name, target)
        return route.everyone if mode == 0 else self.pick(route)
