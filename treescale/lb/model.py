"""The load balancer's pure core: virtual services, real servers, schedulers, diffs.

No sockets, no netlink, no clock. The service (treescale/services/lb.py) keeps the
desired state as ``VirtualService`` values; backends turn them into kernel rules or
a userspace proxy. Schedulers decide which real server gets the next connection the
way IPVS names them:

    rr   round robin: each real server in turn
    wrr  weighted round robin: smooth (nginx-style), so weights 3:1 give a a b a ...
    lc   least connections: fewest open connections per unit of weight
    sh   source hashing: the same client address always reaches the same server

A virtual service may carry an ``owner`` (free text, e.g. ``service:web``: who manages
it, so an agent tells its own services from an operator's) and a ``hold`` (seconds):
with no real server, the proxy holds a new TCP connection up to that long, asking for
real servers (``wanted``, at most once per ``WANTED_INTERVAL``) instead of closing it.
Only the proxy can hold a connection, so ``auto`` picks it for a service with a hold
and ipvs/nft refuse one.
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

PROTOCOLS = ("tcp", "udp")
SCHEDULERS = ("rr", "wrr", "lc", "sh")
BACKENDS = ("ipvs", "nft", "proxy")
BACKEND_CHOICES = ("auto", *BACKENDS)
STOP_ACTIONS = frozenset({"die", "stop", "kill", "destroy"})
MAX_WEIGHT = 65535
MAX_HOLD = 600.0  # seconds a connection may wait for a real server
MAX_OWNER = 200  # characters
WANTED_INTERVAL = 1.0  # seconds between two "wanted" events of one service


class LbError(ValueError):
    """A virtual service or real server that cannot be; the message says why."""


# ------------------------------------------------------------------ parsing


def parse_endpoint(text: str, what: str = "address") -> tuple[str, int]:
    """``"10.0.0.1:80"`` -> ("10.0.0.1", 80), checked (IPv4 only, port 1-65535)."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host:
        raise LbError(f"{what} {text!r} is not IP:PORT")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise LbError(f"{what} {text!r}: {host!r} is not an IPv4 address") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise LbError(f"{what} {text!r}: port must be 1-65535")
    return host, int(port)


def parse_real(text: str) -> RealServer:
    """``"10.0.0.2:8080@3"`` -> RealServer(10.0.0.2, 8080, weight 3); weight default 1."""
    endpoint, sep, weight = str(text).partition("@")
    host, port = parse_endpoint(endpoint, "real server")
    if sep:
        if not weight.isdigit() or not 1 <= int(weight) <= MAX_WEIGHT:
            raise LbError(f"real server {text!r}: weight must be 1-{MAX_WEIGHT}")
        return RealServer(host, port, int(weight))
    return RealServer(host, port)


