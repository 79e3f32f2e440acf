"""`tsctl keys gen|ls|trust|revoke`: a node's CURVE keypair and whom it trusts.

Thin: parse, call treescale.keys, print one line (or JSON). Must not touch: the key
files' format or the trust rules (treescale.keys owns them).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from tsctl.common import console, friendly, out

dir_option = click.option(
    "-d", "--dir", "keys_dir", envvar="TREESCALE_KEYS_DIR", required=True,
    type=click.Path(file_okay=False),
    help="The node's keys_dir (or $TREESCALE_KEYS_DIR).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group("keys")
def keys() -> None:
    """CURVE keys: the node's keypair, and the nodes (and clients) it trusts."""


@keys.command("gen")
@dir_option
@click.option("--force", is_flag=True, help="Replace an existing keypair.")
@json_option
@friendly
def gen_cmd(keys_dir: str, force: bool, as_json: bool) -> None:
    """Make the node's keypair in --dir (secret file 0600, directory 0700)."""
    from treescale import keys as K

    pair = K.generate(keys_dir, force=force)
    public = str(Path(keys_dir) / K.OWN_PUBLIC)
    if as_json:
        print(json.dumps({"dir": keys_dir, "public_key": pair.public, "public_file": public}))
        return
    out.print(f"public key {pair.public}", soft_wrap=True)
    console.print(f"keypair written to {keys_dir} (give other nodes {public})",
                  soft_wrap=True)


@keys.command("ls")
@dir_option
@json_option
@friendly
def ls_cmd(keys_dir: str, as_json: bool) -> None:
    """The node's public key, the authorized keys by name, the revoked keys."""
    from treescale import keys as K

    own = K.load_own(keys_dir).public
    trusted = K.authorized(keys_dir)
    gone = sorted(K.revoked(keys_dir))
    if as_json:
        print(json.dumps({"dir": keys_dir, "public_key": own, "authorized": trusted,
                          "revoked": gone}, indent=1))
        return
    out.print(f"own        {own}", soft_wrap=True)
    for name, key in trusted.items():
        out.print(f"authorized {key}  {name}", soft_wrap=True)
    for key in gone:
        out.print(f"revoked    {key}", soft_wrap=True)


@keys.command("trust")
@dir_option
@click.argument("name")
@click.argument("key")
@json_option
@friendly
def trust_cmd(keys_dir: str, name: str, key: str, as_json: bool) -> None:
    """Trust KEY (z85, or a public key file) as node or client NAME."""
    from treescale import keys as K

    path = K.trust(keys_dir, name, key)
    public = K.read_certificate(path).public
    if as_json:
        print(json.dumps({"name": name, "public_key": public, "file": str(path)}))
        return
    console.print(f"trusted {name} ({public}) in {path}", soft_wrap=True)


@keys.command("revoke")
@dir_option
@click.argument("name_or_key", metavar="NAME|KEY")
@json_option
@friendly
def revoke_cmd(keys_dir: str, name_or_key: str, as_json: bool) -> None:
    """Stop trusting an authorized name or a key: a running node refuses it from its
    next connection on and drops the sessions it has."""
    from treescale import keys as K

    key, name = K.revoke(keys_dir, name_or_key)
    if as_json:
        print(json.dumps({"revoked": key, "name": name}))
        return
    console.print(f"revoked {key}" + (f" ({name})" if name else ""), soft_wrap=True)


COMMANDS = [keys]
