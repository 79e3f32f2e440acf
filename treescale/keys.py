"""A node's CURVE keypair and whom it trusts: the files under ``keys_dir``.

Layout (the certificate files are zmq.auth's format, readable by ``load_certificate``)::

    KEYS_DIR/                 0700
      node.key                the node's public certificate
      node.key_secret         its secret certificate, 0600
      authorized/NAME.key     the public certificate of each node (or client) trusted,
                              one file per name
      revoked                 z85 public keys no longer trusted, one a line (the key
                              first; after it, or on a line of its own, a # comment)

A key in ``revoked`` is refused even if an authorized file still holds it. ``Trust`` is
the live view a node keeps: it re-reads the directory when a file changes, so a trust
or a revoke takes effect for the next connection without restarting the node.

Owns: reading, generating and writing these files, checking z85 keys, and the trust
decision for a key (which name it is authorized as, whether it is revoked). Every
problem is one ``KeysError`` line naming the file.

Must not touch: sockets and ZAP (treescale.brokers.curve applies the decisions),
node configs (treescale.config only names the directory).
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

OWN_PUBLIC = "node.key"
OWN_SECRET = "node.key_secret"
AUTHORIZED = "authorized"
REVOKED = "revoked"
KEY_SUFFIX = ".key"
_Z85 = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
_NAME = re.compile(r"^[^\s/.][^\s/]*$")


class KeysError(ValueError):
    """A key file or key is missing or malformed: one readable line naming it."""


@dataclass(frozen=True)
class Keypair:
    """A CURVE keypair, both halves z85 text (``secret`` None: a public key only)."""

    public: str
    secret: str | None = None

    @classmethod
    def generate(cls) -> Keypair:
        public, secret = zmq.curve_keypair()
        return cls(public.decode(), secret.decode())

    def as_bytes(self) -> tuple[bytes, bytes]:
        """(public, secret) as the socket options want them."""
        if self.secret is None:
            raise KeysError("a public key alone cannot open a CURVE connection")
        return self.public.encode(), self.secret.encode()


def check_key(key: str | bytes, what: str = "key") -> str:
    """``key`` as z85 text if it is a CURVE public key (40 z85 characters), else
    KeysError naming ``what``."""
    text = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
    text = text.strip()
    try:
        valid = bool(_Z85.match(text)) and len(z85.decode(text)) == 32
    except (ValueError, struct.error):  # z85 text whose groups overflow 32 bits
        valid = False
    if not valid:
        raise KeysError(f"{what}: not a CURVE key (40 z85 characters), got {text[:48]!r}")
    return text


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise KeysError(f"key name {name!r} must be non-empty, without spaces or '/', "
                        "not starting with '.'")
    return name


# ----------------------------------------------------------------------- files


def read_certificate(path: str | Path, need_secret: bool = False) -> Keypair:
    """The keypair of a certificate file; KeysError if it is missing or malformed."""
    p = Path(path)
    try:
        text = p.read_text(errors="replace")
    except FileNotFoundError:
        raise KeysError(f"{p}: no such key file") from None
    except OSError as exc:
        raise KeysError(f"{p}: cannot read: {exc.strerror or exc}") from None
    found: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        for field in ("public-key", "secret-key"):
            if line.startswith(field) and "=" in line:
                found[field] = line.split("=", 1)[1].strip(" \t'\"")
    if "public-key" not in found:
        raise KeysError(f"{p}: malformed key file (no public-key line)")
    public = check_key(found["public-key"], f"{p}: public-key")
    secret = found.get("secret-key")
    if secret is None:
        if need_secret:
            raise KeysError(f"{p}: malformed secret key file (no secret-key line)")
        return Keypair(public)
    secret = check_key(secret, f"{p}: secret-key")
    if zmq.curve_public(secret.encode()).decode() != public:
        raise KeysError(f"{p}: the secret key does not match its public key")
    return Keypair(public, secret)


def certificate_text(pair: Keypair, secret: bool = False) -> str:
    """A certificate file (zmq.auth's format, no timestamp: the same key always makes
    the same file, so a build can compare digests)."""
    lines = ["#   ZeroMQ CURVE " + ("**Secret** Certificate" if secret else
                                     "Public Certificate"),
             "#   written by TreeScale" + ("; DO NOT PROVIDE THIS FILE TO OTHER USERS"
                                           if secret else ""),
             "metadata", "curve", f'    public-key = "{pair.public}"']
    if secret:
        lines.append(f'    secret-key = "{pair.secret}"')
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` with ``mode`` from the first byte (never readable by
    others, not even for a moment), replacing it atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_keypair(directory: str | Path, pair: Keypair, stem: str = "node") -> None:
    """``stem.key`` (0644) and ``stem.key_secret`` (0600) in ``directory`` (0700)."""
    d = Path(directory)
    _private_dir(d)
    write_private(d / f"{stem}{KEY_SUFFIX}", certificate_text(pair), 0o644)
    write_private(d / f"{stem}{KEY_SUFFIX}_secret", certificate_text(pair, secret=True))


def generate(keys_dir: str | Path, force: bool = False) -> Keypair:
    """Make the node's keypair in ``keys_dir`` (and an empty ``authorized/``). An
    existing keypair is kept (KeysError) unless ``force``."""
    d = Path(keys_dir)
    if (d / OWN_SECRET).exists() and not force:
        raise KeysError(f"{d / OWN_SECRET}: a keypair exists already (force to replace it)")
    pair = Keypair.generate()
    write_keypair(d, pair)
    _private_dir(d / AUTHORIZED)
    return pair


def load_own(keys_dir: str | Path) -> Keypair:
    """The node's own keypair, secret included."""
    d = Path(keys_dir)
    if not d.is_dir():
        raise KeysError(f"keys_dir {d}: no such directory (tsctl keys gen --dir {d})")
    return read_certificate(d / OWN_SECRET, need_secret=True)


