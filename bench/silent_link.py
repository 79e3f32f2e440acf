"""How fast a silent link is noticed: `python -m bench.silent_link [--trials 5]` (root).

Two nodes in their own network namespaces, joined by a veth pair with addresses this
benchmark assigns; `ip link set down` on the child's side cuts the cable without a FIN
or RST. Measured: from the cut until the parent publishes `$sys.node.down` (seen by a
subscriber next to the parent). Then the link comes back and a fresh child links for the
next trial. Namespaces and processes are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import msgpack

PARENT_IP, CHILD_IP, PORT = "10.231.7.1", "10.231.7.2", 7401


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


@contextmanager
def two_hosts() -> Iterator[tuple]:
    tag = uuid.uuid4().hex[:6]
    a, b, va, vb = f"bsa{tag}", f"bsb{tag}", f"bva{tag}", f"bvb{tag}"
    procs: list[subprocess.Popen] = []
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        sh("ip", "link", "set", va, "netns", a)
        sh("ip", "link", "set", vb, "netns", b)
        sh("ip", "-n", a, "addr", "add", f"{PARENT_IP}/24", "dev", va)
        sh("ip", "-n", b, "addr", "add", f"{CHILD_IP}/24", "dev", vb)
        for ns, dev in ((a, va), (b, vb)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

        def run(ns: str, *args: str) -> subprocess.Popen:
            p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m",
                                  "tsctl.main", *args], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
            procs.append(p)
            return p

        yield run, a, b, vb
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def wait_for(stream, name: str, node: str, deadline: float) -> float:
    """Read `tsctl sub --json` lines until event ``name`` about ``node``; its arrival."""
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([stream], [], [], max(0.0, left))
        if not ready:
            raise TimeoutError(f"no {name} for {node}")
        ev = json.loads(stream.readline())
        info = msgpack.unpackb(bytes.fromhex(ev["data"]))
        if ev["name"] == name and info.get("node") == node:
            return time.monotonic()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    results: list[float] = []
    with two_hosts() as (run, a, b, vb):
        parent = f"tcp://{PARENT_IP}:{PORT}"
        run(a, "node", "start", "--name", "pa", "--host", PARENT_IP, "--port", str(PORT))
        watch = run(a, "sub", "$sys.node.*", "--json", "-a", parent, "--timeout", "20")
        ready, _, _ = select.select([watch.stderr], [], [], 30)
        assert ready and b"subscribed" in watch.stderr.readline()
        for trial in range(args.trials):
            # A fresh child each time: cut off from its root, the child becomes the
            # root of its own side (a healed partition is not merged back yet).
            child = run(b, "node", "start", "--name", "cb", "--host", CHILD_IP,
                        "--port", str(7402 + trial), "--parent", parent)
            wait_for(watch.stdout, "$sys.node.up", "cb", time.monotonic() + 30)
            time.sleep(0.5)  # let the link settle: a steady state to cut
            cut = time.monotonic()
            sh("ip", "-n", b, "link", "set", vb, "down")
            seen = wait_for(watch.stdout, "$sys.node.down", "cb", cut + 15)
            results.append((seen - cut) * 1000)
            child.kill()
            child.wait()
            sh("ip", "-n", b, "link", "set", vb, "up")
    print(f"silent link (veth down), {args.trials} trials: median "
          f"{statistics.median(results):.0f} ms, max {max(results):.0f} ms "
          f"(target <= 1000 ms)")


if __name__ == "__main__":
    main()
