"""Tests for treescale.protocol's node-to-node kinds (20-27): round trips, field
errors and fuzzing of their decoders. No sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.protocol_kit import OBJECTS, big, decode_or_protocol_error, ev, expect, fast, mutate
from treescale import protocol as P
from treescale.protocol import PROTOCOL_VERSION, FieldError, decode, packb


def test_interest_and_resync_round_trip() -> None:
    ops = [(True, "orders.>", None), (False, "a.b", "w")]
    assert decode(P.encode_interest(7, ops)) == P.Interest(7, ops, False)
    snap = [(True, "orders.>", None), (True, "x", "q")]
    assert decode(P.encode_interest(8, snap, full=True)) == P.Interest(8, snap, True)
    assert decode(P.encode_resync(41)) == P.Resync(41)


def test_an_interest_snapshot_holds_only_additions() -> None:
    expect(FieldError, P.encode_interest(1, [(False, "a", None)], full=True),
           "an interest snapshot holds only additions")
    expect(FieldError, [packb([P.INTEREST, 1, [], "yes"])],
           "interest snapshot flag must be true or false")



# ----------------------------------------------------------------------- round trips


def test_link_round_trip_with_everything() -> None:
    frames = P.encode_link("edge-2", token="t0k", groups=["web"], tags=["eu", "ssd"],
                           address="tcp://10.0.0.2:7400", join=True)
    assert decode(frames) == P.Link(PROTOCOL_VERSION, "t0k", "edge-2", ("web",),
                                    ("eu", "ssd"), "tcp://10.0.0.2:7400", True)


def test_link_minimal_and_join_only_when_true() -> None:
    """A nil address is "", and only msgpack true asks for auto-join placement."""
    assert decode(P.encode_link("n2")) == P.Link(PROTOCOL_VERSION, None, "n2")
    for join in (1, "yes", None):
        link = decode([packb([P.LINK, PROTOCOL_VERSION, None, "n2", [], [], None, join])])
        assert link.join is False and link.address == ""


def test_link_announces_its_ping_interval_and_an_older_link_none() -> None:
    """The interval (ms) the child promises to speak at; its parent drops it after
    missed pings of that interval. Without the field (an older child): None."""
    assert decode(P.encode_link("n2", ping=200)).ping == 200
    assert decode(P.encode_link("n2")).ping is None
    old = [packb([P.LINK, PROTOCOL_VERSION, None, "n2", [], [], "", False])]
    assert decode(old).ping is None
    for bad in (9, 1001, -1):
        expect(P.OutOfRange, P.encode_link("n2", ping=bad), "link ping", "10..1000")
    expect(FieldError, [packb([P.LINK, PROTOCOL_VERSION, None, "n2", [], [], "", False,
                               "fast"])], "link ping")


def test_link_version_mismatch() -> None:
    expect(P.VersionMismatch, P.encode_link("n2", version=3), "version 3",
           f"speaks {PROTOCOL_VERSION}")


def test_linked_round_trip() -> None:
    ancestors = [("root", "tcp://10.0.0.1:7400"), ("top", "tcp://10.0.0.0:7400")]
    siblings = [("a", "tcp://10.0.0.3:7400")]
    msg = decode(P.encode_linked("mid", ancestors, siblings))
    assert msg == P.Linked("mid", ancestors, siblings)
    assert decode([packb([P.LINKED, "root"])]) == P.Linked("root", [], [])


def test_redirect_and_stats_round_trip() -> None:
    assert decode(P.encode_redirect("n7", "tcp://127.0.0.1:9")) == P.Redirect(
        "n7", "tcp://127.0.0.1:9")
    assert decode(P.encode_placement({"open_depth": 2})) == P.PlacementInfo({"open_depth": 2})
    assert decode(P.encode_placement({"tree_open": 0})) == P.PlacementInfo({"tree_open": 0})
    assert decode([packb([P.PLACEMENT])]) == P.PlacementInfo({})


def test_forward_carries_a_batch_and_its_sources() -> None:
    """FORWARD is a DELIVER between nodes: the same batch frames, publisher runs kept."""
    _, meta, body, *large = P.encode_pub([ev("a", b"1"), ev("a", big(P.LARGE_PAYLOAD))])
    batch = decode([P.encode_forward_header([["w-1", 1], ["w-2", 1]]), meta, body, *large])
    assert isinstance(batch, P.Batch)
    assert batch.sources == [["w-1", 1], ["w-2", 1]]
    assert batch.meta_frame is meta and batch.large[0] is large[0]
    expect(FieldError, [packb([P.FORWARD, "w-1"]), meta, body, *large], "forward sources")
    expect(P.FrameCountError, [P.encode_forward_header([]), meta],
           "forward takes a header, a meta and a body")


LINK_SINGLE = {"link": P.encode_link("n"), "linked": P.encode_linked("n"),
               "redirect": P.encode_redirect("n", "a"), "placement": P.encode_placement({}),
               "interest": P.encode_interest(1, []), "resync": P.encode_resync(0)}


@pytest.mark.parametrize("kind", sorted(LINK_SINGLE))
def test_link_kinds_take_one_frame(kind: str) -> None:
    expect(P.FrameCountError, LINK_SINGLE[kind] + [b"x"], f"{kind} takes 1 frame(s), got 2")


V = PROTOCOL_VERSION


@pytest.mark.parametrize("header,fragment", [
    ([P.LINK, V, 5, "n"], "token must be a string, got int"),
    ([P.LINK, V, None, None], "node name must be a string, got NoneType"),
    ([P.LINK, V, None, "n", "web"], "groups must be a list of strings"),
    ([P.LINK, V, None, "n", [], [1]], "tags must be a list of strings"),
    ([P.LINK, V, None, "n", [], [], 7400], "address must be a string, got int"),
    ([P.LINK, "1", None, "n"], "protocol version must be an integer"),
    ([P.LINKED, None], "node must be a string"),
    ([P.LINKED, "p", [["a"]]], "linked ancestors must be a list of [name, address]"),
    ([P.LINKED, "p", [], [["a", 1]]], "linked siblings must be a list of [name, address]"),
    ([P.LINKED, "p", "a"], "linked ancestors must be"),
    ([P.REDIRECT, "n", None], "address must be a string, got NoneType"),
    ([P.REDIRECT, 1, "a"], "node must be a string, got int"),
    ([P.PLACEMENT, [1]], "placement must be a map, got list"),
    ([P.INTEREST, 1, "ops"], "interest ops must be a list of [add, pattern, queue]"),
    ([P.INTEREST, 1, [[2, "a", None]]], "interest ops must be a list"),
    ([P.INTEREST, 1, [[1, "a"]]], "interest ops must be a list"),
    ([P.INTEREST, 1, [[1, 5, None]]], "pattern must be a string, got int"),
    ([P.INTEREST, 1, [[0, "a", 5]]], "queue must be a string, got int"),
    ([P.INTEREST, "1", []], "interest sequence must be an integer, got str"),
    ([P.INTEREST, None, []], "interest sequence must be an integer, got NoneType"),
    ([P.RESYNC, True], "resync sequence must be an integer, got bool"),
    ([P.RESYNC], "resync sequence must be an integer, got NoneType"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_link_field_errors(header: list, fragment: str) -> None:
    expect(FieldError, [packb(header)], fragment)


# ------------------------------------------------------------------------------ fuzz


@fast(150)
@given(st.sampled_from(sorted({*P.links.DECODERS, *P.RESERVED_KINDS})),
       st.lists(OBJECTS, max_size=8),
       st.lists(st.one_of(st.binary(max_size=32), OBJECTS.map(packb)), max_size=4))
def test_fuzz_random_link_headers(kind: int, fields: list, rest: list) -> None:
    """A link kind (or a reserved one) with random fields, then random frames."""
    decode_or_protocol_error([packb([kind, *fields]), *rest])


VALID_LINK_MESSAGES = [
    P.encode_link("n2", "t", ["g"], ["t"], "tcp://127.0.0.1:1", True, ping=200),
    P.encode_linked("n1", [("root", "tcp://a:1")], [("n3", "tcp://b:2")]),
    P.encode_redirect("n4", "tcp://c:3"), P.encode_placement({"open_depth": 1}),
    P.encode_interest(3, [(True, "a.>", None), (False, "b", "q")]),
    P.encode_interest(4, [(True, "a.>", "q")], full=True), P.encode_resync(2),
    [P.encode_forward_header([["w", 2]]),
     *P.encode_pub([ev("a", b"x"), ev("b", b"y", "tag:t", 1, None, {"$queues": ["q"]})])[1:]],
]


@fast(200)
@given(st.sampled_from(VALID_LINK_MESSAGES), st.integers(0, 9), OBJECTS,
       st.sampled_from(["replace", "truncate", "append", "drop-frame", "add-frame"]))
def test_fuzz_mutated_link_messages(frames: list, i: int, obj, how: str) -> None:
    """One defect in a valid link message: a typed error or a message, never a crash."""
    decode_or_protocol_error(mutate(frames, i, obj, how))
