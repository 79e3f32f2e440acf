"""The incremental interest structures against brute force.

``PatternIndex`` answers cover queries by walking a trie; ``InterestTable`` keeps every
link's advertised interest by deltas. Both are checked here against the definition
recomputed from scratch (``covers`` over every pair, the minimal cover of everything
every other source holds) after every step of random sequences of subscribes and
unsubscribes from several clients and links, links coming and going, and snapshots.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from treescale.interest import LOCAL, InterestTable, PatternIndex, covers
from treescale.routing import RoutingTable, split_pattern

TOKENS = ["a", "b", "$s", "*"]
patterns = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4).flatmap(
    lambda toks: st.sampled_from([".".join(toks), ".".join(toks[:-1] + [">"])]))
queues = st.sampled_from([None, None, "q", "w"])
keys = st.tuples(patterns, queues)
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None)


def brute_covering(held: set, probe: tuple) -> set:
    return {k for k in held if k != probe and k[1] == probe[1] and covers(k[0], probe[0])}


def brute_covered(held: set, probe: tuple) -> set:
    return {k for k in held if k != probe and k[1] == probe[1] and covers(probe[0], k[0])}


def naive_cover(held: set) -> set:
    return {k for k in held if not brute_covering(held, k)}


def check_index(index: PatternIndex, held: set, probes: list) -> None:
    postings: dict = {}
    for key in held:
        for at, tok in enumerate(split_pattern(key[0])):
            if at and tok not in ("*", ">"):
                postings.setdefault((at, tok), set()).add(key)
    assert {at: (set(keys) if isinstance(keys, set) else {keys})
            for at, keys in index.postings.items()} == postings
    for probe in probes:
        tokens = split_pattern(probe[0])
        wider, narrower = list(index.covering(tokens, probe)), list(index.covered(tokens, probe))
        assert len(wider) == len(set(wider)) and len(narrower) == len(set(narrower))
        assert set(wider) == brute_covering(held, probe), probe
        assert set(narrower) == brute_covered(held, probe), probe
        # ``covered`` picks a walk or a posting list by size: each alone is right too
        assert set(index._walk_covered(index.root, tokens, 0, probe)) == set(narrower)
        wild = [i for i, tok in enumerate(tokens) if tok in ("*", ">")]
        rare = index._rarest(tokens, wild[0]) if wild else None
        assert rare is None or set(narrower) <= set(rare)


@SETTINGS
@given(st.lists(keys, max_size=30, unique=True), st.lists(keys, max_size=10), st.data())
def test_index_cover_queries_are_the_brute_force_ones(held_list, extra, data):
    """Whatever is held, for probes held or not; again after removals in any order;
    and the trie is empty once everything is gone (no branch left behind)."""
    index, held = PatternIndex(), set()
    for key in held_list:
        index.add(split_pattern(key[0]), key)
        held.add(key)
    check_index(index, held, held_list + extra)
    for key in data.draw(st.permutations(held_list)):
        index.discard(key)
        held.discard(key)
        check_index(index, held, held_list[:5] + extra[:3])
    root = index.root
    assert not (root.children or root.here or root.rest) and not index.postings


CLIENTS = ["c1", "c2", "c3"]
LINKS = ["L1", "L2", "L3"]


class InterestMachine(RuleBasedStateMachine):
    """The node's two tables driven as brokers/exchange.py drives them: clients'
    SUB/UNSUB go through the routing table and reach the interest table as LOCAL's
    reference counts; links bring their own interest, snapshots, and go down."""

    def __init__(self) -> None:
        super().__init__()
        self.routes = RoutingTable("n")
        self.table = InterestTable()
        for c in CLIENTS:
            self.routes.add_member(c)
        self.client_subs: dict[str, set] = {c: set() for c in CLIENTS}
        self.link_subs: dict[str, dict] = {}  # link -> key -> count (as table.held)
        self.replicas: dict[str, set] = {}  # what each link heard, applied in order

    def apply(self, updates: list) -> None:
        for u in updates:
            key = (u.pattern, u.queue)
            replica = self.replicas[u.link]
            if u.add:
                assert key not in replica, f"{key} told twice to {u.link}"
                replica.add(key)
            else:
                assert key in replica, f"{key} withdrawn from {u.link}, never told"
                replica.discard(key)

    @rule(client=st.sampled_from(CLIENTS), key=keys)
    def subscribe(self, client, key):
        if self.routes.subscribe(client, *key):
            self.client_subs[client].add(key)
            self.apply(self.table.add(LOCAL, *key))

    @rule(client=st.sampled_from(CLIENTS), data=st.data())
    def unsubscribe(self, client, data):
        mine = sorted(self.client_subs[client], key=repr)
        if not mine:
            return
        key = data.draw(st.sampled_from(mine))
        assert self.routes.unsubscribe(client, *key)
        self.client_subs[client].discard(key)
        self.apply(self.table.remove(LOCAL, *key))

    @rule(client=st.sampled_from(CLIENTS))
    def client_leaves(self, client):
        for key in sorted(self.client_subs[client], key=repr):
            self.apply(self.table.remove(LOCAL, *key))
        self.client_subs[client].clear()
        self.routes.remove_member(client)
        self.routes.add_member(client)

    @rule(link=st.sampled_from(LINKS))
    def link_up(self, link):
        if link in self.link_subs:
            return
        self.link_subs[link] = {}
        self.replicas[link] = set()
        self.apply(self.table.add_link(link))

    @precondition(lambda self: self.link_subs)
    @rule(data=st.data())
    def link_down(self, data):
        link = data.draw(st.sampled_from(sorted(self.link_subs)))
        del self.link_subs[link]
        del self.replicas[link]
        self.apply(self.table.drop_link(link))

    @precondition(lambda self: self.link_subs)
    @rule(data=st.data(), key=keys, add=st.booleans())
    def link_interest(self, data, key, add):
        link = data.draw(st.sampled_from(sorted(self.link_subs)))
        held = self.link_subs[link]
        if add:
            held[key] = held.get(key, 0) + 1
            self.apply(self.table.add(link, *key))
        else:
            if held.get(key):
                held[key] -= 1
                if not held[key]:
                    del held[key]
            self.apply(self.table.remove(link, *key))

    @precondition(lambda self: self.link_subs)
    @rule(data=st.data(), snapshot=st.lists(keys, max_size=6))
    def link_snapshot(self, data, snapshot):
        link = data.draw(st.sampled_from(sorted(self.link_subs)))
        self.link_subs[link] = dict.fromkeys(set(snapshot), 1)
        self.apply(self.table.replace(link, snapshot))

    def wanted(self, link: str) -> set:
        held = {k for subs in self.client_subs.values() for k in subs}
        held |= {k for other, subs in self.link_subs.items() if other != link for k in subs}
        return held

    @invariant()
    def every_link_hears_the_cover_of_the_others(self):
        for link, replica in self.replicas.items():
            expected = naive_cover(self.wanted(link))
            assert self.table.advertised[link] == expected
            assert replica == expected

    def teardown(self):
        """Everyone gone: nothing left held, indexed or advertised."""
        for client in CLIENTS:
            self.client_leaves(client)
        for link in sorted(self.link_subs):
            self.apply(self.table.drop_link(link))
        root = self.table._index.root
        assert not self.table.held[LOCAL] and not self.table._holders
        assert not len(self.table._index) and not self.table._index.postings
        assert not (root.children or root.here or root.rest)


TestInterestMachine = InterestMachine.TestCase
TestInterestMachine.settings = settings(max_examples=150, stateful_step_count=40,
                                        deadline=None, derandomize=True, database=None)


def test_a_probe_among_thousands_finds_exactly_its_covers():
    """Examples at the scale the walks are for (bench/subscribe_scale.py times them)."""
    index = PatternIndex()
    for i in range(5000):
        for key in ((f"app{i % 50}.orders.{i}", None), (f"app{i % 50}.*.{i}", None),
                    (f"app{i % 50}.orders.{i}.>", "q")):
            index.add(split_pattern(key[0]), key)
    probe = ("app7.orders.4207", None)
    assert set(index.covering(split_pattern(probe[0]), probe)) == {("app7.*.4207", None)}
    probe = ("app7.orders.999999", None)
    assert set(index.covering(split_pattern(probe[0]), probe)) == set()
    probe = ("app7.orders.4207.x", "q")
    assert set(index.covering(split_pattern(probe[0]), probe)) == {
        ("app7.orders.4207.>", "q")}
    probe = ("app7.*.4207", None)
    assert set(index.covered(split_pattern(probe[0]), probe)) == {
        ("app7.orders.4207", None)}
