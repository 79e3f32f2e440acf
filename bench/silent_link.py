"""How fast a silent link is noticed: `python -m bench.silent_link [--trials 5]` (root).

Two nodes in their own network namespaces, joined by a veth pair with addresses this
benchmark assigns; `ip link set down` on the child's side cuts the cable without a FIN
or RST. Measured, both ways: from the cut until the parent publishes `$sys.node.down`
about the child (seen by a subscriber next to the parent), and until the child
publishes it about the parent (a subscriber next to the child: the start of healing).
Then the link comes back and a fresh child links for the next trial. Namespaces and
processes are removed at the end. ``--verbose`` prints every trial and the reason each
side gave; ``--after-data`` cuts just after a data message from the child (libzmq's TTL
of the child's pings is cancelled by it: the case that once took 5-6 s).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import statistics
import sys
import time

import msgpack

from tests.netns import sh, two_hosts

PARENT_IP, CHILD_IP, PORT = "10.231.7.1", "10.231.7.2", 7401
TARGET_MS = 1000


class Lines:
    """The lines of a subscriber's stdout as they arrive. Not ``select`` and then
    ``readline`` on the buffered pipe: a readline that pulls two lines into the buffer
    leaves the second unseen until more bytes come (the next `$sys.node.stats`, a
    second later), which once made every measurement here late by whole seconds."""

    def __init__(self, stream) -> None:
        self.fd = stream.fileno()
        self.buf = b""

    def fill(self) -> None:
        """What the pipe holds now (call when select says it is readable)."""
        chunk = os.read(self.fd, 65536)
        if not chunk:
            raise EOFError("subscriber ended")
        self.buf += chunk

    def next(self, deadline: float) -> bytes:
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError("no line")
            self.fill()
        line, self.buf = self.buf.split(b"\n", 1)
        return line


def event_of(line: bytes) -> tuple[str, dict]:
    ev = json.loads(line)
    return ev["name"], msgpack.unpackb(bytes.fromhex(ev["data"]))


def wait_for(lines: Lines, name: str, node: str, deadline: float) -> tuple[float, dict]:
    """Read `tsctl sub --json` lines until event ``name`` about ``node``; its arrival
    and its data."""
    while True:
        try:
            got, info = event_of(lines.next(deadline))
        except TimeoutError:
            raise TimeoutError(f"no {name} for {node}") from None
        if got == name and info.get("node") == node:
            return time.monotonic(), info


def wait_all(wanted: dict, name: str, deadline: float) -> dict:
    """``name`` on several subscribers at once, ``{lines: node}``: when each saw it
    about its node (read as they come, so one side's wait delays no other's)."""
    seen: dict = {}
    while len(seen) < len(wanted):
        waiting = {lines.fd: lines for lines in wanted if lines not in seen}
        for lines in waiting.values():
            while lines not in seen and b"\n" in lines.buf:
                got, info = event_of(lines.next(deadline))
                if got == name and info.get("node") == wanted[lines]:
                    seen[lines] = (time.monotonic(), info)
        if len(seen) == len(wanted):
            break
        left = deadline - time.monotonic()
        ready, _, _ = select.select(list(waiting), [], [], max(0.0, left))
        if not ready:
            raise TimeoutError(f"no {name} for {sorted(wanted.values())}")
        for fd in ready:
            waiting[fd].fill()
    return seen


def subscribed(watch) -> None:
    ready, _, _ = select.select([watch.stderr], [], [], 30)
    assert ready and b"subscribed" in watch.stderr.readline()


def summary(label: str, ms: list[float]) -> str:
    ordered = sorted(ms)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    over = sum(1 for m in ms if m > TARGET_MS)
    return (f"{label}: median {statistics.median(ms):.0f} ms, p90 {p90:.0f} ms, "
            f"max {max(ms):.0f} ms, {over} over {TARGET_MS} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--after-data", action="store_true",
                   help="cut just after a data message from the child reached the parent "
                   "(its $sys.node.stats), before its next ZMTP ping")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    at_parent: list[float] = []
    at_child: list[float] = []
    with two_hosts(PARENT_IP, CHILD_IP, prefix="bs") as (run, (a, _), (b, vb)):
        parent = f"tcp://{PARENT_IP}:{PORT}"
        # namespaces of this machine: a trusted network, no auth needed (--insecure)
        run(a, "node", "start", "--name", "pa", "--host", PARENT_IP, "--port", str(PORT),
            "--insecure")
        watch = run(a, "sub", "$sys.node.*", "--json", "-a", parent, "--timeout", "20")
        subscribed(watch)
        far = Lines(watch.stdout)
        for trial in range(args.trials):
            # A fresh child each time, so every trial starts from the same state (cut
            # off, the child leads its own side until the link returns).
            port = 7402 + trial
            child = run(b, "node", "start", "--name", "cb", "--host", CHILD_IP,
                        "--port", str(port), "--parent", parent, "--insecure")
            wait_for(far, "$sys.node.up", "cb", time.monotonic() + 30)
            near = run(b, "sub", "$sys.node.*", "--json", "-a",
                       f"tcp://{CHILD_IP}:{port}", "--timeout", "20")
            subscribed(near)
            close = Lines(near.stdout)
            # Let the link settle, then cut at a random moment of the nodes' second
            # (their once-a-second messages): every phase of it gets measured.
            time.sleep(0.5 + random.random())
            if args.after_data:
                wait_for(far, "$sys.node.stats", "cb", time.monotonic() + 5)
            cut = time.monotonic()
            sh("ip", "-n", b, "link", "set", vb, "down")
            both = wait_all({far: "cb", close: "pa"}, "$sys.node.down", cut + 15)
            (seen, info), (seen_c, info_c) = both[far], both[close]
            at_parent.append((seen - cut) * 1000)
            at_child.append((seen_c - cut) * 1000)
            if args.verbose:
                print(f"trial {trial:2d}: parent {at_parent[-1]:5.0f} ms "
                      f"({info.get('reason')}), child {at_child[-1]:5.0f} ms "
                      f"({info_c.get('reason')})", flush=True)
            for proc in (near, child):
                proc.kill()
                proc.wait()
            sh("ip", "-n", b, "link", "set", vb, "up")
    print(f"silent link (veth down), {args.trials} trials (target <= {TARGET_MS} ms)")
    print(summary("  parent sees the child gone", at_parent))
    print(summary("  child sees the parent gone", at_child))


if __name__ == "__main__":
    main()
