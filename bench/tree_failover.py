"""How fast the tree notices a dead node and heals: `python -m bench.tree_failover`.

Each trial starts root <- middle <- leaf as node processes on loopback, with a
subscriber on the leaf and a publisher on the root, then `kill -9`s the middle node:

* detection: kill -> `$sys.node.down` for the middle node, seen by a client of the
  root (the root notices its child's socket close);
* healing: kill -> the leaf's subscriber receives events again (the leaf re-attached
  to the root and its interest reached the root).

Every trial is bounded in time; all processes are killed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.harness import Deadline, broker
from bench.treescale_system import _address, _node_argv
from treescale import Client


def trial() -> tuple[float, float]:
    with broker("root", _node_argv("root", None)) as root, \
            broker("middle", _node_argv("middle", root)) as middle, \
            broker("leaf", _node_argv("leaf", middle)) as leaf, \
            Client(_address(root), name="watcher") as watcher, \
            Client(_address(root), name="pub") as pub, \
            Client(_address(leaf), name="sub") as sub:
        watcher.subscribe("$sys.node.down")
        sub.subscribe("tick")
        deadline = Deadline(20)
        while sub.next_event(0.05) is None and not deadline.expired():
            pub.publish("tick", b"before")
        while sub.next_event(0.2) is not None:
            pass
        pid = _pid_listening(middle)
        killed = time.monotonic()
        _kill(pid)
        down = watcher.next_event(10)
        detected = time.monotonic() - killed
        if down is None or down.json()["node"] != "middle":
            raise RuntimeError(f"no $sys.node.down for the middle node: {down}")
        deadline = Deadline(20)
        while not deadline.expired():
            pub.publish("tick", b"after")
            ev = sub.next_event(0.01)
            if ev is not None and bytes(ev.data) == b"after":
                return detected, time.monotonic() - killed
        raise RuntimeError("the leaf never received events again")


def _pid_listening(hostport: str) -> int:
    """The pid of the process listening on a loopback port (from /proc)."""
    import os
    port = int(hostport.rsplit(":", 1)[1])
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].split(":")[1], 16) == port:
                inodes.add(parts[9])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    raise RuntimeError(f"no process listens on {hostport}")


def _kill(pid: int) -> None:
    import os
    import signal
    os.kill(pid, signal.SIGKILL)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5)
    args = p.parse_args()
    results = [trial() for _ in range(args.trials)]
    detect = sorted(r[0] * 1000 for r in results)
    heal = sorted(r[1] * 1000 for r in results)
    print(f"kill -9 of a middle node, {args.trials} trials")
    print(f"  detected ($sys.node.down at the parent): median {statistics.median(detect):.1f} "
          f"ms, max {detect[-1]:.1f} ms")
    print(f"  healed (leaf receives again via the root): median {statistics.median(heal):.1f} "
          f"ms, max {heal[-1]:.1f} ms")


if __name__ == "__main__":
    main()
