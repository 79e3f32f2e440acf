"""The scheduler's pure core: specs, placement, the lease."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treescale.sched.lease import LEASE_TTL, Lease
from treescale.sched.plan import (
    PENDING,
    NodeView,
    Replica,
    Start,
    Stop,
    eligible,
    plan,
    problem,
    to_cull,
)
from treescale.sched.spec import ServiceSpec, SpecError, SpecSet, spec_from_args


def spec(**kw) -> ServiceSpec:
    return spec_from_args({"name": "web", "image": "img:1", **kw})


def nodes(*names: str, **kw) -> dict[str, NodeView]:
    return {n: NodeView(n, docker=True, **kw) for n in names}


def running(service: str, node: str, i: int, ready: bool = True) -> Replica:
    return Replica(service, node, f"{node}{service}{i}", "running", None, ready)


# ------------------------------------------------------------------- specs


@pytest.mark.parametrize("args, words", [
    ({"name": "Web"}, "service name"),
    ({"name": "a.b"}, "service name"),
    ({"image": "has space"}, "image"),
    ({"group": "g", "tag": "t"}, "not both"),
    ({"replicas": -1}, "replicas"),
    ({"replicas": 0}, "--min 0"),
    ({"minimum": 3, "maximum": 2}, "over --max"),
    ({"replicas": 5, "maximum": 2}, "over --max"),
    ({"port": 70000}, "port"),
    ({"env": ["NOEQUALS"]}, "KEY=VALUE"),
    ({"env": {"1X": "y"}}, "env key"),
    ({"vip": "10.0.0.1:80"}, "needs --port"),
    ({"vip": "nothost:80", "port": 80}, "IPv4"),
    ({"idle": 0}, "--idle"),
    ({"replicas": True}, "replicas"),
])
def test_bad_specs_say_which_field(args, words):
    with pytest.raises(SpecError, match=words):
        spec(**args)


def test_a_spec_round_trips_and_knows_its_bounds():
    s = spec(replicas=0, minimum=0, maximum=3, idle=5, port=8080, env=["A=1"],
             command=["sh", "-c", "x"], vip="127.0.0.1:9000", vip_node="n1")
    assert ServiceSpec.from_dict(s.to_dict()) == s
    assert s.scales_from_zero and s.floor == 0 and s.env == {"A": "1"}
    assert s.scaled(2).replicas == 2
    with pytest.raises(SpecError, match="over its --max"):
        s.scaled(4)
    assert spec().replicas == 1 and spec(minimum=2).replicas == 2


def test_a_spec_set_moves_forward_and_refuses_a_shared_endpoint():
    a = SpecSet().with_spec(spec(port=80, vip="127.0.0.1:9000", vip_node="n1"), term=1)
    assert (a.version, a.term) == (1, 1)
    with pytest.raises(SpecError, match="endpoint"):
        a.with_spec(spec(name="api", port=80, vip="127.0.0.1:9000", vip_node="n1"), 1)
    b = a.without("web", term=2)
    assert b.newer_than(a) and not a.newer_than(b) and not b.specs
    # the same version written on two sides of a partition: the higher term wins
    assert SpecSet(3, 2).newer_than(SpecSet(3, 1))
    assert SpecSet.from_dict(a.to_dict()) == a
    with pytest.raises(SpecError):
        SpecSet.from_dict({"version": 1, "specs": {"x": {"name": "y", "image": "i"}}})


# --------------------------------------------------------------- placement


def test_three_replicas_spread_over_three_nodes():
    actions = plan({"web": spec(replicas=3)}, nodes("a", "b", "c"), [])
    assert sorted(a.node for a in actions) == ["a", "b", "c"]
    assert all(isinstance(a, Start) for a in actions)


def test_groups_tags_and_docker_decide_where():
    views = {"a": NodeView("a", ("web",), (), True), "b": NodeView("b", (), ("eu",), True),
             "c": NodeView("c", ("web",), (), False)}
    assert [a.node for a in plan({"web": spec(group="web", replicas=2)}, views, [])] == \
        ["a", "a"]
    assert [a.node for a in plan({"web": spec(tag="eu")}, views, [])] == ["b"]
    assert problem(spec(group="db"), views).startswith("no node with Docker matches group db")
    assert "Docker service" in problem(spec(), {"c": views["c"]})
    assert not eligible(spec(), views["c"])


def test_load_and_other_services_break_ties():
    views = {"a": NodeView("a", docker=True, load=0.9), "b": NodeView("b", docker=True)}
    assert [a.node for a in plan({"web": spec()}, views, [])] == ["b"]
    busy = [running("api", "b", 0), running("api", "b", 1)]
    actions = plan({"web": spec(), "api": spec(name="api", replicas=2)}, views, busy)
    assert [a.node for a in actions if a.service == "web"] == ["a"]


def test_a_lost_node_replica_starts_elsewhere_and_a_pending_one_is_not_doubled():
    replicas = [running("web", "a", 0), running("web", "b", 0), running("web", "c", 0)]
    actions = plan({"web": spec(replicas=3)}, nodes("a", "c"), replicas)
    assert len(actions) == 1 and isinstance(actions[0], Start) and actions[0].node in "ac"
    pending = Replica("web", actions[0].node, "pending:1", PENDING)
    assert plan({"web": spec(replicas=3)}, nodes("a", "c"), [*replicas, pending]) == []


def test_a_returning_node_gets_one_back_then_the_crowded_node_gives_one_up():
    specs = {"web": spec(replicas=3)}
    replicas = [running("web", "a", 0), running("web", "a", 1), running("web", "c", 0)]
    assert plan(specs, nodes("a", "b", "c"), replicas) == [Start("web", "b")]
    replicas.append(running("web", "b", 0))
    [stop] = plan(specs, nodes("a", "b", "c"), replicas)
    assert isinstance(stop, Stop) and stop.node == "a"


def test_dead_removed_and_misplaced_replicas_are_stopped():
    views = {"a": NodeView("a", ("web",), (), True), "b": NodeView("b", (), (), True)}
    replicas = [Replica("web", "a", "x", "exited"), running("gone", "a", 0),
                running("web", "b", 0), running("web", "a", 1)]
    actions = plan({"web": spec(group="web")}, views, replicas)
    stopped = {a.cid: a.why for a in actions if isinstance(a, Stop)}
    assert set(stopped) == {"x", "agone0", "bweb0"}
    assert "no longer matches" in stopped["bweb0"]


def test_idle_services_above_their_minimum_are_culled():
    specs = {"web": spec(replicas=1, minimum=0, idle=5), "api": spec(name="api", idle=5),
             "db": spec(name="db", replicas=1, minimum=0)}
    assert to_cull(specs, {"web": 6, "api": 60, "db": 60}) == ["web"]
    assert to_cull(specs, {"web": 4}) == []


@settings(max_examples=300, deadline=None)
@given(want=st.integers(0, 12), node_count=st.integers(1, 6),
       have=st.lists(st.tuples(st.integers(0, 5), st.booleans()), max_size=15),
       down=st.sets(st.integers(0, 5), max_size=3))
def test_plans_converge_exactly_and_never_overshoot_by_more_than_one(
        want, node_count, have, down):
    """Carry plans out round after round: the count ends exact, spread within one,
    and no round ever asks for more than one replica too many."""
    names = [f"n{i}" for i in range(node_count)]
    live = {n: NodeView(n, docker=True) for i, n in enumerate(names) if i not in down} \
        or {names[0]: NodeView(names[0], docker=True)}
    s = spec(replicas=want, minimum=0)
    replicas = [running("web", names[i % node_count], k, ready)
                for k, (i, ready) in enumerate(have)]
    counter = 0
    before = len([r for r in replicas if r.node in live])
    for _ in range(40):
        actions = plan({"web": s}, live, replicas)
        if not actions and all(r.ready for r in replicas):
            break
        for a in actions:
            if isinstance(a, Start):
                counter += 1
                replicas.append(Replica("web", a.node, f"new{counter}", "running", None,
                                        True))
            else:
                replicas = [r for r in replicas if r.cid != a.cid]
        alive = [r for r in replicas if r.node in live]
        assert len(alive) <= max(want + 1, before)
        replicas = [Replica(r.service, r.node, r.cid, r.state, None, True)
                    for r in replicas]  # started replicas become ready
    alive = [r for r in replicas if r.node in live]
    assert plan({"web": s}, live, replicas) == []
    assert len(alive) == want
    counts = Counter(r.node for r in alive)
    assert max(counts.get(n, 0) for n in live) - min(counts.get(n, 0) for n in live) <= 1


# ------------------------------------------------------------------- lease


def test_one_lease_at_a_time_and_a_stale_order_is_refused():
    a, b = Lease(), Lease()
    assert a.may_claim("n1", now=10.0, since=10.0 - LEASE_TTL)
    assert not a.may_claim("n1", now=10.0, since=9.5)  # listen a whole TTL first
    term = a.claim("n1", 10.0)
    assert term == 1 and a.held_by("n1", 10.5)
    assert b.hear("n1", term, 10.1)  # another node hears it ...
    assert not b.may_claim("n2", 10.5, since=0.0)  # ... and may not claim
    assert b.may_claim("n2", 10.1 + LEASE_TTL, since=0.0)  # until it lapses
    assert b.claim("n2", 13.0) == 2
    assert not b.hear("n1", 1, 13.1)  # the old scheduler's order is refused
    assert b.holder == "n2"
    assert a.hear("n2", 2, 13.2) and not a.held_by("n1", 13.2)  # the old one steps down
    assert Lease().claim("n3", 0.0, floor=7) == 8  # above the stored specs' term


# ------------------------------------------------------------------- fuzzing

wire = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) |
                    st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) |
                    st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
spec_keys = st.sampled_from(["name", "image", "replicas", "port", "group", "tag", "env",
                             "command", "minimum", "maximum", "idle", "hold", "vip",
                             "vip_node", "image_id"])


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(spec_keys, wire, max_size=15), st.booleans())
def test_any_spec_from_the_wire_is_a_spec_or_a_spec_error(args, named):
    if named:
        args = {"name": "web", "image": "img:1", **args}
    try:
        s = spec_from_args(args)
    except SpecError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert ServiceSpec.from_dict(s.to_dict()) == s
    assert 0 <= s.replicas <= 100


@settings(max_examples=300, deadline=None)
@given(wire)
def test_any_spec_set_from_the_wire_is_a_set_or_a_spec_error(data):
    try:
        SpecSet.from_dict(data)
    except SpecError:
        pass
