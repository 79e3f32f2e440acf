"""The load-balancer service: virtual services on this node, driven over the bus.

Operations on ``$svc.lb[.NODE]`` (see treescale/services/rpc.py):

    add      {"vip": "IP:PORT", "proto", "scheduler", "backend": auto|ipvs|nft|proxy,
              "reals": ["IP:PORT[@W]", ...] (may be empty), "follow_label": "k=v" |
              "follow_image", "target_port", "owner": "service:web", "hold": SECONDS}
                                                  -> the service, and why that backend
    rm       {"vip"}                              -> the removed service
    real_add {"vip", "reals": [...]}  real_rm {"vip", "reals": ["IP:PORT", ...]}
    reals_set {"vip", "reals": [...]}  exactly these real servers ([] = none now), in
              one backend change (none if the set is the same); "changed": bool.
              Bad input is refused whole; refused for a service that follows
              containers (Docker decides its set)
    ls       {}                                   -> every service (summary)
    show     {"vip"}                              -> one service, with open connections

``owner`` is stored and shown, never interpreted: an agent marks its own services.
``hold`` > 0: a TCP connection that finds no real server waits up to that long (the
proxy holds it) and the service publishes ``$sys.lb.<node>.wanted`` {node, vip (the
key), owner, time} at most once a second per service while connections wait; real
servers arriving (reals_set/real_add) let it through, the hold running out closes it.
Only the proxy can hold, so ``auto`` then chooses the proxy, and ``ipvs``/``nft`` are
refused ("hold needs the proxy backend"): refusing an explicit kernel backend keeps
"you get what you asked for", and auto already means "the best that can do it".
``ls`` and ``show`` carry ``connections_total``, ``last_connection`` (wall clock),
``held`` and ``hold_expired`` where the backend sees connections (proxy; None else).

``vip`` may carry the protocol (``udp/10.0.0.1:53``). The desired state lives in the
node's LMDB (table ``lb``) and is re-applied when the node starts. A service that
follows containers watches ``$sys.docker.<node>.>`` lifecycle events (published by
the Docker service) and, at start, lists the running containers once.

Owns: the lb ops, the desired state in LMDB and following containers. Must not touch:
the kernel or a proxy directly (treescale.lb's backends do), the model's rules
(treescale.lb.model), subject spellings (treescale.subjects).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from treescale import protocol as P
from treescale import subjects
from treescale.client import Event
from treescale.lb import Backends
from treescale.lb.model import (
    Follow,
    LbError,
    VirtualService,
    choose_backend,
    diff,
    parse_endpoint,
    parse_hold,
    parse_label,
    parse_owner,
    parse_real,
    parse_service_key,
)
from treescale.services import ServiceContext
from treescale.services.rpc import ServiceEndpoint, ServiceError

log = logging.getLogger("treescale.lb")

TABLE = "lb"
DOCKER_TIMEOUT = 3.0
TRAFFIC = ("connections_total", "last_connection", "held", "hold_expired")


def _refusals(fn: Callable) -> Callable:
    """LbError (bad input, backend missing) goes back to the caller as its message."""

    @functools.wraps(fn)
    def wrapper(self: LbService, args: dict, emit: Any) -> Any:
        try:
            return fn(self, args, emit)
        except KeyError as exc:
            raise ServiceError(f"lb on node {self.node}: missing argument {exc}") from None
        except (LbError, TypeError, ValueError) as exc:
            raise ServiceError(f"lb on node {self.node}: {exc}") from None

    return wrapper


class LbService:
    """Desired state in LMDB, applied through the backends; all changes under one lock."""

    def __init__(self, ctx: ServiceContext, backends: Backends | None = None) -> None:
        self.ctx, self.node = ctx, ctx.node
        self.backends = backends or Backends(on_wanted=self._on_wanted)
        self.services: dict[str, VirtualService] = {}
        self.errors: dict[str, str] = {}  # key -> why it is not applied (after a restart)
        self.why: dict[str, str] = {}  # key -> how its backend was chosen
        self._lock = threading.RLock()
        # The proxy's thread must never wait on the bus: its asks go through a worker.
        self._asks = ThreadPoolExecutor(1, thread_name_prefix="lb-wanted")
        self._restore()
        self._docker_events = ThreadPoolExecutor(1, thread_name_prefix="lb-follow")
        self.endpoint = ServiceEndpoint(ctx, "lb", {
            "add": self.add, "rm": self.rm, "ls": self.ls, "show": self.show,
            "real_add": self.real_add, "real_rm": self.real_rm,
            "reals_set": self.reals_set})
        self.endpoint.client.subscribe(subjects.docker_events(self.node),
                                       handler=self._on_docker)
        if any(vs.follow for vs in self.services.values()):
            self._docker_events.submit(self._sync_running)

    @classmethod
    def start(cls, ctx: ServiceContext) -> LbService:
        return cls(ctx)

    def close(self) -> None:
        self.endpoint.close()
        self._docker_events.shutdown(wait=False, cancel_futures=True)
        self.backends.close()
        self._asks.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------- state

    def _restore(self) -> None:
        stored = {}
        for key, data in self.ctx.store.items(TABLE).items():
            try:
                vs = VirtualService.from_dict(data)
            except (LbError, KeyError, TypeError, ValueError) as exc:
                log.error("lb: stored service %s is unreadable, skipped: %s", key, exc)
                continue
            stored[vs.key] = vs
            self.why[vs.key] = f"{vs.backend} (restored)"
        self._converge(stored, "restored at start")

    def _converge(self, desired: dict[str, VirtualService], why: str) -> None:
        """Make the backends and LMDB hold ``desired`` (changed services only). A
        service its backend refuses is kept, marked with the error (``ls``/``show``
        say it), and tried again when it next changes or the node restarts."""
        plan = diff(self.services, desired)
        for vs in plan.remove:
            self._drop(vs)
        for vs in plan.add + plan.update:
            try:
                self._set(vs)
                log.info("lb: %s: %d real servers (%s)", vs.key, len(vs.reals), why)
            except (LbError, OSError) as exc:
                self.services[vs.key] = vs
                self.ctx.store.put(TABLE, vs.key, vs.to_dict())
                self.errors[vs.key] = str(exc)
                log.error("lb: %s on %s: %s failed: %s", vs.key, vs.backend, why, exc)

    def _set(self, vs: VirtualService) -> None:
        """Apply a changed service to its backend, then remember it (LMDB too)."""
        self.backends.get(vs.backend).apply(vs)
        self.ctx.store.put(TABLE, vs.key, vs.to_dict())
        self.services[vs.key] = vs
        self.errors.pop(vs.key, None)

    def _drop(self, vs: VirtualService) -> None:
        try:
            self.backends.get(vs.backend).remove(vs)
        except LbError as exc:  # the backend is gone: forget the service anyway
            log.warning("lb: removing %s from %s: %s", vs.key, vs.backend, exc)
        self.ctx.store.delete(TABLE, vs.key)
        del self.services[vs.key]
        self.errors.pop(vs.key, None)

    def _get(self, args: dict) -> VirtualService:
        key = parse_service_key(str(args["vip"]), str(args.get("proto") or "tcp"))
        vs = self.services.get(key)
        if vs is None:
            raise LbError(f"no virtual service {key}")
        return vs

    def _describe(self, vs: VirtualService) -> dict:
        return {**vs.to_dict(), "key": vs.key, "why": self.why.get(vs.key, vs.backend),
                "error": self.errors.get(vs.key),
                "follow_text": vs.follow.describe() if vs.follow else None}

    def _traffic(self, vs: VirtualService) -> dict:
        """The backend's tally of connections (None values where it keeps none)."""
        found = None
        if vs.key not in self.errors:
            try:
                found = self.backends.get(vs.backend).traffic(vs)
            except (LbError, OSError, TimeoutError) as exc:
                log.info("lb: traffic of %s: %s", vs.key, exc)
        return found or dict.fromkeys(TRAFFIC)

    # ------------------------------------------------------------- asking for reals

    def _on_wanted(self, vs: VirtualService) -> None:
        """On the proxy's thread: a held connection wants real servers. Hand over."""
        with_time = {"node": self.node, "vip": vs.key, "owner": vs.owner,
                     "time": time.time()}
        try:
            self._asks.submit(self._publish_wanted, with_time)
        except RuntimeError:  # shutting down
            pass

    def _publish_wanted(self, event: dict) -> None:
        endpoint = getattr(self, "endpoint", None)
        if endpoint is None:  # restored before the endpoint exists: the next tick asks
            return
        endpoint.publish(subjects.lb_event(self.node, "wanted"), event)

    # ------------------------------------------------------------- operations

    @_refusals
    def add(self, args: dict, emit: Any) -> dict:
        key = parse_service_key(str(args["vip"]), str(args.get("proto") or "tcp"))
        proto, _, endpoint = key.partition("/")
        host, port = parse_endpoint(endpoint)
        scheduler = str(args.get("scheduler") or "rr")
        reals = tuple(parse_real(r) for r in _strings(args, "reals", required=False))
        follow = _follow(args)
        owner = parse_owner(args.get("owner") or "")
        hold = parse_hold(args.get("hold") or 0)
        with self._lock:
            if key in self.services:
                raise LbError(f"{key} exists already (rm it first, or use real-add)")
            backend, why = choose_backend(str(args.get("backend") or "auto"), scheduler,
                                          self.backends.unavailable(), hold)
            vs = VirtualService(host, port, proto, scheduler, backend, (), follow,
                                owner, hold)
            vs = vs.with_reals(reals)  # checks them (a server listed twice)
            self._set(vs)
            self.why[key] = why
        if follow is not None:
            self._docker_events.submit(self._sync_running)
        return self._describe(vs)

    @_refusals
    def rm(self, args: dict, emit: Any) -> dict:
        with self._lock:
            vs = self._get(args)
            self._drop(vs)
            return self._describe(vs)

    @_refusals
    def real_add(self, args: dict, emit: Any) -> dict:
        new = [parse_real(r) for r in _strings(args, "reals")]
        with self._lock:
            vs = self._get(args).add_reals(new)
            self._set(vs)
            return self._describe(vs)

    @_refusals
    def real_rm(self, args: dict, emit: Any) -> dict:
        keys = ["{}:{}".format(*parse_endpoint(r.partition("@")[0], "real server"))
                for r in _strings(args, "reals")]
        with self._lock:
            vs = self._get(args).remove_reals(keys)
            self._set(vs)
            return self._describe(vs)

    @_refusals
    def reals_set(self, args: dict, emit: Any) -> dict:
        """Exactly these real servers, in one backend change (none if nothing moved)."""
        new = [parse_real(r) for r in _strings(args, "reals", required=False)]
        with self._lock:
            old = self._get(args)
            vs = old.set_reals(new)
            changed = vs != old
            if changed:
                self._set(vs)
            return {**self._describe(vs), "changed": changed}

    @_refusals
    def ls(self, args: dict, emit: Any) -> dict:
        with self._lock:
            found = [(self._describe(vs), vs) for _, vs in sorted(self.services.items())]
        services = [{**d, **self._traffic(vs)} for d, vs in found]
        return {"services": services, "unavailable": self.backends.unavailable()}

    @_refusals
    def show(self, args: dict, emit: Any) -> dict:
        with self._lock:
            vs = self._get(args)
            result = self._describe(vs)
        result.update(self._traffic(vs))
        result["active"], result["installed"] = None, False
        try:
            backend = self.backends.get(vs.backend)
            result["installed"] = backend.installed(vs)
            if result["installed"]:
                result["active"] = backend.active(vs)
        except (LbError, OSError) as exc:
            result["error"] = str(exc)
        return result

    # ------------------------------------------------------------- following containers

    def _on_docker(self, ev: Event) -> None:
        """On the client's I/O thread: hand the event to the (ordered) follow worker."""
        try:
            event = P.loads(ev.data)
        except Exception as exc:
            log.warning("lb: unreadable %s event: %s", ev.name, exc)
            return
        if isinstance(event, dict):
            self._docker_events.submit(self._on_container, event)

    def _on_container(self, event: dict) -> None:
        with self._lock:
            self._converge({k: vs.on_container(event) for k, vs in self.services.items()},
                           f"container {event.get('action')} {event.get('name')}")

    def _sync_running(self) -> None:
        """Follow the containers that run now (events only tell about changes)."""
        running = running_containers()
        if running is None:
            return
        with self._lock:
            self._converge({k: vs.follow_running(running)
                            for k, vs in self.services.items()},
                           "start-up sync with Docker")


