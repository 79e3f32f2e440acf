"""CLI: run every (system, shape), print one table per shape and TreeScale ratios.

    python -m bench.run [--shapes small,large,fanout,reqrep] [--systems redis,nats,mqtt,zmq]
                        [--quick | --scale F] [--repeat N] [--json out.json]
                        [--install-peers]

A peer whose broker program is missing is left out with one line naming its Debian
package; ``--install-peers`` (what ``make bench`` passes) apt-get installs them first
when running as root. ``--json`` keeps the machine, the versions and every run: the
tables in BENCHMARKS.md are written from it.

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
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.harness import SHAPES, Result, Shape, System, run_shape, select_shapes
from bench.peer_programs import runnable_systems
from bench.peers import REGISTRY

console = Console()
if not console.is_terminal:  # piped to a file/log: don't squeeze tables into 80 columns
    console.width = 120
MiB = 1 << 20
#: Results of the system with this name get a ratio table against the peers.
TREESCALE = "treescale"


def discover_systems() -> dict[str, System]:
    """Peers from the registry plus TreeScale's own systems if its driver is importable."""
    systems: dict[str, System] = dict(REGISTRY)
    try:
        mod = importlib.import_module("bench.treescale_system")
    except ModuleNotFoundError as exc:
        if exc.name != "bench.treescale_system":
            console.print(f"[yellow]bench.treescale_system not loaded: {exc}[/]")
        return systems
    except Exception as exc:  # a broken driver should not stop the peer runs
        console.print(f"[yellow]bench.treescale_system failed to import: {exc!r}[/]")
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


@dataclass(frozen=True)
class Metric:
    label: str
    attr: str
    higher_is_better: bool
    scale: float = 1.0  # display divisor

    def value(self, r: Result | None) -> float | None:
        return None if r is None else getattr(r, self.attr)


def metrics(shape: str) -> list[Metric]:
    """Metrics compared across systems; the first one also picks the median repeat."""
    if shape == "reqrep":
        return [Metric("p50 µs", "p50_us", False), Metric("p99 µs", "p99_us", False)]
    if shape == "large":
        return [Metric("MiB/s", "bytes_per_s", True, MiB)]
    return [Metric("events/s", "events_per_s", True)]


