"""Tests for treescale.tree: validation messages, seed files, routes, auto-join, healing.

Routes are checked against a brute-force BFS over the undirected tree; every tree a
property test produces is re-checked by ``assert_valid``, which reads only the specs (not
the Tree's own parent/depth bookkeeping).
"""

from __future__ import annotations

import re
import tomllib
from collections import deque
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from treescale.tree import NodeSpec, Placement, Tree, TreeError

REPO = Path(__file__).resolve().parents[2]

# Deterministic and quick: fixed seed, no example database, no deadline, no explain phase.
FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def tree_of(shape: dict[str, list[str]], m: int = 10, **extra) -> Tree:
    """A tree from ``{parent: [children]}``; ports follow the sorted names."""
    names = sorted(set(shape) | {c for kids in shape.values() for c in kids})
    return Tree.from_specs([NodeSpec(n, "127.0.0.1", 9000 + i, children=tuple(shape.get(n, ())),
                                     **extra.get(n, {}))
                            for i, n in enumerate(names)], m)


def optimal_height(n: int, m: int) -> int:
    """The least height of a tree of ``n`` nodes with at most ``m`` children each."""
    h, capacity, level = 0, 1, 1
    while capacity < n:
        level *= m
        capacity += level
        h += 1
    return h


def ceil_log(n: int, m: int) -> int:
    """ceil(log_m n) in integers."""
    k = 0
    while m ** k < n:
        k += 1
    return k


def assert_valid(t: Tree) -> None:
    """One tree, from the specs alone: one parent each, one root, all reachable, fan-out."""
    parent: dict[str, str] = {}
    for n in t.names:
        kids = t.spec(n).children
        assert len(kids) <= t.max_children
        for c in kids:
            assert c in t and c not in parent, f"{c} has two parents"
            parent[c] = n
    roots = [n for n in t.names if n not in parent]
    assert roots == [t.root]
    seen, queue = {t.root}, deque([t.root])
    while queue:
        for c in t.spec(queue.popleft()).children:
            assert c not in seen, "cycle"
            seen.add(c)
            queue.append(c)
    assert seen == set(t.names)
    assert Tree.from_specs([t.spec(n) for n in t.names], t.max_children) == t


def bfs_path(t: Tree, a: str, b: str) -> list[str]:
    adj: dict[str, set[str]] = {n: set() for n in t.names}
    for n in t.names:
        for c in t.spec(n).children:
            adj[n].add(c)
            adj[c].add(n)
    prev: dict[str, str | None] = {a: None}
    queue = deque([a])
    while queue:
        x = queue.popleft()
        for y in sorted(adj[x]):
            if y not in prev:
                prev[y] = x
                queue.append(y)
    out: list[str] = []
    x: str | None = b
    while x is not None:
        out.append(x)
        x = prev[x]
    return out[::-1]


@st.composite
def trees(draw, max_nodes: int = 40, max_children: int | None = None) -> Tree:
    """Random trees; names are shuffled so the root is not always the smallest name."""
    m = max_children or draw(st.integers(2, 10))
    n = draw(st.integers(1, max_nodes))
    names = draw(st.permutations([f"n{i}" for i in range(n)]))
    kids: dict[str, list[str]] = {name: [] for name in names}
    for i in range(1, n):
        room = [p for p in names[:i] if len(kids[p]) < m]
        kids[room[draw(st.integers(0, len(room) - 1))]].append(names[i])
    labels = st.lists(st.sampled_from(["x", "y", "z"]), unique=True, max_size=2).map(tuple)
    specs = [NodeSpec(name, "10.0.0.1", 7000 + i, groups=draw(labels), tags=draw(labels),
                      children=tuple(kids[name])) for i, name in enumerate(names)]
    return Tree.from_specs(specs, m)


def spec(name: str, *children: str, port: int = 9000, host: str = "127.0.0.1") -> NodeSpec:
    return NodeSpec(name, host, port, children=children)


# -- validation -----------------------------------------------------------------------------