def _strings(args: dict, name: str, required: bool = True) -> list[str]:
    value = args.get(name) or []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise LbError(f"{name} must be a list of strings like IP:PORT[@WEIGHT]")
    if required and not value:
        raise LbError(f"give at least one of {name}")
    return list(value)


def _follow(args: dict) -> Follow | None:
    label, image = args.get("follow_label"), args.get("follow_image")
    if not label and not image:
        return None
    if args.get("target_port") is None:
        raise LbError("following containers needs a target port (the port they serve on)")
    return Follow(int(args["target_port"]), parse_label(label) if label else None,
                  str(image) if image else None)


def running_containers() -> list[dict] | None:
    """Running containers as ``$sys.docker`` events describe them; None without Docker."""
    try:
        import docker

        engine = docker.from_env(timeout=DOCKER_TIMEOUT)
        try:
            found = []
            for c in engine.containers.list():
                networks = c.attrs.get("NetworkSettings", {}).get("Networks") or {}
                found.append({"id": c.id, "name": c.name,
                              "image": c.attrs.get("Config", {}).get("Image", ""),
                              "labels": c.labels or {},
                              "ips": {n: v.get("IPAddress") for n, v in networks.items()}})
            return found
        finally:
            engine.close()
    except Exception as exc:  # no engine here, or it does not answer: events still work
        log.info("lb: no Docker engine to sync followed containers with: %s", exc)
        return None
