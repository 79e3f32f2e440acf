"""A 100-node local tree: `python -m bench.tree_scale [--nodes 100]`.

Measures the time until every node answers and until every one is linked (seen in
`$sys.node.stats` at the root), each node's CPU by then, how long one event
published on a leaf takes to reach a subscriber on every node (publish to the last
arrival, stamped on each subscriber's I/O thread; the clock is the machine's
CLOCK_MONOTONIC), and each node process's resident memory. Everything is stopped at
the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.harness import free_port
from treescale import Client
from treescale.local import down, up


def tree_file(path: Path, n: int, fanout: int = 10) -> None:
    """A complete tree of ``n`` nodes, ``fanout`` children each, on free ports."""
    names = [f"n{i:03d}" for i in range(n)]
    port_of = {name: free_port() for name in names}  # never the same port twice
    nodes = {}
    for i, name in enumerate(names):
        kids = [names[j] for j in range(i * fanout + 1, min(n, i * fanout + fanout + 1))]
        # One machine holds the whole tree: Docker and load balancing belong to a
        # machine, not to each of its 100 nodes (each node still runs exec, config
        # and handlers).
        nodes[name] = {"name": name, "tree_port": port_of[name], "tree_ip": "127.0.0.1",
                       "childs": kids, "services": ["exec", "config", "handlers"]}
    path.write_text(json.dumps({"tree_node": nodes}))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def linked_after(root, names: set[str], token: str, limit: float) -> tuple[int, float]:
    """How many nodes report a parent (or are the root) in ``$sys.node.stats`` seen at
    the root, and when (monotonic) the last of them did."""
    seen: set[str] = set()
    with Client(root.address, token=token, name="scale-watch") as watch:
        watch.subscribe("$sys.node.stats")
        deadline = time.monotonic() + limit
        while len(seen) < len(names) and time.monotonic() < deadline:
            ev = watch.next_event(1)
            if ev is not None:
                r = ev.json()
                if r["parent"] or r["node"] == root.name:
                    seen.add(r["node"])
    return len(seen), time.monotonic()


class Arrivals:
    """One subscriber per node; each stamps an event's arrival on its I/O thread."""

    def __init__(self, nodes: list, token: str) -> None:
        self.lock = threading.Lock()
        self.got: dict[bytes, dict[str, float]] = {}
        self.clients = []
        for n in nodes:
            c = Client(n.address, token=token, name=f"sub-{n.name}", timeout=30)
            c.subscribe("scale.hello", handler=lambda ev, name=n.name: self.arrived(name, ev))
            self.clients.append(c)

    def arrived(self, name: str, ev) -> None:
        at = time.monotonic()
        with self.lock:
            self.got.setdefault(ev.data, {})[name] = at

    def reached(self, data: bytes) -> dict[str, float]:
        with self.lock:
            return dict(self.got.get(data, {}))

    def close(self) -> None:
        for c in self.clients:
            c.close(timeout=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--events", type=int, default=5, help="timed events, one at a time")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="treescale-scale-")  # kept if anything fails: logs
    cfg, state = Path(tmp) / "tree.json", Path(tmp) / "up.json"
    tree_file(cfg, args.nodes)
    token = secrets.token_urlsafe(16)
    started = time.monotonic()
    nodes = up(cfg, state, timeout=180, admin_token=token)
    answering = time.monotonic() - started
    cpu = [cpu_s(n.pid) for n in nodes]
    arrivals = pub = None
    leaf = nodes[-1]
    try:
        linked, at = linked_after(nodes[0], {n.name for n in nodes}, token, 120)
        all_linked = at - started
        arrivals = Arrivals(nodes, token)
        leaf = max(nodes, key=lambda n: n.name)  # the last name: a leaf (fanout 10)
        pub = Client(leaf.address, token=token, name="scale-pub")
        # Interest travels up the tree after each SUB: warm up until every subscriber
        # hears one (bounded), then time events one at a time.
        deadline, warm = time.monotonic() + 60, 0
        while time.monotonic() < deadline:
            warm += 1
            pub.publish("scale.hello", b"warm-%d" % warm)
            time.sleep(0.1)  # a bounded probe loop, not synchronisation
            if len(arrivals.reached(b"warm-%d" % warm)) == len(nodes):
                break
        spans, firsts, reached = [], [], 0
        for i in range(args.events):
            data = b"timed-%d" % i
            sent = time.monotonic()
            pub.publish("scale.hello", data)
            pub.flush()
            end = time.monotonic() + 2
            while len(arrivals.reached(data)) < len(nodes) and time.monotonic() < end:
                time.sleep(0.005)  # bounded wait for the stamps, not synchronisation
            got = arrivals.reached(data)
            reached = len(got)
            spans.append(max(got.values()) - sent if got else float("nan"))
            firsts.append(min(got.values()) - sent if got else float("nan"))
        rss = [rss_mb(n.pid) for n in nodes]
    finally:
        if pub is not None:
            pub.close(timeout=1)
        if arrivals is not None:
            arrivals.close()
        down(state)
    shutil.rmtree(tmp)
    print(f"{args.nodes}-node tree on one machine (fanout 10), {os.cpu_count()} cores")
    print(f"  all processes answering: {answering:.1f} s; {linked}/{len(nodes)} linked "
          f"after {all_linked:.1f} s")
    print(f"  node CPU at answering: median {statistics.median(cpu) * 1000:.0f} ms, "
          f"total {sum(cpu):.1f} s")
    print(f"  one event from leaf {leaf.name} to subscribers on {reached}/{len(nodes)} "
          f"nodes: the last arrival after median {statistics.median(spans) * 1000:.1f} ms, "
          f"max {max(spans) * 1000:.1f} ms; the first after median "
          f"{statistics.median(firsts) * 1000:.1f} ms ({args.events} events, publish to "
          f"arrival; the {len(nodes)} subscribers share one process)")
    print(f"  node RSS: median {statistics.median(rss):.1f} MB, max {max(rss):.1f} MB")


if __name__ == "__main__":
    main()
