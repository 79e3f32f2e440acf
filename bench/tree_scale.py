"""A 100-node local tree: `python -m bench.tree_scale [--nodes 100]`.

Measures the time until every node is up and linked (seen in `$sys.node.stats` at the
root), that one event published on a leaf reaches a subscriber on every node, and
each node process's resident memory. Everything is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=100)
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="treescale-scale-")  # kept if anything fails: logs
    cfg, state = Path(tmp) / "tree.json", Path(tmp) / "up.json"
    tree_file(cfg, args.nodes)
    started = time.monotonic()
    nodes = up(cfg, state, timeout=180)
    answering = time.monotonic() - started
    clients: list[Client] = []
    try:
        seen: dict = {}
        with Client(nodes[0].address, name="scale-watch") as watch:
            watch.subscribe("$sys.node.stats")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                ev = watch.next_event(1)
                if ev is not None:
                    r = ev.json()
                    seen[r["node"]] = r
                linked = sum(1 for r in seen.values() if r["parent"] or
                             r["node"] == nodes[0].name)
                if linked == len(nodes):
                    break
        all_linked = time.monotonic() - started
        for n in nodes:
            c = Client(n.address, name=f"sub-{n.name}", timeout=30)
            c.subscribe("scale.hello")
            clients.append(c)
        pub = Client(nodes[-1].address, name="scale-pub")
        clients.append(pub)
        reached: set = set()
        deadline = time.monotonic() + 60
        while len(reached) < len(nodes) and time.monotonic() < deadline:
            pub.publish("scale.hello", b"hi")
            for n, c in zip(nodes, clients, strict=False):
                if n.name not in reached and c.next_event(0.0) is not None:
                    reached.add(n.name)
            time.sleep(0.05)  # a bounded probe loop, not synchronisation
        rss = [rss_mb(n.pid) for n in nodes]
    finally:
        for c in clients:
            c.close(timeout=1)
        down(state)
    shutil.rmtree(tmp)
    print(f"{args.nodes}-node tree on one machine (fanout 10)")
    print(f"  all processes answering: {answering:.1f} s; {linked}/{len(nodes)} linked "
          f"after {all_linked:.1f} s")
    print(f"  one event from leaf {nodes[-1].name} reached subscribers on "
          f"{len(reached)}/{len(nodes)} nodes")
    print(f"  node RSS: median {statistics.median(rss):.1f} MB, max {max(rss):.1f} MB")


if __name__ == "__main__":
    main()
