"""The load balancer's pure core: parsing, schedulers, following, diffs, nft rules."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treescale.lb.model import (
    Follow,
    LbError,
    RealServer,
    VirtualService,
    choose_backend,
    diff,
    diff_reals,
    make_scheduler,
    parse_hold,
    parse_real,
    parse_service_key,
    wanted_due,
    weight_slots,
)
from treescale.lb.nft import rule, ruleset

A, B, C = (RealServer(f"10.0.0.{i}", 80) for i in (1, 2, 3))
weights = st.lists(st.integers(1, 20), min_size=1, max_size=6)


def reals_with(ws: list[int]) -> list[RealServer]:
    return [RealServer(f"10.0.1.{i + 1}", 8080, w) for i, w in enumerate(ws)]


# ----------------------------------------------------------------- parsing


def test_real_servers_parse_with_optional_weight():
    assert parse_real("10.0.0.2:8080") == RealServer("10.0.0.2", 8080, 1)
    assert parse_real("10.0.0.2:8080@7") == RealServer("10.0.0.2", 8080, 7)


@pytest.mark.parametrize("text, message", [
    ("10.0.0.2", "not IP:PORT"), ("web:80", "not an IPv4 address"),
    ("10.0.0.2:0", "port must be 1-65535"), ("10.0.0.2:80@0", "weight must be"),
    ("10.0.0.2:80@x", "weight must be"), ("10.0.0.2:99999", "port must be")])
def test_bad_real_servers_are_refused_with_the_reason(text, message):
    with pytest.raises(LbError, match=message):
        parse_real(text)


def test_service_keys_take_the_protocol_from_the_text_or_the_option():
    assert parse_service_key("10.0.0.1:53", "udp") == "udp/10.0.0.1:53"
    assert parse_service_key("udp/10.0.0.1:53") == "udp/10.0.0.1:53"
    with pytest.raises(LbError, match="protocol 'sctp'"):
        parse_service_key("sctp/10.0.0.1:53")


def test_a_virtual_service_refuses_unknown_schedulers_and_duplicate_servers():
    with pytest.raises(LbError, match="scheduler 'fair'"):
        VirtualService("10.0.0.1", 80, scheduler="fair")
    with pytest.raises(LbError, match="listed twice"):
        VirtualService("10.0.0.1", 80, reals=(A, RealServer("10.0.0.1", 80, 5)))


def test_virtual_services_round_trip_through_their_stored_form():
    vs = VirtualService("10.0.0.9", 80, "udp", "wrr", "nft", (A, RealServer(
        "10.0.0.2", 80, 3, "c1")), Follow(80, label=("app", "web")))
    assert VirtualService.from_dict(vs.to_dict()) == vs


# ----------------------------------------------------------------- schedulers


def test_round_robin_takes_each_server_in_turn():
    s = make_scheduler("rr", [A, B, C])
    assert [s.pick("1.1.1.1", {}) for _ in range(6)] == [A, B, C, A, B, C]


def test_round_robin_continues_after_the_last_pick_when_the_set_changes():
    s = make_scheduler("rr", [A, B, C])
    assert [s.pick("x", {}) for _ in range(2)] == [A, B]
    s.update([A, B])  # C left: B was last, so A is next
    assert [s.pick("x", {}) for _ in range(3)] == [A, B, A]


@given(weights)
def test_weighted_round_robin_gives_each_server_exactly_its_weight(ws):
    reals = reals_with(ws)
    s = make_scheduler("wrr", reals)
    picks = Counter(s.pick("x", {}).key for _ in range(sum(ws) * 3))
    assert picks == {r.key: r.weight * 3 for r in reals}


def test_weighted_round_robin_interleaves():
    heavy, light = RealServer("10.0.0.1", 80, 2), RealServer("10.0.0.2", 80, 1)
    s = make_scheduler("wrr", [heavy, light])
    assert [s.pick("x", {}) for _ in range(3)] == [heavy, light, heavy]


@given(st.lists(st.integers(0, 10), min_size=3, max_size=3))
def test_least_connections_picks_a_least_loaded_server(counts):
    s = make_scheduler("lc", [A, B, C])
    active = dict(zip((A.key, B.key, C.key), counts, strict=True))
    assert active[s.pick("x", active).key] == min(counts)


def test_least_connections_counts_per_unit_of_weight():
    big = RealServer("10.0.0.4", 80, 4)
    s = make_scheduler("lc", [A, big])
    assert s.pick("x", {A.key: 1, big.key: 3}) == big  # 3/4 < 1/1


@given(st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=30), weights)
def test_source_hash_sends_a_client_to_the_same_server_every_time(clients, ws):
    s = make_scheduler("sh", reals_with(ws))
    first = {c: s.pick(c, {}) for c in clients}
    assert all(s.pick(c, {}) == first[c] for c in clients for _ in range(3))


def test_no_real_server_means_no_pick():
    for name in ("rr", "wrr", "lc", "sh"):
        assert make_scheduler(name, []).pick("x", {}) is None


@given(weights)
def test_weight_slots_are_contiguous_and_as_wide_as_the_weights(ws):
    slots = weight_slots(reals_with(ws))
    assert slots[0][0] == 0 and slots[-1][1] == sum(ws) - 1
    for (first, last, r), nxt in zip(slots, slots[1:] + [None], strict=True):
        assert last - first + 1 == r.weight
        assert nxt is None or nxt[0] == last + 1


# ----------------------------------------------------------------- following containers

FOLLOWING = VirtualService("10.0.0.9", 80, reals=(A,), follow=Follow(8080, label=("app", "web")))


def container(action: str, cid: str = "c1", ip: str = "172.17.0.5", **kw) -> dict:
    return {"node": "n1", "action": action, "id": cid, "name": cid, "image": "web:1",
            "labels": {"app": "web"}, "ips": {"bridge": ip}, "ports": {}, **kw}


def test_a_matching_container_joins_on_start_and_leaves_on_die():
    started = FOLLOWING.on_container(container("start"))
    assert RealServer("172.17.0.5", 8080, 1, "c1") in started.reals and A in started.reals
    for action in ("die", "stop", "kill", "destroy"):
        assert started.on_container(container(action)).reals == (A,)


def test_other_containers_and_other_actions_change_nothing():
    assert FOLLOWING.on_container(container("start", labels={"app": "db"})) == FOLLOWING
    assert FOLLOWING.on_container(container("pause")) == FOLLOWING
    assert FOLLOWING.on_container(container("start", ips={})) == FOLLOWING
    manual = VirtualService("10.0.0.9", 80, reals=(A,))
    assert manual.on_container(container("start")) == manual


def test_following_by_image_treats_a_missing_tag_as_latest():
    by_image = Follow(80, image="busybox")
    assert by_image.matches({"image": "busybox:latest"})
    assert not by_image.matches({"image": "busybox:1.36"})
    assert Follow(80, image="web:1").matches(container("start"))


def test_start_up_sync_keeps_manual_servers_and_exactly_the_running_containers():
    stale = FOLLOWING.on_container(container("start", "gone", "172.17.0.9"))
    synced = stale.follow_running([container("start", "c2", "172.17.0.6")])
    assert [(r.address, r.container) for r in synced.reals] == [
        ("10.0.0.1", None), ("172.17.0.6", "c2")]


def test_follow_needs_exactly_one_selector():
    with pytest.raises(LbError, match="exactly one"):
        Follow(80)
    with pytest.raises(LbError, match="exactly one"):
        Follow(80, label=("a", "b"), image="x")


# ----------------------------------------------------------------- backends and diffs

NO_IPVS = {"ipvs": "IPVS unavailable: this kernel has no ip_vs module"}


def test_auto_takes_the_best_available_backend_and_says_why():
    assert choose_backend("auto", "rr", {}) == ("ipvs", "auto: ipvs")
    backend, why = choose_backend("auto", "rr", NO_IPVS)
    assert backend == "nft" and "no ip_vs module" in why
    backend, why = choose_backend("auto", "lc", NO_IPVS)
    assert backend == "proxy" and "nft cannot do lc" in why


def test_an_unavailable_or_unable_backend_is_refused_with_the_reason():
    with pytest.raises(LbError, match="no ip_vs module"):
        choose_backend("ipvs", "rr", NO_IPVS)
    with pytest.raises(LbError, match="nft cannot do lc"):
        choose_backend("nft", "lc", {})
    with pytest.raises(LbError, match="backend 'lvs'"):
        choose_backend("lvs", "rr", {})


def test_diff_adds_updates_moves_and_removes():
    old = {"a": VirtualService("10.0.0.1", 80, reals=(A,)),
           "b": VirtualService("10.0.0.2", 80),
           "c": VirtualService("10.0.0.3", 80)}
    new = {"a": old["a"].add_reals([B]),
           "c": VirtualService("10.0.0.3", 80, backend="nft"),
           "d": VirtualService("10.0.0.4", 80)}
    plan = diff(old, new)
    assert plan.update == [new["a"]]
    assert plan.add == [new["c"], new["d"]]
    assert plan.remove == [old["c"], old["b"]]
    assert not diff(new, new)


def test_diff_reals_separates_new_reweighted_and_gone_servers():
    added, changed, removed = diff_reals([A, B], [RealServer(B.address, B.port, 5), C])
    assert (added, changed, removed) == ([C], [RealServer(B.address, B.port, 5)], [A])


def test_nft_rules_map_numgen_or_jhash_onto_the_servers():
    rr = VirtualService("10.0.0.9", 80, reals=(A, B))
    assert ("numgen inc mod 2 map { 0 : 10.0.0.1 . 80, 1 : 10.0.0.2 . 80 }"
            in rule(rr))
    wrr = VirtualService("10.0.0.9", 80, "udp", "wrr", "nft",
                         (A, RealServer("10.0.0.2", 80, 3)))
    assert "udp dport 80" in rule(wrr)
    assert "numgen inc mod 4 map { 0 : 10.0.0.1 . 80, 1-3 : 10.0.0.2 . 80 }" in rule(wrr)
    sh = VirtualService("10.0.0.9", 80, scheduler="sh", backend="nft", reals=(A, B))
    assert "jhash ip saddr mod 2" in rule(sh)
    assert rule(VirtualService("10.0.0.9", 80)) is None  # no servers yet: no rule
    script = ruleset([rr, VirtualService("10.0.0.8", 80)])
    assert script.count("dnat") == 1 and "delete table ip treescale_lb" in script
    assert "chain" not in ruleset([])  # nothing to balance: the table goes away


# ----------------------------------------------------------------- owner, hold, reals_set


def test_owner_and_hold_are_stored_and_old_records_read_without_them():
    vs = VirtualService("10.0.0.9", 80, reals=(A,), owner="service:web", hold=5)
    back = VirtualService.from_dict(vs.to_dict())
    assert back == vs and back.owner == "service:web" and back.hold == 5.0
    old = {k: v for k, v in vs.to_dict().items() if k not in ("owner", "hold")}
    assert VirtualService.from_dict(old) == VirtualService("10.0.0.9", 80, reals=(A,))


@pytest.mark.parametrize("hold, message", [
    (-1, "hold must be 0-600"), (601, "hold must be 0-600"),
    ("5", "not a number"), (True, "not a number"), (None, "not a number")])
def test_bad_holds_are_refused(hold, message):
    with pytest.raises(LbError, match=message):
        parse_hold(hold)
    with pytest.raises(LbError, match=message):
        VirtualService("10.0.0.9", 80, hold=hold)
    assert parse_hold(2.5) == 2.5 and parse_hold(0) == 0.0


def test_an_owner_must_be_a_short_string():
    with pytest.raises(LbError, match="not a string"):
        VirtualService("10.0.0.9", 80, owner=7)
    with pytest.raises(LbError, match="longer than 200"):
        VirtualService("10.0.0.9", 80, owner="x" * 201)


def test_set_reals_replaces_the_whole_set_and_may_empty_it():
    vs = VirtualService("10.0.0.9", 80, reals=(A, B), owner="service:web", hold=3)
    new = vs.set_reals([RealServer(C.address, C.port, 2), A])
    assert new.reals == (A, RealServer(C.address, C.port, 2))  # sorted, weights kept
    assert (new.owner, new.hold) == ("service:web", 3)
    assert vs.set_reals([]).reals == ()
    assert vs.set_reals([B, A]) == vs  # the same set: the same value (no change)
    with pytest.raises(LbError, match="listed twice"):
        vs.set_reals([A, RealServer(A.address, A.port, 4)])


def test_set_reals_is_refused_for_a_service_that_follows_containers():
    vs = VirtualService("10.0.0.9", 80, follow=Follow(80, image="web:1"))
    with pytest.raises(LbError, match="follows containers"):
        vs.set_reals([A])


def test_a_hold_needs_the_proxy_and_auto_picks_it():
    assert choose_backend("auto", "rr", {}, hold=5)[0] == "proxy"
    backend, why = choose_backend("auto", "rr", {}, hold=5)
    assert "hold needs the proxy backend" in why
    assert choose_backend("auto", "rr", {}, hold=0)[0] == "ipvs"
    for kernel in ("ipvs", "nft"):
        with pytest.raises(LbError, match="hold needs the proxy backend"):
            choose_backend(kernel, "rr", NO_IPVS, hold=5)  # whether or not it is here
        with pytest.raises(LbError, match="hold needs the proxy backend"):
            VirtualService("10.0.0.9", 80, backend=kernel, hold=1)
    assert VirtualService("10.0.0.9", 80, backend="nft", hold=0).hold == 0


def test_wanted_is_due_once_per_interval():
    assert wanted_due(None, 100.0)
    assert not wanted_due(100.0, 100.5)
    assert wanted_due(100.0, 101.0)
    assert not wanted_due(100.0, 100.2, interval=0.5) and wanted_due(100.0, 100.5, 0.5)


def test_a_changed_owner_or_hold_is_an_update():
    old = {"a": VirtualService("10.0.0.1", 80)}
    new = {"a": VirtualService("10.0.0.1", 80, hold=2, owner="service:x")}
    assert diff(old, new).update == [new["a"]]
