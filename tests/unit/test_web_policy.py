"""The gateway's pure parts: the WebSocket framing (fuzzed), the origin rule and the
mapping of request paths onto static files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from treescale.web import framing
from treescale.web.http import content_security_policy, origin_refusal, static_file


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=20))
def test_frames_survive_the_framing(frames):
    assert [bytes(f) for f in framing.decode(framing.encode(frames))] == frames


@given(st.binary(max_size=400))
def test_any_payload_decodes_to_frames_that_encode_back_or_is_refused(data):
    try:
        frames = framing.decode(data)
    except framing.FramingError as exc:
        assert str(exc)  # names the problem
        return
    assert framing.encode(frames) == data


@pytest.mark.parametrize("data, problem", [
    (b"", "empty"), (b"\x01\x00", "cut short"), (b"\x05\x00\x00\x00abc", "claims 5"),
    (b"\x00\x00\x00\x00\x01", "cut short")])
def test_malformed_payloads_are_named(data, problem):
    with pytest.raises(framing.FramingError, match=problem):
        framing.decode(data)


def test_decoded_frames_are_views_not_copies():
    big = bytes(range(256)) * 1000
    payload = framing.encode([b"h", big])
    head, body = framing.decode(payload)
    assert isinstance(body, memoryview) and body.obj is payload and bytes(body) == big


@pytest.mark.parametrize("origin, host, allowed, ok", [
    (None, "n:1", (), True),  # not a browser
    ("http://n:1", "n:1", (), True),  # the dashboard this port serves
    ("https://N:1", "n:1", (), True),
    ("http://n:2", "n:1", (), False),  # another port is another origin
    ("http://evil", "n:1", (), False),
    ("null", "n:1", (), False),  # a sandboxed page or a file
    ("https://app.example.com", "n:1", ("https://app.example.com/",), True),
    ("https://app.example.com.evil", "n:1", ("https://app.example.com",), False),
    ("http://evil", "n:1", ("*",), True),
    ("ws://n:1", "n:1", (), False),
])
def test_the_origin_rule(origin, host, allowed, ok):
    refusal = origin_refusal(origin, host, allowed)
    assert (refusal is None) == ok
    if not ok:
        assert repr(origin) in refusal and "websocket_origins" in refusal


def test_static_paths_never_leave_the_root(tmp_path: Path):
    (tmp_path / "index.html").write_text("<html>")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "a.js").write_text("x")
    (tmp_path / ".secret").write_text("s")
    (tmp_path.parent / "outside.txt").write_text("o")
    assert static_file("/", tmp_path) == tmp_path / "index.html"
    assert static_file("/app/a.js?v=1", tmp_path) == tmp_path / "app" / "a.js"
    for bad in ("/../outside.txt", "/%2e%2e/outside.txt", "/app/../../outside.txt",
                "/.secret", "/app/%00a.js", "/app\\a.js", "/missing.js", "/app/"):
        assert static_file(bad, tmp_path) is None, bad


def test_the_import_map_is_the_one_inline_script_allowed():
    page = b'<html><script type="importmap">{"imports": {}}</script></html>'
    csp = content_security_policy(page, Path("index.html"))
    assert "'sha256-" in csp and "'unsafe-inline'" not in csp
    assert "'sha256-" not in content_security_policy(page, Path("app.js"))
