"""`tsctl config`: validate, compile, restore and show the tree config; push it to every
node over the bus and list the version each node holds."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from typing import Any

import click

from treescale.config import ConfigError
from tsctl.common import (
    address_option,
    connect,
    console,
    friendly,
    out,
    timeout_option,
    token_option,
)

paths_option = click.option(
    "-p", "--path", "--files", "paths", multiple=True, required=True,
    help="Config file or directory (TOML, JSON, YAML); repeatable or comma-separated; "
         "files merge.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
db_option = click.option("--db", "db", type=click.Path(dir_okay=False),
                         help="The node database [default: $TREE_DB_PATH or "
                              "/etc/treescale/tree.db].")


def _load(paths: tuple[str, ...], for_build: bool = False) -> Any:
    from treescale.fabric import config_paths, load_fabric

    return load_fabric(config_paths(paths), for_build=for_build)


def _when(stamp: Any) -> str:
    if not isinstance(stamp, int | float):
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


@click.group("config")
def config() -> None:
    """The tree config: files, the compiled database, and the version on each node."""


@config.command("validate")
@paths_option
@click.option("--for-build", is_flag=True, help="Also require an ssh entry per node.")
@json_option
@friendly
def validate_cmd(paths: tuple[str, ...], for_build: bool, as_json: bool) -> None:
    """Check config files; print every problem (file, node, field), one per line."""
    from treescale.fabric import config_paths, load_fabric

    try:
        fabric = load_fabric(config_paths(paths), for_build=for_build)
    except ConfigError as exc:
        if not as_json:
            raise
        print(json.dumps({"ok": False, "problems": exc.problems}, indent=1))
        sys.exit(1)
    summary = {"ok": True, "nodes": len(fabric.tree), "root": fabric.tree.root,
               "ssh": len(fabric.ssh), "version": fabric.version, "sources": fabric.sources}
    if as_json:
        print(json.dumps(summary, indent=1))
        return
    console.print(f"[green]ok[/]: {summary['nodes']} node(s) under root {fabric.tree.root}, "
                  f"{summary['ssh']} ssh target(s), from {', '.join(fabric.sources)}",
                  soft_wrap=True)


@config.command("compile")
@paths_option
@click.option("-o", "--output", default="tree.db", show_default=True,
              type=click.Path(dir_okay=False), help="The database file to write.")
@click.option("--version", "version", type=click.IntRange(min=1),
              help="Version to give it [default: the files' version, else one more than "
                   "the output file held].")
@json_option
@friendly
def compile_cmd(paths: tuple[str, ...], output: str, version: int | None,
                as_json: bool) -> None:
    """Compile config files into a tree database (what every node keeps)."""
    from treescale.fabric import compile_db

    fabric = _load(paths)
    if version is not None:
        fabric = replace(fabric, version=version)
    written = compile_db(fabric, output)
    if as_json:
        print(json.dumps({"path": output, "version": written, "nodes": len(fabric.tree)}))
        return
    console.print(f"compiled {len(fabric.tree)} node(s) into {output} (version {written})",
                  soft_wrap=True)


@config.command("restore")
@click.option("-f", "--file", "source", required=True, type=click.Path(exists=True),
              help="A compiled database (or config file/directory) to restore.")
@db_option
@json_option
@friendly
def restore_cmd(source: str, db: str | None, as_json: bool) -> None:
    """Copy a compiled tree into this machine's node database (its other tables stay)."""
    from treescale.fabric import load_any, store_fabric, stored_version
    from treescale.store import Store, default_db_path

    fabric = load_any(source)
    target = db or default_db_path()
    with Store(target) as store:
        previous = stored_version(store)
        version = fabric.version or previous + 1
        store_fabric(store, fabric, version, fabric.compiled_at)
    if as_json:
        print(json.dumps({"path": target, "version": version, "previous": previous,
                          "nodes": len(fabric.tree)}))
        return
    console.print(f"restored {len(fabric.tree)} node(s), version {version} (was "
                  f"{previous}), into {target}", soft_wrap=True)


@config.command("show")
@db_option
@click.option("-f", "--file", "source", type=click.Path(exists=True),
              help="Show this database or config file/directory instead.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "yaml", "toml"]),
              default="table", show_default=True,
              help="json/yaml/toml print the whole fabric as a config file.")
@json_option
@friendly
def show_cmd(db: str | None, source: str | None, fmt: str, as_json: bool) -> None:
    """Show a tree: the nodes with address, parent, children, groups, tags and ssh.

    --json (or --format) prints the whole fabric, ssh targets included, in the config
    format: `tsctl config compile` reads it back unchanged."""
    from rich.table import Table

    from treescale.fabric import dump, fabric_to_dict, load_any, read_db
    from treescale.store import default_db_path

    if db and source:
        raise click.UsageError("give --db or -f, not both")
    fabric = load_any(source) if source else read_db(db or default_db_path())
    fmt = "json" if as_json else fmt
    if fmt != "table":
        sys.stdout.write(dump(fabric_to_dict(fabric), fmt))
        return
    tree = fabric.tree
    table = Table(title=f"version {fabric.version} · {len(tree)} node(s) · compiled "
                        f"{_when(fabric.compiled_at)} · from {', '.join(fabric.sources)}")
    for col in ("node", "address", "parent", "children", "groups", "tags", "ssh"):
        table.add_column(col, no_wrap=col in ("node", "address"))
    for n in tree.names:
        spec, target = tree.spec(n), fabric.ssh.get(n)
        table.add_row("  " * tree.depth(n) + n, spec.address.removeprefix("tcp://"),
                      tree.parent(n) or "—", " ".join(spec.children) or "—",
                      " ".join(spec.groups) or "—", " ".join(spec.tags) or "—",
                      f"{target.username}@{target.host}:{target.port}" if target else "—")
    out.print(table)


