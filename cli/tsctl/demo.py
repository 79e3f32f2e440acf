"""`tsctl demo`: a node, publishers and subscribers on loopback, watched live.

Everything is real: the node is its own process, each application is a Client. The
view is fed by what the subscribers receive and by the node's `$sys.node.stats`.
"""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from treescale import Client


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _view(tallies: list[Tally], stats: dict, recent: deque, elapsed: float) -> Group:
    table = Table(title="applications attached to node 'demo'", expand=True)
    for col in ("client", "subscribed to", "events", "events/s"):
        table.add_column(col, justify="right" if col.startswith("events") else "left")
    now = time.monotonic()
    for t in tallies:
        t.marks.append((now, t.count))
        table.add_row(t.label, t.pattern, f"{t.count:,}", f"{t.rate():,.0f}")
    shown = (("uptime", "uptime", "s"), ("clients", "clients", ""),
             ("subscriptions", "subs", ""), ("events_in", "in", ""),
             ("events_out", "out", ""), ("dropped", "dropped", ""),
             ("slow_clients", "slow", ""))
    node = " · ".join(f"[bold]{label}[/] {_num(stats.get(key))}{unit}"
                      for key, label, unit in shown)
    return Group(Panel(node, title=f"node demo — {stats.get('address', 'starting')}"
                                   f" — {elapsed:.0f}s (Ctrl-C to stop)"),
                 table, Panel("\n".join(recent) or "waiting for events…",
                              title="a sample of the events flowing"))


def _num(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value if value is not None
                                                           else "-")


def run_demo(duration: float | None, rate: int) -> None:
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    node = subprocess.Popen([sys.executable, "-m", "tsctl.main", "node", "start",
                             "--name", "demo", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()
    made: list[Client] = []
    try:
        def client(name: str) -> Client:
            c = Client(address, name=name, timeout=15)
            made.append(c)
            return c

        recent: deque = deque(maxlen=8)
        stats: dict = {}
        apps = [("dashboard", "sensors.>", None), ("kitchen-display", "sensors.kitchen.*",
                                                     None),
                ("worker-1", "orders.*", "workers"), ("worker-2", "orders.*", "workers")]
        tallies = []
        for name, pattern, queue in apps:
            c = client(name)
            c.subscribe(pattern, queue)
            tally = Tally(name + (f" (queue {queue})" if queue else ""), pattern)
            tallies.append(tally)
            threading.Thread(target=_consume, args=(c, tally, recent, stop),
                             daemon=True).start()
        watcher = client("monitor")
        watcher.subscribe("$sys.node.stats")

        def watch_stats() -> None:
            while not stop.is_set():
                for ev in watcher.events(timeout=0.2):
                    stats.update(ev.json())

        threading.Thread(target=watch_stats, daemon=True).start()
        threading.Thread(target=_publish, args=(client("sensor-feed"), stop, rate),
                         daemon=True).start()
        started = time.monotonic()
        with Live(_view(tallies, stats, recent, 0), refresh_per_second=4) as live:
            while duration is None or time.monotonic() - started < duration:
                time.sleep(0.5)
                live.update(_view(tallies, stats, recent, time.monotonic() - started))
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        for c in made:
            with contextlib.suppress(Exception):
                c.close(timeout=1)
        node.terminate()
        try:
            node.wait(5)
        except subprocess.TimeoutExpired:
            node.kill()
