"""`tsctl demo`: a seven-node tree on loopback, applications on its leaves, live.

Everything is real: each node is its own process (started like `tsctl up`), each
application is a Client attached to a different node. The view is fed by what the
subscribers receive and by every node's `$sys.node.stats`, which reach the monitor
through the tree like any other event.

Must not touch: starting nodes (treescale.local does), subject spellings
(treescale.subjects).
"""

from __future__ import annotations

import contextlib
import json
import random
import secrets
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.tree import Tree as RichTree

from treescale import Client, subjects
from treescale.loader import load_tree
from treescale.local import down, free_port, up


@dataclass
class Tally:
    """Events one demo application received, and its recent rate."""

    label: str
    pattern: str
    count: int = 0
    marks: deque = field(default_factory=lambda: deque(maxlen=20))

    def rate(self) -> float:
        if len(self.marks) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self.marks[0], self.marks[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


def _consume(client: Client, tally: Tally, recent: deque, stop: threading.Event) -> None:
    while not stop.is_set():
        for ev in client.events(timeout=0.2):
            tally.count += 1
            if random.random() < 0.002 or tally.count < 3:
                recent.append(f"[cyan]{ev.name}[/] → {tally.label}: {bytes(ev.data)[:40]!r}")
            if stop.is_set():
                break


def _publish(client: Client, stop: threading.Event, rate: int) -> None:
    rooms = ["kitchen", "lab", "roof", "hall"]
    seq = 0
    while not stop.is_set():
        start = time.monotonic()
        for _ in range(rate // 10):
            seq += 1
            room = rooms[seq % len(rooms)]
            client.publish(f"sensors.{room}.temp", b"%d:%.1f" % (seq, 20 + seq % 7 / 3))
            if seq % 10 == 0:
                client.publish("orders.created", b"order-%d" % seq, mode="one")
        stop.wait(max(0.0, 0.1 - (time.monotonic() - start)))


def _tree_view(stats: dict) -> RichTree:
    roots = [r for r in stats.values() if not r.get("parent")]
    if not roots:
        return RichTree("waiting for the nodes to report…")

    def label(r: dict) -> str:
        return (f"[bold]{r['node']}[/] [dim]{r['address'].removeprefix('tcp://')}[/] "
                f"clients {r['clients']} · in {_num(r['events_in'])} · "
                f"out {_num(r['events_out'])}")

    root = roots[0]
    view = RichTree(label(root))

    def grow(branch: RichTree, r: dict) -> None:
        for child in r.get("children", []):
            if child in stats:
                grow(branch.add(label(stats[child])), stats[child])
            else:
                branch.add(f"{child} [dim](linking…)[/]")

    grow(view, root)
    return view


def _view(tallies: list[Tally], stats: dict, recent: deque, elapsed: float,
          note: str = "") -> Group:
    table = Table(expand=True)
    for col in ("application @ node", "subscribed to", "events", "events/s"):
        table.add_column(col, justify="right" if col.startswith("events") else "left")
    now = time.monotonic()
    for t in tallies:
        t.marks.append((now, t.count))
        table.add_row(t.label, t.pattern, f"{t.count:,}", f"{t.rate():,.0f}")
    return Group(Panel(_tree_view(stats), title=f"tree of {len(stats)} nodes — "
                                              f"{elapsed:.0f}s (Ctrl-C to stop)"),
                 table, Panel("\n".join(recent) or "waiting for events…",
                              title="a sample of the events flowing"), note)


def _num(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value if value is not None
                                                           else "-")


# (application, node it attaches to, pattern, queue); the feed publishes on tree7
APPS = [("dashboard", "tree3", "sensors.>", None),
        ("kitchen-display", "tree5", "sensors.kitchen.*", None),
        ("worker-1", "tree2", "orders.*", "workers"),
        ("worker-2", "tree6", "orders.*", "workers")]


def run_demo(duration: float | None, rate: int, shape: str = "configs/tree.toml") -> None:
    with tempfile.TemporaryDirectory(prefix="treescale-demo-") as tmp:
        config = Path(tmp) / "tree.json"
        tree = load_tree(shape)
        seed = tree.to_seed()
        for spec in seed["tree_node"].values():
            spec["tree_port"] = free_port()  # never collide with a running tree
            spec["tree_ip"] = "127.0.0.1"
        seed["tree_node"][tree.root]["websocket_port"] = free_port()  # the dashboard
        config.write_text(json.dumps(seed))
        state = Path(tmp) / "up.json"
        token = secrets.token_urlsafe(16)  # the demo's own tree: its own admin token
        started = up(config, state, admin_token=token)
        nodes = {n.name: n.address for n in started}
        pages = [n.dashboard for n in started if n.dashboard]
        try:
            _run(nodes, duration, rate, token, pages[0] if pages else None)
        finally:
            down(state)


def _run(nodes: dict, duration: float | None, rate: int, token: str,
         page: str | None = None) -> None:
    stop = threading.Event()
    made: list[Client] = []
    try:
        def client(name: str, node: str) -> Client:
            c = Client(nodes[node], token=token, name=name, timeout=15)
            made.append(c)
            return c

        recent: deque = deque(maxlen=8)
        stats: dict = {}
        tallies = []
        for name, node, pattern, queue in APPS:
            c = client(name, node)
            c.subscribe(pattern, queue)
            tally = Tally(f"{name} @ {node}" + (f" (queue {queue})" if queue else ""),
                          pattern)
            tallies.append(tally)
            threading.Thread(target=_consume, args=(c, tally, recent, stop),
                             daemon=True).start()
        watcher = client("monitor", "tree1")
        watcher.subscribe(subjects.NODE_STATS, handler=lambda ev: stats.update(
            {ev.json()["node"]: ev.json()}))
        threading.Thread(target=_publish, args=(client("sensor-feed", "tree7"), stop,
                                                rate), daemon=True).start()
        started = time.monotonic()
        note = f"in a browser: {page} (token {token})" if page else ""
        with Live(_view(tallies, stats, recent, 0, note), refresh_per_second=4) as live:
            while duration is None or time.monotonic() - started < duration:
                time.sleep(0.5)
                live.update(_view(tallies, stats, recent, time.monotonic() - started,
                                  note))
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        for c in made:
            with contextlib.suppress(Exception):
                c.close(timeout=1)
