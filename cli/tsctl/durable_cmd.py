"""`tsctl durable`: the durable subscriptions of the attached node (ls, info, rm,
replay), and how `pub --durable` / `sub --durable` print what durable delivery adds.

Must not touch: what a durable is or keeps (the node's), the DCTL messages
(treescale.Client's durable_* methods send them).
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from tsctl.common import (
    address_option,
    connect,
    console,
    friendly,
    print_table,
    timeout_option,
    token_option,
    wide_option,
)
from tsctl.tables import KEY, Column

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")

# What `durable ls` shows, most useful first when the terminal is narrow.
LS_COLUMNS = [Column("node", KEY), Column("durable", KEY),
              Column("pattern", priority=8), Column("queue", priority=3),
              Column("stored", priority=7, justify="right"),
              Column("pending", priority=6, justify="right"),
              Column("unacked", priority=5, justify="right"),
              Column("redelivered", priority=2, justify="right"),
              Column("bytes", priority=4, justify="right"),
              Column("oldest", priority=1, justify="right")]


def age(oldest: float | None, now: float | None = None) -> str:
    """How long ago ``oldest`` (epoch seconds) was: 42s, 3m, 5h, 2d; — for none."""
    if oldest is None:
        return "—"
    s = max(0.0, (time.time() if now is None else now) - float(oldest))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit}"
    return f"{s:.0f}s"


def ls_row(d: dict) -> list[str]:
    return [str(d.get("node", "")), str(d.get("durable", "")), str(d.get("pattern", "")),
            d.get("queue") or "—", f"{d.get('stored', 0):,}", f"{d.get('pending', 0):,}",
            f"{d.get('unacked', 0):,}", f"{d.get('redelivered', 0):,}",
            f"{d.get('bytes', 0):,}", age(d.get("oldest"))]


def event_line(ev: Any) -> str:
    """The markup `sub --durable` prints before the data: seq, redelivered marker."""
    again = f" [yellow]redelivered ×{ev.deliveries}[/]" if ev.redelivered else ""
    return f"[dim]#{ev.seq}[/]{again} "


def durable_fields(ev: Any) -> dict:
    """What `sub --durable --json` adds to an event's JSON."""
    return {"durable": ev.durable, "seq": ev.seq, "id": ev.id, "time": ev.time,
            "redelivered": ev.redelivered, "deliveries": ev.deliveries}


@click.group()
def durable() -> None:
    """Durable subscriptions: events kept on a node until their subscriber acks them
    (`tsctl sub PATTERN --durable NAME` makes one)."""


def _common(fn: Any) -> Any:
    for option in (timeout_option, token_option, address_option, json_option):
        fn = option(fn)
    return fn


@durable.command("ls")
@_common
@wide_option
@friendly
def ls_cmd(as_json: bool, wide: bool, address: str, token: str | None,
           timeout: float) -> None:
    """List the durables of the attached node: what each stores and what waits."""
    with connect(address, token, timeout) as c:
        rows = sorted(c.durables(timeout), key=lambda d: (d.get("node", ""),
                                                          d.get("durable", "")))
        node = c.node
    if as_json:
        print(json.dumps(rows))
        return
    print_table(LS_COLUMNS, [ls_row(d) for d in rows], wide=wide,
                title=f"{len(rows)} durable(s) on node {node}")


@durable.command("info")
@click.argument("name")
@_common
@friendly
def info_cmd(name: str, as_json: bool, address: str, token: str | None,
             timeout: float) -> None:
    """Everything the node knows about durable NAME."""
    with connect(address, token, timeout) as c:
        info = c.durable_info(name, timeout)
    if as_json:
        print(json.dumps(info))
        return
    for key, value in info.items():
        shown = age(value) + " ago" if key == "oldest" and value is not None else value
        console.print(f"[bold]{key:>12}[/] {shown if shown is not None else '—'}",
                      soft_wrap=True)


@durable.command("rm")
@click.argument("name")
@_common
@friendly
def rm_cmd(name: str, as_json: bool, address: str, token: str | None,
           timeout: float) -> None:
    """Remove durable NAME and the events it stores."""
    with connect(address, token, timeout) as c:
        result = c.durable_remove(name, timeout)
        node = c.node
    if as_json:
        print(json.dumps(result))
        return
    console.print(f"[green]removed[/] durable {result.get('removed', name)} from node "
                  f"{node}")


@durable.command("replay")
@click.argument("name")
@click.option("--seq", type=click.IntRange(min=0), help="Send again from this seq on.")
@click.option("--time", "at", type=float,
              help="Send again what was stored from this time on (epoch seconds).")
@_common
@friendly
def replay_cmd(name: str, seq: int | None, at: float | None, as_json: bool, address: str,
               token: str | None, timeout: float) -> None:
    """Send durable NAME's stored events again, from --seq N or --time T."""
    if (seq is None) == (at is None):
        raise click.UsageError("give exactly one of --seq N, --time T")
    with connect(address, token, timeout) as c:
        result = c.durable_replay(name, seq=seq, time=at, timeout=timeout)
    if as_json:
        print(json.dumps(result))
        return
    console.print(f"replaying {result.get('replayed', 0)} event(s) of durable {name}")


COMMANDS = [durable]