def median_run(runs: list[Result]) -> tuple[Result, str]:
    """The repeat with the median primary metric (the worse middle one for even N), plus the
    min..max spread as text.
    Failed repeats win only if no repeat succeeded (so failures stay visible)."""
    metric = metrics(runs[0].shape)[0]
    good = sorted((r for r in runs if metric.value(r) is not None), key=metric.value)
    if not good:
        return runs[0], ""
    chosen = good[(len(good) - 1) // 2] if metric.higher_is_better else good[len(good) // 2]
    if len(runs) == 1:
        return chosen, ""
    lo, hi = metric.value(good[0]) / metric.scale, metric.value(good[-1]) / metric.scale
    failed = len(runs) - len(good)
    return chosen, f"{lo:,.0f}..{hi:,.0f}" + (f" ({failed} failed)" if failed else "")


def shape_table(shape: Shape, rows: list[tuple[Result, str]]) -> Table:
    title = (f"{shape.name}: {shape.subscribers}x{shape.count:,} msgs of {shape.size:,} B"
             if shape.subscribers else f"{shape.name}: {shape.count:,} sequential round trips")
    table = Table(title=title, title_justify="left")
    table.add_column("system")
    table.add_column("status")
    if shape.subscribers:
        cols = ["received/expected", "loss", "events/s", "MiB/s"]
    else:
        cols = ["round trips", "p50 µs", "p99 µs"]
    repeated = any(spread for _, spread in rows)
    for col in [*cols, *(["range (all runs)"] if repeated else []), "wall s"]:
        table.add_column(col, justify="right")
    for r, spread in rows:
        status = f"[{STATUS_STYLE.get(r.status, '')}]{r.status}[/]"
        cells = [f"{r.received:,}/{r.expected:,}"]
        if shape.subscribers:
            cells += ["-" if r.loss is None else f"{r.loss:.2%}", _num(r.events_per_s),
                      _num(r.bytes_per_s, MiB, ",.1f")]
        else:
            cells += [_num(r.p50_us, fmt=",.1f"), _num(r.p99_us, fmt=",.1f")]
        table.add_row(r.system, status, *cells, *([spread] if repeated else []), f"{r.wall_s:.1f}")
    return table


def _ratio(mine: float | None, other: float | None) -> str:
    return "-" if not mine or not other else f"{mine / other:.2f}x"


def ratio_table(results: list[Result], systems: dict[str, System]) -> Table | None:
    """treescale / best non-ceiling peer and treescale / ceiling (raw zmq), per metric."""
    if not any(r.system.startswith(TREESCALE) for r in results):
        return None
    table = Table(title="TreeScale ratios (treescale / peer; for latency lower is better)",
                  title_justify="left")
    for col in ("shape", "metric", "treescale", "best peer", "vs best peer", "vs raw zmq"):
        table.add_column(col, justify="left" if col in ("shape", "metric") else "right")
    for shape in dict.fromkeys(r.shape for r in results):
        rows = {r.system: r for r in results if r.shape == shape and r.status in ("ok", "lossy")}
        ceiling = next((r for n, r in rows.items() if getattr(systems.get(n), "ceiling", False)),
                       None)
        for m in metrics(shape):
            mine = m.value(rows.get(TREESCALE))
            # other treescale-* systems (e.g. the three-hop tree) are not peers
            peers = [(m.value(r), n) for n, r in rows.items()
                     if not n.startswith(TREESCALE)
                     and not getattr(systems.get(n), "ceiling", False) and m.value(r) is not None]
            tree = rows.get(TREESCALE + "-3hop")
            if tree is not None and mine and m.value(tree):
                table.add_row(shape, m.label + " 3 hops", _num(m.value(tree), m.scale, ",.1f"),
                              f"1 node {mine / m.scale:,.1f}", _ratio(m.value(tree), mine),
                              "-")
            best = (max if m.higher_is_better else min)(peers) if peers else None
            # the node's other ways in (ipc://, the batch API): beside the same peers
            variants = [(m.label, mine)] + [
                (f"{m.label} ({n[len(TREESCALE) + 1:]})", m.value(r))
                for n, r in rows.items() if n.startswith(TREESCALE + "-")
                and n != TREESCALE + "-3hop" and m.value(r) is not None]
            for label, value in variants:
                table.add_row(shape, label, _num(value, m.scale, ",.1f"),
                              f"{best[1]} {best[0] / m.scale:,.1f}" if best else "-",
                              _ratio(value, best[0] if best else None),
                              _ratio(value, m.value(ceiling)))
    return table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shapes")
    p.add_argument("--systems", default="", help="comma-separated systems (default: all)")
    p.add_argument("--quick", action="store_true", help="10x smaller counts (smoke run)")
    p.add_argument("--scale", type=float, default=None, help="multiply every count by this")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each (system, shape) N times and report the median run")
    p.add_argument("--json", metavar="PATH", help="write machine info and all runs as JSON")
    p.add_argument("--install-peers", action="store_true",
                   help="apt-get install missing peer brokers first (as root)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    available = discover_systems()
    names = [n for n in args.systems.split(",") if n] or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        console.print(f"[red]unknown systems {unknown}; available: {sorted(available)}[/]")
        return 2
    systems = runnable_systems({n: available[n] for n in names}, args.install_peers,
                               say=lambda line: console.print(line, markup=False))
    if not systems:
        console.print("[red]no system left to benchmark[/]")
        return 2
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
    runs: list[Result] = []  # every repeat, for the JSON
    results: list[Result] = []  # the median repeat per (system, shape)
    for shape in shapes:
        rows = []
        for system in systems.values():
            repeats = []
            for i in range(max(1, args.repeat)):
                with console.status(f"{shape.name} / {system.name} (run {i + 1}) ..."):
                    res = run_shape(system, shape)
                if res.error:
                    console.print(f"[red]{system.name}/{shape.name} {res.status}:[/] {res.error}")
                repeats.append(res)
            runs.extend(repeats)
            rows.append(median_run(repeats))
        console.print(shape_table(shape, rows))
        results.extend(r for r, _ in rows)

    ratios = ratio_table(results, systems)
    if ratios is not None:
        console.print(ratios)
    total = time.monotonic() - started
    console.print(f"total {total:.0f} s")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "scale": scale, "total_s": total,
                       "repeat": args.repeat,
                       "results": [r.to_dict() for r in results],
                       "runs": [r.to_dict() for r in runs]}, f, indent=2)
    return 0 if all(r.status in ("ok", "unsupported") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
