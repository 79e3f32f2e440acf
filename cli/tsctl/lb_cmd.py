"""`tsctl lb`: L4 load balancing on nodes (virtual services, real servers, following).

Every command goes through the nodes' ``lb`` service (treescale.services.lb), so it
needs a token with the ``lb`` permission. Without -t/--group/--tag a command acts on
the node tsctl is attached to. VIP:PORT may carry the protocol: ``udp/10.0.0.1:53``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import click
from rich.text import Text

from tsctl.common import (
    call_service,
    console,
    friendly,
    out,
    print_table,
    report_failures,
    service_options,
    wide_option,
)
from tsctl.tables import KEY, TEXT, Column

SERVICE = "lb"
PROTOS = ("tcp", "udp")
proto_option = click.option("--proto", type=click.Choice(PROTOS), default="tcp",
                            show_default=True)


def _finish(results: list, as_json: bool, render: Callable[[Any, str], None],
            rendered: Callable[[], None] | None = None) -> None:
    """Print each node's answer (JSON lines, or rendered, then ``rendered()``); one
    error line per node that refused (not with --json), and exit status 1 if any did."""
    labelled = len(results) > 1
    for r in results:
        if as_json:
            print(json.dumps(r.as_dict()))
        elif r.ok:
            render(r.result, f"[{r.node}] " if labelled else "")
    if rendered is not None and not as_json:
        rendered()
    report_failures(results, quiet=as_json)


def _reals_text(service: dict, sep: str = ", ") -> str:
    return sep.join(f"{r['address']}:{r['port']}@{r['weight']}" for r in service["reals"]) \
        or "none"


def _backend_text(service: dict) -> str:
    """``nft`` or ``nft (auto)``: the reasons are in the add reply and under ``ls``."""
    return service["backend"] + (" (auto)" if service["why"].startswith("auto") else "")


@click.group()
def lb() -> None:
    """L4 load balancing: virtual services spread over real servers (ipvs/nft/proxy)."""


@lb.command("add")
@click.argument("vip")
@proto_option
@click.option("--scheduler", type=click.Choice(["rr", "wrr", "lc", "sh"]), default="rr",
              show_default=True, help="rr round robin, wrr weighted, lc least connections, "
                                      "sh source hash.")
@click.option("--backend", type=click.Choice(["auto", "ipvs", "nft", "proxy"]),
              default="auto", show_default=True,
              help="auto takes the best available: ipvs > nft > proxy.")
@click.option("--real", "reals", multiple=True, metavar="IP:PORT[@WEIGHT]",
              help="A real server (repeat for more).")
@click.option("--follow-label", metavar="KEY=VALUE",
              help="Add/remove containers with this label as they start/stop.")
@click.option("--follow-image", metavar="IMAGE",
              help="Add/remove containers of this image as they start/stop.")
@click.option("--target-port", type=click.IntRange(1, 65535),
              help="The port followed containers serve on.")
@click.option("--owner", default="", metavar="TEXT",
              help="Who manages it (e.g. service:web); stored and shown.")
@click.option("--hold", type=click.FloatRange(0, 600), default=0, metavar="SECONDS",
              help="With no real server, hold a TCP connection this long and ask for "
                   "real servers ($sys.lb.NODE.wanted). Proxy backend only.")
@service_options
@friendly
def add(vip: str, proto: str, scheduler: str, backend: str, reals: tuple[str, ...],
        follow_label: str | None, follow_image: str | None, target_port: int | None,
        owner: str, hold: float, as_json: bool, **target: Any) -> None:
    """Create virtual service VIP:PORT."""
    if follow_label and follow_image:
        raise click.UsageError("give --follow-label or --follow-image, not both")
    if (follow_label or follow_image) and target_port is None:
        raise click.UsageError("following containers needs --target-port")
    args = {"vip": vip, "proto": proto, "scheduler": scheduler, "backend": backend,
            "reals": list(reals), "follow_label": follow_label,
            "follow_image": follow_image, "target_port": target_port,
            "owner": owner, "hold": hold}
    results = call_service(SERVICE, "add", args, **target)

    def render(s: dict, label: str) -> None:
        out.print(f"{label}added {s['key']}: {s['scheduler']} over {_reals_text(s)}; "
                  f"backend {s['why']}", soft_wrap=True)
    _finish(results, as_json, render)


@lb.command("rm")
@click.argument("vip")
@proto_option
@service_options
@friendly
def rm(vip: str, proto: str, as_json: bool, **target: Any) -> None:
    """Remove virtual service VIP:PORT."""
    results = call_service(SERVICE, "rm", {"vip": vip, "proto": proto}, **target)
    _finish(results, as_json, lambda s, label: out.print(f"{label}removed {s['key']}"))


def _reals_command(op: str, metavar: str, doc: str, required: bool = True) -> None:
    """real-add, real-rm, reals-set: VIP:PORT and real servers in, its real servers out."""

    @click.argument("vip")
    @click.argument("reals", nargs=-1, required=required, metavar=metavar)
    @proto_option
    @service_options
    @friendly
    def command(vip: str, reals: tuple[str, ...], proto: str, as_json: bool,
                **target: Any) -> None:
        results = call_service(SERVICE, op, {"vip": vip, "proto": proto,
                                             "reals": list(reals)}, **target)
        _finish(results, as_json,
                lambda s, label: out.print(f"{label}{s['key']}: {_reals_text(s)}"))

    command.__doc__ = doc
    lb.command(op.replace("_", "-"))(command)


_reals_command("real_add", "IP:PORT[@WEIGHT]...",
               "Add real servers to VIP:PORT (an existing one gets the new weight).")
_reals_command("real_rm", "IP:PORT...", "Take real servers out of VIP:PORT.")
_reals_command("reals_set", "[IP:PORT[@WEIGHT]]...",
               "Make these exactly the real servers of VIP:PORT (none: no real server).",
               required=False)


# What `lb ls` shows, most useful first when the terminal is narrow.
LS_COLUMNS = [Column("node", KEY), Column("service", KEY), Column("scheduler", priority=2),
              Column("backend", priority=4), Column("real servers", priority=5),
              Column("follows", priority=3), Column("error", TEXT, min_width=20)]


@lb.command("ls")
@service_options
@wide_option
@friendly
def ls(as_json: bool, wide: bool, **target: Any) -> None:
    """List the virtual services and the backend each runs on."""
    results = call_service(SERVICE, "ls", {}, **target)
    rows: list[list[str]] = []
    unavailable: dict[str, str] = {}

    def render(result: dict, label: str) -> None:
        for s in result["services"]:
            rows.append([label.strip(" []") or results[0].node, s["key"], s["scheduler"],
                         _backend_text(s), _reals_text(s, "\n"), s["follow_text"] or "",
                         s["error"] or ""])
        unavailable.update(result.get("unavailable") or {})

    def rendered() -> None:
        print_table(LS_COLUMNS, rows, wide=wide, title="virtual services")
        for reason in unavailable.values():  # wrapped at the terminal's width
            out.print(Text(reason, style="dim"))
    _finish(results, as_json, render, rendered)


@lb.command("show")
@click.argument("vip")
@proto_option
@service_options
@friendly
def show(vip: str, proto: str, as_json: bool, **target: Any) -> None:
    """One virtual service: its real servers, weights and open connections."""
    from rich.table import Table

    results = call_service(SERVICE, "show", {"vip": vip, "proto": proto}, **target)

    def render(s: dict, label: str) -> None:
        follows = f"; follows {s['follow_text']}" if s["follow_text"] else ""
        table = Table(title=f"{label}{s['key']}: {s['scheduler']}, backend "
                            f"{_backend_text(s)}{follows}")
        for col in ("real server", "weight", "container", "active"):
            table.add_column(col, justify="right" if col in ("weight", "active") else "left")
        active = s.get("active")
        for r in s["reals"]:
            key = f"{r['address']}:{r['port']}"
            table.add_row(key, str(r["weight"]), (r.get("container") or "")[:12],
                          "n/a" if active is None else str(active.get(key, 0)))
        out.print(table)
        if s.get("owner") or s.get("hold"):
            out.print(f"owner {s.get('owner') or '-'}; hold {s.get('hold') or 0:g} s",
                      soft_wrap=True)
        if s.get("connections_total") is not None:
            last = s.get("last_connection")
            ago = f"{time.time() - last:.0f} s ago" if last else "never"
            out.print(f"connections {s['connections_total']} (last {ago}); held now "
                      f"{s['held']}, hold expired {s['hold_expired']}", soft_wrap=True)
        if s.get("error"):
            console.print(f"[bold red]not applied:[/] {s['error']}", soft_wrap=True)
        elif not s.get("installed") and s["reals"]:
            console.print(f"[bold yellow]warning:[/] {s['key']} is not in {s['backend']} "
                          "(removed behind the node's back?)", soft_wrap=True)
    _finish(results, as_json, render)


COMMANDS = [lb]
