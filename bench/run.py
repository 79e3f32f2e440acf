"""CLI: run every (system, shape), print one table per shape and TreeScale ratios.

    python -m bench.run [--shapes small,large,fanout,reqrep] [--systems redis,nats,mqtt,zmq]
                        [--quick | --scale F] [--json out.json]

Systems come from ``bench.peers.REGISTRY`` plus ``bench.treescale_system.SYSTEMS`` when that
module imports.  Each shape runs on a fresh broker, one system at a time, so runs do not
compete for the two cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.harness import SHAPES, Result, System, run_shape, select_shapes
from bench.peers import REGISTRY

console = Console()
if not console.is_terminal:  # piped to a file/log: don't squeeze tables into 80 columns
    console.width = 120
MiB = 1 << 20


def discover_systems() -> dict[str, System]:
    """Peers from the registry plus TreeScale's own systems if its driver is importable."""
    systems: dict[str, System] = dict(REGISTRY)
    try:
        mod = importlib.import_module("bench.treescale_system")
    except ImportError as exc:
        if getattr(exc, "name", None) != "bench.treescale_system":
            console.print(f"[yellow]bench.treescale_system failed to import: {exc}[/]")
        return systems
    for entry in getattr(mod, "SYSTEMS", []):
        system = entry() if isinstance(entry, type) else entry
        systems[system.name] = system
    return systems


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _num(value: float | None, scale: float = 1.0, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value / scale, fmt)


STATUS_STYLE = {"ok": "green", "lossy": "yellow", "error": "red", "timeout": "red",
                "unsupported": "dim"}


def shape_table(shape: str, results: list[Result]) -> Table:
    spec = results[0].params
    title = (f"{shape}: {spec['subscribers'] or 1}x{spec['count']:,} msgs of {spec['size']:,} B"
             if shape != "reqrep" else f"reqrep: {spec['count']:,} sequential round trips")
    table = Table(title=title, title_justify="left")
    table.add_column("system")
    table.add_column("status")
    if shape == "reqrep":
        cols = ["round trips", "p50 µs", "p99 µs"]
    else:
        cols = ["received/expected", "loss", "events/s", "MiB/s"]
    for col in [*cols, "wall s"]:
        table.add_column(col, justify="right")
    for r in results:
        status = f"[{STATUS_STYLE.get(r.status, '')}]{r.status}[/]"
        if shape == "reqrep":
            cells = [f"{r.received:,}/{r.expected:,}", _num(r.p50_us, fmt=",.1f"),
                     _num(r.p99_us, fmt=",.1f")]
        else:
            loss = "-" if r.loss is None else f"{r.loss:.2%}"
            cells = [f"{r.received:,}/{r.expected:,}", loss, _num(r.events_per_s),
                     _num(r.bytes_per_s, MiB, ",.1f")]
        table.add_row(r.system, status, *cells, f"{r.wall_s:.1f}")
    return table


def _metrics(shape: str) -> list[tuple[str, str, bool]]:
    """(label, Result attribute, higher_is_better) compared for ratios."""
    if shape == "reqrep":
        return [("p50 latency", "p50_us", False), ("p99 latency", "p99_us", False)]
    if shape == "large":
        return [("bytes/s", "bytes_per_s", True)]
    return [("events/s", "events_per_s", True)]


def _ratio(mine: float | None, other: float | None) -> str:
    return "-" if not mine or not other else f"{mine / other:.2f}x"


def ratio_table(results: list[Result], systems: dict[str, System]) -> Table | None:
    """treescale / best non-ceiling peer and treescale / raw zmq, per shape and metric."""
    if not any(r.system == "treescale" for r in results):
        return None
    table = Table(title="TreeScale ratios (treescale / peer)", title_justify="left")
    for col in ("shape", "metric", "treescale", "best peer", "vs best peer", "vs raw zmq"):
        table.add_column(col, justify="left" if col in ("shape", "metric") else "right")
    for shape in dict.fromkeys(r.shape for r in results):
        rows = {r.system: r for r in results if r.shape == shape and r.status in ("ok", "lossy")}
        ts = rows.get("treescale")
        for label, attr, higher in _metrics(shape):
            mine = getattr(ts, attr) if ts else None
            peers = [(getattr(r, attr), name) for name, r in rows.items()
                     if name != "treescale" and not getattr(systems.get(name), "ceiling", False)
                     and getattr(r, attr) is not None]
            best = (max if higher else min)(peers) if peers else None
            zmq = rows.get("zmq")
            zmq_val = getattr(zmq, attr) if zmq else None

            note = "" if higher else " (lower=better)"
            table.add_row(shape, label + note, _num(mine, fmt=",.1f"),
                          f"{best[1]} {best[0]:,.1f}" if best else "-",
                          _ratio(mine, best[0] if best else None), _ratio(mine, zmq_val))
    return table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shapes")
    p.add_argument("--systems", default="", help="comma-separated systems (default: all)")
    p.add_argument("--quick", action="store_true", help="10x smaller counts (smoke run)")
    p.add_argument("--scale", type=float, default=None, help="multiply every count by this")
    p.add_argument("--json", metavar="PATH", help="write machine info and results as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    available = discover_systems()
    names = [n for n in args.systems.split(",") if n] or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        console.print(f"[red]unknown systems {unknown}; available: {sorted(available)}[/]")
        return 2
    systems = {n: available[n] for n in names}
    scale = args.scale if args.scale is not None else (0.1 if args.quick else 1.0)
    try:
        shapes = select_shapes([s for s in args.shapes.split(",") if s], scale)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        return 2

    info = machine_info()
    info["versions"] = {n: s.version() for n, s in systems.items()}
    console.print(f"[bold]TreeScale bench[/] {info['date']}  {info['cpu']}, {info['cores']} cores, "
                  f"kernel {info['kernel']}, Python {info['python']}, scale {scale:g}")
    for name, version in info["versions"].items():
        console.print(f"  {name}: {version or '?'}")

    started = time.monotonic()
    results: list[Result] = []
    for shape in shapes:
        shape_results = []
        for system in systems.values():
            with console.status(f"{shape.name} / {system.name} ..."):
                res = run_shape(system, shape)
            if res.error:
                console.print(f"[red]{system.name}/{shape.name} {res.status}:[/] {res.error}")
            shape_results.append(res)
        console.print(shape_table(shape.name, shape_results))
        results.extend(shape_results)

    ratios = ratio_table(results, systems)
    if ratios is not None:
        console.print(ratios)
    total = time.monotonic() - started
    console.print(f"total {total:.0f} s")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "scale": scale, "total_s": total,
                       "results": [r.to_dict() for r in results]}, f, indent=2)
    return 0 if all(r.status in ("ok", "unsupported") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
