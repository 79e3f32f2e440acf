"""A node's replicas: the containers it runs for services, found again after a restart.

The replica agent is the part of the service orchestrator (orchestrator.py) that every
node runs. It owns its engine's containers labelled ``treescale.service``: it lists
them once a second (so a replica that died, or one a restarted node finds still
running, is reported, and adopted rather than started again), starts and stops them
when the scheduler says so, fetches an image it lacks from a node that has it (the
image service), and tells when a replica is ready to serve.

A replica with a port publishes it on a host port the engine picks; its address is
``service_address:HOST_PORT`` (``service_address``: where this node's published ports
are reached, default the node's host, 127.0.0.1 when it listens on all). It is ready
once a connection to that address is accepted and not closed at once (the engine's
userland proxy accepts before the server listens, then closes), and ready for good
once that has held.

Owns: replica containers (labels, names, adoption, readiness) and reading this node's
load. Must not touch: placement (treescale/sched/plan.py), the bus beyond what its
orchestrator hands it, other nodes' engines.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from treescale.sched.plan import Replica
from treescale.sched.spec import ServiceSpec
from treescale.services.docker import (
    Engine,
    ServiceError,
    addresses,
    explain,
    remove_quietly,
)

log = logging.getLogger("treescale.service")

SERVICE_LABEL = "treescale.service"
REPLICA_LABEL = "treescale.replica"
NODE_LABEL = "treescale.node"
PROBE_TIMEOUT = 0.3
STOP_TIMEOUT = 3
MAX_LOG_BYTES = 1 << 20


@dataclass
class LocalReplica:
    service: str
    cid: str
    rid: str
    name: str
    state: str
    host_port: int | None = None
    ready: bool = False


def service_address(config: Any) -> str:
    """Where this node's published container ports are reached."""
    host = config.service_address or config.host
    return "127.0.0.1" if host in ("0.0.0.0", "*", "", "::") else host


def load_per_cpu() -> float:
    """The machine's 1-minute load average per CPU (what placement balances)."""
    try:
        return round(os.getloadavg()[0] / (os.cpu_count() or 1), 3)
    except OSError:
        return 0.0


