"""The tree of nodes as an immutable value: validation, routes, auto-join, healing. Pure.

Every node keeps a copy of the whole tree (the seed's ``[tree_node.NAME]`` tables), so
each answers locally: who is my parent, which neighbour leads to node X, where does a
joining node go, what does the tree look like once node X is gone. Nothing here reads a
clock, a socket, a file or a random source: nodes that hold the same tree and see the same
event compute the same new tree without asking each other.

Auto-join keeps the tree as short as possible. The *open slot* is the shallowest node with
room, ties broken by fewest children (spreads joiners across parents), then by name. A
contacted node admits the joiner itself if it has room and no node higher up has room;
otherwise it redirects the joiner one hop (up or down) toward the open slot. So joining
nodes one by one to a lone root, through any contacts, always yields a complete tree of the
least height possible for its size N: at most ceil(log_m N) for m = max_children >= 2.

Healing, as the running nodes do it (the rule lives in ``treescale.healing``): when a
node dies its children re-attach to the dead node's parent, their nearest live ancestor;
once that parent is full, at the open slot of the parent's subtree. Each orphan carries
its own subtree along unchanged. When the root dies its child with the smallest name
(``healing.heir``) becomes root and the other orphans re-attach under it the same way.
Live orphans race for the free slots; this model lets them in by name, so it is one
outcome the nodes can reach, and the same on every node that computes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from treescale.healing import heir

DEFAULT_MAX_CHILDREN = 10


class TreeError(ValueError):
    """A tree problem, phrased as one readable line naming the node(s)."""

    code = "bad_tree"


def check_name(name: object) -> str:
    """``name`` if it is a valid node name (non-empty, no dots, no white space)."""
    if (not isinstance(name, str) or not name or "." in name
            or any(c.isspace() for c in name)):
        raise TreeError(f"node name {name!r} must be non-empty without dots or white space")
    return name


@dataclass(frozen=True)
class NodeSpec:
    """One node: where it listens, what it is, and which nodes hang off it."""

    name: str
    host: str
    port: int
    groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    children: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Lists are accepted for convenience but stored as tuples: specs stay hashable.
        for f in ("groups", "tags", "children"):
            if isinstance(getattr(self, f), list):
                object.__setattr__(self, f, tuple(getattr(self, f)))

    @property
    def address(self) -> str:
        return f"tcp://{self.host}:{self.port}"


@dataclass(frozen=True)
class Placement:
    """Where a joiner goes: ``parent``, reached via ``hops`` (contact first, parent last)."""

    parent: str
    hops: tuple[str, ...]


def _check_spec(spec: object) -> NodeSpec:
    if not isinstance(spec, NodeSpec):
        raise TreeError(f"not a NodeSpec: {spec!r}")
    n = check_name(spec.name)
    if not isinstance(spec.host, str) or not spec.host or any(c.isspace() for c in spec.host):
        raise TreeError(f"node {n}: host {spec.host!r} must be a non-empty string")
    port = spec.port
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise TreeError(f"node {n}: port {port!r} must be an integer in 1..65535")
    for f in ("groups", "tags", "children"):
        value = getattr(spec, f)
        if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
            raise TreeError(f"node {n}: {f} must be a tuple of non-empty strings")
    return spec


def _open_slot(anchor: str, children: Mapping[str, Any], max_children: int) -> str:
    """The shallowest node with room under ``anchor`` (itself included).

    Ties: fewest children, then smallest name. Always exists: leaves have room.
    """
    level = [anchor]
    while level:
        room = [n for n in level if len(children[n]) < max_children]
        if room:
            return min(room, key=lambda n: (len(children[n]), n))
        level = [c for n in level for c in children[n]]
    raise AssertionError("a finite tree has leaves")  # pragma: no cover


class Tree:
    """A validated tree of NodeSpecs. Immutable: changes return new Trees."""

    __slots__ = ("_specs", "_parent", "_depth", "_size", "_index", "_order", "_root",
                 "_max_children")

    @classmethod
    def from_specs(cls, specs: Iterable[NodeSpec],
                   max_children: int = DEFAULT_MAX_CHILDREN) -> Tree:
        """Validate ``specs`` as one tree; TreeError names the first problem found."""
        return cls._build(specs, max_children, {})

    @classmethod
    def _build(cls, specs: Iterable[NodeSpec], max_children: int,
               trusted: Mapping[str, NodeSpec]) -> Tree:
        # ``trusted``: specs of an already valid tree; only new ones need their fields
        # checked (keeps a join O(N) with a small constant). The shape is always checked.
        if (not isinstance(max_children, int) or isinstance(max_children, bool)
                or max_children < 1):
            raise TreeError(f"max_children must be a positive integer, got {max_children!r}")
        by_name: dict[str, NodeSpec] = {}
        for spec in specs:
            if not (isinstance(spec, NodeSpec) and trusted.get(spec.name) is spec):
                _check_spec(spec)
            if spec.name in by_name:
                raise TreeError(f"duplicate node name: {spec.name}")
            by_name[spec.name] = spec
        if not by_name:
            raise TreeError("the tree has no nodes")
        parent: dict[str, str | None] = dict.fromkeys(by_name)
        address: dict[str, str] = {}
        for n, spec in by_name.items():
            seen: set[str] = set()
            for c in spec.children:
                if c in seen:
                    raise TreeError(f"node {n} lists child {c} twice")
                seen.add(c)
                if c not in by_name:
                    raise TreeError(f"node {n} has unknown child {c}")
                if parent[c] is not None:
                    a, b = sorted((parent[c], n))
                    raise TreeError(f"node {c} has two parents: {a} and {b}")
                parent[c] = n
            if len(spec.children) > max_children:
                raise TreeError(f"node {n} has {len(spec.children)} children, more than "
                                f"max_children={max_children}")
            other = address.setdefault(spec.address, n)
            if other != n:
                raise TreeError(f"nodes {other} and {n} both use {spec.address}")
        # Each node has at most one parent, so following parents from any node either
        # reaches a root or loops: a loop is a cycle, reported parent -> child.
        walk_of: dict[str, int] = {}
        for i, start in enumerate(sorted(by_name)):
            x: str | None = start
            while x is not None and x not in walk_of:
                walk_of[x] = i
                x = parent[x]
            if x is not None and walk_of[x] == i:
                loop = [x]
                while (y := parent[loop[-1]]) != x:
                    loop.append(y)
                loop.reverse()
                k = loop.index(min(loop))
                loop = loop[k:] + loop[:k]
                raise TreeError("cycle: " + " -> ".join([*loop, loop[0]]))
        orders = {r: _preorder(r, by_name) for r, p in parent.items() if p is None}
        root = min(orders, key=lambda r: (-len(orders[r]), r))
        if len(orders) > 1:
            stray = sorted(set(by_name) - set(orders[root]))
            raise TreeError(f"nodes not reachable from root {root}: {', '.join(stray)}")
        return cls._make(by_name, parent, orders[root], max_children)

    @classmethod
    def _make(cls, by_name: dict[str, NodeSpec], parent: dict[str, str | None],
              order: list[str], max_children: int) -> Tree:
        t = object.__new__(cls)
        t._order = tuple(order)
        t._specs = {n: by_name[n] for n in order}
        t._parent = parent
        t._root = order[0]
        t._index = {n: i for i, n in enumerate(order)}
        t._depth = {}
        for n in order:  # preorder: a parent's depth is known before its children's
            p = parent[n]
            t._depth[n] = 0 if p is None else t._depth[p] + 1
        t._size = dict.fromkeys(order, 1)
        for n in reversed(order):
            if (p := parent[n]) is not None:
                t._size[p] += t._size[n]
        t._max_children = max_children
        return t

    @classmethod
    def from_seed(cls, raw: Mapping[str, Any],
                  max_children: int = DEFAULT_MAX_CHILDREN) -> Tree:
        """The tree in a parsed seed file: ``{"tree_node": {NAME: {...}, ...}}``."""
        nodes = raw.get("tree_node") if isinstance(raw, Mapping) else None
        if not isinstance(nodes, Mapping):
            raise TreeError("a seed must hold a tree_node table of nodes")
        return cls.from_specs((_spec_from_seed(k, v) for k, v in nodes.items()), max_children)

    def to_seed(self) -> dict:
        """The seed-format dict of this tree; ``Tree.from_seed`` reads it back."""
        return {"tree_node": {n: {"name": n, "tree_port": s.port, "tree_ip": s.host,
                                  "tags": list(s.tags), "groups": list(s.groups),
                                  "childs": list(s.children)}
                              for n, s in self._specs.items()}}

    # -- the value ------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tree):
            return NotImplemented
        return self._max_children == other._max_children and self._specs == other._specs

    def __hash__(self) -> int:
        return hash((self._max_children, frozenset(self._specs.values())))

    def __repr__(self) -> str:
        return (f"Tree(root={self._root!r}, nodes={len(self._order)}, "
                f"max_children={self._max_children})")

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    # -- queries ------------------------------------------------------------------------

    @property
    def root(self) -> str:
        return self._root

    @property
    def max_children(self) -> int:
        return self._max_children

    @property
    def names(self) -> tuple[str, ...]:
        """All nodes, root first, in preorder (children in their listed order)."""
        return self._order

    @property
    def height(self) -> int:
        """Edges on the longest root-to-leaf path (a lone root has height 0)."""
        return max(self._depth.values())

    def _need(self, name: str) -> str:
        if name not in self._specs:
            raise TreeError(f"unknown node: {name}")
        return name

    def spec(self, name: str) -> NodeSpec:
        return self._specs[self._need(name)]

    def parent(self, name: str) -> str | None:
        return self._parent[self._need(name)]

    def children(self, name: str) -> tuple[str, ...]:
        return self._specs[self._need(name)].children

    def free_slots(self, name: str) -> int:
        return self._max_children - len(self.children(name))

    def ancestors(self, name: str) -> tuple[str, ...]:
        """Parent first, root last."""
        out = []
        p = self.parent(name)
        while p is not None:
            out.append(p)
            p = self._parent[p]
        return tuple(out)

    def descendants(self, name: str) -> tuple[str, ...]:
        """The subtree below ``name`` in preorder, without ``name`` itself."""
        i = self._index[self._need(name)]
        return self._order[i + 1:i + self._size[name]]

    def depth(self, name: str) -> int:
        return self._depth[self._need(name)]

    def subtree_size(self, name: str) -> int:
        """Nodes in the subtree rooted at ``name``, itself included."""
        return self._size[self._need(name)]

    def path(self, a: str, b: str) -> list[str]:
        """The tree path from ``a`` to ``b``, both included, through their lowest common
        ancestor."""
        self._need(a)
        self._need(b)
        up, down = [a], [b]
        while self._depth[up[-1]] > self._depth[down[-1]]:
            up.append(self._parent[up[-1]])
        while self._depth[down[-1]] > self._depth[up[-1]]:
            down.append(self._parent[down[-1]])
        while up[-1] != down[-1]:
            up.append(self._parent[up[-1]])
            down.append(self._parent[down[-1]])
        return up + down[-2::-1]

    def next_hop(self, frm: str, to: str) -> str:
        """The neighbour of ``frm`` on the path to ``to``: a child if ``to`` lies below
        ``frm``, its parent otherwise."""
        self._need(frm)
        self._need(to)
        if frm == to:
            raise TreeError(f"no next hop from {frm} to itself")
        x, d = to, self._depth[frm] + 1
        while self._depth[x] > d:
            x = self._parent[x]
        if self._depth[x] == d and self._parent[x] == frm:
            return x
        return self._parent[frm]

    def nodes_in_group(self, group: str) -> tuple[str, ...]:
        return tuple(n for n in self._order if group in self._specs[n].groups)

    def nodes_with_tag(self, tag: str) -> tuple[str, ...]:
        return tuple(n for n in self._order if tag in self._specs[n].tags)

    # -- joining ------------------------------------------------------------------------

    def place(self, joiner: str, contact: str) -> Placement:
        """Where ``joiner``, knocking at ``contact``, is admitted, and the redirect chain.

        Each node asked admits the joiner if it has room and no shallower node has room
        (so admitting cannot make the tree taller than needed); otherwise it redirects one
        hop toward the tree's open slot. The chain ends at the open slot at the latest.
        """
        check_name(joiner)
        if joiner in self._specs:
            raise TreeError(f"node {joiner} already exists")
        self._need(contact)
        children = {n: s.children for n, s in self._specs.items()}
        target = _open_slot(self._root, children, self._max_children)
        hops: list[str] = []
        for n in self.path(contact, target):
            hops.append(n)
            if self.free_slots(n) and self._depth[n] == self._depth[target]:
                break
        return Placement(hops[-1], tuple(hops))

    def with_node(self, spec: NodeSpec, parent: str) -> Tree:
        """This tree with ``spec`` added as the last child of ``parent``."""
        self._need(parent)
        _check_spec(spec)
        if spec.name in self._specs:
            raise TreeError(f"node {spec.name} already exists")
        if spec.children:
            raise TreeError(f"node {spec.name} must join without children "
                            f"(has {', '.join(spec.children)})")
        if not self.free_slots(parent):
            raise TreeError(f"node {parent} is full ({self._max_children} children); "
                            f"cannot add {spec.name}")
        specs = dict(self._specs)
        specs[parent] = replace(specs[parent], children=specs[parent].children + (spec.name,))
        specs[spec.name] = spec
        return Tree._build(specs.values(), self._max_children, self._specs)

    # -- failures -----------------------------------------------------------------------

    def successor_of_root(self) -> str:
        """The root's heir: its child with the smallest name (``healing.heir``)."""
        kids = self.children(self._root)
        if not kids:
            raise TreeError(f"root {self._root} has no children to take over")
        return heir(list(kids))

    def without(self, dead: str) -> Tree:
        """This tree once ``dead`` is gone, its orphans re-attached (see the module doc)."""
        self._need(dead)
        if len(self._order) == 1:
            raise TreeError(f"cannot remove {dead}: it is the last node")
        orphans = sorted(self.children(dead))  # the heir (smallest name) first
        children = {n: list(s.children) for n, s in self._specs.items() if n != dead}
        anchor = self._parent[dead]
        if anchor is None:
            anchor, orphans = orphans[0], orphans[1:]
        else:
            children[anchor].remove(dead)
        # Orphans not yet re-attached are unlinked, so the search never enters them.
        for orphan in orphans:
            children[_open_slot(anchor, children, self._max_children)].append(orphan)
        kept = {n: tuple(kids) for n, kids in children.items()}
        specs = (s if kept[n] == s.children else replace(s, children=kept[n])
                 for n, s in self._specs.items() if n != dead)
        return Tree._build(specs, self._max_children, self._specs)


