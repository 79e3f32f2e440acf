"""tsctl's everyday commands: a local tree (up, down, status), and the bus (api exec,
pub, sub, request, demo).

Owns: these commands' options and rendering. Must not touch: what a command does
beyond calling the library (treescale.*), subject spellings (treescale.subjects).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from treescale import subjects
from treescale.loader import load_tree
from treescale.local import DEFAULT_STATE, token_file
from tsctl.common import (
    address_of_node,
    address_option,
    connect,
    console,
    event_dict,
    friendly,
    one_target,
    out,
    print_table,
    render_data,
    timeout_option,
    token_option,
    wide_option,
)
from tsctl.tables import KEY, Column

# -------------------------------------------------------------------- local tree

state_option = click.option(
    "--state", type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: str(DEFAULT_STATE), show_default="$TREESCALE_STATE or "
    "~/.treescale/up.json", help="Where `up` records the processes it started.")


@click.command("up")
@click.argument("config", default="configs/tree.toml",
                type=click.Path(exists=True, dir_okay=False))
@click.option("--keep-addresses", is_flag=True,
              help="Use the hosts in the file instead of 127.0.0.1.")
@state_option
@click.option("--json", "as_json", is_flag=True,
              help="Print the started nodes (name, address, pid, log) as JSON.")
@friendly
def up_cmd(config: str, keep_addresses: bool, state: Path, as_json: bool) -> None:
    """Start every node of a tree file as local processes (root first). They accept
    one admin token: $TREESCALE_TOKEN if set, else the one kept beside the state file
    (made the first time)."""
    from dataclasses import asdict

    from rich.progress import Progress

    from treescale.local import up

    tree = load_tree(config)
    with Progress(console=console, transient=True, disable=as_json) as progress:
        task = progress.add_task("starting nodes", total=len(tree.names))
        nodes = up(config, state, local=not keep_addresses,
                   on_started=lambda n: progress.advance(task))
    if as_json:
        print(json.dumps([asdict(n) for n in nodes], indent=1))
        return
    for n in nodes:
        local = f"  local {n.ipc}" if n.ipc else ""
        console.print(f"[green]up[/] {n.name:<10} {n.address:<24} pid {n.pid}{local}")
    for n in nodes:
        if n.websocket:
            console.print(f"dashboard of {n.name}: {n.dashboard} (browsers and Node.js: "
                          f"{n.websocket})", soft_wrap=True)
    console.print(f"{len(nodes)} node(s) running; `tsctl status -a {nodes[0].address}` "
                  "shows the tree, `tsctl down` stops it")
    console.print(f"the tree's admin token is in {token_file(state)}: export "
                  f"TREESCALE_TOKEN=$(cat {token_file(state)}) or pass --token-file",
                  soft_wrap=True)


@click.command("down")
@state_option
@click.option("--json", "as_json", is_flag=True, help="Print the stopped nodes as JSON.")
@friendly
def down_cmd(state: Path, as_json: bool) -> None:
    """Stop the nodes that `tsctl up` started."""
    from treescale.local import down

    names = down(state)
    if as_json:
        print(json.dumps({"stopped": names}))
        return
    console.print(f"stopped {len(names)} node(s)" + (f": {', '.join(names)}" if names
                                                     else " (none was running)"))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the nodes as JSON.")
@click.option("--wait", type=float, default=2.5, show_default=True,
              help="Seconds to listen for the nodes' self-reports.")
@wide_option
@address_option
@token_option
@timeout_option
@friendly
def status(as_json: bool, wait: float, wide: bool, address: str, token: str | None,
           timeout: float) -> None:
    """List every node of the tree: parent, children, address, uptime, traffic."""
    import time

    seen: dict = {}
    with connect(address, token, timeout) as c:
        c.subscribe(subjects.NODE_STATS)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            ev = c.next_event(max(0.0, deadline - time.monotonic()))
            if ev is not None:
                report = ev.json()
                seen[report["node"]] = report
    nodes = sorted(seen.values(), key=lambda r: (r.get("depth", 0), r["node"]))
    if as_json:
        print(json.dumps(nodes, indent=1))
        return
    rows = [[r["node"], r.get("parent") or "—", " ".join(r.get("children", [])),
             r["address"].removeprefix("tcp://"), " ".join(r.get("groups", [])),
             " ".join(r.get("tags", [])), f"{r['uptime']:.0f}", str(r["clients"]),
             f"{r['events_in']:,}", f"{r['events_out']:,}"] for r in nodes]
    print_table(STATUS_COLUMNS, rows, wide=wide,
                title=f"{len(nodes)} node(s) seen from {address}")


# What `tsctl status` shows, most useful first when the terminal is narrow.
STATUS_COLUMNS = [
    Column("node", KEY), Column("parent", priority=9), Column("children", priority=4),
    Column("address", priority=8), Column("groups", priority=3), Column("tags", priority=2),
    Column("up s", priority=7, justify="right"), Column("clients", priority=5, justify="right"),
    Column("in", priority=6, justify="right"), Column("out", priority=6, justify="right")]


# --------------------------------------------------------------------- api exec


@click.group()
def api() -> None:
    """Drive the services of nodes anywhere in the tree."""


@api.command("exec")
@click.option("-c", "--command", "command", required=True, help="Shell command to run.")
@click.option("-n", "--node", "via", help="Node to connect to, by name (from --config).")
@click.option("-t", "--target", "target", help="Node to run the command on.")
@click.option("--group", help="Run on every node of this group (one result each).")
@click.option("--tag", help="Run on every node with this tag (one result each).")
@click.option("--config", "config_path", default="configs/tree.toml", show_default=True,
              type=click.Path(dir_okay=False), help="Tree file that names the nodes.")
@click.option("--exec-timeout", type=float, default=60.0, show_default=True,
              help="Seconds the command may run.")
@click.option("--json", "as_json", is_flag=True, help="One JSON result per node.")
@address_option
@token_option
@timeout_option
@friendly
def api_exec(command: str, via: str | None, target: str | None, group: str | None,
             tag: str | None, config_path: str, exec_timeout: float, as_json: bool,
             address: str, token: str | None, timeout: float) -> None:
    """Run COMMAND on a node (or a group/tag of nodes) through the tree; output streams
    back and tsctl exits with the command's exit code."""
    from tsctl.execute import run_exec

    one_target(target, group, tag)  # exactly one of them, or a usage error
    if via is not None:
        address = address_of_node(via, config_path)
    code = run_exec(address, token, timeout, command, exec_timeout, target, group, tag,
                    as_json)
    sys.exit(code)


