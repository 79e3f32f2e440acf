"""Each service's L4 endpoint: a virtual service of the lb service, following replicas.

A spec with ``vip`` has its endpoint on node ``vip_node`` (the scheduler opens it on
``add``, with the proxy backend, owner ``service:NAME``, and for a ``--min 0``
service a ``hold``). The orchestrator of that node keeps it: whenever the ready
replicas change, their addresses become the endpoint's real servers (lb op
``reals_set``, one backend change, none if the set is the same). A connection held
because no replica is ready makes the lb service publish ``$sys.lb.<node>.wanted``:
that wakes the service. Connections through the endpoint count as use, so an
endpoint in use keeps its service from being culled.

Owns: following and waking through endpoints. Must not touch: the lb service's
state (only its ops), placement.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from treescale import protocol as P
from treescale import subjects
from treescale.sched.plan import Replica
from treescale.sched.spec import SpecSet
from treescale.services.rpc import call

log = logging.getLogger("treescale.service")

OWNER = "service:"
LB_TIMEOUT = 5.0


class EndpointKeeper:
    """The endpoints this node keeps for services."""

    def __init__(self, node: str, client: Any, specs: Callable[[], SpecSet],
                 replicas_of: Callable[[str], list[Replica]],
                 wake: Callable[[str], None], used: dict[str, float]) -> None:
        self.node, self.client = node, client
        self.specs, self.replicas_of, self.wake, self.used = specs, replicas_of, wake, used
        self._sent: dict[str, tuple[str, ...]] = {}
        self._connections: dict[str, int] = {}
        self._busy = threading.Lock()
        client.subscribe(subjects.lb_event(node, "wanted"), handler=self._on_wanted)

    def mine(self) -> dict[str, Any]:
        return {n: s for n, s in self.specs().specs.items()
                if s.vip and s.vip_node == self.node}

    def tick(self) -> None:
        """Follow the replicas and read the endpoints' traffic (off the loop thread:
        these are calls to this node's lb service); one tick at a time."""
        if not self._busy.acquire(blocking=False):
            return
        try:
            mine = self.mine()
            for name in set(self._sent) - set(mine):
                del self._sent[name]
            for name, spec in mine.items():
                reals = tuple(sorted(r.address for r in self.replicas_of(name)
                                     if r.ready and r.address))
                if self._sent.get(name) != reals:
                    self._set_reals(name, spec.vip, reals)
            if mine:
                self._read_traffic(mine)
        finally:
            self._busy.release()

    def _set_reals(self, name: str, vip: str, reals: tuple[str, ...]) -> None:
        try:
            [r] = call(self.client, "lb", "reals_set", {"vip": vip, "reals": list(reals)},
                       node=self.node, timeout=LB_TIMEOUT)
        except TimeoutError as exc:
            log.warning("service %s: endpoint %s: %s", name, vip, exc)
            return
        if r.ok:
            self._sent[name] = reals
            log.info("service %s: endpoint %s -> %s", name, vip, ", ".join(reals) or "none")
        else:
            log.warning("service %s: endpoint %s: %s", name, vip, r.error)

    def _read_traffic(self, mine: dict[str, Any]) -> None:
        try:
            [r] = call(self.client, "lb", "ls", {}, node=self.node, timeout=LB_TIMEOUT)
        except TimeoutError:
            return
        if not r.ok:
            return
        now = time.monotonic()
        for vs in r.result.get("services") or ():
            owner = str(vs.get("owner") or "")
            name = owner[len(OWNER):] if owner.startswith(OWNER) else None
            if name not in mine:
                continue
            total = vs.get("connections_total") or 0
            if total != self._connections.get(name) or (vs.get("held") or 0) > 0:
                if name in self._connections or vs.get("held"):
                    self.used[name] = now
                self._connections[name] = total

    def _on_wanted(self, ev: Any) -> None:
        try:
            owner = str(P.loads(ev.data).get("owner") or "")
        except Exception:
            return
        if owner.startswith(OWNER):
            name = owner[len(OWNER):]
            self.used[name] = time.monotonic()
            self.wake(name)
