"""The subject vocabulary (treescale.subjects): builders and parsers agree."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treescale import subjects

FAST = settings(max_examples=200, deadline=None)


@pytest.mark.parametrize("node,client,req", [("n1", "c-1", 0), ("edge-7", "abc", 2**40),
                                             ("n", "c", 17)])
def test_inbox_round_trip(node: str, client: str, req: int) -> None:
    subject = subjects.inbox(node, client, req, "f00d")
    assert subject.startswith(subjects.inbox_prefix(node, client))
    assert subjects.parse_inbox(subject) == (node, client, req, "f00d")
    assert subjects.reply_req_id(subject[len(subjects.inbox_prefix(node, client)):]) == req


@FAST
@given(st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True),
       st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True), st.integers(0, 2**63),
       st.from_regex(r"[0-9a-f]{1,24}", fullmatch=True))
def test_property_inbox_round_trip(node: str, client: str, req: int, cap: str) -> None:
    assert subjects.parse_inbox(subjects.inbox(node, client, req, cap)) == \
        (node, client, req, cap)


@pytest.mark.parametrize("subject", [
    "", "$inbox", "$inbox.n1.c1", "$inbox.n1.c1.7", "$inbox.n1.c1.7.8.9",
    "$inbox.n1.c1.seven.ab", "$sys.n1.c1.7.ab", "inbox.n1.c1.7.ab", "orders.new",
    "$inbox.n1.c1.7.", "$INBOX.n1.c1.7.ab",
])
def test_parse_inbox_rejects_other_subjects(subject: str) -> None:
    assert subjects.parse_inbox(subject) is None



@pytest.mark.parametrize("subject,needed", [
    ("$svc.exec.n1", "exec"), ("$svc.docker", "docker"), ("$sys.node.stats", "sys"),
    ("orders.new", None), ("$svcx.a", None), ("$inbox.n.c.1", None),
])
def test_the_permission_a_subject_needs(subject: str, needed: str | None) -> None:
    assert subjects.permission_for(subject) == needed


def test_docker_event_subjects_round_trip() -> None:
    name = subjects.docker_event("n4", "start")
    assert subjects.parse_docker_event(name) == ("n4", "start")
    assert subjects.parse_docker_event("$sys.docker.n4") is None
    assert subjects.parse_docker_event("$sys.node.stats") is None
