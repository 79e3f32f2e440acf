"""`tsctl docker`: drive the Docker engine of any node (or of a group/tag of nodes)
through that node's docker service. Every result is labelled with its node.

Must not touch: the engine (the node's docker service, treescale.services.docker, does
everything; this module parses, calls and renders), subject spellings
(treescale.subjects).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from treescale import subjects
from tsctl.common import (
    call_service,
    connect,
    console,
    friendly,
    one_target,
    out,
    print_table,
    report_failures,
    service_options,
    wide_option,
)
from tsctl.tables import KEY, PLAIN, TEXT, Column

SERVICE = "docker"
# IMAGE/CONTAINER then a command line of its own: options go before, as with docker.
ARGV_TAIL = {"allow_interspersed_args": False, "ignore_unknown_options": True}


_common = service_options(json_help="One JSON document.")


def _call(op: str, args: dict, as_json: bool, target: dict, **kw: Any) -> list:
    """Run ``op`` on the chosen node(s) (``target``: the connection and target options;
    ``kw``: call_service's extra_timeout/on_stream) and return the successes, by node.
    With --json all results are printed here, as one document. Failures are reported
    once the command has shown the successes (then exit 1), at once if none succeeded."""
    results = sorted(call_service(SERVICE, op, args, default_to_attached=False,
                                  name="tsctl-docker", **target, **kw),
                     key=lambda r: r.node)
    if as_json:
        out.print_json(json.dumps([r.as_dict() for r in results], default=str))
    good = [r for r in results if r.ok]
    if good:
        click.get_current_context().call_on_close(
            lambda: report_failures(results, quiet=as_json))
    else:
        report_failures(results, quiet=as_json)
    return good


def _table(columns: list[Column], rows: list[list[Any]], wide: bool) -> None:
    """The columns that fit the terminal (all with --wide), docker's own plain look."""
    print_table(columns, [["" if v is None else str(v) for v in row] for row in rows],
                wide=wide, frame=PLAIN, header_style="bold")


def _size(n: Any) -> str:
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


@click.group()
def docker() -> None:
    """Containers on the nodes' Docker engines (permission: docker)."""


# What `docker ps` shows, most useful first when the terminal is narrow.
PS_COLUMNS = [Column("NODE", KEY), Column("ID", priority=1), Column("NAME", KEY),
              Column("IMAGE", priority=4), Column("STATE", priority=5),
              Column("STATUS", priority=2), Column("PORTS", priority=3)]


@docker.command("ps")
@_common
@click.option("--all", "show_all", is_flag=True, help="Stopped containers too.")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Engine filter, e.g. label=app=web, name=web, status=exited.")
@wide_option
@friendly
def ps(as_json: bool, show_all: bool, filters: tuple[str, ...], wide: bool,
       **target: Any) -> None:
    """List containers."""
    flt: dict[str, list[str]] = {}
    for f in filters:
        key, eq, value = f.partition("=")
        if not eq:
            raise click.UsageError(f"filter {f!r}: expected KEY=VALUE")
        flt.setdefault(key, []).append(value)
    results = _call("ps", {"all": show_all, "filters": flt}, as_json, target)
    if not as_json:
        _table(PS_COLUMNS, [[r.node, c["id"], c["name"], c["image"], c["state"],
                             c["status"], ", ".join(c["ports"])]
                            for r in results for c in r.result], wide)


@docker.command("run", context_settings=ARGV_TAIL)
@_common
@click.argument("image")
@click.argument("command", nargs=-1)
@click.option("--name", help="Container name (with --count N: NAME-1..NAME-N).")
@click.option("-e", "--env", multiple=True, metavar="KEY=VALUE", help="Environment.")
@click.option("-p", "--publish", "ports", multiple=True,
              metavar="[IP:][HOST_PORT:]PORT[/PROTO]",
              help="Publish a port, as docker run -p (no IP: every host address).")
@click.option("-l", "--label", "labels", multiple=True, metavar="KEY=VALUE")
@click.option("--cpus", type=float, help="CPU limit, e.g. 0.5.")
@click.option("-m", "--memory", help="Memory limit, e.g. 64m.")
@click.option("--restart", default="no", show_default=True,
              help="no, always, unless-stopped or on-failure[:N].")
@click.option("-n", "--count", type=int, default=1, show_default=True,
              help="How many containers to start.")
@friendly
def run(as_json: bool, image: str, command: tuple[str, ...], name: str | None,
        env: tuple[str, ...], ports: tuple[str, ...], labels: tuple[str, ...],
        cpus: float | None, memory: str | None, restart: str, count: int,
        **target: Any) -> None:
    """Start containers of IMAGE (never pulls: see `tsctl docker pull`)."""
    label_map = {}
    for item in labels:
        key, _, value = item.partition("=")
        label_map[key] = value
    args = {"image": image, "command": list(command) or None, "name": name,
            "env": list(env), "ports": list(ports), "labels": label_map, "cpus": cpus,
            "memory": memory, "restart": restart, "count": count}
    results = _call("run", args, as_json, target, extra_timeout=30 + 2 * count)
    if not as_json:
        for r in results:
            for c in r.result:
                click.echo(f"{r.node}\t{c['id']}\t{c['name']}")


def _lifecycle(op: str, verb: str, stop_timeout: bool = False, force: bool = False) -> None:
    """start/stop/restart/rm share one shape: containers in, their new states out."""

    @_common
    @click.argument("containers", nargs=-1, required=True)
    @friendly
    def command(as_json: bool, containers: tuple[str, ...], stop_timeout: int | None = None,
                force: bool | None = None, **target: Any) -> None:
        args: dict[str, Any] = {"containers": list(containers)}
        if stop_timeout is not None:
            args["timeout"] = stop_timeout
        if force is not None:
            args["force"] = force
        results = _call(op, args, as_json, target, extra_timeout=(stop_timeout or 0) + 20)
        if not as_json:
            for r in results:
                for c in r.result:
                    click.echo(f"{r.node}\t{c['name']}\t{c['state']}")

    command.__doc__ = f"{verb} containers (names or ids)."
    if stop_timeout:
        command = click.option("--stop-timeout", type=int, default=10, show_default=True,
                               help="Seconds before the engine kills it.")(command)
    if force:
        command = click.option("-f", "--force", is_flag=True,
                               help="Kill running containers first.")(command)
    docker.command(op)(command)


_lifecycle("start", "Start")
_lifecycle("stop", "Stop", stop_timeout=True)
_lifecycle("restart", "Restart", stop_timeout=True)
_lifecycle("rm", "Remove", force=True)


@docker.command("logs")
@_common
@click.argument("container")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output.")
@click.option("--duration", type=float, default=60.0, show_default=True,
              help="With -f: stop after this many seconds (or when it stops).")
@click.option("--tail", default="all", show_default=True, help="Last N lines only.")
@click.option("--timestamps", is_flag=True)
@friendly
def logs(as_json: bool, container: str, follow: bool, duration: float, tail: str,
         timestamps: bool, **target: Any) -> None:
    """Print a container's output (streamed as it comes)."""
    if tail != "all" and not tail.isdigit():
        raise click.UsageError(f"--tail {tail!r}: a number or 'all'")
    labelled = target["node"] is None

    def show(n: str, stream: str, data: Any) -> None:
        if as_json:
            return
        if labelled:
            for line in bytes(data).decode(errors="replace").splitlines(keepends=True):
                sys.stdout.write(f"[{n}] {line}")
        else:
            sys.stdout.buffer.write(bytes(data))
        sys.stdout.flush()

    _call("logs", {"container": container, "follow": follow, "duration": duration,
                   "tail": tail if tail == "all" else int(tail), "timestamps": timestamps},
          as_json, target, extra_timeout=duration if follow else 0, on_stream=show)


@docker.command("inspect")
@_common
@click.argument("container")
@friendly
def inspect(as_json: bool, container: str, **target: Any) -> None:
    """The engine's full description of a container (JSON)."""
    results = _call("inspect", {"container": container}, as_json, target)
    if not as_json:
        out.print_json(json.dumps({r.node: r.result for r in results}, default=str))


@docker.command("exec", context_settings=ARGV_TAIL)
@_common
@click.option("--exec-timeout", type=float, default=60.0, show_default=True,
              help="Give up on the command after this many seconds.")
@click.argument("container")
@click.argument("command", nargs=-1, required=True)
@friendly
def exec_(as_json: bool, exec_timeout: float, container: str, command: tuple[str, ...],
          **target: Any) -> None:
    """Run COMMAND in a running container; exit with its exit code (the worst one)."""
    results = _call("exec", {"container": container, "command": list(command),
                             "timeout": exec_timeout},
                    as_json, target, extra_timeout=exec_timeout)
    if not as_json:
        for r in results:
            prefix = f"[{r.node}] " if target["node"] is None else ""
            for text, stream in ((r.result["stdout"], sys.stdout),
                                 (r.result["stderr"], sys.stderr)):
                for line in text.splitlines(keepends=True):
                    stream.write(prefix + line)
            sys.stdout.flush()
    sys.exit(max(r.result["exit_code"] or 0 for r in results))


def _stats_rows(samples: list[dict]) -> list[list[Any]]:
    return [[s["node"], s["name"], f"{s['cpu_percent']:.1f}%",
             f"{_size(s['mem_bytes'])} / {_size(s['mem_limit'])}",
             f"{_size(s['net_rx'])} / {_size(s['net_tx'])}",
             f"{_size(s['blk_read'])} / {_size(s['blk_write'])}"]
            for s in sorted(samples, key=lambda s: (s["node"], s["name"]))]


STATS_COLUMNS = [Column("NODE", KEY), Column("NAME", KEY),
                 Column("CPU", priority=4, justify="right"),
                 Column("MEM / LIMIT", priority=3, justify="right"),
                 Column("NET RX / TX", priority=2, justify="right"),
                 Column("BLOCK R / W", priority=1, justify="right")]


@docker.command("stats")
@_common
@click.option("-w", "--watch", is_flag=True,
              help="Live view of the stats events the nodes publish.")
@click.option("--duration", type=float, default=0.0,
              help="With --watch: stop after this many seconds (default: Ctrl-C).")
@wide_option
@friendly
def stats(as_json: bool, watch: bool, duration: float, wide: bool, **target: Any) -> None:
    """CPU, memory, network and block I/O of running containers."""
    if not watch:
        results = _call("stats", {}, as_json, target)
        if not as_json:
            _table(STATS_COLUMNS, _stats_rows([s for r in results for s in r.result]), wide)
        return
    _watch_stats(dict(target, as_json=as_json), duration)


def _watch_stats(opts: dict, duration: float) -> None:
    """Follow ``$sys.docker.<node>.stats`` events: a live table (or JSON lines)."""
    import msgpack
    from rich.live import Live
    from rich.table import Table

    one_target(opts["node"], opts["group"], opts["tag"])
    pattern = subjects.docker_stats(opts["node"])
    latest: dict[tuple[str, str], dict] = {}
    deadline = time.monotonic() + duration if duration > 0 else float("inf")
    with connect(opts["address"], opts["token"], opts["timeout"], name="tsctl-docker") as c:
        c.subscribe(pattern)

        def render() -> Table:
            table = Table(box=None, header_style="bold", title="docker stats (live)")
            for col in STATS_COLUMNS:
                table.add_column(col.header, justify=col.justify)
            for row in _stats_rows(list(latest.values())):
                table.add_row(*row)
            return table

        live = None if opts["as_json"] else Live(render(), console=out, auto_refresh=False)
        if live:
            live.start()
        try:
            while time.monotonic() < deadline:
                ev = c.next_event(min(0.5, max(deadline - time.monotonic(), 0.01)))
                if ev is None:
                    continue
                sample = msgpack.unpackb(ev.data, raw=False)
                if opts["as_json"]:
                    out.print_json(json.dumps(sample), indent=None)
                    continue
                latest[(sample["node"], sample["id"])] = sample
                live.update(render(), refresh=True)
        finally:
            if live:
                live.stop()


INFO_COLUMNS = [Column("NODE", KEY), Column("ENGINE", TEXT, priority=2, min_width=16),
                Column("VERSION", priority=5), Column("API", priority=2),
                Column("EVENTS", priority=4), Column("MONITORED", priority=3),
                Column("STATS EVERY", priority=1)]


@docker.command("info")
@_common
@wide_option
@friendly
def info(as_json: bool, wide: bool, **target: Any) -> None:
    """Each node's engine: address, version, whether its events and stats are followed."""
    results = _call("info", {}, as_json, target)
    if not as_json:
        _table(INFO_COLUMNS,
               [[r.node, i["engine"], i["version"], i["api"], "followed" if i["events"]
                 else "not followed", i["monitored"], f"{i['stats_interval']:g}s"]
                for r in results for i in [r.result]], wide)


IMAGES_COLUMNS = [Column("NODE", KEY), Column("ID", KEY), Column("TAGS", TEXT, min_width=16),
                  Column("SIZE", priority=1, justify="right")]


@docker.command("images")
@_common
@click.option("--all", "show_all", is_flag=True, help="Intermediate images too.")
@wide_option
@friendly
def images(as_json: bool, show_all: bool, wide: bool, **target: Any) -> None:
    """List images."""
    results = _call("images", {"all": show_all}, as_json, target)
    if not as_json:
        _table(IMAGES_COLUMNS,
               [[r.node, i["id"], ", ".join(i["tags"]) or "<none>", _size(i["size"])]
                for r in results for i in r.result], wide)


@docker.command("pull")
@_common
@click.argument("image")
@click.option("--pull-timeout", type=float, default=600.0, show_default=True,
              help="Give up after this many seconds.")
@friendly
def pull(as_json: bool, image: str, pull_timeout: float, **target: Any) -> None:
    """Pull IMAGE from its registry (progress per node and layer)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    tasks: dict[tuple[str, str], Any] = {}
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                        console=console, transient=True, disable=as_json)

    def show(n: str, stream: str, data: Any) -> None:
        layer = data.get("id") or image
        detail = data.get("progressDetail") or {}
        key = (n, layer)
        if key not in tasks:
            tasks[key] = progress.add_task(f"{n} {layer}", total=None)
        progress.update(tasks[key], description=f"{n} {layer}: {data.get('status', '')}",
                        completed=detail.get("current"), total=detail.get("total"))

    with progress:
        results = _call("pull", {"image": image}, as_json, target,
                        extra_timeout=pull_timeout, on_stream=show)
    if not as_json:
        for r in results:
            click.echo(f"{r.node}\t{r.result['image']}\t{r.result['id']}")


@docker.command("rmi")
@_common
@click.argument("image")
@click.option("-f", "--force", is_flag=True, help="Even if containers use it.")
@friendly
def rmi(as_json: bool, image: str, force: bool, **target: Any) -> None:
    """Remove an image."""
    results = _call("rmi", {"image": image, "force": force}, as_json, target)
    if not as_json:
        for r in results:
            click.echo(f"{r.node}\t{image}\tremoved")


COMMANDS = [docker]
