"""Tests for treescale.auth against real processes and a real HTTP server (no mocks)."""

from __future__ import annotations

import json
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from treescale.auth import (
    AllowAll,
    AuthHook,
    ClientIdentity,
    CommandAuth,
    Decision,
    HttpAuth,
    StaticTokens,
    hook_from_config,
)
from treescale.permissions import parse

WHO = ClientIdentity(
    name="web-1",
    groups=("web", "eu"),
    tags=("prod",),
    channels=("logs", "metrics"),
    address="10.0.0.7",
)


# --- Decision / AllowAll / base class ---------------------------------------------------------


def test_decision_defaults_and_frozen() -> None:
    d = Decision(False)
    assert d.reason == "" and d.permissions == parse([])
    with pytest.raises(AttributeError):
        d.allowed = True  # type: ignore[misc]


def test_allow_all() -> None:
    hook = AllowAll()
    assert hook.blocking is False
    assert hook.check(None, WHO) == Decision(True, "", parse(["*"]))


def test_hook_exception_becomes_deny() -> None:
    class Broken(AuthHook):
        def _decide(self, token: str | None, who: ClientIdentity) -> Decision:
            raise RuntimeError("backend exploded")

    d = Broken().check("t", WHO)
    assert not d.allowed
    assert "RuntimeError" in d.reason and "backend exploded" in d.reason


# --- StaticTokens -----------------------------------------------------------------------------


def test_static_tokens_list() -> None:
    hook = StaticTokens(["alpha", "beta"])
    assert hook.blocking is False
    assert hook.check("beta", WHO) == Decision(True, "", parse(["*"]))
    assert hook.check("gamma", WHO) == Decision(False, "invalid token")
    assert hook.check("alph", WHO) == Decision(False, "invalid token")
    assert hook.check(None, WHO) == Decision(False, "token required")
    assert hook.check("", WHO) == Decision(False, "token required")


def test_static_tokens_mapping_permissions() -> None:
    hook = StaticTokens({"pubber": ["pub"], "ops": ["pub", "sub", "exec"], "root": "*"})
    assert hook.check("pubber", WHO).permissions == parse(["pub"])
    assert hook.check("ops", WHO).permissions == parse(["pub", "sub", "exec"])
    assert hook.check("root", WHO).permissions == parse(["*"])
    assert not hook.check("nobody", WHO).allowed


def test_static_tokens_non_ascii_token_denied_not_raised() -> None:
    hook = StaticTokens(["s3cret"])
    assert hook.check("sécret\udcff", WHO) == Decision(False, "invalid token")


def test_static_tokens_repr_hides_secrets() -> None:
    assert "s3cret" not in repr(StaticTokens(["s3cret"]))


@pytest.mark.parametrize("bad", [[], "single-string", [""], {"t": 5}])
def test_static_tokens_rejects_bad_config(bad: object) -> None:
    with pytest.raises(ValueError):
        StaticTokens(bad)  # type: ignore[arg-type]


# --- CommandAuth ------------------------------------------------------------------------------


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_command_checks_env_token(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        "auth.sh",
        '#!/bin/sh\n[ "$TREESCALE_TOKEN" = "good" ] && exit 0\necho "bad token for $TREESCALE_CLIENT_NAME"\nexit 1\n',
    )
    hook = CommandAuth([str(script)])
    assert hook.blocking is True
    assert hook.check("good", WHO) == Decision(True, "", parse(["*"]))
    assert hook.check("nope", WHO) == Decision(False, "bad token for web-1")
    assert hook.check(None, WHO) == Decision(False, "bad token for web-1")


def test_command_string_is_shlex_split_and_stderr_reason(tmp_path: Path) -> None:
    script = _script(tmp_path, "deny.sh", 'echo "denied: $1" >&2\nexit 3\n')
    d = CommandAuth(f"/bin/sh {script} 'two words'").check("t", WHO)
    assert d == Decision(False, "denied: two words")


def test_command_silent_failure_reports_exit_status(tmp_path: Path) -> None:
    script = _script(tmp_path, "silent.sh", "exit 7\n")
    d = CommandAuth(["/bin/sh", str(script)]).check("t", WHO)
    assert d == Decision(False, "auth command exited with status 7")


