"""The parent link's state machine (treescale.healing): one case per transition,
written out by hand from the module's description, so a changed table fails here."""

from __future__ import annotations

import pytest

from treescale import healing as H

ME = ("n5", "tcp://127.0.0.1:5")
GRANDPARENT = ("n1", "tcp://127.0.0.1:1")
GREAT = ("n0", "tcp://127.0.0.1:0")
SIBLING = ("n2", "tcp://127.0.0.1:2")  # smaller name than ME: the heir
LATER = ("n7", "tcp://127.0.0.1:7")  # larger name than ME

UNLINKED = (H.LINKING, H.REHOMING, H.ROOT_GRACE_STATE, H.ROOT_RETURNING, H.ACTING_ROOT)

# (state, event) -> (next state, actions the node carries out). Each row is a test.
EXPECTED = {
    **{(s, H.HANDSHAKE): (s, [H.SEND_LINK]) for s in UNLINKED if s != H.ROOT_GRACE_STATE},
    (H.ROOT_GRACE_STATE, H.HANDSHAKE): (H.ROOT_RETURNING, [H.SEND_LINK]),
    **{(s, H.ACCEPTED): (H.LINKED, [H.ATTACH, H.TELL_CHILDREN]) for s in UNLINKED},
    (H.LINKED, H.ACCEPTED): (H.LINKED, [H.TELL_CHILDREN]),
    **{(s, H.FORGOTTEN): (s, [H.SEND_LINK]) for s in UNLINKED},
    (H.LINKED, H.FORGOTTEN): (H.LINKING, [H.DETACH, H.SEND_LINK]),
    **{(s, H.REDIRECTED): (s, [H.FOLLOW]) for s in UNLINKED},
    **{(s, H.DISCONNECTED): (s, []) for s in UNLINKED if s != H.ROOT_RETURNING},
    (H.ROOT_RETURNING, H.DISCONNECTED): (H.ROOT_GRACE_STATE, []),
    **{(s, H.REFUSED): (s, []) for s in UNLINKED if s != H.REHOMING},
    (H.REHOMING, H.REFUSED): (H.REHOMING, [H.FOLLOW]),
    (H.REHOMING, H.ATTEMPT_EXPIRED): (H.REHOMING, [H.FOLLOW]),
    (H.LINKED, H.LOST_PARENT): (H.REHOMING, [H.DETACH, H.FOLLOW]),
    (H.LINKED, H.LOST_ROOT): (H.ROOT_GRACE_STATE, [H.DETACH]),
    (H.ROOT_GRACE_STATE, H.GRACE_EXPIRED_HEIR): (H.ACTING_ROOT, [H.ANNOUNCE_ROOT]),
    (H.ROOT_GRACE_STATE, H.GRACE_EXPIRED_OTHER): (H.REHOMING, [H.FOLLOW]),
}


def machine(state: str) -> H.ParentLinkState:
    m = H.ParentLinkState(ME, state)
    m.ancestors = [GRANDPARENT, GREAT]
    m.siblings = [SIBLING, LATER]
    if state == H.REHOMING:
        m.plan = list(m.ancestors)
    return m


@pytest.mark.parametrize("state,event", sorted(EXPECTED))
def test_transition(state: str, event: str) -> None:
    m = machine(state)
    actions = m.handle(event, now=100.0)
    assert (m.state, actions) == EXPECTED[(state, event)]


def test_the_table_has_no_row_the_description_lacks() -> None:
    assert set(H.TRANSITIONS) == set(EXPECTED)


@pytest.mark.parametrize("state", [H.ROOT, H.LINKED])
def test_events_without_a_row_change_nothing(state: str) -> None:
    for event in (H.HANDSHAKE, H.DISCONNECTED, H.REFUSED, H.REDIRECTED,
                  H.ATTEMPT_EXPIRED, H.GRACE_EXPIRED_HEIR):
        if (state, event) in EXPECTED:
            continue
        m = machine(state)
        assert m.handle(event, 1.0) == [] and m.state == state


def test_a_node_without_a_parent_is_the_root_for_good() -> None:
    m = H.ParentLinkState.for_config(ME, has_parent=False)
    assert m.state == H.ROOT
    assert m.disconnected(1.0) == [] and m.due(5.0) == [] and m.state == H.ROOT


def test_losing_a_parent_with_ancestors_tries_them_nearest_first_round_and_round() -> None:
    m = machine(H.LINKED)
    assert m.disconnected(now=10.0) == [H.DETACH, H.FOLLOW]
    assert (m.state, m.target, m.deadline) == (H.REHOMING, GRANDPARENT,
                                               10.0 + H.REHOME_ATTEMPT)
    assert m.due(now=11.0) == []  # the attempt has time left
    assert m.due(now=12.0) == [H.FOLLOW] and m.target == GREAT
    assert m.handle(H.REFUSED, 12.5) == [H.FOLLOW] and m.target == GRANDPARENT  # again
    assert m.handle(H.HANDSHAKE, 13.0) == [H.SEND_LINK]
    assert m.deadline == 12.5 + H.REHOME_ATTEMPT  # a handshake is no acceptance yet
    assert m.handle(H.ACCEPTED, 13.1) == [H.ATTACH, H.TELL_CHILDREN]
    assert m.state == H.LINKED and m.deadline is None