def parse_hold(value: Any) -> float:
    """Seconds a connection may wait for a real server: a number 0-MAX_HOLD."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LbError(f"hold {value!r} is not a number of seconds")
    if not 0 <= value <= MAX_HOLD:
        raise LbError(f"hold must be 0-{MAX_HOLD:g} seconds")
    return float(value)


def parse_owner(value: Any) -> str:
    """Who manages a virtual service: a short string ("" for nobody in particular)."""
    if not isinstance(value, str):
        raise LbError(f"owner {value!r} is not a string")
    if len(value) > MAX_OWNER:
        raise LbError(f"owner is longer than {MAX_OWNER} characters")
    return value


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = str(text).partition("=")
    if not sep or not key:
        raise LbError(f"label {text!r} is not KEY=VALUE")
    return key, value


# ------------------------------------------------------------------ values


@dataclass(frozen=True)
class RealServer:
    """A server behind a virtual service. ``container`` is set when one was followed."""

    address: str
    port: int
    weight: int = 1
    container: str | None = None

    @property
    def key(self) -> str:
        return f"{self.address}:{self.port}"

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"address": self.address, "port": self.port,
                             "weight": self.weight}
        if self.container:
            d["container"] = self.container
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> RealServer:
        return cls(str(d["address"]), int(d["port"]), int(d.get("weight", 1)),
                   d.get("container"))


@dataclass(frozen=True)
class Follow:
    """Which containers a virtual service follows: by label k=v or by image."""

    target_port: int
    label: tuple[str, str] | None = None
    image: str | None = None

    def __post_init__(self) -> None:
        if (self.label is None) == (self.image is None):
            raise LbError("follow containers by a label or by an image (exactly one)")
        if not 1 <= int(self.target_port) <= 65535:
            raise LbError("target port must be 1-65535")

    def matches(self, container: Mapping) -> bool:
        """Does a container (as in a ``$sys.docker`` event) belong to this service?"""
        if self.label is not None:
            labels = container.get("labels") or {}
            return labels.get(self.label[0]) == self.label[1]
        return _same_image(str(container.get("image") or ""), str(self.image))

    def describe(self) -> str:
        what = f"label {self.label[0]}={self.label[1]}" if self.label else \
            f"image {self.image}"
        return f"{what} -> port {self.target_port}"

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"target_port": self.target_port}
        if self.label:
            d["label"] = f"{self.label[0]}={self.label[1]}"
        else:
            d["image"] = self.image
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> Follow:
        label = d.get("label")
        return cls(int(d["target_port"]), parse_label(label) if label else None,
                   d.get("image"))


def _same_image(actual: str, wanted: str) -> bool:
    def norm(name: str) -> str:
        return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"
    return bool(actual) and norm(actual) == norm(wanted)


@dataclass(frozen=True)
class VirtualService:
    """An address:port/proto that spreads connections over real servers."""

    address: str
    port: int
    proto: str = "tcp"
    scheduler: str = "rr"
    backend: str = "proxy"  # resolved: never "auto" once stored
    reals: tuple[RealServer, ...] = ()
    follow: Follow | None = None
    owner: str = ""  # who manages it ("service:web"); "" for an operator's
    hold: float = 0.0  # seconds a connection waits for a real server (proxy only)

    def __post_init__(self) -> None:
        parse_endpoint(f"{self.address}:{self.port}", "virtual service")
        parse_hold(self.hold)
        parse_owner(self.owner)
        if self.hold > 0 and self.backend != "proxy":
            raise LbError(str(refuses(self.backend, self.scheduler, self.hold)))
        if self.proto not in PROTOCOLS:
            raise LbError(f"protocol {self.proto!r} is not one of {', '.join(PROTOCOLS)}")
        if self.scheduler not in SCHEDULERS:
            raise LbError(f"scheduler {self.scheduler!r} is not one of "
                          f"{', '.join(SCHEDULERS)}")
        if self.backend not in BACKENDS:
            raise LbError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        keys = [r.key for r in self.reals]
        if len(set(keys)) != len(keys):
            raise LbError(f"{self.key}: a real server is listed twice")

    @property
    def key(self) -> str:
        """``tcp/10.0.0.1:80``: unique per node (the LMDB key too)."""
        return f"{self.proto}/{self.address}:{self.port}"

    def with_reals(self, reals: Iterable[RealServer]) -> VirtualService:
        return replace(self, reals=tuple(sorted(reals, key=_real_order)))

    def add_reals(self, new: Iterable[RealServer]) -> VirtualService:
        """Add or re-weight real servers (same address:port replaces)."""
        by_key = {r.key: r for r in self.reals}
        by_key.update({r.key: r for r in new})
        return self.with_reals(by_key.values())

    def set_reals(self, reals: Iterable[RealServer]) -> VirtualService:
        """Exactly these real servers (none is allowed: "no real server now"). Refused
        for a service that follows containers: Docker decides its set."""
        if self.follow is not None:
            raise LbError(f"{self.key} follows containers ({self.follow.describe()}): "
                          "its real servers come from Docker, not reals_set")
        return self.with_reals(reals)

    def remove_reals(self, keys: Iterable[str]) -> VirtualService:
        gone = set(keys)
        missing = gone - {r.key for r in self.reals}
        if missing:
            raise LbError(f"{self.key} has no real server {', '.join(sorted(missing))}")
        return self.with_reals(r for r in self.reals if r.key not in gone)

    def on_container(self, event: Mapping) -> VirtualService:
        """The real server set after a ``$sys.docker`` lifecycle event (pure)."""
        if self.follow is None:
            return self
        cid = str(event.get("id") or "")
        action = event.get("action")
        if action in STOP_ACTIONS:
            return self.with_reals(r for r in self.reals if r.container != cid)
        if action != "start" or not self.follow.matches(event):
            return self
        ip = container_ip(event)
        if ip is None:
            return self
        real = RealServer(ip, self.follow.target_port, 1, cid)
        kept = [r for r in self.reals if r.container != cid and r.key != real.key]
        return self.with_reals([*kept, real])

    def follow_running(self, containers: Iterable[Mapping]) -> VirtualService:
        """Followed real servers = exactly these running containers (start-up sync)."""
        if self.follow is None:
            return self
        manual = [r for r in self.reals if r.container is None]
        vs = self.with_reals(manual)
        for c in containers:
            vs = vs.on_container({**c, "action": "start"})
        return vs

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"address": self.address, "port": self.port,
                             "proto": self.proto, "scheduler": self.scheduler,
                             "backend": self.backend,
                             "reals": [r.to_dict() for r in self.reals]}
        if self.follow:
            d["follow"] = self.follow.to_dict()
        d["owner"], d["hold"] = self.owner, self.hold
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> VirtualService:
        follow = d.get("follow")
        return cls(str(d["address"]), int(d["port"]), d.get("proto", "tcp"),
                   d.get("scheduler", "rr"), d.get("backend", "proxy"),
                   tuple(sorted((RealServer.from_dict(r) for r in d.get("reals", ())),
                                key=_real_order)),
                   Follow.from_dict(follow) if follow else None,
                   str(d.get("owner") or ""), float(d.get("hold") or 0.0))


def _real_order(r: RealServer) -> tuple:
    return (ipaddress.IPv4Address(r.address), r.port)


def container_ip(event: Mapping) -> str | None:
    """The container's address a load balancer can reach (first network, sorted)."""
    ips = event.get("ips") or {}
    for network in sorted(ips):
        if ips[network]:
            return str(ips[network])
    return None