def test_command_receives_env_and_stdin_json(tmp_path: Path) -> None:
    # The script records what it saw in a file (it has exited once check() returns).
    seen_file = tmp_path / "seen.json"
    script = _script(
        tmp_path,
        "record.py",
        "import json, os, sys\n"
        "seen = {'stdin': json.load(sys.stdin),\n"
        "        'env': {k: v for k, v in os.environ.items() if k.startswith('TREESCALE_')}}\n"
        "open(sys.argv[1], 'w').write(json.dumps(seen))\n"
        "print(json.dumps({'allow': True, 'reason': 'ok', 'permissions': []}))\n",
    )
    d = CommandAuth([sys.executable, str(script), str(seen_file)]).check("tok", WHO)
    assert d == Decision(True, "ok", parse([]))
    seen = json.loads(seen_file.read_text())
    assert seen["stdin"] == {
        "token": "tok",
        "name": "web-1",
        "groups": ["web", "eu"],
        "tags": ["prod"],
        "channels": ["logs", "metrics"],
        "address": "10.0.0.7",
    }
    assert seen["env"] == {
        "TREESCALE_TOKEN": "tok",
        "TREESCALE_CLIENT_NAME": "web-1",
        "TREESCALE_CLIENT_GROUPS": "web,eu",
        "TREESCALE_CLIENT_TAGS": "prod",
        "TREESCALE_CLIENT_CHANNELS": "logs,metrics",
        "TREESCALE_CLIENT_ADDRESS": "10.0.0.7",
    }


def test_command_none_token_is_empty_env_and_null_json(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        "none.py",
        "import json, os, sys\n"
        "ok = json.load(sys.stdin)['token'] is None and os.environ['TREESCALE_TOKEN'] == ''\n"
        "sys.exit(0 if ok else 1)\n",
    )
    assert CommandAuth([sys.executable, str(script)]).check(None, WHO).allowed


def test_command_json_overrides_exit_code(tmp_path: Path) -> None:
    allow = _script(
        tmp_path, "allow.sh", 'echo \'{"allow": true, "permissions": ["pub", "sub"]}\'\nexit 1\n'
    )
    deny = _script(tmp_path, "deny.sh", 'echo \'{"allow": false, "reason": "suspended"}\'\n')
    assert CommandAuth(["/bin/sh", str(allow)]).check("t", WHO) == Decision(
        True, "", parse(["pub", "sub"])
    )
    assert CommandAuth(["/bin/sh", str(deny)]).check("t", WHO) == Decision(False, "suspended")


def test_command_invalid_json_fields_deny(tmp_path: Path) -> None:
    script = _script(tmp_path, "weird.sh", 'echo \'{"allow": "yes"}\'\n')
    d = CommandAuth(["/bin/sh", str(script)]).check("t", WHO)
    assert not d.allowed and "allow" in d.reason


def test_command_timeout_kills_process_group(tmp_path: Path) -> None:
    # The background child keeps stdout open; the hook must not wait for it.
    script = _script(tmp_path, "slow.sh", "sleep 30 &\nsleep 30\n")
    hook = CommandAuth(["/bin/sh", str(script)], timeout=0.5)
    start = time.monotonic()
    d = hook.check("t", WHO)
    assert time.monotonic() - start < 3
    assert d == Decision(False, "auth command timed out after 0.5s")


def test_command_not_found(tmp_path: Path) -> None:
    missing = str(tmp_path / "no" / "such-auth")
    assert CommandAuth([missing]).check("t", WHO) == Decision(
        False, f"auth command not found: {missing}"
    )


def test_command_rejects_empty() -> None:
    with pytest.raises(ValueError):
        CommandAuth("")
    with pytest.raises(ValueError):
        CommandAuth(["true"], timeout=0)


# --- HttpAuth ---------------------------------------------------------------------------------


