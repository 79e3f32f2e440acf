"""The scheduler: the one node that places replicas, while it holds the lease.

It keeps what every node's agent reports once a second (its groups, tags, engine,
load, replicas, which spec images it has, how long each service went unused), drops
a node at once on ``$sys.node.down`` (its replicas start elsewhere in the next round,
a quarter of a second later) or when it has not reported for ``REPORT_LOST`` seconds,
and each round carries out ``treescale.sched.plan``: orders to the agents
(``replica_start``/``replica_stop`` over ``$svc.service.<node>``, carrying its lease,
so a node that heard a newer scheduler refuses them). A start it ordered counts as a
pending replica until its node reports it, so no round starts it twice.

Owns: the inventory, pending starts, the orders and their outcome, each service's
status (``ls``/``info``), waking and culling. Must not touch: the rules of placement
(treescale/sched/plan.py), containers (agent.py), the spec store (specs.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from treescale.sched.plan import PENDING, NodeView, Replica, Start, Stop, plan, problem
from treescale.sched.spec import ServiceSpec, SpecSet
from treescale.services.agent import new_rid
from treescale.services.rpc import call

log = logging.getLogger("treescale.service")

REPORT_LOST = 4.0  # a node silent this long is lost (the backstop to $sys.node.down)
REVIVE_AFTER = 0.5  # reports within this long of a node's down event are in flight
START_TIMEOUT = 180.0  # an order to start, an image fetch included
SEEN_WITHIN = 15.0  # a started replica its node has not reported by then is gone
AVOID_FOR = 15.0  # after a failed start, try other nodes this long
STOP_TIMEOUT = 20.0


@dataclass
class NodeReport:
    """A node's last report, as the scheduler keeps it."""

    view: NodeView
    replicas: list[Replica]
    rids: set[str]
    images: set[str]  # services whose image this node has
    idle: dict[str, float]  # service -> seconds unused, as this node saw it
    heard: float
    order: tuple[int, int] = (0, 0)
    lease_term: int = 0  # the highest scheduler term this node has obeyed


def report_from_dict(body: dict, now: float) -> NodeReport:
    """A node's ``$sys.service.node`` event -> its report (TypeError/KeyError if bad)."""
    view = NodeView(str(body["node"]), tuple(body.get("groups") or ()),
                    tuple(body.get("tags") or ()), bool(body.get("docker")),
                    float(body.get("load") or 0.0))
    replicas, rids = [], set()
    for r in body.get("replicas") or ():
        replicas.append(Replica(str(r["service"]), view.name, str(r["cid"]),
                                str(r["state"]), r.get("address"), bool(r.get("ready"))))
        rids.add(str(r.get("rid")))
    order = body.get("specs") or (0, 0)
    lease = body.get("lease") or (0, "")
    return NodeReport(view, replicas, rids, set(body.get("images") or ()),
                      {str(k): float(v) for k, v in (body.get("idle") or {}).items()},
                      now, (int(order[0]), int(order[1])), int(lease[0]))


@dataclass
class Pending:
    replica: Replica
    rid: str
    until: float
    ordered: bool = False  # the agent said it started it


@dataclass
class Status:
    """What went wrong for a service lately, and when it was last woken."""

    error: str | None = None
    woken: float = field(default_factory=time.monotonic)


