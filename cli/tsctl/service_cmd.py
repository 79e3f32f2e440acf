"""`tsctl service`: services that keep themselves running across the tree (so many
replicas of an image, placed on nodes with Docker, restarted and moved as nodes come
and go, reached as ``svc.NAME`` or at an L4 endpoint).

Every command asks the ``service`` service of the node tsctl is attached to
(permission ``service``); that node hands the operation to the scheduler. Here
--group/--tag say where the replicas may run (not which nodes to ask, as in `tsctl
docker`), so there is no -t: the attached node always answers.

Must not touch: scheduling, placement and containers (treescale.services.orchestrator
does all of it; this module parses, calls, waits and renders), subject spellings
(treescale.subjects).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from rich.markup import escape
from rich.text import Text

from treescale import Client, subjects
from tsctl.common import (
    USER_ERRORS,
    address_option,
    connect,
    console,
    friendly,
    out,
    print_table,
    report_failures,
    timeout_option,
    token_option,
    wide_option,
)
from tsctl.tables import KEY, PLAIN, Column

SERVICE = "service"
POLL = 0.3  # seconds between two looks at a service being waited for
WAIT_TIMEOUT = 120.0
CALL_TIMEOUT = 45.0  # one operation: the node forwards it (30 s) and checks images
# NAME, options, then the container's command after `--` (its own options untouched).
ARGV_TAIL = {"ignore_unknown_options": True}

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")


def node_options(fn: Callable | None = None, *, timeout: Callable = timeout_option
                 ) -> Callable:
    """-a/--address, --server-key, --token(-file), --timeout and --json (``as_json``)."""

    def apply(fn: Callable) -> Callable:
        for option in (timeout, token_option, address_option, json_option):
            fn = option(fn)
        return fn

    return apply if fn is None else apply(fn)


def ask(client: Client, op: str, args: dict, timeout: float) -> Any:
    """``op``'s answer from the attached node; its error as one line and exit 1."""
    from treescale.services.rpc import call

    [r] = call(client, SERVICE, op, args, node=client.node, timeout=timeout)
    report_failures([r])
    return r.result


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    sys.exit(1)


def print_json(body: Any) -> None:
    out.print_json(json.dumps(body, default=str))


def endpoint(s: dict) -> str:
    """Where a client reaches the service: its L4 endpoint, else its request subject."""
    if s.get("vip"):
        return f"{s['vip']} on {s['vip_node']}" if s.get("vip_node") else s["vip"]
    return subjects.service_request(s["name"])


def where(s: dict) -> str:
    """``group web``, ``tag eu`` or ``any`` (node with Docker): short for a table."""
    return "any" if s["where"].startswith("any") else s["where"]


def settled(s: dict) -> bool:
    """Every replica asked for is ready, and there are no more than that."""
    return s["ready"] >= s["desired"] and len(s["replicas"]) == s["desired"]


def short(cid: str | None) -> str:
    return (cid or "")[:12]


def waiting(what: str) -> Callable:
    """--wait/--no-wait, --timeout and the node options of a command that waits."""
    def decorate(fn: Callable) -> Callable:
        fn = friendly(fn)
        fn = node_options(timeout=click.option(
            "--timeout", type=click.FloatRange(min=0.1), default=WAIT_TIMEOUT,
            show_default=True, help="Give up after this many seconds."))(fn)
        return click.option("--wait/--no-wait", default=True, show_default=True,
                            help=what)(fn)
    return decorate


@click.group()
def service() -> None:
    """Services across the tree: replicas of an image kept running (permission: service)."""


# ------------------------------------------------------------------- add


