"""Two test hosts: network namespaces joined by a veth pair, with addresses the caller
assigns (the network rule: traffic only to addresses we made). Shared by the partition
test and the silent-link benchmark; everything is removed on exit, even on failure."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


@contextmanager
def two_hosts(ip_a: str, ip_b: str, prefix: str = "ts") -> Iterator[tuple]:
    """Yield ``(run, (ns_a, veth_a), (ns_b, veth_b))``; ``run(ns, *tsctl_args)`` starts
    ``tsctl`` inside a namespace (stdout/stderr piped) and is killed on exit."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"{prefix}a{tag}", f"{prefix}b{tag}"
    va, vb = f"{prefix}va{tag}"[:15], f"{prefix}vb{tag}"[:15]
    procs: list[subprocess.Popen] = []
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        sh("ip", "link", "set", va, "netns", a)
        sh("ip", "link", "set", vb, "netns", b)
        sh("ip", "-n", a, "addr", "add", f"{ip_a}/24", "dev", va)
        sh("ip", "-n", b, "addr", "add", f"{ip_b}/24", "dev", vb)
        for ns, dev in ((a, va), (b, vb)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

        def run(ns: str, *args: str) -> subprocess.Popen:
            p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m",
                                  "tsctl.main", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
            procs.append(p)
            return p

        yield run, (a, va), (b, vb)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


Run = Callable[..., subprocess.Popen]