class Scheduler:
    """Inventory and orders; ``round()`` runs on the orchestrator's loop thread."""

    def __init__(self, node: str, client: Any, specs: Callable[[], SpecSet],
                 lease: Callable[[], tuple[int, str]],
                 publish: Callable[[str, str, dict], None]) -> None:
        self.node, self.client = node, client
        self.specs, self.lease, self.publish = specs, lease, publish
        self.reports: dict[str, NodeReport] = {}
        self.lost: dict[str, float] = {}  # node -> when it was lost
        self.pending: dict[str, Pending] = {}  # rid -> start ordered
        self.stopping: dict[str, float] = {}  # cid -> until
        self.avoid: dict[tuple[str, str], float] = {}
        self.status: dict[str, Status] = {}
        self._lock = threading.Lock()
        self._orders = ThreadPoolExecutor(8, thread_name_prefix=f"sched@{node}")

    def close(self) -> None:
        self._orders.shutdown(wait=False, cancel_futures=True)

    # --------------------------------------------------------------- inventory

    def heard(self, report: NodeReport) -> None:
        with self._lock:
            lost_at = self.lost.get(report.view.name)
            if lost_at is not None:
                if report.heard - lost_at < REVIVE_AFTER:
                    return  # sent before it went down
                del self.lost[report.view.name]
                log.info("scheduler %s: node %s is back", self.node, report.view.name)
            self.reports[report.view.name] = report
            for rid in report.rids:
                self.pending.pop(rid, None)

    def node_down(self, name: str, now: float) -> None:
        with self._lock:
            if self.reports.pop(name, None) is not None:
                self.lost[name] = now
                log.info("scheduler %s: node %s is down; its replicas go elsewhere",
                         self.node, name)

    def live(self) -> dict[str, NodeReport]:
        with self._lock:
            return dict(self.reports)

    def newest_order(self) -> tuple[tuple[int, int], str | None]:
        """The highest spec order a node reported, and which node."""
        with self._lock:
            best = max(self.reports.values(), key=lambda r: r.order, default=None)
        return (best.order, best.view.name) if best else ((0, 0), None)

    def highest_term(self) -> int:
        """The highest scheduler term any node reports having obeyed: a new
        scheduler's term goes above it (it may never have heard that scheduler)."""
        with self._lock:
            return max((r.lease_term for r in self.reports.values()), default=0)

    def _expire(self, now: float) -> None:
        for name, r in list(self.reports.items()):
            if now - r.heard > REPORT_LOST:
                del self.reports[name]
                self.lost[name] = now
                log.info("scheduler %s: node %s silent for %gs: lost", self.node, name,
                         REPORT_LOST)
        for rid, p in list(self.pending.items()):
            if now > p.until:
                del self.pending[rid]
        for cid, until in list(self.stopping.items()):
            if now > until:
                del self.stopping[cid]
        for key, until in list(self.avoid.items()):
            if now > until:
                del self.avoid[key]

    # ----------------------------------------------------------------- rounds

    def round(self, now: float) -> None:
        """One pass: forget the lost and the stale, plan, order."""
        specs = self.specs()
        with self._lock:
            self._expire(now)
            nodes = {n: r.view for n, r in self.reports.items()}
            replicas = [r for rep in self.reports.values() for r in rep.replicas
                        if r.cid not in self.stopping]
            replicas += [p.replica for p in self.pending.values() if p.replica.node in nodes]
            actions = plan(specs.specs, nodes, replicas, frozenset(self.avoid))
            for action in actions:
                if isinstance(action, Start):
                    self._order_start(specs, action, now)
                elif isinstance(action, Stop) and action.cid not in self.stopping:
                    self.stopping[action.cid] = now + STOP_TIMEOUT
                    self._orders.submit(self._stop, action)

    def _order_start(self, specs: SpecSet, action: Start, now: float) -> None:
        spec = specs.specs[action.service]
        target = self.reports.get(action.node)
        if target is not None and spec.name not in target.images and \
                not any(spec.name in r.images for r in self.reports.values()):
            # No node says it has the image (yet: reports follow a new spec within a
            # second). Ordering now would fail; the next round looks again.
            self.status.setdefault(spec.name, Status()).error = \
                f"no node reports image {spec.image!r} (yet)"
            return
        rid = new_rid()
        self.pending[rid] = Pending(Replica(spec.name, action.node, "pending:" + rid,
                                            PENDING), rid, now + START_TIMEOUT)
        source = self._image_source(spec, action.node)
        self._orders.submit(self._start, spec, specs.version, action.node, rid, source)

    def _image_source(self, spec: ServiceSpec, node: str) -> str | None:
        """A node that has the image (None: ``node`` has it, or nobody says so)."""
        have = sorted(n for n, r in self.reports.items() if spec.name in r.images)
        if node in have or not have:
            return None
        return self.node if self.node in have else have[0]

    def _start(self, spec: ServiceSpec, version: int, node: str, rid: str,
               source: str | None) -> None:
        term, holder = self.lease()
        args = {"spec": spec.to_dict(), "rid": rid, "version": version, "source": source,
                "term": term, "holder": holder}
        try:
            [r] = call(self.client, "service", "replica_start", args, node=node,
                       timeout=START_TIMEOUT)
            ok, error = r.ok, r.error
        except Exception as exc:  # no answer, or the node went
            ok, error = False, f"{type(exc).__name__}: {exc}"
        with self._lock:
            status = self.status.setdefault(spec.name, Status())
            if ok:
                status.error = None
                p = self.pending.get(rid)
                if p is not None:
                    p.until, p.ordered = time.monotonic() + SEEN_WITHIN, True
            else:
                self.pending.pop(rid, None)
                self.avoid[(spec.name, node)] = time.monotonic() + AVOID_FOR
                status.error = error
        if ok:
            self.publish(spec.name, "started", {"node": node, "rid": rid,
                                                "cid": r.result.get("cid"),
                                                "source": source})
        else:
            log.warning("scheduler %s: starting %s on %s failed: %s", self.node, spec.name,
                        node, error)
            self.publish(spec.name, "failed", {"node": node, "error": error})

    def _stop(self, action: Stop) -> None:
        term, holder = self.lease()
        try:
            [r] = call(self.client, "service", "replica_stop",
                       {"cid": action.cid, "term": term, "holder": holder},
                       node=action.node, timeout=STOP_TIMEOUT)
            ok, error = r.ok, r.error
        except Exception as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        self.publish(action.service, "stopped" if ok else "failed",
                     {"node": action.node, "cid": action.cid, "why": action.why,
                      **({} if ok else {"error": error})})

    # ----------------------------------------------------------------- status

    def describe(self, spec: ServiceSpec) -> dict:
        """A service as ``ls``/``info`` show it."""
        with self._lock:
            replicas = [r for rep in self.reports.values() for r in rep.replicas
                        if r.service == spec.name]
            pending = [p for p in self.pending.values() if p.replica.service == spec.name]
            status = self.status.get(spec.name)
            nodes = {n: r.view for n, r in self.reports.items()}
        running = [r for r in replicas if r.state == "running"]
        ready = [r for r in running if r.ready]
        why = problem(spec, nodes)
        error = why or (status.error if status else None)
        if len(ready) >= spec.replicas and len(replicas) == spec.replicas:
            state = "running" if spec.replicas else "scaled to zero"
        elif why:
            state = "unplaceable"
        elif len(replicas) + len(pending) < spec.replicas or pending:
            state = "starting"
        elif len(replicas) > spec.replicas:
            state = "scaling down"
        else:
            state = "starting"
        return {"name": spec.name, "image": spec.image, "desired": spec.replicas,
                "running": len(running), "ready": len(ready), "pending": len(pending),
                "state": state, "error": error, "where": spec.where(),
                "port": spec.port, "vip": spec.vip, "vip_node": spec.vip_node,
                "minimum": spec.minimum, "maximum": spec.maximum, "idle": spec.idle,
                "replicas": sorted((r.to_dict() for r in replicas),
                                   key=lambda d: (d["node"], d["cid"]))}

    def idle_for(self, specs: SpecSet, now: float) -> dict[str, float]:
        """Seconds each service went unused: the least any node saw, and never more
        than since it was last woken or scaled up."""
        with self._lock:
            seen: dict[str, float] = {}
            for rep in self.reports.values():
                for name, seconds in rep.idle.items():
                    seen[name] = min(seen.get(name, seconds), seconds)
            return {name: min(seen.get(name, float("inf")),
                              now - self.status.setdefault(name, Status()).woken)
                    for name in specs.specs}

    def woken(self, name: str) -> None:
        with self._lock:
            self.status.setdefault(name, Status()).woken = time.monotonic()
