"""Token permissions (treescale.permissions): the pattern algebra against brute force
over the routing table's own matching, parsing, and the rules of the reserved areas."""

from __future__ import annotations

import tomllib
from itertools import product

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from treescale import permissions as perm
from treescale import subjects
from treescale.routing import RoutingTable

FAST = settings(max_examples=300, deadline=None)
PATTERN_TOKENS = ["a", "b", "$s", "*"]
# Names use the patterns' literals plus a fresh ordinary and a fresh "$" token: every
# difference between two patterns of up to three tokens shows on one of these names.
UNIVERSE = [".".join(t) for n in range(1, 5)
            for t in product(["a", "b", "$s", "z", "$z"], repeat=n)]


@st.composite
def patterns(draw) -> str:
    toks = draw(st.lists(st.sampled_from(PATTERN_TOKENS), max_size=3))
    if not toks or draw(st.booleans()):
        toks.append(">")
    return ".".join(toks)


def matched(pattern: str) -> frozenset[str]:
    """Every name of UNIVERSE the routing table delivers to a subscriber of ``pattern``."""
    table = RoutingTable("n")
    table.add_member("m")
    table.subscribe("m", pattern)
    return frozenset(n for n in UNIVERSE if table.matching(n))


def toks(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.split("."))


@FAST
@given(patterns())
def test_matches_agrees_with_routing(pattern):
    assert {n for n in UNIVERSE if perm.matches(toks(pattern), toks(n))} == matched(pattern)


@FAST
@given(patterns(), patterns())
def test_subsumes_is_inclusion_of_what_is_matched(general, specific):
    assert perm.subsumes(toks(general), toks(specific)) == \
        (matched(specific) <= matched(general))


@FAST
@given(patterns(), patterns())
def test_intersects_is_a_shared_name(a, b):
    expected = bool(matched(a) & matched(b))
    assert perm.intersects(toks(a), toks(b)) == expected
    assert perm.intersects(toks(b), toks(a)) == expected


@pytest.mark.parametrize("general,specific,expected", [
    (">", "$sys.>", False), ("*.>", "$svc.exec.n1", False), ("$svc.>", "$svc.exec.n1", True),
    ("a.>", "a.*.>", True), ("a.*.>", "a.>", False), ("*", "a", True), ("a", "*", False),
])
def test_subsumes_examples(general, specific, expected):
    assert perm.subsumes(toks(general), toks(specific)) is expected


# ------------------------------------------------------------------ parsing


def test_legacy_words():
    p = perm.parse(["pub", "sub", "exec", "sys"])
    assert p.publish.allow == perm.ORDINARY and p.subscribe.allow == perm.ORDINARY
    assert p.services == frozenset({"exec"}) and p.sys and not p.everything
    assert perm.parse(["*", "pub"]) == perm.ALL
    assert perm.parse("pub") == perm.parse(["pub"])
    assert perm.parse([]) == perm.NONE
    assert perm.parse(["sub", "pub"]) == perm.parse(["pub", "sub"])


def test_mapping():
    p = perm.parse({"publish": {"allow": ["orders.>"], "deny": ["orders.secret.*"]},
                    "subscribe": ["x.*"], "services": ["exec", "sys"]})
    assert p.publish.allow == (("orders", ">"),)
    assert p.publish.deny == (("orders", "secret", "*"),)
    assert p.subscribe.allow == (("x", "*"),) and p.subscribe.deny == ()
    assert p.services == frozenset({"exec"}) and p.sys
    absent = perm.parse({"services": ["lb"]})  # absent publish/subscribe: all ordinary
    assert absent.publish.allow == absent.subscribe.allow == perm.ORDINARY
    only_deny = perm.parse({"publish": {"deny": ["a.>"]}})
    assert only_deny.publish.allow == perm.ORDINARY
    assert perm.parse({"services": ["*"]}).has_service("anything")


@pytest.mark.parametrize("value,message", [
    (3, "permissions must be a list of words or a mapping"),
    (["pub", 7], "every entry must be a non-empty string"),
    (["a.b"], "'a.b' is not a permission"),
    ({"publish": {"allow": ["a..b"]}}, "permissions.publish.allow: pattern 'a..b' has an "
                                       "empty token"),
    ({"subscribe": {"deny": ["a.>.b"]}}, "permissions.subscribe.deny: pattern 'a.>.b': "
                                         "'>' must be the last token"),
    ({"publish": {"allow": [subjects.service("exec", ">")]}}, "reserved area"),
    ({"publish": {"only": []}}, "permissions.publish: unknown key(s) only"),
    ({"pub": []}, "permissions: unknown key(s) pub"),
    ({"publish": "a"}, "permissions.publish must be a list of patterns or a mapping"),
    ({"services": 3}, "permissions.services must be a list"),
])
def test_parse_errors_are_one_line(value, message):
    with pytest.raises(ValueError) as err:
        perm.parse(value)
    assert message in str(err.value) and "\n" not in str(err.value)


