"""Trees of real node processes, chains to random shapes of up to 22 nodes: every event
reaches exactly the subscribers a reference model says — mode ``all`` each matching
subscriber once, mode ``one`` exactly one member of each queue group tree-wide, and
targets ``node:`` / ``group:`` / ``tag:`` only their members — wherever publisher and
subscribers sit."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import NodeProcess, start_all, wait_until
from tests.reference import ref_match as matches
from treescale import Client

PATTERNS = ["a.*", "a.>", "b.x", ">", "a.b"]
NAMES = ["a.b", "a.c", "a.b.c", "b.x", "c"]
QUEUES = [None, None, "w", "v"]  # None: a plain subscriber


@dataclass
class Scenario:
    parents: list  # parents[i]: index of node i's parent (None for the root)
    labels: list  # (groups, tags) of each node
    subs: list  # (node index, patterns, queue)
    publisher: int
    events: list  # (name, target, mode)


def targets(size: int) -> st.SearchStrategy:
    return (st.sampled_from([None, None, "group:g1", "tag:t1"])
            | st.integers(0, size - 1).map(lambda i: f"node:t{i}"))


@st.composite
def scenarios(draw, parents=None):
    if parents is None:
        size = draw(st.integers(3, 22))
        parents = [None] + [draw(st.integers(0, i - 1)) for i in range(1, size)]
    size = len(parents)
    labels = [(draw(st.sampled_from([(), ("g1",)])), draw(st.sampled_from([(), ("t1",)])))
              for _ in range(size)]
    subs = draw(st.lists(st.tuples(st.integers(0, size - 1),
                                   st.lists(st.sampled_from(PATTERNS), min_size=1,
                                            max_size=2, unique=True),
                                   st.sampled_from(QUEUES)),
                         min_size=2, max_size=6))
    events = draw(st.lists(st.tuples(st.sampled_from(NAMES), targets(size),
                                     st.sampled_from(["all", "one"])),
                           min_size=1, max_size=16))
    return Scenario(parents, labels, subs, draw(st.integers(0, size - 1)), events)


def admitted(sc: Scenario, node: int, target: str | None) -> bool:
    """Does ``target`` admit a subscriber on node ``node`` (whose clients carry no
    labels of their own: the node's groups and tags count for them)?"""
    if target is None:
        return True
    kind, value = target.split(":")
    groups, tags = sc.labels[node]
    return {"node": value == f"t{node}", "group": value in groups,
            "tag": value in tags}[kind]


def check_delivery(sc: Scenario, received: list[set[int]]) -> None:
    """``received[j]``: indexes of the events subscriber j got (each at most once)."""
    for k, (name, target, mode) in enumerate(sc.events):
        eligible = [j for j, (at, patterns, _) in enumerate(sc.subs)
                    if admitted(sc, at, target) and any(matches(p, name) for p in patterns)]
        got = {j for j, events in enumerate(received) if k in events}
        where = f"event {k} {name} {target} {mode} in {sc.parents}"
        if mode == "all":
            assert got == set(eligible), where
            continue
        assert got <= set(eligible), where
        queues = {sc.subs[j][2] for j in eligible}
        for q in queues:
            members = {j for j in eligible if sc.subs[j][2] == q}
            assert len(got & members) == 1, f"{where}: queue {q}: {got & members}"


def run_scenario(tmp_path, sc: Scenario) -> None:
    nodes: list[NodeProcess] = []
    clients: list[Client] = []
    try:
        for i, parent in enumerate(sc.parents):
            args = ("--parent", nodes[parent].address) if parent is not None else ()
            groups, tags = sc.labels[i]
            # Routing is under test: no machine services (lighter processes).
            nodes.append(NodeProcess(tmp_path, f"t{i}", {"groups": list(groups),
                                                        "tags": list(tags),
                                                        "services": []}, args))
        start_all(nodes)
        pub = Client(nodes[sc.publisher].address, name="pub", timeout=30)
        clients.append(pub)
        subscribers = []
        for j, (at, patterns, queue) in enumerate(sc.subs):
            c = Client(nodes[at].address, name=f"sub{j}", timeout=30)
            clients.append(c)
            for p in patterns:
                c.subscribe(p, queue=queue)
            c.subscribe(f"probe.{j}")  # after the real patterns: arrives after them
            subscribers.append(c)

        def probe(j: int, c: Client) -> bool:
            pub.publish(f"probe.{j}", b"")
            return any(e.name == f"probe.{j}" for e in c.events(timeout=0.1))

        for j, c in enumerate(subscribers):
            wait_until(lambda j=j, c=c: probe(j, c), 30, f"interest of sub{j} to arrive")
        for c in subscribers:  # drain probes (and '>' subscribers' view of them)
            while c.next_event(0.2) is not None:
                pass
        for k, (name, target, mode) in enumerate(sc.events):
            pub.publish(name, b"%d" % k, target=target, mode=mode)
        received: list[set[int]] = []
        for j, c in enumerate(subscribers):
            # A fence: events from one publisher reach a subscriber in order along the
            # one path between them, so everything meant for sub j is in before it.
            pub.publish(f"probe.{j}", b"fence")
            got: list[int] = []
            for ev in c.events(timeout=10):
                if ev.name == f"probe.{j}" and bytes(ev.data) == b"fence":
                    break
                if not ev.name.startswith("probe."):
                    got.append(int(bytes(ev.data)))
            else:
                raise AssertionError(f"sub{j}: the fence never arrived")
            assert len(got) == len(set(got)), f"sub{j} got an event twice: {got}"
            received.append(set(got))
        check_delivery(sc, received)
    finally:
        for c in clients:
            c.close(timeout=1)
        for n in nodes:
            n.kill()


SHAPES = {
    "chain-8": [None, 0, 1, 2, 3, 4, 5, 6],
    "binary-15": [None] + [(i - 1) // 2 for i in range(1, 15)],
    "wide-22": [None] + [0] * 10 + [1 + (i % 10) for i in range(11)],
}

# No shrinking: each example costs a tree of processes; the failure message names the
# whole scenario instead.
SETTINGS = settings(max_examples=1, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


pytestmark = pytest.mark.timeout(300)  # up to 22 node processes per example


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_delivery_matches_the_reference_on_fixed_shapes(tmp_path, shape):
    @SETTINGS
    @given(scenarios(SHAPES[shape]))
    def check(sc: Scenario) -> None:
        run_scenario(tmp_path, sc)

    check()


@settings(SETTINGS, max_examples=4)
@given(scenarios())
def test_delivery_matches_the_reference_on_random_trees(tmp_path, sc):
    run_scenario(tmp_path, sc)
