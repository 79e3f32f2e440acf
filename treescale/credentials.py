"""The fabric's own credentials: an admin token and the tree's link token.

A tree built from configs without auth would let anyone who reaches a node's port run
its services. ``tsctl build`` (and ``tsctl config push``, so that a push keeps them)
gives every node of the fabric:

- ``tokens``: the admin token, with every permission ("*"), beside the node's own
  tokens (a node with ``auth_command`` or ``auth_url`` keeps its own hook only);
- ``link_token``: the tree's link token, unless the node's config sets its own.

The admin token is kept on the operator's machine only: one line, mode 0600, in
``credentials_dir()`` ($TREESCALE_CONFIG_DIR, else $XDG_CONFIG_HOME/treescale, else
~/.config/treescale) as ``<root node>.token``. Later commands use it with
``--token-file FILE`` or ``export TREESCALE_TOKEN=$(cat FILE)``. The link token is
derived from it (HMAC-SHA256), so there is one secret to keep, and a second build
computes the same values (nothing is restarted for it).

Must not touch: what a node does with them (treescale.brokers.handshake, treescale.auth),
reading config files (treescale.fabric), SSH (treescale.provision).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Any

from treescale.config import ConfigError, with_token

TOKEN_SUFFIX = ".token"


def credentials_dir() -> Path:
    """Where the operator's tree tokens are kept."""
    explicit = os.environ.get("TREESCALE_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "treescale"


def token_path(fabric: Any) -> Path:
    """The admin token file of the tree rooted at ``fabric``'s root."""
    return credentials_dir() / f"{fabric.tree.root}{TOKEN_SUFFIX}"


def read_token_file(path: str | Path) -> str:
    """The token in ``path`` (its first non-empty line); ConfigError if there is none."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the token file: {exc.strerror}") from None
    token = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not token:
        raise ConfigError(f"{p}: the token file is empty")
    return token


def write_private(path: Path, text: str) -> None:
    """Create ``path`` holding ``text``, readable by this user only (0600, in a 0700
    directory when it makes one); never overwrites."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def admin_token(path: Path, create: bool) -> tuple[str | None, bool]:
    """(the admin token kept at ``path``, whether it was made now); (None, False) if
    there is none and ``create`` is false."""
    if path.exists():
        return read_token_file(path), False
    if not create:
        return None, False
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token, True


def link_token_for(admin: str) -> str:
    """The tree's link token: derived from the admin token, so never stored apart."""
    return hmac.new(admin.encode(), b"treescale link token", hashlib.sha256).hexdigest()


def secured(fabric: Any, admin: str) -> Any:
    """``fabric`` with the admin token and the link token on every node."""
    link = link_token_for(admin)
    nodes = {}
    for name, cfg in fabric.nodes.items():
        cfg = replace(cfg, extra=dict(cfg.extra))
        if cfg.link_token is None:
            cfg.link_token = link
        if cfg.auth_command is None and cfg.auth_url is None:
            cfg.tokens = with_token(cfg.tokens, admin, ["*"])
        nodes[name] = cfg
    return replace(fabric, nodes=nodes)


def insecure(fabric: Any) -> Any:
    """``fabric`` as given, each node without client auth marked ``insecure`` (it may
    then listen on a non-loopback address): ``tsctl build --insecure``."""
    nodes = {name: cfg if cfg.has_auth else replace(cfg, insecure=True,
                                                    extra=dict(cfg.extra))
             for name, cfg in fabric.nodes.items()}
    return replace(fabric, nodes=nodes)