INVALID = {
    "duplicate": ([spec("a"), spec("a", port=1)], "duplicate node name: a"),
    "unknown child": ([spec("a", "x")], "node a has unknown child x"),
    "child twice": ([spec("a", "b", "b"), spec("b", port=1)], "node a lists child b twice"),
    "two parents": ([spec("r", "b", "c"), spec("b", "d", port=1), spec("c", "d", port=2),
                     spec("d", port=3)], "node d has two parents: b and c"),
    "self cycle": ([spec("a", "a")], "cycle: a -> a"),
    "cycle": ([spec("r", port=1), spec("b", "a", port=2), spec("a", "b")],
              "cycle: a -> b -> a"),
    "long cycle": ([spec("c", "a", port=1), spec("b", "c", port=2), spec("a", "b")],
                   "cycle: a -> b -> c -> a"),
    "two roots": ([spec("r", "a", "b"), spec("a", port=1), spec("b", port=2),
                   spec("x", "y", port=3), spec("y", port=4)],
                  "nodes not reachable from root r: x, y"),
    "root tie": ([spec("s"), spec("r", port=1)], "nodes not reachable from root r: s"),
    "too many children": ([spec("a", "b", "c", "d"), spec("b", port=1), spec("c", port=2),
                           spec("d", port=3)], "node a has 3 children, more than max_children=2"),
    "same address": ([spec("a", "b"), spec("b")], "nodes a and b both use tcp://127.0.0.1:9000"),
    "empty name": ([spec("")], "node name '' must be non-empty without dots or white space"),
    "dotted name": ([spec("a.b")], "node name 'a.b' must be non-empty"),
    "spaced name": ([spec("a b")], "node name 'a b' must be non-empty"),
    "tab in name": ([spec("a\tb")], "node name 'a\\tb' must be non-empty"),
    "no nodes": ([], "the tree has no nodes"),
    "port zero": ([spec("a", port=0)], "node a: port 0 must be an integer in 1..65535"),
    "port too big": ([spec("a", port=65536)], "node a: port 65536 must be an integer"),
    "port as text": ([spec("a", port="80")], "node a: port '80' must be an integer"),
    "empty host": ([spec("a", host="")], "node a: host '' must be a non-empty string"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_trees_name_the_problem(case):
    specs, message = INVALID[case]
    with pytest.raises(TreeError, match="^" + re.escape(message)) as err:
        Tree.from_specs(specs, max_children=2)
    assert "\n" not in str(err.value)


def test_max_children_must_be_positive():
    with pytest.raises(TreeError, match="max_children must be a positive integer, got 0"):
        Tree.from_specs([spec("a")], 0)


def test_other_operations_name_the_problem():
    t = tree_of({"r": ["a", "b"], "a": ["c"]}, m=2)
    cases = [
        (lambda: t.parent("zz"), "unknown node: zz"),
        (lambda: t.next_hop("a", "a"), "no next hop from a to itself"),
        (lambda: t.place("a", "r"), "node a already exists"),
        (lambda: t.place("x.y", "r"), "node name 'x.y' must be"),
        (lambda: t.place("x", "zz"), "unknown node: zz"),
        (lambda: t.with_node(spec("x", port=1), "r"), "node r is full (2 children); cannot add x"),
        (lambda: t.with_node(spec("c", port=1), "b"), "node c already exists"),
        (lambda: t.with_node(spec("x", "c", port=1), "b"), "node x must join without children"),
        (lambda: t.with_node(spec("x", port=9000), "b"), "nodes a and x both use"),
        (lambda: t.with_node(spec("x", port=1), "zz"), "unknown node: zz"),
        (lambda: tree_of({"solo": []}).without("solo"), "cannot remove solo: it is the last"),
        (lambda: tree_of({"solo": []}).successor_of_root(), "root solo has no children"),
    ]
    for call, message in cases:
        with pytest.raises(TreeError, match="^" + re.escape(message)):
            call()


# -- seed files -----------------------------------------------------------------------------

def load_repo_seed() -> dict:
    with open(REPO / "configs" / "tree.toml", "rb") as f:
        return tomllib.load(f)


def test_repo_seed_loads_and_round_trips():
    raw = load_repo_seed()
    t = Tree.from_seed(raw)
    assert t.root == "tree1" and len(t) == 7 and t.height == 2
    assert t.children("tree4") == ("tree5", "tree6", "tree7")
    assert t.spec("tree3").address == "tcp://127.0.0.1:8890"
    assert t.nodes_in_group("frontend") == ("tree5", "tree6")
    assert t.nodes_with_tag("edge") == ("tree4", "tree5")
    assert t.path("tree3", "tree7") == ["tree3", "tree2", "tree1", "tree4", "tree7"]
    # the tree model keeps the topology; node options (exec_enabled, ...) are the
    # node config's business and are not part of the round trip
    seed_keys = {"name", "tree_port", "tree_ip", "tags", "groups", "childs"}
    topology = {"tree_node": {name: {k: v for k, v in spec.items() if k in seed_keys}
                              for name, spec in raw["tree_node"].items()}}
    assert t.to_seed() == topology
    assert Tree.from_seed(t.to_seed()) == t


def test_seed_accepts_string_ports_and_missing_lists():
    raw = {"tree_node": {"a": {"name": "a", "tree_port": "8888", "tree_ip": "h",
                               "childs": ["b"]},
                         "b": {"tree_port": 8889, "tree_ip": "h", "children": []}}}
    t = Tree.from_seed(raw)
    assert t.spec("a") == NodeSpec("a", "h", 8888, children=("b",))
    assert t.spec("b") == NodeSpec("b", "h", 8889)


@pytest.mark.parametrize("raw, message", [
    ({}, "a seed must hold a tree_node table of nodes"),
    ({"tree_node": {"a": 3}}, "tree_node.a must be a table"),
    ({"tree_node": {"a": {"tree_ip": "h"}}}, "tree_node.a: tree_port is missing"),
    ({"tree_node": {"a": {"tree_port": 1}}}, "tree_node.a: tree_ip is missing"),
    ({"tree_node": {"a": {"tree_ip": "h", "tree_port": "8o"}}},
     "tree_node.a: tree_port must be an integer, got '8o'"),
    ({"tree_node": {"a": {"tree_ip": "h", "tree_port": "\u00b2"}}},
     "tree_node.a: tree_port must be an integer"),
    ({"tree_node": {"a": {"tree_ip": "h", "tree_port": 1, "tags": "edge"}}},
     "tree_node.a: tags must be a list of strings"),
    ({"tree_node": {"a": {"tree_ip": "h", "tree_port": 1, "childs": [], "children": []}}},
     "tree_node.a: give childs or children, not both"),
    ({"tree_node": {"a": {"name": "a b", "tree_ip": "h", "tree_port": 1}}},
     "tree_node.a: node name 'a b' must be"),
    ({"tree_node": {"a": {"tree_ip": "h", "tree_port": 1, "childs": ["b"]}}},
     "node a has unknown child b"),
])
def test_bad_seeds_name_the_problem(raw, message):
    with pytest.raises(TreeError, match="^" + re.escape(message)):
        Tree.from_seed(raw)


@FAST
@given(trees())
def test_seed_round_trip(t):
    seed = t.to_seed()
    assert Tree.from_seed(seed, t.max_children) == t
    for table in seed["tree_node"].values():  # the seed also writes ports as strings
        table["tree_port"] = str(table["tree_port"])
    assert Tree.from_seed(seed, t.max_children) == t


# -- routes ---------------------------------------------------------------------------------

def test_routes_on_a_hand_built_tree():
    t = tree_of({"r": ["a", "b"], "a": ["c", "d"], "d": ["e"], "b": ["f"]})
    assert t.root == "r" and t.parent("r") is None and t.parent("e") == "d"
    assert t.names == ("r", "a", "c", "d", "e", "b", "f")
    assert t.ancestors("e") == ("d", "a", "r") and t.ancestors("r") == ()
    assert t.descendants("a") == ("c", "d", "e") and t.descendants("f") == ()
    assert [t.depth(n) for n in "racef"] == [0, 1, 2, 3, 2]
    assert t.subtree_size("r") == 7 and t.subtree_size("a") == 4 and t.height == 3
    assert t.path("e", "f") == ["e", "d", "a", "r", "b", "f"]
    assert t.path("c", "e") == ["c", "a", "d", "e"]
    assert t.path("a", "e") == ["a", "d", "e"] and t.path("e", "a") == ["e", "d", "a"]
    assert t.path("c", "c") == ["c"]
    assert t.next_hop("e", "f") == "d" and t.next_hop("r", "e") == "a"
    assert t.next_hop("a", "e") == "d" and t.next_hop("c", "d") == "a"
    assert t.next_hop("b", "c") == "r" and t.next_hop("f", "b") == "b"


@FAST
@given(trees(), st.data())
def test_routes_match_brute_force(t, data):
    names = sorted(t.names)
    parent = {c: n for n in names for c in t.spec(n).children}

    def up(n: str) -> set[str]:
        out = set()
        while n in parent:
            n = parent[n]
            out.add(n)
        return out

    for _ in range(5):
        a = data.draw(st.sampled_from(names))
        b = data.draw(st.sampled_from(names))
        expected = bfs_path(t, a, b)
        assert t.path(a, b) == expected
        if a != b:
            assert t.next_hop(a, b) == expected[1]
        chain = []
        while chain[-1:] != [None]:
            chain.append(parent.get(chain[-1] if chain else a))
        assert t.ancestors(a) == tuple(chain[:-1]) and t.depth(a) == len(chain) - 1
        below = {n for n in names if a in up(n)}
        assert set(t.descendants(a)) == below and t.subtree_size(a) == len(below) + 1
    for label in "xyz":
        assert set(t.nodes_in_group(label)) == {n for n in names if label in t.spec(n).groups}
        assert set(t.nodes_with_tag(label)) == {n for n in names if label in t.spec(n).tags}


# -- auto-join ------------------------------------------------------------------------------

def join(t: Tree, name: str, contact: str, port: int) -> tuple[Tree, Placement]:
    p = t.place(name, contact)
    assert p.hops[0] == contact and p.hops[-1] == p.parent
    assert len(set(p.hops)) == len(p.hops)
    assert all(t.parent(x) == y or t.parent(y) == x for x, y in pairwise(p.hops))
    return t.with_node(NodeSpec(name, "10.0.0.2", port), p.parent), p


def test_place_on_hand_built_trees():
    t = tree_of({"r": ["a", "b"]}, m=2)
    assert t.place("x", "a") == Placement("a", ("a",))  # room at the shallowest open depth
    assert t.place("x", "r") == Placement("a", ("r", "a"))  # full: down, ties by name
    t = t.with_node(spec("a1", port=1), "a")
    assert t.place("x", "r") == Placement("b", ("r", "b"))  # fewest children first
    assert t.place("x", "a1") == Placement("a", ("a1", "a"))  # a has room at depth 1
    t = t.with_node(spec("a2", port=2), "a")
    assert t.place("x", "a1") == Placement("b", ("a1", "a", "r", "b"))  # up and over
    assert t.place("x", "b") == Placement("b", ("b",))


def test_with_node_adds_a_last_child():
    t = tree_of({"r": ["a"]}).with_node(NodeSpec("x", "h", 1, groups=("g",)), "r")
    assert t.children("r") == ("a", "x") and t.parent("x") == "r"
    assert t.nodes_in_group("g") == ("x",)


@pytest.mark.parametrize("m", [2, 3, 10])
@pytest.mark.parametrize("contact", ["root", "newest", "deepest"])
def test_adversarial_contacts_keep_the_tree_minimal(m, contact):
    t = Tree.from_specs([NodeSpec("j0", "10.0.0.2", 1)], m)
    for i in range(1, 300):
        at = {"root": t.root, "newest": f"j{i - 1}",
              "deepest": max(t.names, key=lambda n: (t.depth(n), n))}[contact]
        t, _ = join(t, f"j{i}", at, i + 1)
        assert t.height == optimal_height(len(t), m)
    assert_valid(t)


@settings(FAST, max_examples=40)
@given(st.integers(2, 10), st.integers(1, 300), st.randoms(use_true_random=False))
def test_joins_through_any_contact_stay_balanced(m, joins, rnd):
    t = Tree.from_specs([NodeSpec("j0", "10.0.0.2", 1)], m)
    for i in range(1, joins + 1):
        t, _ = join(t, f"j{i}", rnd.choice(t.names), i + 1)
        assert max(len(t.children(n)) for n in t.names) <= m
        # The exact bound: the least height any tree of this size can have.
        assert t.height == optimal_height(len(t), m) <= ceil_log(len(t), m)
    assert_valid(t)


@settings(FAST, max_examples=30)
@given(trees(), st.integers(1, 60), st.randoms(use_true_random=False))
def test_joins_into_any_tree_go_no_deeper_than_needed(t, joins, rnd):
    # A joiner lands right below the shallowest open depth, and every level above that is
    # full, so it never lands deeper than optimal_height(N) + 1.
    start = t.height
    for i in range(joins):
        t, _ = join(t, f"j{i}", rnd.choice(t.names), 20000 + i)
        assert t.height <= max(start, optimal_height(len(t), t.max_children) + 1)
    assert_valid(t)


# -- failures -------------------------------------------------------------------------------

def test_without_on_hand_built_trees():
    t = tree_of({"r": ["a", "b"], "a": ["c", "d"], "d": ["e"], "b": ["f"]}, m=2)
    # a dies: c (first by name) takes a's freed slot under r; r is then full, so d goes
    # to the open slot of r's subtree: c has no child yet (b has one), so under c.
    u = t.without("a")
    assert u.children("r") == ("b", "c") and u.children("b") == ("f",)
    assert u.children("c") == ("d",) and u.children("d") == ("e",)
    # The root dies: a has the smallest name and takes over; b goes to the open slot.
    assert t.successor_of_root() == "a"
    v = t.without("r")
    assert v.root == "a" and v.parent("b") == "c" and v.children("a") == ("c", "d")
    # The smallest name, whatever the subtrees' sizes.
    w = tree_of({"r": ["y", "x"], "x": ["x1"], "y": ["y1"]})
    assert w.successor_of_root() == "x"
    assert w.without("r").children("x") == ("x1", "y")
    # A leaf just goes.
    assert t.without("e").children("d") == ()


def test_without_repo_seed_root():
    t = Tree.from_seed(load_repo_seed())
    u = t.without("tree1")
    # tree2 (the smallest name) leads; tree4 re-attaches under it, its subtree with it.
    assert u.root == "tree2" and u.children("tree2") == ("tree3", "tree4")
    assert u.children("tree4") == ("tree5", "tree6", "tree7")


@settings(FAST, max_examples=50)
@given(trees(max_nodes=50), st.lists(st.integers(0, 10**6), min_size=1, max_size=50),
       st.booleans())
def test_failures_keep_one_tree_and_the_orphans_whole(t, picks, root_first):
    for step, pick in enumerate(picks):
        if len(t) == 1:
            break
        dead = t.root if (root_first and step == 0) or pick % 7 == 0 else \
            t.names[pick % len(t)]
        u = t.without(dead)
        assert_valid(u)
        assert set(u.names) == set(t.names) - {dead}
        for n in u.names:  # no surviving node loses a surviving child
            assert set(t.children(n)) - {dead} <= set(u.children(n))
        orphans = t.children(dead)
        anchor = t.parent(dead)
        if anchor is None:
            heir = min(orphans)  # the smallest name, as the nodes do it
            assert t.successor_of_root() == heir == u.root
            anchor = heir
        else:
            assert u.root == t.root
            first = min(orphans, default=None)  # let in by name
            assert first is None or u.parent(first) == anchor
        for o in orphans:
            assert o == anchor or anchor in u.ancestors(o)  # stayed in the anchor's subtree
            assert set(t.descendants(o)) <= set(u.descendants(o))  # carried its subtree
        # Deterministic: the same tree, its specs in another order, heals the same way.
        shuffled = Tree.from_specs([t.spec(n) for n in reversed(t.names)], t.max_children)
        assert shuffled.without(dead) == u
        t = u
