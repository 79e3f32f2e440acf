"""Services that keep themselves running: the ``service`` service of every node.

Every node runs the same three parts: its replica agent (agent.py: the containers it
runs for services), the inventory of every node's report (scheduler.py), and the
relay of ``svc.NAME`` requests (relay.py). One node at a time also schedules: the one
that leads the tree (root or acting root) and holds the lease (treescale/sched/
lease.py). Specs live in every node's LMDB (specs.py); the scheduler changes them, and
its lease announcement carries the version, so a node that was away fetches the newer
set (op ``specs_get``) as soon as it hears one, and a new scheduler first takes the
newest set any node reports.

Operations on ``$svc.service[.NODE]`` (permission ``service``); any node takes the
operator's ones and hands them to the scheduler:

    add   {name, image, replicas?, port?, group?|tag?, env?, command?, minimum?,
           maximum?, idle?, hold?, vip?, vip_node?}     -> the service as ls shows it
    ls    {}  info {name}  scale {name, replicas}  rm {name}  logs {name, tail?}
    wake  {name}                                       (scale a --min 0 service to one)

and the scheduler's orders to a node's agent (a token with "*", i.e. a node's own
services; each carries the lease and is refused if a newer scheduler was heard):
``replica_start {spec, rid, version, source?, term, holder}``, ``replica_stop {cid,
term, holder}``, ``replica_logs {cid, tail}``, ``image_check {image}``,
``specs_get {}``.

Events: ``$sys.service.node`` (each node's report, once a second and on change),
``$sys.service.lease`` (the scheduler, every ``lease.ANNOUNCE`` seconds),
``$sys.service.<name>.<action>`` (added, scaled, removed, started, stopped, failed,
woken, culled).

Owns: the wiring of those parts, the ops, the loop. Must not touch: placement rules
(treescale/sched/plan.py), containers (agent.py), the lb service's internals.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack

from treescale import protocol as P
from treescale import subjects
from treescale.healing import ACTING_ROOT, ROOT
from treescale.sched.lease import ANNOUNCE, Lease
from treescale.sched.plan import Replica, to_cull
from treescale.sched.spec import ServiceSpec, SpecError, SpecSet
from treescale.services import ServiceContext
from treescale.services.agent import ReplicaAgent, load_per_cpu
from treescale.services.endpoints import EndpointKeeper
from treescale.services.operator_ops import OperatorOps
from treescale.services.relay import RequestRelay
from treescale.services.rpc import ServiceEndpoint, ServiceError, call
from treescale.services.scheduler import Scheduler, report_from_dict
from treescale.services.specs import SpecStore

log = logging.getLogger("treescale.service")

SERVICE = "service"
TICK = 0.25
REPORT_EVERY = 1.0
IMAGES_EVERY = 5.0
ENDPOINTS_EVERY = 0.5
FORWARD_TIMEOUT = 15.0
CHECK_TIMEOUT = 3.0
CATCH_UP_EVERY = 1.0  # a request for an unknown service asks the holder at most this often
LEADING = (ROOT, ACTING_ROOT)
USER_OPS = ("add", "ls", "info", "scale", "rm", "logs", "wake")


def _pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


class Orchestrator:
    """The ``service`` service: agent, inventory and relay on every node; scheduler on
    the one holding the lease."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx, self.node = ctx, ctx.node
        self.client = ctx.client
        self.store = SpecStore(ctx.store)
        self.lease = Lease()
        self._lease_lock = threading.Lock()
        self.leading_since: float | None = None
        self._heard_order = (0, 0)  # the newest spec set a lease announcement named
        self._catch_up_lock = threading.Lock()
        self._caught_up_at = -CATCH_UP_EVERY
        self.agent = ReplicaAgent(ctx.node, ctx.config)
        self.scheduler = Scheduler(ctx.node, self.client, lambda: self.store.current,
                                   self.my_lease, self.publish_event)
        self.images: set[str] = set()  # services whose image this node has
        self._images_for: SpecSet | None = None  # the spec set self.images is of
        self._stop = threading.Event()
        self._report_due = threading.Event()
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._work = ThreadPoolExecutor(4, thread_name_prefix=f"service@{ctx.node}")
        self.relay = RequestRelay(ctx.node, self.client, self.spec_for_request,
                                  self.replicas_of, self._wake_async,
                                  ctx.config.max_payload)
        self.endpoints = EndpointKeeper(ctx.node, self.client, lambda: self.store.current,
                                        self.replicas_of, self._wake_async,
                                        self.relay.used)
        self.operator = OperatorOps(self)
        ops: dict[str, Any] = {op: self._user_op(op) for op in USER_OPS}
        ops.update({"replica_start": self._op_replica_start,
                    "replica_stop": self._op_replica_stop,
                    "replica_logs": self._op_replica_logs,
                    "image_check": self._op_image_check, "specs_get": self._op_specs_get})
        self.endpoint = ServiceEndpoint(ctx, SERVICE, ops, workers=16, client=self.client)
        self.client.subscribe(subjects.SERVICE_REPORT, handler=self._on_report)
        self.client.subscribe(subjects.SERVICE_LEASE, handler=self._on_lease)
        self.client.subscribe(subjects.NODE_DOWN, handler=self._on_down)
        self._loop = threading.Thread(target=self._run, daemon=True,
                                      name=f"service-loop@{ctx.node}")
        self._loop.start()

    @classmethod
    def start(cls, ctx: ServiceContext) -> Orchestrator:
        return cls(ctx)

    def close(self) -> None:
        self._stop.set()
        self._tasks.put(None)
        self.endpoint.close()
        self.relay.close()
        self.scheduler.close()
        self._work.shutdown(wait=False, cancel_futures=True)
        self.agent.close()

    # ---------------------------------------------------------------- leadership

    def my_lease(self) -> tuple[int, str]:
        with self._lease_lock:
            return self.lease.term, self.lease.holder

    def leads_tree(self) -> bool:
        """Whether this node may schedule: it leads the tree (root or acting root)."""
        state = self.ctx.tree_state() if self.ctx.tree_state else None
        return state in LEADING

    def schedules(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lease_lock:
            return self.leading_since is not None and self.lease.held_by(self.node, now)

    def _tend_lease(self, now: float) -> bool:
        """Claim, keep or drop the lease; True while this node schedules."""
        leads = self.leads_tree()
        with self._lease_lock:
            if not leads:
                if self.leading_since is not None:
                    log.info("node %s no longer leads the tree: not scheduling", self.node)
                self.leading_since = None
                return False
            if self.leading_since is None:
                self.leading_since = now
            if not self.lease.may_claim(self.node, now, self.leading_since):
                return False
            was = self.lease.held_by(self.node, now)
            term = self.lease.claim(self.node, now, floor=max(
                self.store.current.term, self.scheduler.highest_term()))
        if not was:
            log.info("node %s schedules services (term %d)", self.node, term)
        return True

    def _announce_lease(self) -> None:
        term, holder = self.my_lease()
        specs = self.store.current
        self.client.publish(subjects.SERVICE_LEASE, _pack(
            {"holder": holder, "term": term, "specs": list(specs.order)}))

    def _on_lease(self, ev: Any) -> None:
        try:
            msg = P.loads(ev.data)
            holder, term, order = str(msg["holder"]), int(msg["term"]), msg["specs"]
            order = (int(order[0]), int(order[1]))
        except Exception as exc:
            log.warning("bad %s event from %s: %s", subjects.SERVICE_LEASE, ev.source, exc)
            return
        if holder == self.node:
            return
        with self._lease_lock:
            obeyed = self.lease.hear(holder, term, time.monotonic())
            if obeyed:
                self._heard_order = max(self._heard_order, order)
        if obeyed and order > self.store.current.order:
            self._tasks.put(("fetch", holder))

    # -------------------------------------------------------------- inventory

    def _on_report(self, ev: Any) -> None:
        try:
            report = report_from_dict(P.loads(ev.data), time.monotonic())
        except Exception as exc:
            log.warning("bad %s event from %s: %s", subjects.SERVICE_REPORT, ev.source, exc)
            return
        if report.view.name != self.node:
            self.scheduler.heard(report)
            self.relay.notify()

    def _on_down(self, ev: Any) -> None:
        try:
            gone = P.loads(ev.data)["node"]
        except Exception:
            return
        if isinstance(gone, str) and gone != self.node:
            self.scheduler.node_down(gone, time.monotonic())
            self._report_due.set()  # wake the loop: reschedule now

    def spec_named(self, name: str) -> ServiceSpec | None:
        return self.store.current.specs.get(name)

    def spec_for_request(self, name: str) -> ServiceSpec | None:
        """The spec a request names. Unknown here, ask the live lease holder first: a
        service added a moment ago may not have reached this node yet, and "no such
        service" must not be said of one the operator was just told exists. At most
        once a second, unless an announcement named a newer set than this node has."""
        spec = self.spec_named(name)
        if spec is not None:
            return spec
        with self._catch_up_lock:
            now = time.monotonic()
            with self._lease_lock:
                holder = self.lease.holder if self.lease.live(now) else None
                behind = self._heard_order > self.store.current.order
            if holder and holder != self.node and (
                    behind or now - self._caught_up_at >= CATCH_UP_EVERY):
                self._caught_up_at = now
                try:
                    self._fetch_specs(holder)
                except Exception as exc:
                    log.info("node %s: service specs from %s: %s", self.node, holder, exc)
        return self.spec_named(name)

    def replicas_of(self, name: str) -> list[Replica]:
        return [r for rep in self.scheduler.live().values() for r in rep.replicas
                if r.service == name]

    def _report(self, now: float) -> None:
        cfg = self.ctx.config
        body = {"node": self.node, "groups": list(cfg.groups), "tags": list(cfg.tags),
                "docker": self.agent.docker, "error": self.agent.error,
                "load": load_per_cpu(), "replicas": self.agent.rows(),
                "images": sorted(self.images), "idle": self.relay.idle(now),
                "specs": list(self.store.current.order), "lease": list(self.my_lease())}
        self.scheduler.heard(report_from_dict(body, now))
        self.relay.notify()
        self.client.publish(subjects.SERVICE_REPORT, _pack(body))

    def _check_images(self) -> None:
        have = set()
        if self.agent.docker:
            for name, spec in self.store.current.specs.items():
                try:
                    if self.agent.has_image(spec.image):
                        have.add(name)
                except Exception:
                    pass
        self.images = have

    # ------------------------------------------------------------------ loop

    def _run(self) -> None:
        next_report = next_images = next_lease = next_endpoints = 0.0
        fetcher = threading.Thread(target=self._run_tasks, daemon=True,
                                   name=f"service-sync@{self.node}")
        fetcher.start()
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                changed = self.agent.scan() | self.agent.probe()
                if now >= next_images or changed or self._images_for != self.store.current:
                    self._images_for = self.store.current
                    had = self.images
                    self._check_images()
                    # a new spec's image is found here: say so now, not at the next
                    # report (the scheduler starts no replica before some node does)
                    changed = changed or self.images != had
                    next_images = now + IMAGES_EVERY
                if changed or now >= next_report:
                    self._report(now)
                    next_report = now + REPORT_EVERY
                if now >= next_endpoints and self.endpoints.mine():
                    self._work.submit(self.endpoints.tick)
                    next_endpoints = now + ENDPOINTS_EVERY
                if self._tend_lease(now):
                    if now >= next_lease:
                        self._announce_lease()
                        next_lease = now + ANNOUNCE
                    self._schedule(now)
            except Exception:
                if not self._stop.is_set():
                    log.exception("node %s: service loop", self.node)
            self._report_due.wait(TICK)
            self._report_due.clear()

    def _schedule(self, now: float) -> None:
        newest, who = self.scheduler.newest_order()
        if who is not None and who != self.node and newest > self.store.current.order:
            self._tasks.put(("fetch", who))  # a newer set exists: take it first
            return
        self.scheduler.round(now)
        specs = self.store.current
        for name in to_cull(specs.specs, self.scheduler.idle_for(specs, now)):
            spec = specs.specs[name]
            self.change(specs.with_spec(spec.scaled(spec.floor), self.my_lease()[0]))
            self.publish_event(name, "culled", {"replicas": spec.floor,
                                                "idle": spec.idle})

    def _run_tasks(self) -> None:
        while not self._stop.is_set():
            task = self._tasks.get()
            if task is None:
                return
            kind, node = task
            try:
                if kind == "fetch":
                    self._fetch_specs(node)
            except Exception as exc:
                if not self._stop.is_set():
                    log.warning("node %s: fetching service specs from %s: %s", self.node,
                                node, exc)

    def _fetch_specs(self, source: str) -> None:
        [r] = call(self.client, SERVICE, "specs_get", node=source, timeout=CHECK_TIMEOUT)
        if not r.ok:
            raise RuntimeError(r.error)
        specs = SpecSet.from_dict(r.result)
        if self.store.save(specs):
            log.info("node %s: service specs version %d (from %s)", self.node,
                     specs.version, source)
            self._report_due.set()

    # ------------------------------------------------------------- changing specs

    def change(self, specs: SpecSet) -> None:
        """Store a new set (the scheduler only) and say so at once."""
        self.store.save(specs)
        self._announce_lease()
        self._report_due.set()

    def publish_event(self, name: str, action: str, body: dict) -> None:
        self.client.publish(subjects.service_event(name, action), _pack(
            {"service": name, "action": action, "scheduler": self.node,
             "time": time.time(), **body}))

    def _user_op(self, op: str) -> Any:
        local = getattr(self.operator, op)

        def handler(args: dict, emit: Any) -> Any:
            if self.schedules():
                return local(args, emit)
            term, holder = self.my_lease()
            with self._lease_lock:
                live = self.lease.live(time.monotonic())
            if not holder or not live:
                raise ServiceError("no node schedules services yet (the node leading the "
                                   "tree does, once it runs the service service); try "
                                   "again in a few seconds")
            clean = {k: v for k, v in args.items() if not k.startswith("_")}
            try:
                [r] = call(self.client, SERVICE, op, clean, node=holder,
                           timeout=FORWARD_TIMEOUT)
            except TimeoutError:
                raise ServiceError(f"the scheduler, node {holder}, did not answer within "
                                   f"{FORWARD_TIMEOUT:g}s (down? another takes over "
                                   "within a few seconds)") from None
            if not r.ok:
                raise ServiceError(r.error)
            return r.result

        return handler

    def _wake_async(self, name: str) -> None:
        def wake() -> None:
            try:
                self._user_op("wake")({"name": name}, None)
            except Exception as exc:
                log.warning("waking service %s: %s", name, exc)

        self._work.submit(wake)

    # ------------------------------------------------------------ agent orders

    def _order(self, args: dict) -> None:
        """Refuse an order that is not from a node's services, or from a scheduler
        older than one this node has heard (fencing)."""
        if "*" not in args.get("_permissions", ()):
            raise ServiceError("replica orders come from the scheduler only (a node's "
                               "services); use tsctl service add/scale/rm")
        holder, term = args.get("holder"), args.get("term")
        if not isinstance(holder, str) or not isinstance(term, int):
            raise ServiceError("an order carries its scheduler's lease (term, holder)")
        with self._lease_lock:
            if not self.lease.hear(holder, term, time.monotonic()):
                raise ServiceError(f"node {self.node} refused an order of scheduler "
                                   f"{holder} (term {term}): it follows "
                                   f"{self.lease.holder} (term {self.lease.term})")

    def _op_replica_start(self, args: dict, emit: Any) -> dict:
        self._order(args)
        try:
            spec = ServiceSpec.from_dict(args.get("spec"))
        except SpecError as exc:
            raise ServiceError(str(exc)) from None
        rid = str(args.get("rid") or "")
        if not rid.isalnum():
            raise ServiceError("replica_start needs a replica id (letters and digits)")
        here = self.agent.find(rid)
        if here is not None:
            return {"node": self.node, "cid": here.cid[:12], "rid": rid, "name": here.name}
        if not self.agent.has_image(spec.image):
            source = args.get("source")
            if not isinstance(source, str) or not source:
                raise ServiceError(f"image {spec.image!r} is not on node {self.node} and "
                                   "no node was named to fetch it from")
            from treescale.services.images import fetch_image

            fetch_image(self.client, self.node, spec.image, source)
        result = self.agent.start(spec, rid, int(args.get("version") or 0))
        self._report_due.set()
        return result

    def _op_replica_stop(self, args: dict, emit: Any) -> dict:
        self._order(args)
        cid = args.get("cid")
        if not isinstance(cid, str) or not cid.isalnum():
            raise ServiceError("replica_stop needs a container id")
        result = self.agent.stop(cid)
        self._report_due.set()
        return result

    def _op_replica_logs(self, args: dict, emit: Any) -> str:
        if "*" not in args.get("_permissions", ()):
            raise ServiceError("use tsctl service logs NAME")
        return self.agent.logs(str(args.get("cid")), int(args.get("tail") or 100)
                               ).decode(errors="replace")

    def _op_image_check(self, args: dict, emit: Any) -> dict:
        image = args.get("image")
        if not isinstance(image, str) or not image:
            raise ServiceError("image_check needs an image")
        return {"node": self.node, "id": self.agent.has_image(image)}

    def _op_specs_get(self, args: dict, emit: Any) -> dict:
        return self.store.current.to_dict()
