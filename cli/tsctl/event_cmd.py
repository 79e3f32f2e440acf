"""`tsctl event`: custom event handlers on nodes (add, ls, rm) and triggering them.

Management goes through the nodes' ``handlers`` service (treescale.services.handlers),
so it needs a token with the ``handlers`` permission. Without -t/--group/--tag a
command acts on the node tsctl is attached to.

Must not touch: what a handler is or how it runs (treescale.services.handlers), subject
spellings (treescale.subjects).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from rich.text import Text

from tsctl.common import (
    call_service,
    connect,
    console,
    friendly,
    one_target,
    print_table,
    report_failures,
    service_options,
    wide_option,
)
from tsctl.tables import KEY, TEXT, Column

# add has its own --timeout (for the handler's runs): the call's is --call-timeout.
_manage_options = service_options(timeout=click.option(
    "--call-timeout", "timeout", type=float, default=10.0, show_default=True,
    help="Seconds to wait for the node(s) to answer."))


def _manage(op: str, args: dict, target: dict) -> list:
    """``op`` of the handlers service on the target node(s) (default: the attached one)."""
    from treescale.services.handlers import SERVICE

    return call_service(SERVICE, op, args, **target)


def _report(results: list, as_json: bool, done: Callable[[Any], str]) -> None:
    """All results as one JSON array, or the line ``done(result)`` for each node that
    did it; then one line per node that refused (also with --json) and exit 1 if any."""
    if as_json:
        print(json.dumps([r.as_dict() for r in results]))
    else:
        for r in results:
            if r.ok:
                console.print(done(r))
    report_failures(results)


@click.group()
def event() -> None:
    """Custom event handlers: run a command on nodes when an event reaches them."""


@event.command("add")
@click.argument("pattern")
@click.option("--run", "command", required=True,
              help="Shell command (/bin/sh -c); gets the payload on stdin, the event in "
                   "TREESCALE_* variables.")
@click.option("--id", "hid", help="Handler id [default: the pattern].")
@click.option("--timeout", "run_timeout", type=float, default=60.0, show_default=True,
              help="Seconds a run may take before it is killed.")
@click.option("--max-concurrent", type=int, default=4, show_default=True,
              help="Runs of this handler at the same time on a node.")
@click.option("--queue", type=int, default=16, show_default=True,
              help="Events that may wait for a free run; beyond that they are refused.")
@_manage_options
@friendly
def add_cmd(pattern: str, command: str, hid: str | None, run_timeout: float,
            max_concurrent: int, queue: int, as_json: bool, **target: Any) -> None:
    """Run COMMAND on the target node(s) whenever an event matching PATTERN reaches
    them (`*` one token, `>` the rest). Stored in each node's database: it survives
    restarts. Adding an existing id replaces that handler."""
    from treescale.services.handlers import spec_from_args

    args = {"pattern": pattern, "run": command, "id": hid, "timeout": run_timeout,
            "max_concurrent": max_concurrent, "queue": queue}
    spec_from_args(args)  # bad input fails here, before any connection
    _report(_manage("add", args, target), as_json,
            lambda r: f"[green]{'replaced' if r.result['replaced'] else 'added'}[/] handler "
                      f"{r.result['id']} (on {r.result['pattern']}) on node {r.node}")


@event.command("rm")
@click.argument("hid", metavar="ID")
@_manage_options
@friendly
def rm_cmd(hid: str, as_json: bool, **target: Any) -> None:
    """Remove the handler ID (the pattern it was added with, unless --id was given)."""
    _report(_manage("rm", {"id": hid}, target), as_json,
            lambda r: f"[green]removed[/] handler {hid} from node {r.node}")


# What `event ls` shows, most useful first when the terminal is narrow.
LS_COLUMNS = [Column("node", KEY), Column("id", KEY), Column("event", priority=6),
              Column("command", TEXT, min_width=16),
              Column("timeout", priority=2, justify="right"),
              Column("max", priority=1, justify="right"),
              Column("runs", priority=4, justify="right"), Column("last exit", priority=5)]


@event.command("ls")
@_manage_options
@wide_option
@friendly
def ls_cmd(as_json: bool, wide: bool, **target: Any) -> None:
    """List the handlers of the target node(s): pattern, command, limits, runs since
    the node started and the last exit status."""
    results = _manage("ls", {}, target)
    rows = [{"node": r.node, **h} for r in sorted(results, key=lambda r: r.node) if r.ok
            for h in r.result]
    if as_json:
        print(json.dumps(rows))
    else:
        print_table(LS_COLUMNS,
                    [[h["node"], h["id"], h["pattern"], h["run"], f"{h['timeout']:g}s",
                      str(h["max_concurrent"]), str(h["runs"]), _last_exit(h)]
                     for h in rows],
                    wide=wide, title=f"{len(rows)} handler(s) on {len(results)} node(s)")
    report_failures(results)


def _last_exit(h: dict) -> Text:
    if h["runs"] == 0:
        return Text("—")
    if h["last_error"]:
        return Text(f"{h['last_exit']} ({h['last_error'].split(' on node')[0]})",
                    style="red")
    return Text(str(h["last_exit"]), style="" if h["last_exit"] == 0 else "red")


@event.command("trigger")
@click.argument("name")
@click.argument("data", required=False, default="")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the payload from stdin.")
@click.option("-H", "--header", "headers", multiple=True, metavar="KEY=VALUE",
              help="Event header (repeatable); the command sees TREESCALE_HEADER_KEY.")
@service_options
@friendly
def trigger_cmd(name: str, data: str, from_stdin: bool, headers: tuple[str, ...],
                node: str | None, group: str | None, tag: str | None, as_json: bool,
                address: str, token: str | None, timeout: float) -> None:
    """Publish event NAME (payload DATA) to the target node(s) only, wait for each of
    their matching handlers and print its result. Exit 1 if any handler failed, or
    none matched or answered."""
    from treescale.routing import split_name
    from treescale.services.handlers import SERVICE
    from treescale.services.rpc import call

    split_name(name)
    hdrs = _parse_headers(headers)
    payload = sys.stdin.buffer.read() if from_stdin else data.encode()
    with connect(address, token, timeout) as c:
        target = one_target(node, group, tag, attached=c.node)
        expected = _expected_runs(
            call(c, SERVICE, "match", {"event": name}, timeout=timeout, **target),
            name, target)
        results = _publish_and_collect(c, name, payload, hdrs, target, expected, timeout)
    failed = 0
    for key in sorted(expected):
        r = results.get(key) or {
            "node": key[0], "handler": key[1], "event": name, "ok": False, "exit": None,
            "error": f"no result from handler {key[1]!r} on node {key[0]} within "
                     f"{expected[key] + timeout:g}s"}
        failed += not r["ok"]
        if as_json:
            print(json.dumps(r), flush=True)
        else:
            _print_result(r, labelled=len(expected) > 1)
    sys.exit(1 if failed else 0)


def _parse_headers(headers: tuple[str, ...]) -> dict[str, str] | None:
    parsed = {}
    for h in headers:
        key, sep, value = h.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{h!r} is not KEY=VALUE", param_hint="--header")
        parsed[key] = value
    return parsed or None


def _expected_runs(matches: list, name: str, target: dict) -> dict[tuple[str, str], float]:
    """(node, handler) -> its timeout, for each handler the event will run."""
    report_failures(matches)
    expected = {(r.node, h["id"]): float(h["timeout"]) for r in matches for h in r.result}
    if not expected:
        where = " ".join(f"{k} {v}" for k, v in target.items() if v is not None)
        raise RuntimeError(f"no handler on {where} matches {name} "
                           "(`tsctl event ls` shows them)")
    return expected


def _publish_and_collect(client: Any, name: str, payload: bytes, headers: dict | None,
                         target: dict, expected: dict, timeout: float) -> dict:
    """Publish with a unique trigger header; collect the results that carry it."""
    from treescale import subjects
    from treescale.services.handlers import TRIGGER_HEADER

    trigger = f"{client.node}.{os.getpid()}.{time.monotonic_ns()}"
    kind = next(k for k, v in target.items() if v is not None)
    client.subscribe(subjects.handler_result("*"))
    client.publish(name, payload, target=f"{kind}:{target[kind]}",
                   headers={**(headers or {}), TRIGGER_HEADER: trigger})
    client.flush(timeout)
    if client.errors:
        raise client.errors.popleft()
    results: dict[tuple[str, str], dict] = {}
    deadline = time.monotonic() + max(expected.values()) + timeout
    while len(results) < len(expected):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ev = client.next_event(left)
        if ev is None:
            break
        r = ev.json()
        key = (r.get("node"), r.get("handler"))
        if r.get("trigger") == trigger and key in expected:
            results[key] = r
    return results


def _print_result(r: dict, labelled: bool) -> None:
    prefix = f"[{r['node']}/{r['handler']}] " if labelled else ""
    for stream, sink in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        text = r.get(stream) or ""
        for line in text.splitlines(keepends=True):
            sink.write(prefix + line)
        if text and not text.endswith("\n"):
            sink.write("\n")
        sink.flush()
    what = f"handler {r['handler']} on node {r['node']}"
    if r.get("error"):
        console.print(f"[bold red]error:[/] {r['error']}", soft_wrap=True)
    elif r["ok"]:
        console.print(f"[green]ok[/] {what}: exit 0 in {r['duration']:.3f}s")
    else:
        console.print(f"[red]failed[/] {what}: exit {r['exit']} in {r['duration']:.3f}s")
    if r.get("truncated"):
        console.print(f"[yellow]note:[/] output of {what} was truncated")


COMMANDS = [event]