# -------------------------------------------------------------------- rules

VIEWER = perm.parse(["pub", "sub"])
EXEC_NODE = subjects.service("exec", "n1")


def test_reserved_areas_need_grants():
    assert VIEWER.why_not_publish("orders.new") is None
    assert "does not allow exec" in VIEWER.why_not_publish(EXEC_NODE).message
    assert "does not allow sys" in VIEWER.why_not_publish(subjects.NODE_STATS).message
    assert perm.parse(["exec"]).why_not_request(EXEC_NODE) is None
    # even with the grant, a service is asked by requests only (they carry the
    # requester's grants, stamped by its node; a publish could forge them)
    assert "services take requests" in perm.parse(["exec"]).why_not_publish(
        EXEC_NODE).message
    for pattern in (subjects.service(">"), subjects.service("exec", ">"),
                    subjects.service("*", "n1"), subjects.NODE_STATS):
        assert VIEWER.why_not_subscribe(pattern).code == subjects.PERMISSION_DENIED
    assert "needs '*'" in perm.parse(["sub", "exec"]).why_not_subscribe(
        subjects.service(">")).message
    assert perm.parse(["exec"]).why_not_subscribe(subjects.service("exec", ">")) is None
    assert perm.ALL.why_not_subscribe(subjects.service(">")) is None


def test_inboxes_are_for_replies_only_whoever_asks():
    name = subjects.inbox("n1", "c1", 1, "cap")
    pattern = subjects.node_inboxes("n1")
    for p in (VIEWER, perm.ALL):
        assert p.why_not_subscribe(pattern).code == subjects.BAD_PATTERN
        assert p.why_not_request(name).code == subjects.PERMISSION_DENIED
    assert VIEWER.why_not_publish(name).code == subjects.PERMISSION_DENIED


def test_allow_and_deny():
    p = perm.parse({"publish": {"allow": ["orders.>", "stats.*"], "deny": ["orders.secret"]},
                    "subscribe": {"allow": ["orders.>"], "deny": ["orders.secret"]}})
    assert p.why_not_publish("orders.new") is None
    assert p.why_not_publish("stats.cpu") is None
    refused = p.why_not_publish("orders.secret")
    assert refused.message.endswith("denied by rule deny 'orders.secret'")
    assert "publish allow list (orders.>, stats.*)" in p.why_not_publish("other").message
    assert p.why_not_subscribe("orders.new.*") is None
    assert "deny 'orders.secret'" in p.why_not_subscribe("orders.*").message
    assert "subscribe allow list" in p.why_not_subscribe(">").message
    # deny honours the "$" rule: a deny of everything ordinary leaves $sys to its grant
    q = perm.parse({"subscribe": {"deny": [">"]}, "services": ["sys"]})
    assert q.why_not_subscribe(subjects.NODE_STATS) is None
    assert q.why_not_subscribe("a") is not None


def test_publish_check_caches_and_stays_bounded():
    assert perm.ALL.publish_check() is None  # "*" costs nothing
    check = perm.parse({"publish": ["a.*"]}).publish_check(size=3)
    assert check.first_refused(["a.1", "a.2"]) is None
    name, why = check.first_refused(["a.3", "b", "a.4"])
    assert name == "b" and why.code == subjects.PERMISSION_DENIED
    assert len(check.cache) <= 3
    for i in range(20):
        check.first_refused([f"a.{i}"])
    assert len(check.cache) <= 3


def test_the_readme_token_example_parses_and_means_what_it_says():
    text = (ROOT / "README.md").read_text()
    start = text.index("[node.tokens]")
    tokens = tomllib.loads(text[start:text.index("```", start)])["node"]["tokens"]
    parsed = dict(perm.parse_tokens(tokens))
    assert parsed["admin"] == perm.ALL
    assert parsed["viewer"].why_not_subscribe(subjects.NODE_STATS) is None
    assert parsed["ops"].why_not_request(subjects.service("exec", "n1")) is None
    orders = parsed["orders"]
    assert "deny 'orders.secret.>'" in orders.why_not_publish("orders.secret.x").message
    assert orders.why_not_subscribe("audit.login") is None
    assert orders.why_not_request(subjects.service("handlers", "n1")) is None
