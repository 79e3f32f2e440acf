"""The operator's side of the service orchestrator: add, scale, wake, rm, ls, info, logs.

These run on the scheduler only (orchestrator.py hands a call on any other node to
it): they check a request against the fabric as the scheduler knows it (a name
already taken, no node that may run it, an image no node has, an endpoint that cannot
be opened) before anything is stored, so a refused ``add`` leaves nothing behind; then
they store the new spec set, which every node fetches.

Owns: those checks and the service's L4 endpoint's opening and closing on its node's
lb service. Must not touch: placement (the scheduler's rounds), containers.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from treescale.sched.plan import problem
from treescale.sched.spec import ServiceSpec, SpecError, spec_from_args
from treescale.services.rpc import ServiceError, call

if TYPE_CHECKING:
    from treescale.services.orchestrator import Orchestrator

log = logging.getLogger("treescale.service")

SERVICE = "service"
CHECK_TIMEOUT = 3.0


class OperatorOps:
    """The operator's ops of one scheduler."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.o = orchestrator

    def spec(self, args: dict) -> ServiceSpec:
        name = args.get("name")
        spec = self.o.store.current.specs.get(name) if isinstance(name, str) else None
        if spec is None:
            raise ServiceError(f"no service {name!r} (tsctl service ls)")
        return spec

    def add(self, args: dict, emit: Any) -> dict:
        fields = {k: v for k, v in args.items() if not k.startswith("_")}
        try:
            spec = spec_from_args(fields)
        except SpecError as exc:
            raise ServiceError(str(exc)) from None
        specs = self.o.store.current
        if spec.name in specs.specs:
            raise ServiceError(f"service {spec.name} exists already (scale it, or rm it "
                               "first)")
        nodes = {n: r.view for n, r in self.o.scheduler.live().items()}
        why = problem(replace(spec, replicas=max(spec.replicas, 1)), nodes)
        if why:
            raise ServiceError(f"service {spec.name} cannot be placed: {why}")
        spec = replace(spec, image_id=self._find_image(spec, nodes),
                       vip_node=spec.vip_node or (self.o.node if spec.vip else None))
        term = self.o.my_lease()[0]
        try:
            new = specs.with_spec(spec, term)
        except SpecError as exc:
            raise ServiceError(str(exc)) from None
        if spec.vip:
            self._open_endpoint(spec)
        self.o.scheduler.woken(spec.name)
        self.o.change(new)
        self.o.publish_event(spec.name, "added", {"spec": spec.to_dict()})
        return self.o.scheduler.describe(spec)

    def _find_image(self, spec: ServiceSpec, nodes: dict) -> str:
        """The image's id, from a node that has it; a clear error if none has."""
        asked = sorted(nodes)
        with ThreadPoolExecutor(min(len(asked), 16) or 1) as pool:
            answers = list(pool.map(lambda n: self._ask_image(n, spec.image), asked))
        found = [a for a in answers if a]
        if not found:
            raise ServiceError(f"service {spec.name}: image {spec.image!r} is on no node "
                               f"(asked {', '.join(asked) or 'none'}); load it into one "
                               "node's engine (docker load, or a pull there): the others "
                               "get it through the tree")
        return found[0]

    def _ask_image(self, node: str, image: str) -> str | None:
        try:
            [r] = call(self.o.client, SERVICE, "image_check", {"image": image}, node=node,
                       timeout=CHECK_TIMEOUT)
        except Exception:
            return None
        return (r.result or {}).get("id") if r.ok else None

    def _open_endpoint(self, spec: ServiceSpec) -> None:
        """The service's L4 endpoint on its node's lb service (nothing is stored if
        it cannot be opened: a port in use, say)."""
        args = {"vip": spec.vip, "backend": "proxy", "reals": [],
                "owner": f"service:{spec.name}",
                "hold": spec.hold if spec.scales_from_zero else 0}
        try:
            [r] = call(self.o.client, "lb", "add", args, node=spec.vip_node,
                       timeout=CHECK_TIMEOUT * 2)
        except TimeoutError:
            raise ServiceError(f"service {spec.name}: the lb service of node "
                               f"{spec.vip_node} does not answer (lb_enabled?)") from None
        if not r.ok:
            raise ServiceError(f"service {spec.name}: endpoint {spec.vip} on node "
                               f"{spec.vip_node}: {r.error}")

    def _close_endpoint(self, spec: ServiceSpec) -> None:
        try:
            call(self.o.client, "lb", "rm", {"vip": spec.vip}, node=spec.vip_node,
                 timeout=CHECK_TIMEOUT)
        except Exception as exc:
            log.warning("service %s: closing endpoint %s: %s", spec.name, spec.vip, exc)

    def scale(self, args: dict, emit: Any) -> dict:
        spec = self.spec(args)
        try:
            new = spec.scaled(args.get("replicas"))
        except SpecError as exc:
            raise ServiceError(str(exc)) from None
        if new.replicas > spec.replicas:
            self.o.scheduler.woken(spec.name)
        self.o.change(self.o.store.current.with_spec(new, self.o.my_lease()[0]))
        self.o.publish_event(spec.name, "scaled", {"from": spec.replicas,
                                                 "replicas": new.replicas})
        return self.o.scheduler.describe(new)

    def wake(self, args: dict, emit: Any) -> dict:
        spec = self.spec(args)
        if spec.replicas == 0 and spec.scales_from_zero:
            self.o.scheduler.woken(spec.name)
            spec = spec.scaled(1)
            self.o.change(self.o.store.current.with_spec(spec, self.o.my_lease()[0]))
            self.o.publish_event(spec.name, "woken", {"replicas": 1})
        return self.o.scheduler.describe(spec)

    def rm(self, args: dict, emit: Any) -> dict:
        spec = self.spec(args)
        described = self.o.scheduler.describe(spec)
        self.o.change(self.o.store.current.without(spec.name, self.o.my_lease()[0]))
        if spec.vip:
            self._close_endpoint(spec)
        self.o.publish_event(spec.name, "removed", {})
        return described

    def ls(self, args: dict, emit: Any) -> dict:
        specs = self.o.store.current
        term, holder = self.o.my_lease()
        return {"version": specs.version, "scheduler": holder, "term": term,
                "services": [self.o.scheduler.describe(s)
                             for _, s in sorted(specs.specs.items())]}

    def info(self, args: dict, emit: Any) -> dict:
        spec = self.spec(args)
        return {**self.o.scheduler.describe(spec), "spec": spec.to_dict(),
                "version": self.o.store.current.version, "scheduler": self.o.node}

    def logs(self, args: dict, emit: Any) -> dict:
        spec = self.spec(args)
        tail = args.get("tail", 100)
        if isinstance(tail, bool) or not isinstance(tail, int) or tail < 0:
            raise ServiceError(f"tail must be a count, got {tail!r}")
        out = []
        for r in self.o.replicas_of(spec.name):
            try:
                [res] = call(self.o.client, SERVICE, "replica_logs",
                             {"cid": r.cid, "tail": tail}, node=r.node,
                             timeout=CHECK_TIMEOUT * 3)
                text, error = (res.result, None) if res.ok else ("", res.error)
            except TimeoutError as exc:
                text, error = "", str(exc)
            out.append({"node": r.node, "cid": r.cid, "log": text, "error": error})
        return {"name": spec.name, "replicas": out}