def test_losing_the_root_waits_a_grace_then_the_smallest_name_takes_over() -> None:
    m = machine(H.LINKED)
    m.ancestors = []  # our parent was the root
    m.siblings = [LATER]  # ME has the smallest name of the root's children
    assert m.disconnected(now=20.0) == [H.DETACH]
    assert m.state == H.ROOT_GRACE_STATE and m.deadline == 20.0 + H.ROOT_GRACE
    assert m.due(20.5) == []
    assert m.due(21.0) == [H.ANNOUNCE_ROOT]
    assert m.state == H.ACTING_ROOT and m.ancestors == [] and m.siblings == []
    # The old root comes back: we link under it again, our subtree with us.
    assert m.handle(H.HANDSHAKE, 30.0) == [H.SEND_LINK]
    assert m.handle(H.ACCEPTED, 30.1) == [H.ATTACH, H.TELL_CHILDREN]


def test_a_sibling_with_a_smaller_name_is_followed_when_the_root_stays_away() -> None:
    m = machine(H.LINKED)
    m.ancestors = []
    assert m.disconnected(now=1.0) == [H.DETACH]
    assert m.due(2.0) == [H.FOLLOW] and m.target == SIBLING and m.state == H.REHOMING
    assert m.due(2.0 + H.REHOME_ATTEMPT) == [H.FOLLOW] and m.target == SIBLING  # retried


def test_a_root_that_answers_in_the_grace_is_kept_and_a_relapse_restarts_it() -> None:
    m = machine(H.LINKED)
    m.ancestors = []
    m.disconnected(now=1.0)
    assert m.handle(H.HANDSHAKE, 1.5) == [H.SEND_LINK]
    assert m.state == H.ROOT_RETURNING and m.deadline is None  # no take-over pending
    assert m.due(5.0) == []
    assert m.disconnected(now=6.0) == []  # it died before LINKED: a new grace
    assert m.state == H.ROOT_GRACE_STATE and m.deadline == 6.0 + H.ROOT_GRACE


@pytest.mark.parametrize("siblings,heir", [
    ([SIBLING, LATER], SIBLING), ([LATER], ME), ([], ME),
])
def test_the_heir_is_the_smallest_name_among_the_roots_children(siblings, heir) -> None:
    assert H.heir([*siblings, ME]) == heir
    assert H.heir([*siblings, ME, ME]) == heir  # LINKED may list us among them
    assert H.heir([n for n, _ in [*siblings, ME]]) == heir[0]  # names alone: the same


def test_a_redirect_while_linked_is_ignored_and_one_while_linking_is_followed() -> None:
    m = machine(H.LINKED)
    assert m.redirected("x", "tcp://x", 1.0) == [] and m.state == H.LINKED
    m = machine(H.LINKING)
    assert m.redirected("x", "tcp://x", 1.0) == [H.FOLLOW] and m.target == ("x", "tcp://x")


# ----------------------------------------------------------------------- liveness

RULE = H.Liveness(interval=0.2, missed=3)


def test_a_link_is_dead_after_its_missed_pings_not_after_a_second_more() -> None:
    """Silent for three intervals is dead at once: the rule is the configured number
    of missed pings (the old rule, 5 s checked once a second, said alive here)."""
    assert RULE.timeout == pytest.approx(0.6)
    assert RULE.deadline(10.0) == pytest.approx(10.6)
    assert RULE.dead(10.0, 10.6)
    assert RULE.dead(10.0, 11.0)


def test_a_late_ping_on_a_busy_node_is_not_a_death() -> None:
    """One ping missed, even two (a loaded child's loop ran late): still alive."""
    assert not RULE.dead(10.0, 10.2)
    assert not RULE.dead(10.0, 10.59)
    assert not H.Liveness(0.2, 1).dead(10.0, 10.19)
    assert H.Liveness(0.2, 1).dead(10.0, 10.2)


@pytest.mark.parametrize(("interval", "missed", "expected"), [
    (0.2, 3, (200, 600, 600)),
    (0.25, 3, (250, 750, 800)),  # the TTL travels in tenths of a second: rounded up
    (0.01, 1, (10, 10, 100)),
    (1.0, 5, (1000, 5000, 5000)),
])
def test_the_childs_zmtp_heartbeats_follow_the_same_rule(interval, missed,
                                                        expected) -> None:
    """IVL: a ping every interval; TIMEOUT: the parent gone after the missed pings;
    TTL: never shorter than that, so the parent's libzmq does not drop sooner."""
    ivl, timeout, ttl = H.Liveness(interval, missed).heartbeats()
    assert (ivl, timeout, ttl) == expected
    assert ttl >= timeout and ttl % 100 == 0