class _AuthServer(ThreadingHTTPServer):
    """Fake auth service; records the last request body so tests can check the payload."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.last_body: object = None
        self.release = threading.Event()  # unblocks /slow handlers at teardown

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _AuthServer

    ROUTES: dict[str, tuple[int, bytes]] = {
        "/allow": (200, b""),
        "/perms": (200, b'{"permissions": ["sub"], "reason": "welcome"}'),
        "/rules": (200, b'{"permissions": {"publish": {"allow": ["a.>"], "deny": ["a.b"]},'
                        b' "services": ["exec"]}}'),
        "/bad-rules": (200, b'{"permissions": {"publish": {"allow": ["a..b"]}}}'),
        "/json-false": (200, b'{"allow": false, "reason": "account locked"}'),
        "/bad-json": (200, b'{"allow": fal'),
        "/deny": (403, b'{"reason": "banned client"}'),
        "/deny-plain": (401, b""),
        "/error": (500, b"boom"),
    }

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        # Recorded before replying, so it is visible once the client's check() returns.
        self.server.last_body = json.loads(self.rfile.read(length))
        if self.path == "/slow":
            self.server.release.wait(5)
            self._reply(200)
        elif self.path == "/redirect":
            self._reply(302, headers={"Location": "/allow"})
        else:
            self._reply(*self.ROUTES.get(self.path, (404, b"")))


@pytest.fixture(scope="module")
def auth_server() -> Iterator[_AuthServer]:
    server = _AuthServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests to 127.0.0.1 must not be routed through a proxy from the environment."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_http_allow_sends_client_fields(auth_server: _AuthServer) -> None:
    hook = HttpAuth(auth_server.url + "/allow")
    assert hook.blocking is True
    assert hook.check("tok", WHO) == Decision(True, "", parse(["*"]))
    assert auth_server.last_body == {
        "token": "tok",
        "name": "web-1",
        "groups": ["web", "eu"],
        "tags": ["prod"],
        "channels": ["logs", "metrics"],
        "address": "10.0.0.7",
    }


def test_http_allow_with_permissions(auth_server: _AuthServer) -> None:
    d = HttpAuth(auth_server.url + "/perms").check(None, WHO)
    assert d == Decision(True, "welcome", parse(["sub"]))
    assert isinstance(auth_server.last_body, dict) and auth_server.last_body["token"] is None


def test_http_permissions_may_be_allow_deny_rules(auth_server: _AuthServer) -> None:
    d = HttpAuth(auth_server.url + "/rules").check("t", WHO)
    assert d == Decision(True, "", parse({"publish": {"allow": ["a.>"], "deny": ["a.b"]},
                                          "services": ["exec"]}))
    assert d.permissions.why_not_publish("a.c") is None
    assert "deny 'a.b'" in d.permissions.why_not_publish("a.b").message
    bad = HttpAuth(auth_server.url + "/bad-rules").check("t", WHO)
    assert not bad.allowed and "invalid permissions" in bad.reason and "a..b" in bad.reason


def test_http_deny_403_with_reason(auth_server: _AuthServer) -> None:
    assert HttpAuth(auth_server.url + "/deny").check("t", WHO) == Decision(False, "banned client")


def test_http_deny_401_without_body_uses_status(auth_server: _AuthServer) -> None:
    assert HttpAuth(auth_server.url + "/deny-plain").check("t", WHO) == Decision(
        False, "HTTP 401 Unauthorized"
    )


def test_http_json_allow_false(auth_server: _AuthServer) -> None:
    d = HttpAuth(auth_server.url + "/json-false").check("t", WHO)
    assert d == Decision(False, "account locked")


def test_http_malformed_json_denies(auth_server: _AuthServer) -> None:
    d = HttpAuth(auth_server.url + "/bad-json").check("t", WHO)
    assert not d.allowed and "malformed" in d.reason


def test_http_500_denies(auth_server: _AuthServer) -> None:
    d = HttpAuth(auth_server.url + "/error").check("t", WHO)
    assert not d.allowed
    assert "500" in d.reason


def test_http_redirect_is_not_followed(auth_server: _AuthServer) -> None:
    d = HttpAuth(auth_server.url + "/redirect").check("t", WHO)
    assert not d.allowed and "302" in d.reason


def test_http_timeout(auth_server: _AuthServer) -> None:
    d = HttpAuth(auth_server.url + "/slow", timeout=0.3).check("t", WHO)
    assert d == Decision(False, "auth service unreachable: timed out after 0.3s")


def test_http_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    d = HttpAuth(f"http://127.0.0.1:{port}/auth").check("t", WHO)
    assert not d.allowed
    assert d.reason.startswith("auth service unreachable:")
    assert "refused" in d.reason.lower()


@pytest.mark.parametrize("url", ["ftp://example.com/auth", "file:///etc/passwd", "localhost:80"])
def test_http_rejects_non_http_urls(url: str) -> None:
    with pytest.raises(ValueError):
        HttpAuth(url)


# --- hook_from_config -------------------------------------------------------------------------


def test_config_empty_is_allow_all() -> None:
    assert isinstance(hook_from_config({}), AllowAll)
    assert isinstance(hook_from_config({"tokens": None, "listen": "tcp://*:7000"}), AllowAll)


def test_config_tokens() -> None:
    hook = hook_from_config({"tokens": {"abc": ["pub"]}})
    assert isinstance(hook, StaticTokens)
    assert hook.check("abc", WHO).permissions == parse(["pub"])


def test_config_command_and_timeout() -> None:
    hook = hook_from_config({"auth_command": "/usr/bin/auth --strict", "auth_timeout": 2})
    assert isinstance(hook, CommandAuth)
    assert hook.argv == ["/usr/bin/auth", "--strict"] and hook.timeout == 2.0


def test_config_url() -> None:
    hook = hook_from_config({"auth_url": "https://auth.example/check"})
    assert isinstance(hook, HttpAuth) and hook.timeout == 5.0


def test_config_conflict_names_keys() -> None:
    with pytest.raises(ValueError, match="tokens and auth_url"):
        hook_from_config({"tokens": ["a"], "auth_url": "http://x/"})
    with pytest.raises(ValueError, match="auth_command and auth_url"):
        hook_from_config({"auth_command": "x", "auth_url": "http://x/"})


def test_config_bad_timeout() -> None:
    with pytest.raises(ValueError, match="timeout"):
        hook_from_config({"auth_url": "http://x/", "auth_timeout": -1})
