"""bench/simulate.py at small sizes: the counts it reports are what the real modules do.

Each test drives the real routing, interest, tree and healing modules through
bench/sim_fabric.py and checks a figure against what the tree's geometry or a fresh
build says; none of them can pass by construction.
"""

from __future__ import annotations

import random

import pytest

from bench import simulate
from bench.sim_fabric import (
    Fabric,
    MeshFabric,
    all_keys,
    complete_tree,
    depth_profile,
    joined_tree,
    local_subs,
    project,
    related,
    sample_node,
    side_keys,
)

N = 60


@pytest.fixture(scope="module")
def tree():
    return complete_tree(N)


@pytest.fixture(scope="module")
def keys(tree):
    return simulate.keys_by_name(tree, 1)


@pytest.fixture(scope="module")
def fabric(tree):
    """Read only: tests that change a fabric build their own."""
    return Fabric(tree)


def fresh(tree) -> Fabric:
    return Fabric(tree)


def test_one_go_tree_is_what_joining_one_by_one_builds():
    for n in (10, 57, 111):
        assert complete_tree(n) == joined_tree(n)
        # through random contacts the parents differ, the levels do not
        assert depth_profile(joined_tree(n, seed=3)) == depth_profile(complete_tree(n))
    assert complete_tree(111).height == 2


def test_new_name_reaches_every_node_once_and_unsubscribe_undoes_it(tree):
    fabric = fresh(tree)
    before = {n: fabric.nodes[n].routes.subscription_count() for n in tree.names}
    leaf = tree.names[-1]
    sub = fabric.subscribe(leaf, f"new.{leaf}.x")
    # no wider key hides it anywhere: every link carries it once, away from the leaf
    assert sub.messages == N - 1 and sub.entries == N - 1
    assert sub.woken == set(tree.names) - {leaf}
    unsub = fabric.unsubscribe(leaf, f"new.{leaf}.x")
    assert unsub.messages == N - 1
    assert {n: fabric.nodes[n].routes.subscription_count() for n in tree.names} == before
    # a second subscriber of a name someone holds: only the links toward the holder
    a, b = tree.names[-1], tree.children(tree.children(tree.root)[0])[0]
    fabric.subscribe(a, "only.here")
    second = fabric.subscribe(b, "only.here")
    assert second.messages == len(tree.path(a, b)) - 1 == 4
    # a name a wider key already covers: the leaf's own jobs.NAME.> hides it
    assert fabric.subscribe(leaf, f"jobs.{leaf}.deep").messages == 0


def test_events_cross_the_tree_path_and_the_mesh_in_one_hop(tree, fabric):
    leaves = [n for n in tree.names if not tree.children(n)]
    a, b = leaves[0], leaves[-1]  # in different subtrees of the root
    assert tree.ancestors(a)[-2] != tree.ancestors(b)[-2]
    assert fabric.event_hops(a, b, f"node.{b}.cmd") == 2 * tree.height == 4
    assert fabric.event_hops(b, b, f"node.{b}.cmd") == 0
    mesh = MeshFabric({n: local_subs(int(n[1:]), n) for n in tree.names[:30]})
    assert mesh.hops(tree.names[0], tree.names[29], f"node.{tree.names[29]}.cmd") == 1
    assert mesh.subscribe(tree.names[3], "new.name") == 29
    assert mesh.subscribe(tree.names[4], "new.name") == 29  # known or not: everyone
    assert mesh.subscribe(tree.names[4], "new.name") == 0  # it already had it


def test_a_node_built_alone_equals_the_same_node_in_the_whole_fabric(tree, keys, fabric):
    for name in (tree.root, tree.children(tree.root)[2], tree.names[-1]):
        sides = side_keys(tree, keys.__getitem__, name)
        alone = sample_node(name, local_subs(int(name[1:]), name),
                            {k: list(c) for k, c in sides.items()})
        real = fabric.nodes[name]
        assert alone.interest.advertised == real.interest.advertised
        assert ({m: v.subs for m, v in alone.routes.members.items()}
                == {m: v.subs for m, v in real.routes.members.items()})


def test_projected_fabric_counts_the_same_messages(tree, keys):
    full = simulate.ops_on(lambda _t: fresh(tree), tree, keys, random.Random(1))
    projected = simulate.projected_ops(tree, keys, random.Random(1))
    assert full["sub_new"]["messages"] == N - 1
    for op, counts in projected.items():
        assert counts["messages"] == full[op]["messages"], op
        assert counts["nodes"] == full[op]["nodes"], op


def test_related_keys_include_the_covers_a_withdrawal_reveals():
    pool = [("orders.*", None), ("orders.created", None), ("orders.>", None),
            ("users.x", None), ("orders.created", "q")]
    assert related({("orders.*", None)}, pool) == {
        ("orders.*", None), ("orders.created", None), ("orders.>", None)}
    assert related({("users.y", None)}, pool) == {("users.y", None)}


def test_rehoming_changes_only_the_orphans_their_adopters_and_their_subtrees(tree):
    dead = tree.children(tree.root)[0]
    healed, counts = simulate.rehome(tree, dead)
    orphans = set(tree.children(dead))
    # the orphans dial the root first (healing's plan); it has one free slot, the
    # others are sent down to the open slots of the other depth-1 nodes
    assert {simulate.first_dial(tree, o, dead) for o in orphans} == {tree.root}
    adopters = {n for n in healed.names if healed.children(n) != tuple(
        c for c in tree.children(n) if c != dead)}
    assert {healed.parent(o) for o in orphans} <= adopters
    assert tree.root in adopters and counts["redirected"] == len(orphans) - 1
    assert counts["nodes_changed"] == len(orphans | adopters)  # leaves: no subtrees
    # the interest heals to what a fabric built on the healed tree holds
    fabric = fresh(tree)
    fabric.kill(dead, healed)
    rebuilt = Fabric(healed)
    for name in healed.names:
        assert (fabric.nodes[name].interest.advertised
                == rebuilt.nodes[name].interest.advertised), name


def test_root_death_hands_the_tree_to_the_smallest_child(tree):
    healed, counts = simulate.rehome(tree, tree.root)
    heir = min(tree.children(tree.root))
    assert healed.root == heir
    others = [c for c in tree.children(tree.root) if c != heir]
    assert {simulate.first_dial(tree, c, tree.root) for c in others} == {heir}
    assert counts["new_ancestry"] == N - 1  # every node's ancestry lost the root


def test_summary_marks_what_it_extrapolates():
    rows = [{"nodes": 10, "tree": {"links": 9}}, {"nodes": 100, "tree": {"links": 99}},
            {"nodes": 1000}]
    links = simulate.summarise(rows)["links"]
    assert not links[100]["extrapolated"] and links[1000]["extrapolated"]
    assert links[1000]["value"] == pytest.approx(99 * 10 ** (links[1000]["slope"]))
    assert 1000 not in simulate.summarise(rows)["entries_mean"]


def test_keys_include_the_inbox_and_shared_services():
    keys = all_keys(7, "n07")
    assert keys[0] == ("$inbox.n07.>", None)
    assert any(q is not None and p.startswith("svc.") for p, q in keys)
    assert project({"a": keys}, {keys[0]}) == {"a": [keys[0]]}