def service_key(proto: str, address: str, port: int) -> str:
    return f"{proto}/{address}:{port}"


def parse_service_key(text: str, proto: str = "tcp") -> str:
    """``"10.0.0.1:80"`` (+ proto) or ``"udp/10.0.0.1:80"`` -> the canonical key."""
    if "/" in text:
        proto, _, text = text.partition("/")
    if proto not in PROTOCOLS:
        raise LbError(f"protocol {proto!r} is not one of {', '.join(PROTOCOLS)}")
    host, port = parse_endpoint(text, "virtual service")
    return service_key(proto, host, port)


# ------------------------------------------------------------------ backend choice


def choose_backend(requested: str, scheduler: str,
                   unavailable: Mapping[str, str], hold: float = 0.0) -> tuple[str, str]:
    """(backend, why) for a request; ``unavailable`` maps backend -> the reason it is not.

    ``auto`` takes the best one that can do the scheduler and the hold: ipvs > nft >
    proxy (nft has no connection counts, so it cannot do lc; only the proxy can hold a
    connection, so a hold means the proxy). Raises LbError naming the reason."""
    if requested not in BACKEND_CHOICES:
        raise LbError(f"backend {requested!r} is not one of {', '.join(BACKEND_CHOICES)}")
    if requested != "auto":
        # What the backend can never do first: that holds on every machine.
        refusal = refuses(requested, scheduler, hold)
        if refusal:
            raise LbError(refusal)
        if requested in unavailable:
            raise LbError(unavailable[requested])
        return requested, f"{requested} (asked for)"
    skipped = []
    for name in BACKENDS:
        reason = unavailable.get(name) or refuses(name, scheduler, hold)
        if reason is None:
            why = f"auto: {name}" + (f" ({'; '.join(skipped)})" if skipped else "")
            return name, why
        skipped.append(reason)
    raise LbError("no backend can serve this: " + "; ".join(skipped))


def refuses(backend: str, scheduler: str, hold: float = 0.0) -> str | None:
    if backend == "nft" and scheduler == "lc":
        return ("nft cannot do lc: nftables keeps no per-server connection counts "
                "(use --backend proxy or ipvs, or another scheduler)")
    if backend != "proxy" and hold > 0:
        return (f"hold needs the proxy backend: {backend} cannot keep a connection "
                "waiting for a real server (use --backend proxy or auto)")
    return None


def wanted_due(last: float | None, now: float, interval: float = WANTED_INTERVAL) -> bool:
    """Is it time for another "wanted" event (the previous one at ``last``, or none)?
    Monotonic seconds; keeps a burst of waiting connections to one event a second."""
    return last is None or now - last >= interval


# ------------------------------------------------------------------ desired-state diff


@dataclass
class Plan:
    """What a backend must do to go from one set of virtual services to another."""

    add: list[VirtualService] = field(default_factory=list)
    update: list[VirtualService] = field(default_factory=list)
    remove: list[VirtualService] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.add or self.update or self.remove)


def diff(current: Mapping[str, VirtualService], desired: Mapping[str, VirtualService]) -> Plan:
    """Services to add, update (same key, anything else changed) and remove."""
    plan = Plan()
    for key, vs in desired.items():
        old = current.get(key)
        if old is None:
            plan.add.append(vs)
        elif old != vs:
            # A move to another backend is a remove there and an add here.
            if old.backend != vs.backend:
                plan.remove.append(old)
                plan.add.append(vs)
            else:
                plan.update.append(vs)
    plan.remove.extend(vs for key, vs in current.items() if key not in desired)
    return plan