def authorized(keys_dir: str | Path) -> dict[str, str]:
    """name -> public key of every file in ``authorized/``."""
    d = Path(keys_dir) / AUTHORIZED
    if not d.is_dir():
        return {}
    return {p.name[:-len(KEY_SUFFIX)]: read_certificate(p).public
            for p in sorted(d.iterdir()) if p.name.endswith(KEY_SUFFIX)}


def revoked(keys_dir: str | Path) -> set[str]:
    """The revoked public keys."""
    p = Path(keys_dir) / REVOKED
    try:
        lines = p.read_text().splitlines()
    except FileNotFoundError:
        return set()
    out = set()
    for n, line in enumerate(lines, 1):
        # the key is the first word, what follows it a comment: '#' is a z85
        # character, but never the first of a key (its value would overflow 32 bits)
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        out.add(check_key(words[0], f"{p}:{n}"))
    return out


def public_key_of(value: str) -> str:
    """A public key given as z85 text or as the path of a certificate file."""
    value = value.strip()
    if _Z85.match(value):
        return check_key(value)
    if os.path.exists(value):
        return read_certificate(value).public
    raise KeysError(f"{value[:48]!r} is neither a CURVE key (40 z85 characters) nor a "
                    "key file")


def trust(keys_dir: str | Path, name: str, key: str) -> Path:
    """Authorize ``key`` (z85 or a certificate file) as ``name``; a revoked key stays
    refused (KeysError)."""
    public = public_key_of(key)
    if public in revoked(keys_dir):
        raise KeysError(f"key {public} is revoked in {Path(keys_dir) / REVOKED}; remove "
                        "that line first to trust it again")
    d = Path(keys_dir) / AUTHORIZED
    _private_dir(d)
    path = d / f"{check_name(name)}{KEY_SUFFIX}"
    write_private(path, certificate_text(Keypair(public)), 0o644)
    return path


def revoke(keys_dir: str | Path, name_or_key: str) -> tuple[str, str | None]:
    """Revoke an authorized name or a key: (the key, the name it was authorized as).
    The authorized file is removed; the key is added to ``revoked``."""
    known = authorized(keys_dir)
    if name_or_key in known:
        name, key = name_or_key, known[name_or_key]
    else:
        try:
            key = public_key_of(name_or_key)
        except KeysError:
            raise KeysError(f"{name_or_key!r} is neither an authorized name (known: "
                            f"{', '.join(known) or 'none'}) nor a key") from None
        name = next((n for n, k in known.items() if k == key), None)
    d = Path(keys_dir)
    _private_dir(d)
    if key not in revoked(d):
        with open(d / REVOKED, "a") as f:
            f.write(f"{key}  # {name or 'key'}\n")
    for n, k in known.items():
        if k == key:
            (d / AUTHORIZED / f"{n}{KEY_SUFFIX}").unlink(missing_ok=True)
    return key, name


# ----------------------------------------------------------------------- the live view


class Trust:
    """What a running node trusts: its own keypair, the authorized keys by name and
    the revoked ones, re-read whenever a file under ``keys_dir`` changed."""

    def __init__(self, keys_dir: str | Path, name: str) -> None:
        self.dir = Path(keys_dir)
        self.name = name
        self.own = load_own(self.dir)
        self._stamp: tuple = ()
        self.by_name: dict[str, str] = {}
        self.names_of: dict[str, set[str]] = {}
        self.revoked: set[str] = set()
        self.refresh()

    def _current_stamp(self) -> tuple:
        stamps = []
        for p in (self.dir / AUTHORIZED, self.dir / REVOKED):
            try:
                stamps.append(p.stat().st_mtime_ns)
            except FileNotFoundError:
                stamps.append(None)
        d = self.dir / AUTHORIZED
        if d.is_dir():  # a file rewritten in place does not touch the directory
            stamps += [(p.name, p.stat().st_mtime_ns) for p in sorted(d.iterdir())]
        return tuple(stamps)

    def refresh(self) -> bool:
        """Re-read the files if any changed; True if they did. A file broken meanwhile
        keeps the last good view (KeysError for the caller to log)."""
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return False
        by_name, gone = authorized(self.dir), revoked(self.dir)
        self._stamp = stamp
        self.by_name = {**by_name, self.name: self.own.public}
        self.names_of = {}
        for n, k in self.by_name.items():
            self.names_of.setdefault(k, set()).add(n)
        self.revoked = gone
        return True

    def is_revoked(self, key: str | None) -> bool:
        return key is not None and key in self.revoked

    def is_authorized(self, key: str | None) -> bool:
        return key is not None and key in self.names_of and key not in self.revoked

    def authorizes(self, key: str | None, name: str) -> bool:
        """``key`` is the trusted key of ``name`` (and not revoked)."""
        return self.is_authorized(key) and name in self.names_of[key]

    def key_of(self, name: str) -> str | None:
        """The trusted key of node ``name``, or None (unknown or revoked)."""
        key = self.by_name.get(name)
        return key if key is not None and key not in self.revoked else None
