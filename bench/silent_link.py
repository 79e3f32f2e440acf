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
import sys
import time

import msgpack

from tests.netns import sh, two_hosts

PARENT_IP, CHILD_IP, PORT = "10.231.7.1", "10.231.7.2", 7401


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
    with two_hosts(PARENT_IP, CHILD_IP, prefix="bs") as (run, (a, _), (b, vb)):
        parent = f"tcp://{PARENT_IP}:{PORT}"
        # namespaces of this machine: a trusted network, no auth needed (--insecure)
        run(a, "node", "start", "--name", "pa", "--host", PARENT_IP, "--port", str(PORT),
            "--insecure")
        watch = run(a, "sub", "$sys.node.*", "--json", "-a", parent, "--timeout", "20")
        ready, _, _ = select.select([watch.stderr], [], [], 30)
        assert ready and b"subscribed" in watch.stderr.readline()
        for trial in range(args.trials):
            # A fresh child each time, so every trial starts from the same state (cut
            # off, the child leads its own side until the link returns).
            child = run(b, "node", "start", "--name", "cb", "--host", CHILD_IP,
                        "--port", str(7402 + trial), "--parent", parent, "--insecure")
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