def parse_env(items: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise click.UsageError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    return env


@service.command("add", context_settings=ARGV_TAIL)
@click.argument("name")
@click.argument("command", nargs=-1, metavar="[-- COMMAND [ARGS]...]")
@click.option("--image", required=True, help="The image (on at least one node's engine).")
@click.option("--replicas", type=click.IntRange(min=0),
              help="How many to run (default 1, or --min).")
@click.option("--port", type=click.IntRange(1, 65535), metavar="CONTAINER_PORT",
              help="The port the replicas serve on (svc.NAME requests reach it).")
@click.option("--group", help="Run only on nodes of this group.")
@click.option("--tag", help="Run only on nodes with this tag.")
@click.option("-e", "--env", multiple=True, metavar="KEY=VALUE", help="Environment.")
@click.option("--min", "minimum", type=click.IntRange(min=0),
              help="Fewest replicas (0: scale from zero when used).")
@click.option("--max", "maximum", type=click.IntRange(min=1), help="Most replicas.")
@click.option("--idle", type=click.FloatRange(min=0), metavar="SECONDS",
              help="With --min 0: scale to zero after this long unused.")
@click.option("--hold", type=click.FloatRange(min=0), metavar="SECONDS",
              help="With --min 0: how long a connection waits for a replica to wake.")
@click.option("--vip", metavar="IP:PORT", help="An L4 endpoint for the service (lb).")
@click.option("--vip-node", metavar="NODE",
              help="The node whose lb holds --vip (default: the scheduler).")
@waiting("Wait until every replica is ready.")
def add(name: str, command: tuple[str, ...], image: str, replicas: int | None,
        port: int | None, group: str | None, tag: str | None, env: tuple[str, ...],
        minimum: int | None, maximum: int | None, idle: float | None, hold: float | None,
        vip: str | None, vip_node: str | None, wait: bool, as_json: bool,
        address: str, token: str | None, timeout: float) -> None:
    """Run service NAME: replicas of IMAGE spread over the nodes with Docker."""
    if group and tag:
        raise click.UsageError("give --group or --tag, not both")
    if command and command[0].startswith("-"):
        raise click.UsageError(f"no such option: {command[0]} (a container command "
                               "goes after --)")
    if vip_node and not vip:
        raise click.UsageError("--vip-node needs --vip")
    if vip and port is None:
        raise click.UsageError("--vip needs --port, the port the replicas serve on")
    given = {"replicas": replicas, "port": port, "group": group, "tag": tag,
             "minimum": minimum, "maximum": maximum, "idle": idle, "hold": hold,
             "vip": vip, "vip_node": vip_node}
    args = {"name": name, "image": image, "env": parse_env(env),
            "command": list(command), **{k: v for k, v in given.items() if v is not None}}
    deadline = time.monotonic() + timeout
    with connect(address, token, min(timeout, CALL_TIMEOUT), name="tsctl-service") as c:
        with Watch(c, name, as_json, wait) as watch:
            s = ask(c, "add", args, min(timeout, CALL_TIMEOUT))
            if wait:
                s = watch.until_settled(s, deadline, timeout)
    finish(s, as_json, f"service {name} added")


# ------------------------------------------------------------- waiting


class Watch:
    """Waits for a service to settle, showing each replica as it is placed, started
    and ready, and a bar per image transfer (``$sys.image.<node>.progress`` events;
    without the ``sys`` permission there are no bars, the rest still shows)."""

    def __init__(self, client: Client, name: str, as_json: bool, wait: bool) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        self.client, self.name, self.as_json = client, name, as_json
        # The live display: for a person at a terminal (a log gets the summary line).
        self.enabled = wait and not as_json and console.is_terminal
        self.progress = Progress(TextColumn("  {task.description}"), BarColumn(),
                                 DownloadColumn(), console=console)
        self.transfers: dict[tuple[str, str], Any] = {}
        self.live: Any = None
        self.last: dict | None = None

    def __enter__(self) -> Watch:
        if self.enabled:  # before the op: a transfer starts as soon as it is placed
            try:
                self.client.subscribe(subjects.image_events(), handler=self._on_image)
            except USER_ERRORS:  # refused or not answered: no bars, the lines still show
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        """The live display (once the op succeeded: a refusal is one line alone)."""
        from rich.live import Live

        if self.enabled and self.live is None:
            self.live = Live(self._render(), console=console, refresh_per_second=8)
            self.live.start()

    def stop(self) -> None:
        """The last frame stays; whatever is printed next comes under it."""
        if self.live is not None:
            self.live.update(self._render(), refresh=True)
            self.live.stop()
            self.live = None

    def _on_image(self, ev: Any) -> None:
        """The client's I/O thread: one transfer's bytes so far (rich locks its own)."""
        import msgpack

        try:
            body = msgpack.unpackb(bytes(ev.data), raw=False)
            key = (str(body["node"]), str(body["image"]))
            done, total = int(body.get("bytes") or 0), body.get("total")
        except Exception:  # not a transfer event: nothing to draw
            return
        if key not in self.transfers:
            self.transfers[key] = self.progress.add_task(f"{key[1]} to {key[0]}",
                                                         total=total)
        self.progress.update(self.transfers[key], completed=done, total=total)

    def _render(self) -> Any:
        from rich.console import Group

        s = self.last
        if s is None:
            return Group(Text(f"adding service {self.name}..."), self.progress)
        lines = [Text(f"{s['name']}: {s['ready']}/{s['desired']} ready ({s['state']})",
                      style="bold")]
        for r in s["replicas"]:
            ready = "ready" if r["ready"] else "not ready yet"
            lines.append(Text(f"  {r['node']}  {short(r['cid'])}  {r['state']}, {ready}"))
        if s["pending"]:
            lines.append(Text(f"  {s['pending']} being placed/started", style="dim"))
        if s.get("error"):
            lines.append(Text(f"  {s['error']}", style="yellow"))
        return Group(*lines, self.progress)

    def show(self, s: dict) -> None:
        self.last = s
        if self.live is not None:
            self.live.update(self._render(), refresh=True)

    def until_settled(self, s: dict, deadline: float, timeout: float) -> dict:
        """``s`` again (from ``info``) once settled; exit 1 at the deadline."""
        from treescale.services.rpc import call

        self.start()
        while True:
            self.show(s)
            if settled(s):
                return s
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                if self.as_json:  # a script still gets the service as it stands
                    print_json(s)
                fail(f"service {s['name']}: {s['ready']}/{s['desired']} ready after "
                     f"{timeout:g}s: {s.get('error') or s['state']}")
            time.sleep(min(POLL, left))  # polling the scheduler's view, at a human pace
            [r] = call(self.client, SERVICE, "info", {"name": s["name"]},
                       node=self.client.node, timeout=max(1.0, min(10.0, left)))
            if not r.ok:  # removed meanwhile, say
                self.stop()
                report_failures([r])
            s = r.result


def finish(s: dict, as_json: bool, done: str) -> None:
    """The service as it ended up: JSON, or one line."""
    if as_json:
        print_json(s)
        return
    out.print(f"{done}: {s['ready']}/{s['desired']} ready ({s['state']}), "
              f"{s['where']}, reached at {endpoint(s)}", soft_wrap=True)
    if s.get("error"):
        console.print(f"[bold yellow]warning:[/] {escape(s['error'])}", soft_wrap=True)


# ------------------------------------------------------------------- ls


SERVICE_COLUMNS = [Column("NAME", KEY), Column("IMAGE", priority=5),
                   Column("DESIRED", priority=1, justify="right"),
                   Column("RUNNING", priority=7, justify="right"),
                   Column("STATE", priority=6), Column("WHERE", priority=2),
                   Column("ENDPOINT", priority=4)]
REPLICA_COLUMNS = [Column("SERVICE", KEY), Column("NODE", KEY),
                   Column("CONTAINER", priority=4), Column("ADDRESS", priority=2),
                   Column("STATE", priority=3)]


def replica_rows(services: list[dict]) -> list[list[str]]:
    return [[s["name"], r["node"], short(r["cid"]), r.get("address") or "",
             r["state"] + (", ready" if r["ready"] else "")]
            for s in services for r in s["replicas"]]


@service.command("ls")
@node_options
@wide_option
@friendly
def ls(as_json: bool, wide: bool, address: str, token: str | None, timeout: float) -> None:
    """List the services, then their replicas (node, container, address, state)."""
    with connect(address, token, timeout, name="tsctl-service") as c:
        result = ask(c, "ls", {}, timeout)
    if as_json:
        print_json(result)
        return
    services = result["services"]
    out.print(f"scheduler {result['scheduler']} (term {result['term']}), specs version "
              f"{result['version']}", style="dim")
    if not services:
        out.print("no services (tsctl service add NAME --image IMAGE)")
        return
    print_table(SERVICE_COLUMNS,
                [[s["name"], s["image"], str(s["desired"]), f"{s['ready']}/{s['desired']}",
                  s["state"], where(s), endpoint(s)] for s in services],
                wide=wide, frame=PLAIN, header_style="bold")
    for s in services:
        if s.get("error"):
            console.print(f"[bold yellow]{escape(s['name'])}:[/] {escape(s['error'])}",
                          soft_wrap=True)
    rows = replica_rows(services)
    if rows:
        out.print()
        print_table(REPLICA_COLUMNS, rows, wide=wide, frame=PLAIN, header_style="bold")


# ------------------------------------------------------------------- info


SPEC_FIELDS = [("image", "image"), ("replicas", "replicas"), ("port", "port"),
               ("group", "group"), ("tag", "tag"), ("command", "command"),
               ("env", "env"), ("minimum", "min"), ("maximum", "max"),
               ("idle", "idle (s)"), ("hold", "hold (s)"), ("vip", "endpoint"),
               ("vip_node", "endpoint node"), ("image_id", "image id")]


def spec_lines(spec: dict) -> list[tuple[str, str]]:
    """The spec's fields that are set, as (label, value) for a reader."""
    lines = []
    for key, label in SPEC_FIELDS:
        value = spec.get(key)
        if value is None or value == [] or value == {} or value == ():
            continue
        if key == "command":
            import shlex

            value = shlex.join(value)
        elif key == "env":
            value = " ".join(f"{k}={v}" for k, v in sorted(value.items()))
        lines.append((label, str(value)))
    return lines


@service.command("info")
@click.argument("name")
@node_options
@wide_option
@friendly
def info(name: str, as_json: bool, wide: bool, address: str, token: str | None,
         timeout: float) -> None:
    """One service: its spec, its state and its replicas."""
    with connect(address, token, timeout, name="tsctl-service") as c:
        s = ask(c, "info", {"name": name}, timeout)
    if as_json:
        print_json(s)
        return
    out.print(Text(f"service {s['name']}: {s['ready']}/{s['desired']} ready ({s['state']}), "
                   f"{s['running']} running, {s['pending']} pending", style="bold"))
    rows = [("where", s["where"]), ("reached at", endpoint(s)), *spec_lines(s["spec"]),
            ("scheduler", f"{s['scheduler']}, specs version {s['version']}")]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        out.print(Text(f"  {label:<{width}}  {value}"), soft_wrap=True)
    if s.get("error"):
        console.print(f"[bold yellow]error:[/] {escape(s['error'])}", soft_wrap=True)
    rows = replica_rows([s])
    if rows:
        print_table(REPLICA_COLUMNS[1:], [r[1:] for r in rows], wide=wide, frame=PLAIN,
                    header_style="bold")
    else:
        out.print("no replicas")


# ------------------------------------------------------------------- scale, rm


@service.command("scale")
@click.argument("name")
@click.argument("replicas", type=click.IntRange(min=0))
@waiting("Wait until exactly REPLICAS are ready.")
def scale(name: str, replicas: int, wait: bool, as_json: bool, address: str,
          token: str | None, timeout: float) -> None:
    """Run REPLICAS replicas of service NAME."""
    deadline = time.monotonic() + timeout
    with connect(address, token, min(timeout, CALL_TIMEOUT), name="tsctl-service") as c:
        with Watch(c, name, as_json, wait) as watch:
            s = ask(c, "scale", {"name": name, "replicas": replicas},
                    min(timeout, CALL_TIMEOUT))
            if wait:
                s = watch.until_settled(s, deadline, timeout)
    finish(s, as_json, f"service {name} scaled to {replicas}")


@service.command("rm")
@click.argument("name")
@node_options
@friendly
def rm(name: str, as_json: bool, address: str, token: str | None, timeout: float) -> None:
    """Remove service NAME (its replicas are stopped and removed)."""
    with connect(address, token, timeout, name="tsctl-service") as c:
        s = ask(c, "rm", {"name": name}, timeout)
    if as_json:
        print_json(s)
        return
    n = len(s["replicas"])
    out.print(f"removed service {name} ({n} replica{'s' if n != 1 else ''} to stop)")


# ------------------------------------------------------------------- logs


@service.command("logs")
@click.argument("name")
@click.option("--tail", type=click.IntRange(min=0), default=100, show_default=True,
              help="Last N lines of each replica.")
@node_options
@friendly
def logs(name: str, tail: int, as_json: bool, address: str, token: str | None,
         timeout: float) -> None:
    """Each replica's output, under a line `== node container ==`."""
    with connect(address, token, timeout, name="tsctl-service") as c:
        result = ask(c, "logs", {"name": name, "tail": tail}, timeout)
    if as_json:
        print_json(result)
        return
    if not result["replicas"]:
        console.print(f"service {escape(name)} has no replicas")
    for r in result["replicas"]:
        sys.stdout.write(f"== {r['node']} {short(r['cid'])} ==\n")
        if r.get("error"):
            sys.stdout.write(f"(no log: {r['error']})\n")
        text = r.get("log") or ""
        sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
    sys.stdout.flush()


COMMANDS = [service]