class ReplicaAgent:
    """This node's replica containers, in its own engine."""

    def __init__(self, node: str, config: Any) -> None:
        self.node = node
        self.host = service_address(config)
        self.engine = Engine(config.docker_host, node)
        self._lock = threading.Lock()
        self._replicas: dict[str, LocalReplica] = {}  # cid -> replica
        self.docker = False
        self.error: str | None = None

    def close(self) -> None:
        self.engine.close()

    # ------------------------------------------------------------ what runs here

    def scan(self) -> bool:
        """List this engine's replica containers; True if anything changed."""
        try:
            rows = self.engine.client().api.containers(
                all=True, filters={"label": f"{SERVICE_LABEL}"})
        except ServiceError as exc:
            return self._engine_gone(str(exc))
        except Exception as exc:  # the engine went away mid-call
            self.engine.lost()
            return self._engine_gone(self.engine.unreachable(exc).args[0])
        found: dict[str, LocalReplica] = {}
        with self._lock:
            for row in rows:
                labels = row.get("Labels") or {}
                if labels.get(NODE_LABEL, self.node) != self.node:
                    continue  # another node's (an engine shared by two nodes)
                cid = row["Id"]
                old = self._replicas.get(cid)
                port = _host_port(row)
                state = row.get("State") or "unknown"
                ready = bool(old and old.ready and state == "running")
                found[cid] = LocalReplica(labels[SERVICE_LABEL], cid,
                                          labels.get(REPLICA_LABEL, cid[:8]),
                                          (row.get("Names") or ["/?"])[0].lstrip("/"),
                                          state, port, ready)
            changed = _summary(found) != _summary(self._replicas) or not self.docker
            self._replicas, self.docker, self.error = found, True, None
        return changed

    def _engine_gone(self, error: str) -> bool:
        with self._lock:
            changed = self.docker or bool(self._replicas)
            self._replicas, self.docker, self.error = {}, False, error
        return changed

    def probe(self) -> bool:
        """Check the replicas not yet ready; True if one became ready."""
        with self._lock:
            todo = [r for r in self._replicas.values()
                    if not r.ready and r.state == "running"]
        became = False
        for r in todo:
            if r.host_port is None or _answers(self.host, r.host_port):
                with self._lock:
                    if self._replicas.get(r.cid) is r:
                        r.ready = became = True
        return became

    def replicas(self) -> list[Replica]:
        with self._lock:
            return [Replica(r.service, self.node, r.cid[:12], _state(r.state),
                            f"{self.host}:{r.host_port}" if r.host_port else None,
                            r.ready) for r in self._replicas.values()]

    def rows(self) -> list[dict]:
        """The replicas as this node reports them (with their replica ids)."""
        with self._lock:
            rids = {r.cid[:12]: r.rid for r in self._replicas.values()}
        return [{**r.to_dict(), "rid": rids.get(r.cid)} for r in self.replicas()]

    def find(self, rid: str) -> LocalReplica | None:
        with self._lock:
            return next((r for r in self._replicas.values() if r.rid == rid), None)

    def has_image(self, image: str) -> str | None:
        """The id of ``image`` in this engine, or None."""
        docker = self.engine.sdk()
        try:
            return self.engine.client().images.get(image).id
        except docker.errors.ImageNotFound:
            return None

    # -------------------------------------------------------------- orders

    def start(self, spec: ServiceSpec, rid: str, version: int) -> dict:
        """Create and start one replica of ``spec`` (its image is here already)."""
        docker = self.engine.sdk()
        client = self.engine.client()
        labels = {SERVICE_LABEL: spec.name, REPLICA_LABEL: rid, NODE_LABEL: self.node,
                  "treescale.spec": str(version)}
        options: dict[str, Any] = {"labels": labels, "environment": dict(spec.env),
                                   "detach": True, "name": f"ts-{spec.name}-{rid}"}
        if spec.command:
            options["command"] = list(spec.command)
        if spec.port is not None:
            options["ports"] = {f"{spec.port}/tcp": None}
        try:
            container = client.containers.create(spec.image, **options)
        except docker.errors.ImageNotFound:
            raise ServiceError(f"image {spec.image!r} is not on node {self.node}") from None
        except docker.errors.APIError as exc:
            raise ServiceError(f"cannot create a replica of {spec.name} on node "
                               f"{self.node}: {explain(exc)}") from None
        try:
            container.start()
        except docker.errors.APIError as exc:
            remove_quietly(container)
            raise ServiceError(f"cannot start a replica of {spec.name} on node "
                               f"{self.node}: {explain(exc)}") from None
        self.scan()
        return {"node": self.node, "cid": container.id[:12], "rid": rid,
                "name": container.name}

    def stop(self, cid: str) -> dict:
        """Stop and remove a replica of this node (a container it does not own is
        refused: the scheduler orders replicas only)."""
        docker = self.engine.sdk()
        try:
            container = self.engine.client().containers.get(cid)
        except docker.errors.NotFound:
            self.scan()
            return {"node": self.node, "cid": cid, "removed": False, "gone": True}
        if SERVICE_LABEL not in (container.labels or {}):
            raise ServiceError(f"container {cid} on node {self.node} is not a replica")
        container.remove(force=True) if container.status != "running" else \
            _stop_remove(container)
        self.scan()
        return {"node": self.node, "cid": cid, "removed": True}

    def logs(self, cid: str, tail: int) -> bytes:
        container = self.engine.client().containers.get(cid)
        if SERVICE_LABEL not in (container.labels or {}):
            raise ServiceError(f"container {cid} on node {self.node} is not a replica")
        return container.logs(tail=tail)[-MAX_LOG_BYTES:]


def new_rid() -> str:
    return uuid.uuid4().hex[:8]


def _stop_remove(container: Any) -> None:
    try:
        container.stop(timeout=STOP_TIMEOUT)
    except Exception:
        pass
    remove_quietly(container)






def _state(engine_state: str) -> str:
    return "starting" if engine_state == "created" else engine_state


def _host_port(row: dict) -> int | None:
    for p in row.get("Ports") or ():
        if p.get("PublicPort"):
            return int(p["PublicPort"])
    ports = addresses(row)[1]
    for bindings in ports.values():
        for b in bindings or ():
            if b.get("HostPort"):
                return int(b["HostPort"])
    return None


def _summary(replicas: dict[str, LocalReplica]) -> set:
    return {(r.cid, r.state, r.host_port, r.ready) for r in replicas.values()}


def _answers(host: str, port: int) -> bool:
    """Accepted, and not closed at once (see the module docstring)."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as s:
            s.settimeout(PROBE_TIMEOUT / 2)
            try:
                return s.recv(1, socket.MSG_PEEK) != b""
            except TimeoutError:
                return True
    except OSError:
        return False
