"""`tsctl build` and `tsctl teardown`: put a tree onto its servers over SSH, or take it off.

Thin: load the fabric, hand it to treescale.provision, show a progress line per server
and one result line each. The exit status is 1 if any server failed."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tsctl.common import console, friendly, out, token_option

#: The seed's sample files: `treescale build` alone builds them, as its README says.
DEFAULT_FILES = "configs/tree.toml,configs/ssh.toml"
files_option = click.option(
    "-p", "--files", "--path", "files", multiple=True, default=[DEFAULT_FILES],
    show_default=True,
    help="Config files or directories (tree + ssh), comma-separated or repeated, e.g. "
    "--files=configs/tree.toml,configs/ssh.toml or -p configs/.")
parallel_option = click.option("--parallel", type=click.IntRange(min=1), default=8,
                               show_default=True, help="Servers worked on at once.")
dry_run_option = click.option("--dry-run", is_flag=True,
                              help="Connect and say what would change; change nothing.")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print a JSON summary (one object per server) on stdout.")
known_hosts_option = click.option(
    "--known-hosts", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Host keys seen so far: first contact records, a changed key is refused "
    "[default: ~/.treescale/known_hosts].")
connect_timeout_option = click.option("--connect-timeout", type=float, default=10.0,
                                      show_default=True, help="Seconds to reach each server.")

STATUS_STYLE = {"built": "green", "up to date": "green", "removed": "green",
                "nothing to remove": "green", "would change": "yellow", "failed": "red"}


def _load(files: tuple[str, ...]) -> Any:
    # each server's failure is reported as one line; paramiko's own tracebacks (logged
    # from its transport threads) only with -v
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    from treescale.config import ConfigError
    from treescale.fabric import config_paths, load_fabric

    paths = config_paths(files)
    missing = [p for p in paths if not Path(p).exists()]
    if missing:  # one line, not one per file plus "the tree has no nodes"
        raise ConfigError(f"no such file: {', '.join(missing)} (give the tree and ssh "
                          f"files: --files=TREE,SSH; default {DEFAULT_FILES})")
    return load_fabric(paths, for_build=True)


def _with_progress(fabric: Any, what: str, work: Callable[[Callable[[str, str], None]],
                                                            list]) -> list:
    """Run ``work(report)`` showing one live line per server: its current step."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from treescale.provision import servers

    targets = servers(fabric)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        tasks = {name: progress.add_task(f"{name} ({t.host}): {what}", total=None)
                 for name, t in targets}
        hosts = dict(targets)

        def report(name: str, step: str) -> None:
            progress.update(tasks[name], description=f"{name} ({hosts[name].host}): {step}")

        return work(report)


def _render(results: list, as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps({"ok": all(r.ok for r in results),
                          "servers": [r.as_dict() for r in results]}, indent=1))
    else:
        from rich.table import Table

        table = Table(title=title)
        for col in ("server", "host", "status", "detail", "s"):
            table.add_column(col, justify="right" if col == "s" else "left",
                             no_wrap=col != "detail")
        for r in results:
            style = STATUS_STYLE.get(r.status, "")
            detail = f"{r.step}: {r.error}" if not r.ok else r.detail
            table.add_row(r.name, r.host, f"[{style}]{r.status}[/]", detail,
                          f"{r.seconds:.1f}")
        out.print(table)
    for r in results:
        if not r.ok:
            console.print(f"[bold red]error:[/] {r.line()}", soft_wrap=True)
    failed = sum(not r.ok for r in results)
    if failed:
        console.print(f"{failed} of {len(results)} server(s) failed")
        sys.exit(1)
    if not as_json:
        console.print(f"all {len(results)} server(s) ok")


def server_options(fn: Callable) -> Callable:
    """What build and teardown share: the files, how many servers at once, dry run,
    JSON, the known hosts and the connect timeout."""
    for option in (connect_timeout_option, known_hosts_option, json_option,
                   dry_run_option, parallel_option, files_option):
        fn = option(fn)
    return fn


@click.command("build")
@server_options
@click.option("--wheelhouse", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Use the wheels in this directory as they are (offline, CI) instead of "
              "building them.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where built wheelhouses are kept [default: ~/.cache/treescale/wheelhouse].")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until every node reports its parent.")
