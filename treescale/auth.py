"""Client authentication hooks for a TreeScale node.

A client's first message is a hello carrying an optional token and its identity. The node asks
an :class:`AuthHook` whether to admit it. Hooks that may block (external command, HTTP service)
set ``blocking = True`` so the broker runs them on a worker thread instead of its event loop.

A decision that admits carries the client's ``Permissions`` (treescale/permissions.py):
a static token maps to a list of words or a publish/subscribe/services mapping, and an
external backend may return either as its JSON ``permissions``.

Every hook fails closed: ``check()`` never raises, any error becomes a deny ``Decision`` whose
reason says what went wrong, so a broken auth backend cannot crash the broker or let clients in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shlex
import signal
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from treescale import permissions
from treescale.permissions import Permissions

__all__ = [
    "ALL_PERMISSIONS",
    "AllowAll",
    "AuthHook",
    "ClientIdentity",
    "CommandAuth",
    "Decision",
    "HttpAuth",
    "StaticTokens",
    "hook_from_config",
]

#: Everything (used when auth does not restrict a client).
ALL_PERMISSIONS: Permissions = permissions.ALL

# Cap on text copied from an external backend into a reason, so a chatty script or an HTML
# error page cannot flood logs or the deny message sent back to the client.
_MAX_REASON = 200
# Cap on bytes read from an HTTP auth response; a decision never needs more.
_MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Decision:
    """Outcome of an auth check; the gate (brokers/gate.py) enforces its permissions."""

    allowed: bool
    reason: str = ""
    permissions: Permissions = permissions.NONE


@dataclass(frozen=True)
class ClientIdentity:
    """Who the client says it is (from its hello), plus the peer address if known."""

    name: str
    groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    address: str = ""


def _deny(reason: str) -> Decision:
    return Decision(allowed=False, reason=reason)


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _describe(exc: BaseException) -> str:
    msg = str(exc)
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _positive_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"auth timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _payload(token: str | None, who: ClientIdentity) -> dict[str, Any]:
    """The fields an external backend sees (same shape for command stdin and HTTP body)."""
    return {
        "token": token,
        "name": who.name,
        "groups": list(who.groups),
        "tags": list(who.tags),
        "channels": list(who.channels),
        "address": who.address,
    }


def _decision_from_json(
    obj: Mapping[str, Any], default_allow: bool, default_reason: str
) -> Decision:
    """Turn a backend's {"allow", "reason", "permissions"} object into a Decision.

    Malformed fields deny rather than guess, since guessing wrong would admit a client.
    """
    allow = obj.get("allow", default_allow)
    if not isinstance(allow, bool):
        return _deny(f"auth backend returned non-boolean 'allow': {allow!r}"[:_MAX_REASON])
    reason = obj.get("reason")
    reason = _clip(str(reason)) if reason is not None else ""
    if not allow:
        return _deny(reason or default_reason)
    if "permissions" not in obj or obj["permissions"] is None:
        return Decision(True, reason, ALL_PERMISSIONS)
    try:
        perms = permissions.parse(obj["permissions"])
    except ValueError as exc:
        return _deny(_clip(f"auth backend returned invalid permissions: {exc}"))
    return Decision(True, reason, perms)


class AuthHook:
    """Base class for auth hooks.

    Subclasses implement ``_decide``; the public ``check`` wraps it so that no exception can
    escape into the broker (or its worker thread) and every failure denies.
    """

    #: True if ``check`` may block (I/O, subprocess); the broker then calls it off-loop.
    blocking: bool = False

    def check(self, token: str | None, who: ClientIdentity) -> Decision:
        """Decide whether to admit ``who``; never raises."""
        try:
            decision = self._decide(token, who)
        except Exception as exc:  # noqa: BLE001 - fail closed on anything
            return _deny(_clip(f"auth hook {type(self).__name__} failed: {_describe(exc)}"))
        if not isinstance(decision, Decision):
            return _deny(f"auth hook {type(self).__name__} returned {type(decision).__name__}")
        return decision

    def _decide(self, token: str | None, who: ClientIdentity) -> Decision:
        raise NotImplementedError


class AllowAll(AuthHook):
    """No auth configured: everyone gets everything (trusted network / development)."""

    blocking = False

    def _decide(self, token: str | None, who: ClientIdentity) -> Decision:
        return Decision(True, "", ALL_PERMISSIONS)

    def __repr__(self) -> str:
        return "AllowAll()"


class StaticTokens(AuthHook):
    """Shared-secret tokens from config, compared in constant time.

    Tokens are stored as SHA-256 digests so every comparison is over equal-length values (no
    length leak), and the presented token is compared against all of them without stopping at
    the first match, so timing does not reveal which token (if any) matched.
    """

    blocking = False

    def __init__(self, tokens: Iterable[str] | Mapping[str, Any]) -> None:
        self._entries: list[tuple[bytes, Permissions]] = [
            (self._digest(tok), perms) for tok, perms in permissions.parse_tokens(tokens)]

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def _decide(self, token: str | None, who: ClientIdentity) -> Decision:
        if not token:
            return _deny("token required")
        presented = self._digest(token)
        matched: Permissions | None = None
        for digest, perms in self._entries:
            if hmac.compare_digest(presented, digest) and matched is None:
                matched = perms
        if matched is None:
            return _deny("invalid token")
        return Decision(True, "", matched)

    def __repr__(self) -> str:  # never print secrets
        return f"StaticTokens(<{len(self._entries)} tokens>)"


def _first_line(*blobs: bytes) -> str:
    for blob in blobs:
        for line in blob.decode("utf-8", "replace").splitlines():
            if line.strip():
                return _clip(line)
    return ""


def _exit_description(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class CommandAuth(AuthHook):
    """Delegate auth to an external program (LDAP lookup, vault check, ...).

    The program gets the client's details both as ``TREESCALE_*`` environment variables (easy in
    shell) and as a JSON object on stdin (safe for arbitrary values). Exit 0 allows; a JSON
    object on stdout, if printed, overrides the exit code and may set reason/permissions.
    """

    blocking = True

    def __init__(self, command: str | list[str], timeout: float = 5.0) -> None:
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not argv or not all(isinstance(a, str) for a in argv) or not argv[0]:
            raise ValueError(f"auth command must be a non-empty command line, got {command!r}")
        self.argv: list[str] = argv
        self.timeout = _positive_timeout(timeout)

    def _environment(self, token: str | None, who: ClientIdentity) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TREESCALE_TOKEN=token or "",
            TREESCALE_CLIENT_NAME=who.name,
            TREESCALE_CLIENT_GROUPS=",".join(who.groups),
            TREESCALE_CLIENT_TAGS=",".join(who.tags),
            TREESCALE_CLIENT_CHANNELS=",".join(who.channels),
            TREESCALE_CLIENT_ADDRESS=who.address,
        )
        return env

    def _decide(self, token: str | None, who: ClientIdentity) -> Decision:
        stdin = json.dumps(_payload(token, who)).encode()
        try:
            # New session so a timeout can kill the whole process group, including children
            # the script started (which would otherwise keep our pipes open).
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._environment(token, who),
                start_new_session=True,
            )
        except FileNotFoundError:
            return _deny(_clip(f"auth command not found: {self.argv[0]}"))
        except PermissionError:
            return _deny(_clip(f"auth command not executable: {self.argv[0]}"))
        except OSError as exc:
            return _deny(_clip(f"auth command failed to start: {_describe(exc)}"))

        with proc:
            try:
                out, err = proc.communicate(stdin, timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self._kill_group(proc)
                proc.wait()  # not communicate(): a stray grandchild could hold the pipes open
                return _deny(f"auth command timed out after {self.timeout}s")
            except BaseException:
                self._kill_group(proc)
                proc.wait()
                raise

        default_reason = f"auth command {_exit_description(proc.returncode)}"
        try:
            parsed = json.loads(out) if out.strip() else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return _decision_from_json(parsed, proc.returncode == 0, default_reason)
        if proc.returncode == 0:
            return Decision(True, "", ALL_PERMISSIONS)
        return _deny(_first_line(out, err) or default_reason)

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()

    def __repr__(self) -> str:
        return f"CommandAuth({self.argv!r}, timeout={self.timeout})"


def _no_redirect_opener() -> Any:
    """An opener that refuses redirects: urllib would re-issue our POST as a GET, and a
    200 login page at the redirect target would then look like an allow. urllib (and
    with it ssl) is loaded here, by a node that has an auth_url, not by every node."""
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    return urllib.request.build_opener(NoRedirect())


class HttpAuth(AuthHook):
    """Delegate auth to an HTTP service: POST the client's details as JSON, 200 means allow."""

    blocking = True

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        import urllib.parse

        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"auth_url must be an http:// or https:// URL, got {url!r}")
        self.url = url
        self.timeout = _positive_timeout(timeout)
        self._opener = _no_redirect_opener()

    def _decide(self, token: str | None, who: ClientIdentity) -> Decision:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            self.url,
            data=json.dumps(_payload(token, who)).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as resp:
                status, text, body = resp.status, resp.reason, resp.read(_MAX_BODY)
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.reason
            try:
                body = exc.read(_MAX_BODY) if exc.fp is not None else b""
            except (OSError, ValueError):  # body unreadable: the status alone decides
                body = b""
            finally:
                exc.close()
        except urllib.error.URLError as exc:
            return _deny(_clip(f"auth service unreachable: {self._why(exc.reason)}"))
        except (OSError, ValueError) as exc:  # timeouts mid-read, resets, bad status lines
            return _deny(_clip(f"auth service unreachable: {self._why(exc)}"))

        status_text = f"HTTP {status} {text}".strip()
        if status == 200:
            stripped = body.strip()
            if not stripped:
                return Decision(True, "", ALL_PERMISSIONS)
            try:
                parsed = json.loads(stripped)
            except ValueError:
                if stripped.startswith(b"{"):  # meant to be JSON; it might have said deny
                    return _deny("auth service returned malformed JSON")
                return Decision(True, "", ALL_PERMISSIONS)
            if isinstance(parsed, dict):
                return _decision_from_json(parsed, True, "denied by auth service")
            return Decision(True, "", ALL_PERMISSIONS)
        if status in (401, 403):
            reason = ""
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and parsed.get("reason"):
                reason = _clip(str(parsed["reason"]))
            return _deny(reason or status_text)
        return _deny(_clip(f"auth service returned {status_text}"))

    def _why(self, reason: object) -> str:
        if isinstance(reason, TimeoutError):
            return f"timed out after {self.timeout}s"
        if isinstance(reason, BaseException):
            return _describe(reason)
        return str(reason)

    def __repr__(self) -> str:
        return f"HttpAuth({self.url!r}, timeout={self.timeout})"


def hook_from_config(cfg: Mapping[str, Any]) -> AuthHook:
    """Build the node's auth hook from its config section.

    Keys (all optional): ``tokens``, ``auth_command``, ``auth_url``, ``auth_timeout``. Only one
    mechanism may be set, since silently preferring one would leave the other unenforced.
    Unrelated keys are ignored so the whole node config can be passed in.
    """
    chosen = [key for key in ("tokens", "auth_command", "auth_url") if cfg.get(key) is not None]
    if len(chosen) > 1:
        raise ValueError(
            "auth config may set only one of tokens, auth_command, auth_url; got "
            + " and ".join(chosen)
        )
    timeout = cfg.get("auth_timeout")
    timeout = 5.0 if timeout is None else _positive_timeout(timeout)
    if not chosen:
        return AllowAll()
    key = chosen[0]
    if key == "tokens":
        return StaticTokens(cfg["tokens"])
    if key == "auth_command":
        return CommandAuth(cfg["auth_command"], timeout=timeout)
    return HttpAuth(cfg["auth_url"], timeout=timeout)
