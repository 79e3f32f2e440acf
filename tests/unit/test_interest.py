"""Interest propagation: subsumption is exact, and every link's replica converges."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference import ref_match as matches
from treescale.interest import LOCAL, InterestTable, covers, minimal_cover

TOKENS = ["a", "b", "$s"]
NAMES = [".".join(t) for n in range(1, 4) for t in itertools.product(TOKENS, repeat=n)]
patterns = st.lists(st.sampled_from(["a", "b", "$s", "*"]), min_size=1, max_size=3).flatmap(
    lambda toks: st.sampled_from([".".join(toks), ".".join(toks[:-1] + [">"])]))
queues = st.sampled_from([None, None, "q"])
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None)


@SETTINGS
@given(patterns, patterns)
def test_covers_is_exact_on_every_name(wide, narrow):
    """covers(w, n) iff every name (up to 3 tokens, and a 4-token probe for '>')
    matching n also matches w."""
    probe = NAMES + [name + ".a" for name in NAMES if len(name.split(".")) == 3]
    expected = all(matches(wide, name) for name in probe if matches(narrow, name))
    assert covers(wide, narrow) == expected


def test_covers_examples():
    assert covers("orders.>", "orders.created")
    assert covers("orders.>", "orders.*.eu")
    assert not covers("orders.*", "orders.>")
    assert not covers("orders.>", "orders")
    assert not covers(">", "$sys.node")
    assert covers("$sys.>", "$sys.node.up")
    assert minimal_cover({("orders.>", None), ("orders.x", None), ("orders.x", "q")}) == {
        ("orders.>", None), ("orders.x", "q")}


def naive_cover(keys: set) -> set:
    """The definition, quadratic: keys not covered by another key of the same queue."""
    return {(p, q) for p, q in keys
            if not any(qq == q and pp != p and covers(pp, p) for pp, qq in keys)}


@SETTINGS
@given(st.sets(st.tuples(patterns, queues), max_size=12))
def test_minimal_cover_is_the_definition(keys):
    assert minimal_cover(keys) == naive_cover(keys)


ops = st.lists(st.tuples(st.sampled_from(["add", "remove", "link", "drop", "replace"]),
                         st.sampled_from([LOCAL, "L1", "L2", "L3"]), patterns, queues,
                         st.lists(st.tuples(patterns, queues), max_size=3)),
               max_size=40)


@SETTINGS
@given(ops)
def test_every_link_is_told_exactly_the_cover_of_the_others(steps):
    table = InterestTable()
    replicas: dict = {}
    held: dict = {LOCAL: {}}
    for op, source, pattern, queue, snapshot in steps:
        if op == "link" and source != LOCAL and source not in table.advertised:
            updates = table.add_link(source)
            replicas[source] = set()
            held[source] = {}
        elif op == "drop" and source in table.advertised:
            updates = table.drop_link(source)
            replicas.pop(source)
            held.pop(source)
        elif op == "add" and source in held:
            updates = table.add(source, pattern, queue)
            held[source][(pattern, queue)] = held[source].get((pattern, queue), 0) + 1
        elif op == "remove" and source in held:
            updates = table.remove(source, pattern, queue)
            key = (pattern, queue)
            if held[source].get(key):
                held[source][key] -= 1
                if not held[source][key]:
                    del held[source][key]
        elif op == "replace" and source in held and source != LOCAL:
            updates = table.replace(source, snapshot)
            held[source] = dict.fromkeys(set(snapshot), 1)
        else:
            continue
        for u in updates:
            key = (u.pattern, u.queue)
            if u.add:
                assert key not in replicas[u.link], "added twice"
                replicas[u.link].add(key)
            else:
                assert key in replicas[u.link], "removed what was never told"
                replicas[u.link].discard(key)
        for link, replica in replicas.items():
            others = {k for s, h in held.items() if s != link for k in h}
            assert replica == naive_cover(others) == table.advertised[link]
            assert table.wanted(link) == replica
            # the cover loses nothing: a name reaches the link iff someone wants it
            for name in NAMES:
                for q in (None, "q"):
                    want = any(matches(p, name) for p, qq in others if qq == q)
                    told = any(matches(p, name) for p, qq in replica if qq == q)
                    assert want == told


def test_reference_counting_across_sources():
    t = InterestTable()
    t.add_link("up")
    assert [(u.add, u.pattern) for u in t.add(LOCAL, "a.b")] == [(True, "a.b")]
    assert t.add(LOCAL, "a.b") == []  # second local subscriber: nothing new to say
    t.add_link("down")
    assert [(u.link, u.add, u.pattern) for u in t.add("down", "a.>")] == [
        ("up", False, "a.b"), ("up", True, "a.>")]
    assert t.remove(LOCAL, "a.b") == []  # still held once
    # the last local holder leaves: only "down" had been told a.b ("up" knows a.>)
    assert [(u.link, u.add, u.pattern) for u in t.remove(LOCAL, "a.b")] == [
        ("down", False, "a.b")]
    assert t.remove(LOCAL, "a.b") == []  # nothing left to remove
    assert [(u.link, u.add, u.pattern) for u in t.drop_link("down")] == [
        ("up", False, "a.>")]


def test_withdrawing_a_wildcard_reveals_what_it_hid():
    t = InterestTable()
    t.add_link("L1")
    t.add_link("L2")
    t.add(LOCAL, "a.b")
    t.add(LOCAL, "a.c", "q")  # another queue: never hidden by a.*
    t.add("L1", "a.*")
    assert t.advertised["L2"] == {("a.*", None), ("a.c", "q")}
    assert [(u.link, u.add, u.pattern) for u in t.remove("L1", "a.*")] == [
        ("L2", False, "a.*"), ("L2", True, "a.b")]
    t.add("L1", "a.>")
    t.add("L2", "a.*")  # L1 hears a.* from L2, but a.b from LOCAL was hidden by nothing
    assert t.advertised["L1"] == {("a.*", None), ("a.c", "q")}
    assert [(u.link, u.add, u.pattern) for u in t.remove("L1", "a.>")] == [
        ("L2", False, "a.>"), ("L2", True, "a.b")]
