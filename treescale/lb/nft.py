"""The nftables backend: DNAT maps in ``table ip treescale_lb``, loaded atomically.

The whole table is regenerated from the virtual services and loaded as one nft
script (``nft -f -`` is one kernel transaction), so there is never a half-applied
state. Each virtual service is one rule in chain ``services``, jumped to from the
``prerouting`` (traffic arriving) and ``output`` (traffic from this machine) NAT
hooks, so both share its counter:

    rr   dnat ip addr . port to numgen inc mod N map { 0 : a . p, 1 : b . p, ... }
    wrr  numgen inc mod SUM(weights), each server a range as wide as its weight
    sh   jhash ip saddr mod SUM(weights), same ranges: one client, one server
    lc   refused: nftables keeps no per-server connection counts

Conntrack applies the DNAT only to a connection's first packet, so a connection
stays on its server. Replies must route back through this machine (it is the
servers' gateway, or the clients are local). ``nft -j`` reads the table back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Collection

from treescale.lb.model import LbError, VirtualService, weight_slots

TABLE = "treescale_lb"
HASH_SEED = 0x7ee5
NFT_TIMEOUT = 10.0

PROBE_SCRIPT = f"""table ip {TABLE}_probe {{
  chain p {{ type nat hook prerouting priority dstnat; policy accept; }}
}}
"""


def rule(vs: VirtualService) -> str | None:
    """The DNAT rule of one virtual service (None while it has no real servers)."""
    if not vs.reals:
        return None
    if vs.scheduler == "lc":
        raise LbError("nft cannot do lc: nftables keeps no per-server connection counts")
    if vs.scheduler == "rr":
        key = f"numgen inc mod {len(vs.reals)}"
        entries = [f"{i} : {r.address} . {r.port}" for i, r in enumerate(vs.reals)]
    else:
        slots = weight_slots(vs.reals)
        total = slots[-1][1] + 1
        key = (f"numgen inc mod {total}" if vs.scheduler == "wrr"
               else f"jhash ip saddr mod {total} seed {HASH_SEED:#x}")
        entries = [f"{_range(first, last)} : {r.address} . {r.port}"
                   for first, last, r in slots]
    return (f"ip daddr {vs.address} {vs.proto} dport {vs.port} "
            f"dnat ip addr . port to {key} map {{ {', '.join(entries)} }} "
            f'comment "{vs.key}"')


def _range(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def ruleset(services: Collection[VirtualService]) -> str:
    """An nft script that replaces ``table ip treescale_lb`` with these services (no
    services: no table, so a machine without virtual services keeps no NAT hooks)."""
    rules = [r for r in (rule(vs) for vs in sorted(services, key=lambda v: v.key)) if r]
    body = "".join(f"    {r}\n" for r in rules)
    replace = (f"table ip {TABLE} {{}}\n"  # exists, so the delete below cannot fail
               f"delete table ip {TABLE}\n")
    if not services:
        return replace
    return (replace +
            f"table ip {TABLE} {{\n"
            f"  chain services {{\n{body}  }}\n"
            "  chain prerouting {\n"
            "    type nat hook prerouting priority dstnat; policy accept;\n"
            "    jump services\n  }\n"
            "  chain output {\n"
            "    type nat hook output priority -100; policy accept;\n"
            "    jump services\n  }\n"
            "}\n")


def _nft(args: list[str], script: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["nft", *args], input=script, capture_output=True, text=True,
                          timeout=NFT_TIMEOUT)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no output"


def probe() -> str | None:
    """Why nftables NAT cannot be used here, or None if it can (a dry-run load)."""
    if shutil.which("nft") is None:
        return "nft unavailable: the nft command is not installed (Debian package nftables)"
    try:
        done = _nft(["-c", "-f", "-"], PROBE_SCRIPT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nft unavailable: {exc}"
    if done.returncode != 0:
        return (f"nft unavailable: a trial load of a NAT chain failed "
                f"(no NAT in this kernel, or no CAP_NET_ADMIN): {_first_line(done.stderr)}")
    return None


def installed_rules() -> dict[str, dict]:
    """The rules now in the kernel's table, by virtual service key (from ``nft -j``)."""
    done = _nft(["-j", "list", "table", "ip", TABLE])
    if done.returncode != 0:
        return {}
    found = {}
    for item in json.loads(done.stdout).get("nftables", []):
        r = item.get("rule")
        if r and r.get("chain") == "services" and r.get("comment"):
            found[r["comment"]] = r
    return found


class NftBackend:
    """Keeps the services it manages; every change reloads the whole table."""

    name = "nft"

    def __init__(self) -> None:
        self.services: dict[str, VirtualService] = {}
        self._lock = threading.Lock()

    def apply(self, vs: VirtualService) -> None:
        with self._lock:
            self._load({**self.services, vs.key: vs})

    def remove(self, vs: VirtualService) -> None:
        with self._lock:
            self._load({k: v for k, v in self.services.items() if k != vs.key})

    def _load(self, services: dict[str, VirtualService]) -> None:
        script = ruleset(services.values())
        try:
            done = _nft(["-f", "-"], script)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LbError(f"nft failed: {exc}") from None
        if done.returncode != 0:
            raise LbError(f"nft refused the rules: {_first_line(done.stderr)}")
        self.services = services

    def active(self, vs: VirtualService) -> dict[str, int] | None:
        return None  # counting would mean walking conntrack; not offered

    def traffic(self, vs: VirtualService) -> dict | None:
        return None  # the kernel forwards the connections: no per-service tally here

    def installed(self, vs: VirtualService) -> bool:
        return vs.key in installed_rules()

    def close(self) -> None:
        pass  # the table stays: traffic keeps flowing while the node restarts