def _preorder(root: str, by_name: Mapping[str, NodeSpec]) -> list[str]:
    out, stack = [], [root]
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(reversed(by_name[n].children))
    return out


def _spec_from_seed(key: object, table: object) -> NodeSpec:
    where = f"tree_node.{key}"
    if not isinstance(table, Mapping):
        raise TreeError(f"{where} must be a table")
    try:
        name = check_name(table.get("name", key))
    except TreeError as exc:
        raise TreeError(f"{where}: {exc}") from None
    for k in ("tree_ip", "tree_port"):
        if k not in table:
            raise TreeError(f"{where}: {k} is missing")
    port = table["tree_port"]
    if isinstance(port, str) and port.isascii() and port.isdigit():
        port = int(port)  # the seed writes ports as strings
    if not isinstance(port, int) or isinstance(port, bool):
        raise TreeError(f"{where}: tree_port must be an integer, got {port!r}")
    if "childs" in table and "children" in table:
        raise TreeError(f"{where}: give childs or children, not both")
    lists = {}
    for field, keys in (("tags", ("tags",)), ("groups", ("groups",)),
                        ("children", ("childs", "children"))):
        value = next((table[k] for k in keys if k in table), [])
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise TreeError(f"{where}: {keys[0]} must be a list of strings")
        lists[field] = tuple(value)
    return NodeSpec(name, table["tree_ip"], port, **lists)
