"""The pure core of event handlers: validation, the run environment, result records."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treescale.client import Event
from treescale.services.handlers import (
    MAX_OUTPUT,
    HandlerError,
    HandlerSpec,
    OutputBuffer,
    audit_record,
    check_pattern,
    handler_env,
    header_env_name,
    limit_message,
    run_result,
    spec_from_args,
)
from treescale.services.process import ProcessResult


@pytest.mark.parametrize("pattern", ["deploy.web", "deploy.*", "deploy.>", "*.web", ">",
                                     "$sys.node.down", "$sys.node.*", "$sys.audit.exec",
                                     "$sys", "$sys.audit", "*.handlers.n1.result"])
def test_valid_patterns_are_accepted(pattern):
    assert check_pattern(pattern) == tuple(pattern.split("."))


@pytest.mark.parametrize("pattern, message", [
    ("", "non-empty"),
    ("a..b", "empty token"),
    ("a.>.b", "'>' must be the last token"),
    ("a.we*", "whole tokens"),
    ("a b", "white space"),
    (None, "non-empty string"),
    ("$svc.exec", "$svc subjects cannot have handlers"),
    ("$inbox.n1.>", "$inbox subjects cannot have handlers"),
    ("$sys.>", "loop"),
    ("$sys.*.n1.result", "loop"),
    ("$sys.handlers.n1.result", "loop"),
    ("$sys.audit.handler", "loop"),
    ("$sys.audit.*", "loop"),
    ("$sys.handlers", "loop"),
    ("$sys.audit.handler.x", "loop"),
    ("$sys.*.up", "loop"),
    ("$x.y", "$x subjects cannot have handlers"),
])
def test_bad_patterns_say_what_is_wrong(pattern, message):
    with pytest.raises(HandlerError, match=re.escape(message)):
        check_pattern(pattern)


def test_spec_defaults_and_id():
    spec = spec_from_args({"pattern": "deploy.*", "run": "echo hi"})
    assert spec == HandlerSpec("deploy.*", "deploy.*", "echo hi")
    spec = spec_from_args({"pattern": "a", "run": "x", "id": "mine", "timeout": 2,
                           "max_concurrent": 3, "queue": 0})
    assert (spec.id, spec.timeout, spec.max_concurrent, spec.queue) == ("mine", 2.0, 3, 0)
    assert isinstance(spec.timeout, float) and isinstance(spec.max_concurrent, int)


@pytest.mark.parametrize("args, message", [
    ({"pattern": "a", "run": ""}, "command to run is empty"),
    ({"pattern": "a", "run": "   "}, "command to run is empty"),
    ({"pattern": "a"}, "command to run is empty"),
    ({"pattern": "a", "run": "x\0y"}, "NUL"),
    ({"pattern": "a", "run": "x" * 20000}, "at most"),
    ({"pattern": "a", "run": "x", "id": "two words"}, "without white space"),
    ({"pattern": "a", "run": "x", "timeout": 0}, "timeout must be between"),
    ({"pattern": "a", "run": "x", "timeout": "10"}, "timeout must be a number"),
    ({"pattern": "a", "run": "x", "max_concurrent": 0}, "max_concurrent must be between"),
    ({"pattern": "a", "run": "x", "max_concurrent": 1.5}, "whole number"),
    ({"pattern": "a", "run": "x", "max_concurrent": True}, "whole number"),
    ({"pattern": "a", "run": "x", "queue": -1}, "queue must be between"),
    ({"pattern": "a.", "run": "x"}, "invalid event pattern"),
])
def test_bad_specs_are_refused_with_a_reason(args, message):
    with pytest.raises(HandlerError, match=re.escape(message)):
        spec_from_args(args)


def test_env_carries_the_event_and_drops_the_nodes_own_settings():
    env = handler_env({"PATH": "/bin", "TREESCALE_TOKEN": "secret",
                       "TREESCALE_HEADER_OLD": "stale"},
                      handler="h", event="deploy.web", source="app", node="n1",
                      address="tcp://127.0.0.1:1", headers={"content-type": "json",
                                                           "Raw": b"by\x00tes", "n": 3},
                      reply="$inbox.n1.7.1")
    assert env == {"PATH": "/bin", "TREESCALE_EVENT": "deploy.web",
                   "TREESCALE_SOURCE": "app", "TREESCALE_NODE": "n1",
                   "TREESCALE_HANDLER": "h", "TREESCALE_ADDRESS": "tcp://127.0.0.1:1",
                   "TREESCALE_HEADER_CONTENT_TYPE": "json", "TREESCALE_HEADER_RAW": "bytes",
                   "TREESCALE_HEADER_N": "3", "TREESCALE_REPLY": "$inbox.n1.7.1"}
    plain = handler_env({}, handler="h", event="e", source="s", node="n", address="a")
    assert "TREESCALE_REPLY" not in plain


@given(st.text(min_size=1, max_size=30))
def test_header_env_names_are_always_valid_variable_names(key):
    assert re.fullmatch(r"TREESCALE_HEADER_[A-Z0-9_]+", header_env_name(key))


@given(st.lists(st.binary(max_size=50), max_size=20), st.integers(0, 200))
def test_output_buffer_keeps_a_prefix_and_counts_everything(chunks, limit):
    buf = OutputBuffer(limit)
    for c in chunks:
        buf.add(c)
    whole = b"".join(chunks)
    assert b"".join(buf.parts) == whole[:limit]
    assert buf.total == len(whole)
    assert buf.truncated == (len(whole) > limit)


def test_result_and_audit_records():
    ev = Event("deploy.web", b"x", {"trigger": "t1"}, "app")
    out, err = OutputBuffer(), OutputBuffer()
    out.add(b"hello\n")
    err.add(b"\xff")
    r = run_result("n1", "h", ev, ProcessResult(0, 0.25), out, err)
    assert r == {"node": "n1", "handler": "h", "event": "deploy.web", "source": "app",
                 "exit": 0, "duration": 0.25, "stdout": "hello\n", "stderr": "\ufffd",
                 "truncated": False, "error": None, "trigger": "t1", "ok": True}
    assert audit_record(r) == {"node": "n1", "handler": "h", "event": "deploy.web",
                               "source": "app", "exit": 0, "duration": 0.25, "error": None,
                               "trigger": "t1"}
    failed = run_result("n1", "h", Event("e", b""), ProcessResult(3, 1.0))
    assert not failed["ok"] and failed["trigger"] is None and failed["exit"] == 3
    big = OutputBuffer()
    big.add(b"y" * (MAX_OUTPUT + 1))
    assert run_result("n1", "h", ev, ProcessResult(0, 0.1), big)["truncated"]


def test_a_refusal_names_the_limits():
    spec = HandlerSpec("h", "e.*", "true", max_concurrent=2, queue=5)
    r = run_result("n1", "h", Event("e.x", b""), None,
                   error=limit_message("n1", spec, "e.x"))
    assert r["exit"] is None and not r["ok"]
    assert "max_concurrent 2" in r["error"] and "queue 5" in r["error"]
    assert "'h' on node n1 refused e.x" in r["error"]
