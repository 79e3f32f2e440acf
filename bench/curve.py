"""What CURVE costs: `python -m bench.curve [--quick] [--repeat N] [--json out.json]`.

The same two-node tree with and without keys, in the same run: a leaf linked under a
root, the publisher and the requester on the leaf, the subscriber and the responder on
the root, so every event and request crosses a client connection, the link and another
client connection: all of them CURVE in the ``on`` run, all plain in the ``off`` run.
Shapes from bench.harness (each on fresh nodes): 100 B events and 1 MiB events
(throughput), request/reply of 100 B (latency). Printed: both runs and the on/off
ratios against the goals (throughput >= 0.7x for 100 B, >= 0.8x for 1 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.harness import (
    REQUEST_TIMEOUT_S,
    BaseSystem,
    Deadline,
    Result,
    Tally,
    broker,
    run_shape,
    select_shapes,
)
from bench.run import machine_info, median_run
from bench.treescale_system import TreeScaleSystem, _address, count_until_done
from treescale import Client, NoResponders, __version__
from treescale import keys as K

console = Console()
MiB = 1 << 20
GOALS = {"small": 0.7, "large": 0.8}  # throughput on / off
SHAPE_NAMES = ["small", "large", "reqrep"]


def _node_config(workdir: Path, name: str, keys_dir: Path | None, parent_key: str | None,
                 parent: str | None) -> Path:
    cfg: dict[str, Any] = {"slow_consumer_bytes": 4 << 30,
                           "slow_consumer_messages": 1_000_000, "services": []}
    if keys_dir is not None:
        cfg.update(keys_dir=str(keys_dir), parent_key=parent_key)
    if parent is not None:
        cfg["parent"] = _address(parent)
    path = workdir / f"{name}.json"
    path.write_text(json.dumps({"node": cfg}))
    return path


def _split(address: str) -> tuple[tuple[str, str | None], tuple[str, str | None]]:
    """"LEAF,KEY|ROOT,KEY" (KEY empty without CURVE) -> ((leaf, key), (root, key))."""
    ends = []
    for part in address.split("|"):
        where, _, key = part.partition(",")
        ends.append((where, key or None))
    return ends[0], ends[1]


@contextmanager
def _keyed(key: str | None) -> Iterator[None]:
    """Workers reach their node through TreeScaleSystem's code: the key goes in the
    environment the Client reads (each worker is a process of its own)."""
    if key:
        os.environ["TREESCALE_SERVER_KEY"] = key
    try:
        yield
    finally:
        os.environ.pop("TREESCALE_SERVER_KEY", None)


class TwoNodes(BaseSystem):
    """A leaf under a root, CURVE everywhere (``keyed``) or nowhere."""

    def __init__(self, keyed: bool) -> None:
        self.keyed = keyed
        self.name = "curve on" if keyed else "curve off"

    def version(self) -> str:
        return f"treescale {__version__}"

    @contextmanager
    def server(self) -> Iterator[str]:
        with ExitStack() as stack:
            import tempfile

            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-curve-")))
            dirs = {n: work / f"keys-{n}" for n in ("root", "leaf")}
            keys: dict[str, str] = {}
            if self.keyed:
                for n, d in dirs.items():
                    keys[n] = K.generate(d).public
                K.trust(dirs["root"], "leaf", keys["leaf"])
                K.trust(dirs["leaf"], "root", keys["root"])

            def argv(name: str, parent: str | None):
                def make(port: int, workdir: Path) -> list[str]:
                    cfg = _node_config(workdir, name, dirs[name] if self.keyed else None,
                                       "root" if self.keyed and parent else None, parent)
                    return [sys.executable, "-m", "tsctl.main", "node", "start", "--name",
                            name, "--port", str(port), "--config", str(cfg)]
                return make

            root = stack.enter_context(broker("curve-root", argv("root", None)))
            leaf = stack.enter_context(broker("curve-leaf", argv("leaf", root)))
            address = f"{leaf},{keys.get('leaf', '')}|{root},{keys.get('root', '')}"
            _wait_linked(address)
            yield address

    @staticmethod
    def publisher(address: str, subject: str, count: int, size: int) -> None:
        (leaf, key), _ = _split(address)
        with _keyed(key):
            TreeScaleSystem.publisher(leaf, subject, count, size)

    @staticmethod
    def subscriber(address: str, subject: str, count: int, ready_evt: MpEvent,
                   result_queue: Any, timeout: float) -> None:
        (leaf, leaf_key), (root, key) = _split(address)
        tally = Tally(count, timeout)
        with Client(_address(root), name="bench-sub", server_key=key) as c:
            c.subscribe(subject)
            _interest_crossed(c, leaf, leaf_key, subject)
            ready_evt.set()
            count_until_done(c, tally)
            result_queue.put(tally.report())

    @staticmethod
    def responder(address: str, subject: str, ready_evt: MpEvent, stop_evt: MpEvent) -> None:
        _, (root, key) = _split(address)
        with _keyed(key):
            TreeScaleSystem.responder(root, subject, ready_evt, stop_evt)

    @staticmethod
    def requester(address: str, subject: str, count: int, result_queue: Any) -> None:
        (leaf, key), _ = _split(address)
        with Client(_address(leaf), name="bench-probe", server_key=key) as c:
            deadline = Deadline(30)
            while not deadline.expired():  # the responder's interest reached the leaf
                try:
                    c.request(subject, b"?", timeout=REQUEST_TIMEOUT_S)
                    break
                except NoResponders:
                    continue
        with _keyed(key):
            TreeScaleSystem.requester(leaf, subject, count, result_queue)


def _interest_crossed(sub: Client, leaf: str, leaf_key: str | None, subject: str) -> None:
    """Until ``subject`` published at the leaf reaches ``sub`` (its interest crossed
    the link); the probes are drained so that the tally counts only the run."""
    deadline = Deadline(30)
    with Client(_address(leaf), name="bench-probe", server_key=leaf_key) as probe:
        while not deadline.expired():
            probe.publish(subject, b"?")
            if sub.next_event(0.1) is not None:
                break
        probe.flush()
    while sub.next_event(0.3) is not None:
        pass


def _wait_linked(address: str) -> None:
    """Until an event from the leaf reaches the root: the link is up and interest
    crosses it (each worker's own subscription crosses within its ready wait)."""
    (leaf, leaf_key), (root, root_key) = _split(address)
    deadline = Deadline(30)
    with Client(_address(root), name="probe-sub", server_key=root_key) as sub, \
            Client(_address(leaf), name="probe-pub", server_key=leaf_key) as pub:
        sub.subscribe("probe.link")
        while not deadline.expired():
            pub.publish("probe.link", b"?")
            if sub.next_event(0.1) is not None:
                return
    raise TimeoutError("the leaf did not link under the root within 30 s")


def _value(shape: str, r: Result) -> float | None:
    if shape == "reqrep":
        return r.p50_us
    return r.bytes_per_s if shape == "large" else r.events_per_s


def _show(shape: str, on: Result, off: Result) -> dict[str, Any]:
    v_on, v_off = _value(shape, on), _value(shape, off)
    ratio = None
    if v_on and v_off:  # throughput: on/off; latency: off/on (both "higher is better")
        ratio = v_on / v_off if shape != "reqrep" else v_off / v_on
    return {"shape": shape, "on": on.to_dict(), "off": off.to_dict(), "ratio": ratio,
            "goal": GOALS.get(shape)}


def render(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="CURVE on vs off (leaf -> root: client, link, client)",
                  title_justify="left")
    for col in ("shape", "off", "on", "on/off", "goal"):
        table.add_column(col, justify="left" if col == "shape" else "right")
    for row in rows:
        shape, on, off = row["shape"], row["on"], row["off"]
        if shape == "reqrep":
            fmt = lambda r: "-" if r["p50_us"] is None else \
                f"p50 {r['p50_us']:,.0f} µs, p99 {r['p99_us']:,.0f} µs"  # noqa: E731
        elif shape == "large":
            fmt = lambda r: "-" if r["bytes_per_s"] is None else \
                f"{r['bytes_per_s'] / MiB:,.0f} MiB/s"  # noqa: E731
        else:
            fmt = lambda r: "-" if r["events_per_s"] is None else \
                f"{r['events_per_s']:,.0f} ev/s"  # noqa: E731
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        goal = "-" if row["goal"] is None else (
            f"≥ {row['goal']}x " + ("[green]met[/]" if row["ratio"] and
                                    row["ratio"] >= row["goal"] else "[red]missed[/]"))
        table.add_row(shape, fmt(off) + ("" if off["status"] == "ok" else f" ({off['status']})"),
                      fmt(on) + ("" if on["status"] == "ok" else f" ({on['status']})"),
                      ratio, goal)
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="A tenth of the counts.")
    p.add_argument("--repeat", type=int, default=1, help="Runs per shape and mode (median).")
    p.add_argument("--json", type=Path, help="Write the results here.")
    args = p.parse_args()
    shapes = select_shapes(SHAPE_NAMES, 0.1 if args.quick else 1.0)
    on, off = TwoNodes(True), TwoNodes(False)
    rows = []
    for shape in shapes:
        runs: dict[str, list[Result]] = {"on": [], "off": []}
        for _ in range(args.repeat):  # interleaved: a slow moment hits both modes
            for mode, system in (("off", off), ("on", on)):
                r = run_shape(system, shape)
                if r.status not in ("ok", "lossy"):
                    console.print(f"[red]{shape.name} curve {mode}: {r.status}[/] "
                                  f"{r.error[-500:]}")
                runs[mode].append(r)
        rows.append(_show(shape.name, median_run(runs["on"])[0], median_run(runs["off"])[0]))
    console.print(render(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
