"""`tsctl doctor`: what a node needs on this machine, checked, one line per check.

Must not touch: the checks themselves (treescale.doctor owns them), config reading
(treescale.loader).
"""

from __future__ import annotations

import json
import sys

import click
from rich.markup import escape

from tsctl.common import console, friendly, out

STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


@click.command("doctor")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="The node's config (a [node] file, a tree file with --name, or a "
                   "compiled .db) [default: the built-in defaults].")
@click.option("--name", help="Which node of a tree file.")
@click.option("--port", type=click.IntRange(0, 65535),
              help="Port the node would listen on [default: the config's].")
@click.option("--host", help="Address the node would listen on [default: the config's].")
@click.option("--db", "db", type=click.Path(),
              help="The node database [default: the config's db_path, else "
                   "$TREE_DB_PATH, else /etc/treescale/tree.db].")
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False),
              help="The node's CURVE key directory [default: the config's keys_dir].")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@friendly
def doctor(config_path: str | None, name: str | None, port: int | None, host: str | None,
           db: str | None, keys_dir: str | None, as_json: bool) -> None:
    """Check this machine for what a node needs: its port, database directory, keys,
    auth (who may connect and link), which services will start (and why not), Docker
    engine, nftables, IPVS, clock, Python and ZeroMQ. One line per check: ok,
    warn (the node runs, with less) or fail, and what to do about it. Exit status 1
    if any check failed (warnings do not fail)."""
    from treescale.doctor import FAIL, run_checks
    from treescale.loader import load_node_config

    cfg = load_node_config(config_path, name)
    if port is not None:
        cfg.port = port
    if host is not None:
        cfg.host = host
    checks = run_checks(cfg, db or cfg.resolved_db_path, keys_dir or cfg.keys_dir)
    failed = [c for c in checks if c.status == FAIL]
    if as_json:
        print(json.dumps({"ok": not failed, "node": cfg.name,
                          "checks": [c.as_dict() for c in checks]}, indent=1))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            fix = f" [dim]→[/] {escape(c.fix)}" if c.fix and c.status != "ok" else ""
            out.print(f"[{STYLE[c.status]}]{c.status:<4}[/] {c.name:<{width}}  "
                      f"{escape(c.detail)}{fix}", soft_wrap=True)
        warned = sum(c.status == "warn" for c in checks)
        console.print(f"{len(checks)} checks: {len(failed)} failed, {warned} warning(s)")
    sys.exit(1 if failed else 0)


COMMANDS = [doctor]