@config.command("push")
@paths_option
@click.option("--version", "version", type=click.IntRange(min=1),
              help="Version to push [default: the files' version, else one more than the "
                   "connected node holds].")
@json_option
@address_option
@token_option
@timeout_option
@friendly
def push_cmd(paths: tuple[str, ...], version: int | None, as_json: bool, address: str,
             token: str | None, timeout: float) -> None:
    """Send a new config version to every node of the tree; each stores it if newer.
    Exits 1 unless every node confirms the version. SSH passwords are not sent. A
    tree built by `tsctl build` keeps its admin and link tokens (from the admin token
    file build wrote). Changing a node's auth or turning on a service that runs
    commands needs a token with "*"."""
    from rich.progress import Progress

    from treescale import credentials
    from treescale.fabric import fabric_to_dict, without_passwords
    from treescale.services.config import call_nodes
    from treescale.services.rpc import call

    fabric = _load(paths)
    admin, _ = credentials.admin_token(credentials.token_path(fabric), create=False)
    if admin is not None:
        fabric = credentials.secured(fabric, admin)
    # like `tsctl build`: nodes get the ssh targets, never the passwords to log into them
    fabric = without_passwords(fabric)
    names = list(fabric.tree.names)
    with connect(address, token, timeout) as c:
        if version is None:
            version = fabric.version
        if not version:
            [r] = call(c, "config", "version", node=c.node, timeout=timeout)
            if not r.ok:
                raise RuntimeError(f"node {c.node}: {r.error}")
            version = r.result["version"] + 1
        args = {"version": version, "fabric": fabric_to_dict(replace(fabric, version=version)),
                "sources": fabric.sources, "compiled_at": time.time()}
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"pushing version {version}", total=len(names))
            results = call_nodes(c, "apply", args, names, timeout,
                                 on_done=lambda r: progress.advance(task))
    rows = []
    for n in names:
        r = results[n]
        res = r.result or {}
        confirmed = r.ok and res.get("version") == version
        if not r.ok:
            status = r.error
        elif res.get("applied"):
            status = f"applied (was {res.get('previous')})"
        elif confirmed:
            status = "already had it"
        else:
            status = f"holds newer version {res.get('version')}: not applied"
        rows.append({"node": n, "ok": confirmed, "version": res.get("version"),
                     "applied": bool(res.get("applied")), "status": status})
    failed = [row for row in rows if not row["ok"]]
    if as_json:
        print(json.dumps({"version": version, "nodes": rows}, indent=1))
    else:
        _table(f"config version {version} pushed through {address}", rows)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(rows)} node(s) did not confirm version "
                           f"{version}: " + "; ".join(f"{r['node']}: {r['status']}"
                                                      for r in failed))


@config.command("version")
@click.option("-p", "--path", "--files", "paths", multiple=True,
              help="Ask the nodes of these config files [default: the nodes in the "
                   "connected node's tree].")
@json_option
@address_option
@token_option
@timeout_option
@friendly
def version_cmd(paths: tuple[str, ...], as_json: bool, address: str, token: str | None,
                timeout: float) -> None:
    """List the config version each node holds. Exits 1 if a node did not answer."""
    from treescale.services.config import call_nodes
    from treescale.services.rpc import call

    with connect(address, token, timeout) as c:
        if paths:
            names = list(_load(paths).tree.names)
        else:
            [r] = call(c, "config", "version", node=c.node, timeout=timeout)
            if not r.ok:
                raise RuntimeError(f"node {c.node}: {r.error}")
            names = r.result["nodes"] or [c.node]
        results = call_nodes(c, "version", None, names, timeout)
    rows = []
    for n in names:
        r = results[n]
        res = r.result or {}
        rows.append({"node": n, "ok": r.ok, "version": res.get("version"),
                     "compiled_at": res.get("compiled_at"),
                     "status": _when(res.get("compiled_at")) if r.ok else r.error})
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        _table(f"config versions seen through {address}", rows, "compiled at / error")
    missing = [r["node"] for r in rows if not r["ok"]]
    if missing:
        raise RuntimeError(f"no answer from {len(missing)} node(s): {', '.join(missing)}")


def _table(title: str, rows: list[dict], status: str = "status") -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("node", "version", status):
        table.add_column(col, justify="right" if col == "version" else "left")
    for r in rows:
        style = "" if r["ok"] else "red"
        table.add_row(r["node"], "—" if r["version"] is None else str(r["version"]),
                      str(r["status"]), style=style)
    out.print(table)


COMMANDS = [config]
