"""The CURVE keys `tsctl build` gives a tree: made once on the operator's machine, kept
there, and the files each server gets.

The operator's key store (``DEFAULT_KEY_STORE``, 0700) holds ``NAME.key`` and
``NAME.key_secret`` (0600) for every node built so far; a node that has a keypair there
keeps it, so a second build changes nothing. Each server gets, under its install root's
``keys/`` (the node's ``keys_dir``): its own keypair (``node.key``, ``node.key_secret``
0600) and ``authorized/NAME.key`` for every node of the tree. Each node's config names
that directory and its parent's public key (``keys_dir``, ``parent_key``), so the tree
links over CURVE.

Must not touch: SSH (server.py writes the files), what the files mean (treescale.keys).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from treescale import keys as K

DEFAULT_KEY_STORE = Path.home() / ".treescale" / "keys"
KEYS_DIR = "keys"  # under a node's install root


def ensure_keys(store: Path, names: list[str]) -> dict[str, K.Keypair]:
    """Each node's keypair from ``store``, made there first if it has none."""
    pairs = {}
    for name in names:
        secret = store / f"{K.check_name(name)}{K.KEY_SUFFIX}_secret"
        if secret.exists():
            pairs[name] = K.read_certificate(secret, need_secret=True)
        else:
            pairs[name] = K.Keypair.generate()
            K.write_keypair(store, pairs[name], stem=name)
    return pairs


def server_files(name: str, pairs: dict[str, K.Keypair]) -> dict[str, tuple[bytes, int]]:
    """What node ``name``'s keys_dir holds: relative path -> (content, mode)."""
    own = pairs[name]
    files = {K.OWN_PUBLIC: (K.certificate_text(own).encode(), 0o644),
             K.OWN_SECRET: (K.certificate_text(own, secret=True).encode(), 0o600)}
    for other, pair in sorted(pairs.items()):
        files[f"{K.AUTHORIZED}/{other}{K.KEY_SUFFIX}"] = \
            (K.certificate_text(K.Keypair(pair.public)).encode(), 0o644)
    return files


def files_digest(files: dict[str, tuple[bytes, int]]) -> str:
    h = hashlib.sha256()
    for path, (data, mode) in sorted(files.items()):
        h.update(f"{path}\0{mode:o}\0".encode() + hashlib.sha256(data).digest())
    return h.hexdigest()


def keyed_fabric(fabric: Any, pairs: dict[str, K.Keypair], keys_dirs: dict[str, str]) -> Any:
    """``fabric`` with each node's ``keys_dir`` (where its server keeps the keys) and
    ``parent_key`` (its parent's public key) set."""
    nodes = {}
    for name, cfg in fabric.nodes.items():
        parent = fabric.tree.parent(name)
        nodes[name] = replace(cfg, extra=dict(cfg.extra), keys_dir=keys_dirs.get(name),
                              parent_key=pairs[parent].public if parent else None)
    return replace(fabric, nodes=nodes)