# ---------------------------------------------------------------------- pub / sub


@click.command()
@click.argument("name")
@click.argument("data", required=False, default="")
@click.option("--target", "-t", help="node:NAME, group:G, tag:T or channel:C.")
@click.option("--mode", type=click.Choice(["all", "one"]), default="all", show_default=True)
@click.option("--count", "-n", type=click.IntRange(min=1), default=1, show_default=True,
              help="Publish the event this many times.")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the payload from stdin.")
@click.option("--durable", "durable", is_flag=True,
              help="Durable: the node stores it for durable subscriptions; wait for its "
              "confirm.")
@click.option("--json", "as_json", is_flag=True,
              help="Print what was published (name, count, bytes, node) as JSON.")
@address_option
@token_option
@timeout_option
@friendly
def pub(name: str, data: str, target: str | None, mode: str, count: int, from_stdin: bool,
        durable: bool, as_json: bool, address: str, token: str | None,
        timeout: float) -> None:
    """Publish an event NAME with payload DATA."""
    payload = sys.stdin.buffer.read() if from_stdin else data.encode()
    ids = []
    with connect(address, token, timeout) as c:
        for _ in range(count):
            if durable:
                ids.append(c.publish(name, payload, target=target, mode=mode,
                                     durable=True))
            else:
                c.publish(name, payload, target=target, mode=mode)
        c.flush(timeout)  # with --durable: DeliveryError unless each was confirmed
        if c.errors:
            raise c.errors[0]
        node_name = c.node
    if as_json:
        print(json.dumps({"name": name, "count": count, "bytes": len(payload),
                          "target": target, "mode": mode, "node": node_name,
                          **({"durable": True, "ids": ids} if durable else {})}))
        return
    what = "durable event(s), confirmed by node " + node_name if durable else "event(s)"
    console.print(f"published {count} {what} to {name}")


