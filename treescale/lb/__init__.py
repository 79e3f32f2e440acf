"""L4 load balancing: virtual services spread over real servers by one of three backends.

``model`` is the pure core (values, schedulers, diffs, backend choice). A backend
turns virtual services into something that moves packets:

    ipvs   the kernel's IP Virtual Server, through pyroute2 (where ip_vs exists)
    nft    nftables DNAT maps in ``table ip treescale_lb`` (where the kernel has NAT)
    proxy  a userspace asyncio TCP/UDP balancer in a thread (works anywhere)

Every backend has the same small surface (``Backend``); ``Backends`` probes which
ones this machine can run, once, and opens them on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from treescale.lb.model import BACKENDS, LbError, VirtualService


class Backend(Protocol):
    name: str

    def apply(self, vs: VirtualService) -> None:
        """Create the virtual service, or change it to match ``vs``."""

    def remove(self, vs: VirtualService) -> None:
        """Take the virtual service down (no error if it is not there)."""

    def active(self, vs: VirtualService) -> dict[str, int] | None:
        """Open connections per real server key, or None if the backend cannot tell."""

    def installed(self, vs: VirtualService) -> bool:
        """Is the virtual service really there (kernel rules, a listening proxy)?"""

    def traffic(self, vs: VirtualService) -> dict | None:
        """``connections_total``, ``last_connection`` (wall clock), ``held``,
        ``hold_expired``; None if the backend does not see connections (the kernel's)."""

    def close(self) -> None:
        """Stop what runs in this process (kernel rules stay: they outlive the node)."""


class Backends:
    """The backends of one node: probed once, opened on first use. ``on_wanted(vs)``
    is handed to the proxy: called on its thread when a held connection asks for real
    servers (it must not block)."""

    def __init__(self, on_wanted: Callable[[VirtualService], None] | None = None) -> None:
        self.on_wanted = on_wanted
        self._lock = threading.Lock()
        self._reasons: dict[str, str | None] = {}
        self._open: dict[str, Backend] = {}

    def unavailable(self) -> dict[str, str]:
        """backend -> why it cannot run here (missing kernel module, tool, permission)."""
        with self._lock:
            for name in BACKENDS:
                if name not in self._reasons:
                    self._reasons[name] = _probe(name)
            return {k: v for k, v in self._reasons.items() if v}

    def get(self, name: str) -> Backend:
        reason = self.unavailable().get(name)
        if reason:
            raise LbError(reason)
        with self._lock:
            backend = self._open.get(name)
            if backend is None:
                backend = self._open[name] = _open(name, self.on_wanted)
            return backend

    def close(self) -> None:
        with self._lock:
            for backend in self._open.values():
                backend.close()
            self._open.clear()


def _probe(name: str) -> str | None:
    if name == "ipvs":
        from treescale.lb.ipvs import probe
    elif name == "nft":
        from treescale.lb.nft import probe
    else:
        return None  # the proxy needs nothing but sockets
    return probe()


def _open(name: str, on_wanted: Callable[[VirtualService], None] | None) -> Backend:
    if name == "ipvs":
        from treescale.lb.ipvs import IpvsBackend
        return IpvsBackend()
    if name == "nft":
        from treescale.lb.nft import NftBackend
        return NftBackend()
    from treescale.lb.proxy import ProxyBackend
    return ProxyBackend(on_wanted)