@click.option("--join-timeout", type=float, default=60.0, show_default=True,
              help="Seconds a node may take to join the tree.")
@click.option("--supervisor", type=click.Choice(["auto", "systemd", "daemon"]),
              default="auto", show_default=True,
              help="What keeps each node running: a systemd unit, or a run script with a pid "
              "file (daemon); auto picks systemd where it runs and we log in as root.")
@click.option("--insecure", is_flag=True,
              help="Build the tree with only the auth its configs give (no admin token, "
              "no link token): nodes without auth listen open. A trusted network only.")
@token_option
@click.option("--keys-dir", "key_store", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where each node's CURVE keypair is kept on this machine "
              "(made on first use; 0700, secrets 0600) [default: ~/.treescale/keys].")
@click.option("--keys/--no-keys", default=True, show_default=True,
              help="Give every node a keypair and every node's public key, so links "
              "(and clients, with --server-key) are encrypted and authenticated.")
@friendly
def build_cmd(files: tuple[str, ...], parallel: int, dry_run: bool, as_json: bool,
              known_hosts: Path | None, connect_timeout: float, wheelhouse: Path | None,
              cache: Path | None, wait: bool, join_timeout: float, supervisor: str,
              insecure: bool, token: str | None, key_store: Path | None,
              keys: bool) -> None:
    """Install TreeScale on every server of the tree over SSH and start its node.

    Per server: check Python (>= 3.11), copy a wheelhouse (no internet needed there),
    install a venv, write the compiled tree and the node's CURVE keys (its keypair,
    every node's public key), install a systemd unit (or a run script
    where systemd is absent), start the node and wait until it joins. A second run
    changes nothing that is already in place and says "up to date".

    The tree is closed by default: every node gets an admin token (every permission)
    and the tree's link token; the admin token is written 0600 to
    ~/.config/treescale/ROOT.token ($TREESCALE_CONFIG_DIR), for later commands'
    --token-file. --token is the token of the join check (default: the admin token)."""
    from treescale import credentials, provision

    fabric = _load(files)
    if insecure:
        fabric = credentials.insecure(fabric)
    else:
        path = credentials.token_path(fabric)
        admin, made = credentials.admin_token(path, create=not dry_run)
        if admin is not None:
            fabric = credentials.secured(fabric, admin)
            console.print(f"{'made' if made else 'using'} the tree's admin token {path} "
                          f"(tsctl ... --token-file {path})", soft_wrap=True)
    kw: dict[str, Any] = {"parallel": parallel, "dry_run": dry_run, "wait": wait,
                          "join_timeout": join_timeout, "wheelhouse": wheelhouse,
                          "token": token, "connect_timeout": connect_timeout,
                          "supervisor": supervisor,
                          "key_store": (key_store or provision.DEFAULT_KEY_STORE) if keys
                          else None}
    if known_hosts is not None:
        kw["known_hosts"] = known_hosts
    if cache is not None:
        kw["cache"] = cache
    results = _with_progress(fabric, "waiting", lambda report: provision.build(
        fabric, report=report, **kw))
    _render(results, as_json, "tsctl build" + (" (dry run: nothing changed)" if dry_run
                                               else ""))


@click.command("teardown")
@server_options
@friendly
def teardown_cmd(files: tuple[str, ...], parallel: int, dry_run: bool, as_json: bool,
                 known_hosts: Path | None, connect_timeout: float) -> None:
    """Stop the node on every server of the tree and remove what build installed (the
    install root, the systemd unit). Running it again finds nothing to remove."""
    from treescale import provision

    fabric = _load(files)
    kw: dict[str, Any] = {"parallel": parallel, "dry_run": dry_run,
                          "connect_timeout": connect_timeout}
    if known_hosts is not None:
        kw["known_hosts"] = known_hosts
    results = _with_progress(fabric, "waiting", lambda report: provision.teardown(
        fabric, report=report, **kw))
    _render(results, as_json, "tsctl teardown" + (" (dry run: nothing changed)" if dry_run
                                                  else ""))


COMMANDS = [build_cmd, teardown_cmd]
