"""Durable delivery against NATS JetStream, same run: `python -m bench.durable
[--shapes ...] [--quick | --scale F] [--repeat N] [--sync default,none] [--json FILE]`.

Shapes (bench.durable_shapes; each bounded by count and by time, fresh servers each):
confirmed durable publish rate at 100 B and 1 MiB (first publish to last confirm /
PubAck); consume+ack rate (events stored first, then resumed by a durable and acked one
by one); end-to-end latency of one durable event at a time (publish -> delivered at a
durable subscriber; the stamp is CLOCK_MONOTONIC, publisher and consumer are separate
processes) on one node and leaf -> root -> leaf (JetStream: a hub with the stream and
two leafnodes).

fsync: JetStream 2.9 acks before fsync (sync_interval 2 min); TreeScale's default
confirms after fsync. ``--sync`` adds TreeScale rows at other durable_sync values
("none" by default: the like-for-like row). Goals printed: 100 B confirmed publish >= 3x
JetStream, end-to-end p50 <= JetStream's (TreeScale at its default sync).

This module owns the runs, the tables and the JSON; the systems live in
bench.durable_jetstream and bench.durable_treescale.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import durable_jetstream as JS
from bench import durable_treescale as TS
from bench.durable_shapes import SHAPES, WARMUP, Shape, select
from bench.harness import percentile
from bench.peer_programs import runnable_systems
from bench.run import machine_info

console = Console()
if not console.is_terminal:
    console.width = 120
MiB = 1 << 20
#: Goals of the durable issue: (shape, metric, wanted ratio treescale/jetstream, higher?).
GOALS = [("publish-100B", "events_per_s", 3.0, True),
         ("latency-1node", "p50_us", 1.0, False),
         ("latency-tree", "p50_us", 1.0, False)]
GRACE_S = 20.0  # a worker past its shape's timeout plus this is killed


@dataclass
class Contender:
    """One row set: a system at one fsync policy."""

    name: str
    module: Any
    server: Callable[[bool], Any]
    fsync: str
    program: str | None = None  # for bench.peer_programs
    debian_package: str | None = None


@dataclass
class Row:
    system: str
    shape: str
    status: str = "error"  # ok | short | error | timeout | unavailable
    expected: int = 0
    count: int = 0
    seconds: float | None = None
    events_per_s: float | None = None
    mib_per_s: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def contenders(syncs: list[str]) -> list[Contender]:
    out = [Contender(JS.NAME, JS, JS.server, JS.FSYNC, "nats-server", "nats-server")]
    for sync in syncs:
        value = None if sync == "default" else sync
        name = TS.NAME if value is None else f"{TS.NAME} sync={value}"
        out.append(Contender(name, TS, partial(TS.server, sync=value), TS.FSYNC[value]))
    return out


# ------------------------------------------------------------------ worker processes

def _entry(fn: Callable[..., dict[str, Any]], args: tuple, out: Any) -> None:
    try:
        out.put({"ok": fn(*args)})
    except BaseException as exc:
        out.put({"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]})


def _run_workers(jobs: list[tuple[str, Callable[..., dict[str, Any]], tuple]],
                 timeout: float) -> dict[str, dict[str, Any]]:
    """Each job in a spawned process; their results by role. Raises on an error or a
    job still running after ``timeout`` (then every job is killed)."""
    ctx = mp.get_context("spawn")
    queues = {role: ctx.Queue() for role, _, _ in jobs}
    procs = {role: ctx.Process(target=_entry, args=(fn, args, queues[role]), daemon=True)
             for role, fn, args in jobs}
    for p in procs.values():
        p.start()
    results: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    try:
        for role, q in queues.items():
            try:
                msg = q.get(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:
                raise TimeoutError(f"{role} gave no result within {timeout:.0f}s") from None
            if "error" in msg:
                raise RuntimeError(f"{role}: {msg['error']}\n{msg['trace']}")
            results[role] = msg["ok"]
    finally:
        for p in procs.values():
            p.join(max(0.1, min(5.0, deadline - time.monotonic())))
            if p.is_alive():
                p.kill()
                p.join(2)
    return results


def run_one(c: Contender, shape: Shape, subject: str) -> Row:
    row = Row(c.name, shape.name, expected=shape.count)
    t0 = time.monotonic()
    budget = shape.timeout
    try:
        with c.server(shape.tree) as address:
            if shape.kind == "latency":
                a, b = mp.get_context("spawn").Pipe()
                n = shape.count + WARMUP
                res = _run_workers([
                    ("consumer", c.module.latency_consumer, (address, n, b, budget)),
                    ("publisher", c.module.latency_publisher,
                     (address, subject, shape.size, n, a, budget)),
                ], budget + GRACE_S)
                lat = sorted(res["consumer"]["latencies_us"][WARMUP:])
                row.count = len(lat)
                if lat:
                    row.p50_us, row.p99_us = percentile(lat, 50), percentile(lat, 99)
            else:
                fn = c.module.publish_rate if shape.kind == "publish" else c.module.consume_rate
                res = _run_workers([("worker", fn, (address, subject, shape.size, shape.count,
                                                    budget))], budget + GRACE_S)
                r = res["worker"]
                row.count, row.seconds = r["count"], r["seconds"]
                row.extra = {k: v for k, v in r.items() if k not in ("count", "seconds")}
                if r.get("errors"):
                    row.error = "; ".join(r["errors"])[:500]
                if row.count and row.seconds:
                    row.events_per_s = row.count / row.seconds
                    row.mib_per_s = row.count * shape.size / row.seconds / MiB
        row.status = "ok" if row.count >= row.expected else "short"
    except TimeoutError as exc:
        row.status, row.error = "timeout", str(exc)[-1500:]
    except Exception as exc:
        row.status, row.error = "error", f"{type(exc).__name__}: {exc}"[-1500:]
    row.extra["wall_s"] = round(time.monotonic() - t0, 2)
    return row


def median(rows: list[Row], shape: Shape) -> Row:
    """The repeat with the median primary metric (the worse middle one for even N)."""
    key = "p50_us" if shape.kind == "latency" else "events_per_s"
    good = sorted((r for r in rows if getattr(r, key) is not None), key=lambda r: getattr(r, key))
    if not good:
        return rows[0]
    return good[len(good) // 2] if key == "p50_us" else good[(len(good) - 1) // 2]


# ------------------------------------------------------------------ tables

def _cell(r: Row | None, shape: Shape) -> str:
    if r is None:
        return "-"
    if shape.kind == "latency":
        v = "-" if r.p50_us is None else f"p50 {r.p50_us:,.0f} µs, p99 {r.p99_us:,.0f} µs"
    elif shape.size >= MiB:
        v = "-" if r.mib_per_s is None else f"{r.mib_per_s:,.1f} MiB/s ({r.events_per_s:,.0f}/s)"
    else:
        v = "-" if r.events_per_s is None else f"{r.events_per_s:,.0f} ev/s"
    return v if r.status == "ok" else f"{v} [red]{r.status} {r.count}/{r.expected}[/]"


def results_table(shapes: list[Shape], names: list[str], rows: dict) -> Table:
    t = Table(title="Durable delivery: TreeScale vs NATS JetStream (medians)",
              title_justify="left")
    t.add_column("shape")
    for n in names:
        t.add_column(n, justify="right")
    for s in shapes:
        t.add_row(s.name, *(_cell(rows.get((n, s.name)), s) for n in names))
    return t


def _metric(shape: Shape) -> tuple[str, bool]:
    return ("p50_us", False) if shape.kind == "latency" else ("events_per_s", True)


def ratios(shapes: list[Shape], names: list[str], rows: dict) -> list[dict[str, Any]]:
    """treescale / jetstream per shape and TreeScale row (latency: p50 and p99)."""
    out = []
    for s in shapes:
        peer = rows.get((JS.NAME, s.name))
        metrics = ["p50_us", "p99_us"] if s.kind == "latency" else ["events_per_s"]
        for n in names:
            mine = rows.get((n, s.name))
            if n == JS.NAME or mine is None:
                continue
            for m in metrics:
                a, b = getattr(mine, m), getattr(peer, m) if peer else None
                goal = next((g for g in GOALS if g[0] == s.name and g[1] == m
                             and n == TS.NAME), None)
                out.append({"shape": s.name, "system": n, "metric": m, "treescale": a,
                            "jetstream": b, "ratio": a / b if a and b else None,
                            "goal": None if goal is None else
                            {"ratio": goal[2], "higher_is_better": goal[3]}})
    return out


def ratio_table(rs: list[dict[str, Any]]) -> Table:
    t = Table(title="TreeScale / JetStream (latency: lower is better)", title_justify="left")
    for col in ("shape", "system", "metric", "ratio", "goal"):
        t.add_column(col, justify="right" if col in ("ratio", "goal") else "left")
    for r in rs:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        goal = "-"
        if r["goal"]:
            want, higher = r["goal"]["ratio"], r["goal"]["higher_is_better"]
            met = r["ratio"] is not None and (r["ratio"] >= want if higher else r["ratio"] <= want)
            goal = (f"{'≥' if higher else '≤'} {want:g}x "
                    + ("[green]met[/]" if met else "[red]missed[/]"))
        t.add_row(r["shape"], r["system"], r["metric"], ratio, goal)
    return t


# ------------------------------------------------------------------ main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.durable", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--systems", default="", help="jetstream,treescale (default: both)")
    p.add_argument("--sync", default="default,none",
                   help="TreeScale durable_sync rows: default,always,group,none")
    p.add_argument("--quick", action="store_true", help="a tenth of the counts")
    p.add_argument("--scale", type=float, default=None)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json", type=Path, help="write machine, versions and every run here")
    p.add_argument("--install-peers", action="store_true",
                   help="apt-get install nats-server first if missing (as root)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scale = args.scale if args.scale is not None else (0.1 if args.quick else 1.0)
    shapes = select([s for s in args.shapes.split(",") if s], scale)
    wanted = {s for s in args.systems.split(",") if s} or {JS.NAME, TS.NAME}
    all_c = [c for c in contenders([s for s in args.sync.split(",") if s])
             if c.name.split(" ")[0] in wanted]
    say = lambda line: console.print(line, markup=False)  # noqa: E731
    have = runnable_systems({c.name: c for c in all_c}, args.install_peers, say=say)
    why_not = TS.unavailable()
    if why_not:
        say(f"treescale: {why_not}; its rows are left out")
    runnable = [c for c in all_c if c.name in have and not (c.module is TS and why_not)]
    info = machine_info()
    info["versions"] = {JS.NAME: JS.version(), TS.NAME: TS.version()}
    info["fsync"] = {c.name: c.fsync for c in all_c}
    info["topology"] = {"jetstream": {"1node": JS.config_note(False), "tree": JS.config_note(True)},
                        "treescale": {"1node": TS.config_note(False), "tree": TS.config_note(True)}}
    console.print(f"[bold]Durable bench[/] {info['date']}  {info['cpu']}, {info['cores']} cores, "
                  f"scale {scale:g}")
    for c in all_c:
        console.print(f"  {c.name}: {c.fsync}")
    runs: list[Row] = []
    chosen: dict[tuple[str, str], Row] = {}
    for shape in shapes:
        subject = f"bench.{shape.name}"
        for c in runnable:
            reps = []
            for i in range(max(1, args.repeat)):
                with console.status(f"{shape.name} / {c.name} (run {i + 1}) ..."):
                    r = run_one(c, shape, subject)
                if r.status != "ok":
                    console.print(f"[red]{c.name}/{shape.name} {r.status}:[/] {r.error}",
                                  markup=True, highlight=False)
                reps.append(r)
            runs.extend(reps)
            chosen[(c.name, shape.name)] = median(reps, shape)
    names = [c.name for c in all_c]
    for c in all_c:
        if c not in runnable:
            for s in shapes:
                chosen.setdefault((c.name, s.name), Row(c.name, s.name, "unavailable",
                                                        error=why_not or "not installed"))
    console.print(results_table(shapes, names, chosen))
    rs = ratios(shapes, names, chosen)
    console.print(ratio_table(rs))
    if args.json:
        args.json.write_text(json.dumps({
            "machine": info, "scale": scale, "repeat": args.repeat,
            "shapes": [asdict(s) for s in shapes], "warmup": WARMUP,
            "results": [asdict(r) for r in chosen.values()],
            "runs": [asdict(r) for r in runs], "ratios": rs}, indent=1))
    return 0 if all(r.status == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