@click.command()
@click.argument("pattern")
@click.option("--queue", "-q", help="Queue name: share `one` events with its members.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--count", "-n", type=click.IntRange(min=1), help="Exit after N events.")
@click.option("--wait", type=float, default=None,
              help="Exit after this many seconds without an event.")
@click.option("--name", help="Client name shown to the node.")
@click.option("--group", "groups", multiple=True, help="Join this group (repeatable).")
@click.option("--tag", "tags", multiple=True, help="Carry this tag (repeatable).")
@click.option("--channel", "channels", multiple=True, help="Join this channel (repeatable).")
@click.option("--durable", "durable", metavar="NAME",
              help="A durable subscription: the node keeps its events while we are away.")
@click.option("--start", type=click.Choice(["new", "all"]), default="new",
              show_default=True, help="--durable: where a new durable starts.")
@click.option("--seq", type=click.IntRange(min=0), help="--durable: start at this seq.")
@click.option("--time", "at", type=float,
              help="--durable: start at this time (epoch seconds).")
@click.option("--ack", "ack", is_flag=True,
              help="--durable: ack each event once printed (else it comes again).")
@address_option
@token_option
@timeout_option
@friendly
def sub(pattern: str, queue: str | None, as_json: bool, count: int | None,
        wait: float | None, name: str | None, groups: tuple, tags: tuple, channels: tuple,
        durable: str | None, start: str, seq: int | None, at: float | None, ack: bool,
        address: str, token: str | None, timeout: float) -> None:
    """Print events matching PATTERN (`*` one token, `>` the rest)."""
    from tsctl.durable_cmd import durable_fields, event_line

    if durable is None and (ack or seq is not None or at is not None or start != "new"):
        raise click.UsageError("--start, --seq, --time and --ack need --durable NAME")
    with connect(address, token, timeout, name=name, groups=groups, tags=tags,
                 channels=channels) as c:
        if durable is None:
            c.subscribe(pattern, queue)
            what = pattern
        else:
            c.subscribe(pattern, queue, timeout, durable=durable, start=start, seq=seq,
                        time=at)
            what = f"{pattern} (durable {durable})"
        # stderr, so scripts reading JSON from stdout can also wait for this line
        console.print(f"subscribed to {what} on node {c.node}")
        seen = 0
        for ev in c.events(timeout=wait):
            if as_json:
                extra = durable_fields(ev) if ev.durable is not None else {}
                print(json.dumps({**event_dict(ev), **extra}), flush=True)
            else:
                mark = event_line(ev) if ev.durable is not None else ""
                out.print(f"{mark}[cyan]{ev.name}[/] [dim]from {ev.source}[/] "
                          f"{render_data(ev.data)}", soft_wrap=True)
            if ack:
                ev.ack()
            seen += 1
            if count and seen >= count:
                break


@click.command()
@click.argument("name")
@click.argument("data", required=False, default="")
@click.option("--target", "-t", help="node:NAME, group:G, tag:T or channel:C.")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@address_option
@token_option
@timeout_option
@friendly
def request(name: str, data: str, target: str | None, as_json: bool, address: str,
            token: str | None, timeout: float) -> None:
    """Send a request NAME and print the reply."""
    with connect(address, token, timeout) as c:
        ev = c.request(name, data.encode(), timeout=timeout, target=target)
    if as_json:
        print(json.dumps(event_dict(ev)))
    else:
        sys.stdout.buffer.write(bytes(ev.data))
        if not bytes(ev.data).endswith(b"\n"):
            sys.stdout.write("\n")


@click.command()
@click.option("--duration", type=float, default=None,
              help="Stop after this many seconds [default: run until Ctrl-C].")
@click.option("--rate", type=click.IntRange(min=10), default=2000, show_default=True,
              help="Sensor events per second to publish.")
@friendly
def demo(duration: float | None, rate: int) -> None:
    """Run a node with publishers and subscribers on loopback, shown live."""
    from tsctl.demo import run_demo

    run_demo(duration, rate)


COMMANDS = [up_cmd, down_cmd, status, api, pub, sub, request, demo]
