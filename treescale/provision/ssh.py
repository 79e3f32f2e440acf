"""One SSH connection to a server (paramiko): connect with trust-on-first-use host keys,
run commands, copy files. Every failure becomes a StepError naming the step and the
reason in words ("connect: authentication failed (password)"), never a traceback."""

from __future__ import annotations

import errno
import os
import shlex
import socket
import threading
from pathlib import Path
from typing import Any

DEFAULT_KNOWN_HOSTS = Path.home() / ".treescale" / "known_hosts"


class StepError(Exception):
    """A server failed at ``step`` for ``reason`` (one readable line)."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step, self.reason = step, reason


def fingerprint(key: Any) -> str:
    import base64
    import hashlib

    raw = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(raw).decode().rstrip('=')}"


class KnownHosts:
    """The host keys tsctl build has seen (OpenSSH known_hosts format), shared by the
    threads of one build. First contact records the key; a different key later is
    refused, naming both fingerprints."""

    def __init__(self, path: Path = DEFAULT_KNOWN_HOSTS, record: bool = True) -> None:
        self.path = Path(path)
        self.record = record
        self._lock = threading.Lock()

    @staticmethod
    def entry_name(host: str, port: int) -> str:
        return host if port == 22 else f"[{host}]:{port}"

    def check(self, host: str, port: int, key: Any) -> None:
        """Accept ``key`` for host:port (recording it on first contact) or raise
        StepError("connect", ...) if a different key is on record."""
        import paramiko

        name = self.entry_name(host, port)
        with self._lock:
            keys = paramiko.HostKeys()
            if self.path.exists():
                try:
                    keys.load(str(self.path))
                except (OSError, paramiko.SSHException) as exc:
                    raise StepError("connect", f"cannot read {self.path}: {exc}") from None
            known = keys.lookup(name)
            if known:
                if any(k == key for k in known.values()):
                    return
                was = ", ".join(fingerprint(k) for k in known.values())
                raise StepError(
                    "connect", f"host key changed: the server offers {fingerprint(key)} but "
                    f"{self.path} records {was} for {name}; if the server was reinstalled, "
                    "delete that line and build again (otherwise someone may be "
                    "intercepting the connection)")
            if not self.record:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = f"{name} {key.get_name()} {key.get_base64()}\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(line)


def _policy(known: KnownHosts, host: str, port: int) -> Any:
    import paramiko

    class TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
        """Every key reaches this policy (the client holds no keys itself), so the
        check against our own file happens for every connection."""

        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            known.check(host, port, key)

    return TrustOnFirstUse()


def _auth_words(target: Any) -> str:
    ways = []
    if target.key_file:
        ways.append(f"key {target.key_file}")
    if target.agent:
        ways.append("agent")
    if target.password is not None:
        ways.append("password")
    return ", ".join(ways) or "no method configured"


def _connect_reason(exc: BaseException, timeout: float) -> str:
    import paramiko

    if isinstance(exc, StepError):
        return exc.reason
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        errs = list(exc.errors.values())
        exc = errs[0] if errs else exc
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g}s (host down or filtered?)"
    if isinstance(exc, OSError) and exc.errno is not None:
        words = {errno.ECONNREFUSED: "connection refused (is sshd listening on that port?)",
                 errno.EHOSTUNREACH: "host unreachable", errno.ENETUNREACH:
                 "network unreachable", errno.ETIMEDOUT: f"no answer within {timeout:g}s"}
        return words.get(exc.errno, os.strerror(exc.errno).lower())
    if isinstance(exc, socket.gaierror):
        return f"unknown host name ({exc.strerror})"
    if isinstance(exc, paramiko.SSHException) and "banner" in str(exc):
        return "no SSH greeting: is an SSH server listening on that port?"
    if isinstance(exc, paramiko.SSHException):
        return f"ssh: {exc}"
    return f"{type(exc).__name__}: {exc}"


class Remote:
    """A live SSH session to one target (an SshTarget-like object)."""

    def __init__(self, target: Any, known: KnownHosts, timeout: float = 10.0) -> None:
        self.target = target
        self.known = known
        self.timeout = timeout
        self._client: Any = None
        self._sftp: Any = None

    def connect(self) -> Remote:
        import paramiko

        t = self.target
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_policy(self.known, t.host, t.port))
        key = None
        if t.key_file:
            try:
                key = paramiko.PKey.from_path(os.path.expanduser(t.key_file),
                                              password=t.password)
            except FileNotFoundError:
                raise StepError("connect", f"key file {t.key_file} not found") from None
            except (paramiko.SSHException, OSError, ValueError, TypeError) as exc:
                raise StepError("connect", f"cannot load key {t.key_file}: {exc}") from None
        try:
            client.connect(t.host, port=t.port, username=t.username, password=t.password,
                           pkey=key, allow_agent=bool(t.agent), look_for_keys=False,
                           timeout=self.timeout, banner_timeout=self.timeout,
                           auth_timeout=self.timeout)
        except paramiko.AuthenticationException:
            client.close()
            raise StepError("connect", f"authentication failed as {t.username} "
                            f"({_auth_words(t)})") from None
        except Exception as exc:  # paramiko raises many kinds; each becomes words
            client.close()
            raise StepError("connect", _connect_reason(exc, self.timeout)) from None
        self._client = client
        return self

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> Remote:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands ---------------------------------------------------------------------

    def run(self, command: str, timeout: float = 60.0, stdin: bytes | None = None,
            step: str = "run") -> tuple[int, str]:
        """Run ``command`` with /bin/sh; (exit status, stdout and stderr merged)."""
        chan = self._client.get_transport().open_session()
        try:
            chan.settimeout(timeout)
            chan.set_combine_stderr(True)
            chan.exec_command(command)
            if stdin is not None:
                chan.sendall(stdin)
            chan.shutdown_write()
            chunks = []
            try:
                while data := chan.recv(65536):
                    chunks.append(data)
            except TimeoutError:
                raise StepError(step, f"no progress within {timeout:g}s") from None
            return chan.recv_exit_status(), b"".join(chunks).decode(errors="replace")
        finally:
            chan.close()

    def check(self, command: str, step: str, timeout: float = 60.0,
              stdin: bytes | None = None) -> str:
        """Run ``command``; its output, or StepError with the last lines of it."""
        code, output = self.run(command, timeout, stdin, step)
        if code != 0:
            tail = " | ".join(line.strip() for line in output.strip().splitlines()[-3:])
            raise StepError(step, f"exit status {code}: {tail or '(no output)'}")
        return output

    # -- files ------------------------------------------------------------------------

    @property
    def sftp(self) -> Any:
        if self._sftp is None:
            self._sftp = self._client.open_sftp()
        return self._sftp

    def read_text(self, path: str) -> str | None:
        try:
            with self.sftp.open(path, "r") as f:
                return f.read().decode()
        except FileNotFoundError:
            return None

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``path`` atomically (a temporary file renamed over it)."""
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        with self.sftp.open(tmp, "wb") as f:
            f.write(data)
        self.sftp.chmod(tmp, mode)
        self.sftp.posix_rename(tmp, path)

    def put(self, local: Path, path: str, mode: int | None = None) -> None:
        """Upload ``local`` to ``path`` (a temporary file renamed over it); with
        ``mode``, the file has it before any byte is written (a database holding
        tokens is never readable by another user of the server, even for a moment)."""
        tmp = f"{path}.part"
        if mode is None:
            self.sftp.put(str(local), tmp)
        else:
            with self.sftp.open(tmp, "wb") as f:
                f.chmod(mode)
                f.write(local.read_bytes())
        self.sftp.posix_rename(tmp, path)

    def listdir_sizes(self, path: str) -> dict[str, int]:
        try:
            return {a.filename: a.st_size for a in self.sftp.listdir_attr(path)}
        except FileNotFoundError:
            return {}

    def remove(self, path: str) -> None:
        self.sftp.remove(path)


def q(path: str) -> str:
    return shlex.quote(path)