def diff_reals(old: Iterable[RealServer], new: Iterable[RealServer]
               ) -> tuple[list[RealServer], list[RealServer], list[RealServer]]:
    """(added, re-weighted, removed) real servers, keyed by address:port."""
    before = {r.key: r for r in old}
    after = {r.key: r for r in new}
    added = [r for k, r in after.items() if k not in before]
    changed = [r for k, r in after.items() if k in before and before[k].weight != r.weight]
    removed = [r for k, r in before.items() if k not in after]
    return added, changed, removed


# ------------------------------------------------------------------ schedulers


class Scheduler:
    """Picks a real server for a new connection. Stateful (rr position), not I/O."""

    name = ""

    def __init__(self, reals: Iterable[RealServer] = ()) -> None:
        self.reals: tuple[RealServer, ...] = ()
        self.update(reals)

    def update(self, reals: Iterable[RealServer]) -> None:
        self.reals = tuple(reals)

    def pick(self, client: str, active: Mapping[str, int]) -> RealServer | None:
        """The server for a connection from ``client`` (its IP); ``active`` counts the
        open connections per real server key. None if there is no real server."""
        raise NotImplementedError


class RoundRobin(Scheduler):
    name = "rr"

    def update(self, reals: Iterable[RealServer]) -> None:
        super().update(reals)
        # Continue after the server picked last, even when the set changed.
        keys = [r.key for r in self.reals]
        last = getattr(self, "_last", None)
        self._next = keys.index(last) + 1 if last in keys else 0

    def pick(self, client: str, active: Mapping[str, int]) -> RealServer | None:
        if not self.reals:
            return None
        real = self.reals[self._next % len(self.reals)]
        self._next = (self._next + 1) % len(self.reals)
        self._last = real.key
        return real


class WeightedRoundRobin(Scheduler):
    """Smooth weighted round robin: over sum(weights) picks each server gets exactly
    its weight, interleaved rather than in runs."""

    name = "wrr"

    def update(self, reals: Iterable[RealServer]) -> None:
        super().update(reals)
        old = getattr(self, "_current", {})
        self._current = {r.key: old.get(r.key, 0) for r in self.reals}

    def pick(self, client: str, active: Mapping[str, int]) -> RealServer | None:
        if not self.reals:
            return None
        total = sum(r.weight for r in self.reals)
        for r in self.reals:
            self._current[r.key] += r.weight
        best = max(self.reals, key=lambda r: self._current[r.key])
        self._current[best.key] -= total
        return best


class LeastConnections(Scheduler):
    """Fewest open connections per weight; ties go round robin so idle servers share."""

    name = "lc"

    def __init__(self, reals: Iterable[RealServer] = ()) -> None:
        self._turn = 0
        super().__init__(reals)

    def pick(self, client: str, active: Mapping[str, int]) -> RealServer | None:
        if not self.reals:
            return None
        n = len(self.reals)
        order = [self.reals[(self._turn + i) % n] for i in range(n)]
        self._turn = (self._turn + 1) % n
        return min(order, key=lambda r: active.get(r.key, 0) / r.weight)


class SourceHash(Scheduler):
    """The client address hashed onto the servers (weight = that many slots)."""

    name = "sh"

    def update(self, reals: Iterable[RealServer]) -> None:
        super().update(reals)
        self._slots = [r for r in self.reals for _ in range(r.weight)]

    def pick(self, client: str, active: Mapping[str, int]) -> RealServer | None:
        if not self._slots:
            return None
        return self._slots[zlib.crc32(client.encode()) % len(self._slots)]


SCHEDULER_CLASSES: dict[str, type[Scheduler]] = {
    cls.name: cls for cls in (RoundRobin, WeightedRoundRobin, LeastConnections, SourceHash)}


def make_scheduler(name: str, reals: Iterable[RealServer] = ()) -> Scheduler:
    try:
        return SCHEDULER_CLASSES[name](reals)
    except KeyError:
        raise LbError(f"scheduler {name!r} is not one of {', '.join(SCHEDULERS)}") from None


def weight_slots(reals: Iterable[RealServer]) -> list[tuple[int, int, RealServer]]:
    """Contiguous [first, last] slot ranges per server, as many slots as its weight:
    what the nft backend maps numgen/jhash values onto for wrr and sh."""
    ranges, start = [], 0
    for r in reals:
        ranges.append((start, start + r.weight - 1, r))
        start += r.weight
    return ranges
