"""The chaos run's network: a bridge in the root namespace and one network namespace
per isolated node, joined to the bridge by a veth pair, so a link can be cut with
`ip link set down` (no FIN, no RST: silence) and restored.

Owns: creating, cutting, restoring and removing those namespaces, links and the
bridge (addresses in a 10.213.X.0/24 that no interface here uses). Must not touch:
node processes (bench/chaos.py starts them inside the namespaces).

Isolated nodes are leaves whose parent lives in the root namespace: traffic between
two namespaces would be bridged through the FORWARD chain, which Docker's iptables
policy drops on many hosts; traffic to the bridge's own address never is.
"""

from __future__ import annotations

import os
import random
import subprocess
import uuid


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


def unavailable() -> str | None:
    """Why link cuts cannot run here, or None."""
    if os.geteuid() != 0:
        return "link cuts need root (network namespaces); skipped"
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        return "link cuts need iproute2 (`ip`); skipped"
    return None


def _free_subnet() -> str:
    """``10.213.X`` that no interface of this host is in."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True,
                          text=True).stdout
    for x in random.sample(range(1, 250), 249):
        if f" 10.213.{x}." not in used:
            return f"10.213.{x}"
    raise RuntimeError("no free 10.213.X.0/24")


class Net:
    """The bridge and the namespaces of one run; ``close`` removes everything (also
    what a failed ``add`` left half made)."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.subnet = _free_subnet()
        self.bridge = f"tsbr{self.tag}"
        self.host_ip = f"{self.subnet}.254"  # where root-namespace nodes listen
        self.spaces: dict[int, tuple[str, str]] = {}  # k -> (netns, its veth end)
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    def add(self, k: int) -> tuple[str, str]:
        """Namespace ``k`` (1..250) joined to the bridge: ``(netns name, its IP)``."""
        ns, inner, outer = f"tsc{self.tag}{k}", f"tc{self.tag}{k}a", f"tc{self.tag}{k}b"
        self.spaces[k] = (ns, inner)
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", inner, "type", "veth", "peer", "name", outer)
        sh("ip", "link", "set", inner, "netns", ns)
        sh("ip", "link", "set", outer, "master", self.bridge)
        sh("ip", "link", "set", outer, "up")
        ip = f"{self.subnet}.{k}"
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", inner)
        sh("ip", "-n", ns, "link", "set", inner, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns, ip

    def cut(self, k: int) -> None:
        ns, inner = self.spaces[k]
        sh("ip", "-n", ns, "link", "set", inner, "down")

    def restore(self, k: int) -> None:
        ns, inner = self.spaces[k]
        sh("ip", "-n", ns, "link", "set", inner, "up")

    def close(self) -> None:
        for ns, _ in self.spaces.values():  # deleting a namespace deletes its veth
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self.spaces.clear()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True,
                       timeout=20)
