"""The IPVS backend: the kernel's IP Virtual Server over generic netlink (pyroute2).

Real servers are reached by NAT (masquerading), so they need no setup of their own
beyond routing replies back through this machine. Where the kernel has no ip_vs
module the netlink family does not exist: ``probe`` says so instead of failing later.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from treescale.lb.model import LbError, RealServer, VirtualService, diff_reals

MISSING = ("IPVS unavailable: this kernel has no ip_vs module "
           "(netlink family IPVS not found)")
SCHEDULER_NAMES = {"rr": "rr", "wrr": "wrr", "lc": "wlc", "sh": "sh"}
FWD_MASQ = 0  # IP_VS_CONN_F_MASQ: NAT to the real server
PROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


def _open_ipvs() -> Any:
    from pyroute2 import IPVS
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        return IPVS()
    except NetlinkError as exc:
        if exc.code == 2:
            raise LbError(MISSING) from None
        raise LbError(f"IPVS unavailable: {exc}") from None
    except OSError as exc:
        raise LbError(f"IPVS unavailable: {exc}") from None


def probe() -> str | None:
    """Why IPVS cannot be used here, or None if it can."""
    try:
        _open_ipvs().close()
    except LbError as exc:
        return str(exc)
    return None


def _attr(msg: Any, name: str) -> Any:
    """A field of a dumped record, whichever way this pyroute2 version names it."""
    for key in (name, f"IPVS_DEST_ATTR_{name.upper()}", f"IPVS_SVC_ATTR_{name.upper()}"):
        if key in msg:
            return msg[key]
    return None


class IpvsBackend:
    """Each change is a diff against what the kernel holds now."""

    name = "ipvs"

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _service(self, vs: VirtualService) -> Any:
        from pyroute2 import IPVSService

        return IPVSService(addr=vs.address, port=vs.port, protocol=PROTO[vs.proto],
                           sched_name=SCHEDULER_NAMES[vs.scheduler])

    def _dests(self, ipvs: Any, service: Any) -> dict[str, tuple[RealServer, int]]:
        from pyroute2 import IPVSDest

        found = {}
        for msg in ipvs.dest("dump", service=service):
            d = IPVSDest.from_message(msg)
            real = RealServer(str(_attr(d, "addr")), int(_attr(d, "port")),
                              int(_attr(d, "weight") or 1))
            found[real.key] = (real, int(_attr(d, "active_conns") or 0))
        return found

    def apply(self, vs: VirtualService) -> None:
        from pyroute2 import IPVSDest
        from pyroute2.netlink.exceptions import NetlinkError

        with self._lock:
            ipvs = _open_ipvs()
            try:
                service = self._service(vs)
                try:
                    ipvs.service("add", service=service)
                except NetlinkError as exc:
                    if exc.code != 17:  # EEXIST: it is there, bring it in line
                        raise
                    ipvs.service("set", service=service)
                current = [real for real, _ in self._dests(ipvs, service).values()]
                added, changed, removed = diff_reals(current, vs.reals)
                for r in removed:
                    ipvs.dest("del", service=service,
                              dest=IPVSDest(addr=r.address, port=r.port))
                for r in changed:
                    ipvs.dest("set", service=service,
                              dest=IPVSDest(addr=r.address, port=r.port, weight=r.weight,
                                            fwd_method=FWD_MASQ))
                for r in added:
                    ipvs.dest("add", service=service,
                              dest=IPVSDest(addr=r.address, port=r.port, weight=r.weight,
                                            fwd_method=FWD_MASQ))
            except NetlinkError as exc:
                raise LbError(f"IPVS refused {vs.key}: {exc}") from None
            finally:
                ipvs.close()

    def remove(self, vs: VirtualService) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        with self._lock:
            ipvs = _open_ipvs()
            try:
                ipvs.service("del", service=self._service(vs))
            except NetlinkError as exc:
                if exc.code not in (2, 3):  # ENOENT/ESRCH: already gone
                    raise LbError(f"IPVS refused removing {vs.key}: {exc}") from None
            finally:
                ipvs.close()

    def active(self, vs: VirtualService) -> dict[str, int] | None:
        with self._lock:
            ipvs = _open_ipvs()
            try:
                return {k: n for k, (_, n) in self._dests(ipvs, self._service(vs)).items()}
            finally:
                ipvs.close()

    def traffic(self, vs: VirtualService) -> dict | None:
        return None  # the kernel forwards the connections: no per-service tally here

    def installed(self, vs: VirtualService) -> bool:
        from pyroute2.netlink.exceptions import NetlinkError

        with self._lock:
            ipvs = _open_ipvs()
            try:
                return bool(list(ipvs.service("get", service=self._service(vs))))
            except NetlinkError:
                return False
            finally:
                ipvs.close()

    def close(self) -> None:
        pass  # IPVS tables stay in the kernel: traffic flows while the node restarts
