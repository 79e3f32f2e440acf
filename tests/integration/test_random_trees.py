"""Random trees of real node processes: every event reaches exactly the subscribers a
reference model says, exactly once, wherever publisher and subscribers sit."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import NodeProcess, wait_until
from tests.reference import ref_match as matches
from treescale import Client

PATTERNS = ["a.*", "a.>", "b.x", ">", "a.b"]
NAMES = ["a.b", "a.c", "a.b.c", "b.x", "c"]


@st.composite
def scenarios(draw):
    size = draw(st.integers(3, 6))
    parents = [None] + [draw(st.integers(0, i - 1)) for i in range(1, size)]
    subs = draw(st.lists(st.tuples(st.integers(0, size - 1),
                                   st.lists(st.sampled_from(PATTERNS), min_size=1,
                                            max_size=2, unique=True)),
                         min_size=1, max_size=4))
    publisher = draw(st.integers(0, size - 1))
    events = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=12))
    return parents, subs, publisher, events


@settings(max_examples=6, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(scenarios())
def test_delivery_matches_the_reference_on_random_trees(tmp_path, scenario):
    parents, subs, publisher, events = scenario
    nodes: list[NodeProcess] = []
    clients: list[Client] = []
    try:
        for i, parent in enumerate(parents):
            args = ("--parent", nodes[parent].address) if parent is not None else ()
            nodes.append(NodeProcess(tmp_path, f"t{i}", None, args).start())
        pub = Client(nodes[publisher].address, name="pub")
        clients.append(pub)
        subscribers = []
        for j, (at, patterns) in enumerate(subs):
            c = Client(nodes[at].address, name=f"sub{j}")
            clients.append(c)
            for p in patterns:
                c.subscribe(p)
            c.subscribe(f"probe.{j}")  # after the real patterns: arrives after them
            subscribers.append((c, patterns))
        for j, (c, _) in enumerate(subscribers):
            def probe_arrived(c=c, j=j) -> bool:
                pub.publish(f"probe.{j}", b"")
                return any(e.name == f"probe.{j}" for e in c.events(timeout=0.1))
            wait_until(probe_arrived, 20, f"interest of sub{j} to reach the publisher")
        for c, _ in subscribers:  # drain probes (and '>' subscribers' view of them)
            while c.next_event(0.2) is not None:
                pass
        for k, name in enumerate(events):
            pub.publish(name, b"%d" % k)
        pub.flush()
        for j, (c, patterns) in enumerate(subscribers):
            expected = [(name, b"%d" % k) for k, name in enumerate(events)
                        if any(matches(p, name) for p in patterns)]
            got = []
            for ev in c.events(timeout=5):
                if ev.name.startswith("probe."):
                    continue  # a late probe for another subscriber ('>' sees them)
                got.append((ev.name, bytes(ev.data)))
                if len(got) == len(expected):
                    break
            assert got == expected, f"sub{j} at t{subs[j][0]} {patterns} in {parents}"
            extra = c.next_event(0.3)
            assert extra is None or extra.name.startswith("probe."), f"sub{j}: {extra}"
    finally:
        for c in clients:
            c.close(timeout=1)
        for n in nodes:
            n.kill()
