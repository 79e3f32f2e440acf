"""A service spec: what ``tsctl service add`` asks for, checked, and the versioned set
of them that every node keeps. Pure.

Owns: the fields of a spec and their rules (names usable in subjects and container
names, counts, the scale-from-zero window, the L4 endpoint), the ``SpecSet`` value and
its order (a higher ``(version, term)`` wins), and the checks across specs (two
services on one endpoint). Must not touch: storage (treescale/services/specs.py),
placement (plan.py).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_REPLICAS = 100
MAX_IDLE = 7 * 24 * 3600.0
MAX_HOLD = 300.0
DEFAULT_HOLD = 30.0


class SpecError(ValueError):
    """A spec that cannot be; the message names the field and what is wrong."""


@dataclass(frozen=True)
class ServiceSpec:
    """One service: its image, how many replicas, where they may run, how it is reached.

    ``replicas`` is the count wanted now; ``minimum``/``maximum`` bound it (scale from
    zero wakes a ``minimum`` 0 service to 1; ``idle`` seconds without traffic take it
    back to ``minimum``). ``vip`` is an L4 endpoint ``IP:PORT`` kept by the lb service
    of node ``vip_node``, whose real servers follow the replicas."""

    name: str
    image: str
    replicas: int = 1
    port: int | None = None
    group: str | None = None
    tag: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    idle: float | None = None
    hold: float = DEFAULT_HOLD
    vip: str | None = None
    vip_node: str | None = None
    image_id: str | None = None

    @property
    def floor(self) -> int:
        return self.replicas if self.minimum is None else self.minimum

    @property
    def ceiling(self) -> int:
        return max(self.replicas, MAX_REPLICAS if self.maximum is None else self.maximum)

    @property
    def scales_from_zero(self) -> bool:
        return self.minimum == 0

    def where(self) -> str:
        """Where its replicas may run, in words."""
        if self.group:
            return f"group {self.group}"
        if self.tag:
            return f"tag {self.tag}"
        return "any node with Docker"

    def scaled(self, replicas: int) -> ServiceSpec:
        """This spec with ``replicas`` wanted (checked against its bounds)."""
        check_count("replicas", replicas, 0, MAX_REPLICAS)
        if self.maximum is not None and replicas > self.maximum:
            raise SpecError(f"service {self.name}: {replicas} replicas is over its "
                            f"--max {self.maximum}")
        if self.minimum is not None and replicas < self.minimum:
            raise SpecError(f"service {self.name}: {replicas} replicas is under its "
                            f"--min {self.minimum}")
        return replace(self, replicas=replicas)

    def to_dict(self) -> dict:
        body = asdict(self)
        body["command"] = list(self.command)
        return body

    @classmethod
    def from_dict(cls, data: Any) -> ServiceSpec:
        """Checked: a spec from the wire or the store is as trusted as one typed in."""
        return spec_from_args(data)


def check_count(what: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(f"{what} must be a whole number {low}-{high}, got {value!r}")
    return value


def _seconds(what: str, value: Any, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not 0 < value <= high:
        raise SpecError(f"{what} must be a number of seconds in (0, {high:g}], "
                        f"got {value!r}")
    return float(value)


def _word(what: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise SpecError(f"{what} {value!r}: letters, digits, _ . - only")
    return value


def parse_env(value: Any) -> dict[str, str]:
    """A map, or ``KEY=VALUE`` strings, -> a map with checked keys."""
    if value is None:
        return {}
    items: list[tuple[Any, Any]]
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list | tuple):
        items = []
        for item in value:
            key, eq, val = str(item).partition("=")
            if not eq:
                raise SpecError(f"env {item!r}: expected KEY=VALUE")
            items.append((key, val))
    else:
        raise SpecError("env must be a map or a list of KEY=VALUE")
    env = {}
    for key, val in items:
        if not isinstance(key, str) or not ENV_KEY.match(key):
            raise SpecError(f"env key {key!r}: letters, digits and _ (not first a digit)")
        env[key] = str(val)
    return env


def parse_vip(value: Any) -> str | None:
    """``"IP:PORT"`` (IPv4) -> the same text, checked; None stays None."""
    if value in (None, ""):
        return None
    host, sep, port = str(value).rpartition(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise SpecError(f"vip {value!r}: expected IPv4:PORT") from None
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SpecError(f"vip {value!r}: the port must be 1-65535")
    return f"{host}:{int(port)}"


def spec_from_args(args: Any) -> ServiceSpec:
    """A checked spec from ``add``'s arguments (or a stored spec)."""
    if not isinstance(args, dict):
        raise SpecError("a service spec is a map")
    name = args.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise SpecError(f"service name {name!r}: 1-48 of a-z 0-9 _ - (starting with a "
                        "letter or digit), so it can name subjects and containers")
    image = args.get("image")
    if not isinstance(image, str) or not image.strip() or len(image) > 255 or \
            any(c.isspace() for c in image):
        raise SpecError(f"service {name}: image {image!r} is not an image reference")
    group, tag = _word("group", args.get("group")), _word("tag", args.get("tag"))
    if group and tag:
        raise SpecError(f"service {name}: give --group or --tag, not both")
    port = args.get("port")
    if port is not None:
        check_count("port", port, 1, 65535)
    command = args.get("command") or ()
    if isinstance(command, str):
        command = (command,)
    if not isinstance(command, list | tuple) or not all(isinstance(a, str) for a in command):
        raise SpecError(f"service {name}: command must be a list of strings")
    minimum = args.get("minimum")
    maximum = args.get("maximum")
    if minimum is not None:
        check_count("--min", minimum, 0, MAX_REPLICAS)
    if maximum is not None:
        check_count("--max", maximum, 1, MAX_REPLICAS)
    if minimum is not None and maximum is not None and minimum > maximum:
        raise SpecError(f"service {name}: --min {minimum} is over --max {maximum}")
    replicas = args.get("replicas")
    if replicas is None:
        replicas = minimum if minimum is not None else 1
    check_count("replicas", replicas, 0, MAX_REPLICAS)
    if replicas == 0 and minimum != 0:
        raise SpecError(f"service {name}: 0 replicas needs --min 0 (scale from zero)")
    idle = args.get("idle")
    if idle is not None:
        idle = _seconds("--idle", idle, MAX_IDLE)
    hold = _seconds("hold", args.get("hold", DEFAULT_HOLD), MAX_HOLD)
    vip, vip_node = parse_vip(args.get("vip")), _word("vip node", args.get("vip_node"))
    if vip and port is None:
        raise SpecError(f"service {name}: an endpoint (--vip) needs --port, the port "
                        "the replicas serve on")
    image_id = args.get("image_id")
    if image_id is not None and not isinstance(image_id, str):
        raise SpecError("image_id must be a string")
    spec = ServiceSpec(name=name, image=image.strip(), replicas=replicas, port=port,
                       group=group, tag=tag, env=parse_env(args.get("env")),
                       command=tuple(command), minimum=minimum, maximum=maximum,
                       idle=idle, hold=hold, vip=vip, vip_node=vip_node if vip else None,
                       image_id=image_id)
    if maximum is not None and replicas > maximum:
        raise SpecError(f"service {name}: {replicas} replicas is over --max {maximum}")
    if minimum is not None and replicas < minimum:
        raise SpecError(f"service {name}: {replicas} replicas is under --min {minimum}")
    return spec


@dataclass(frozen=True)
class SpecSet:
    """Every service of the fabric at one version. ``term`` is the scheduler's that
    wrote it: of two sets of one version (written on both sides of a partition), the
    higher term wins, so every node ends up with the same one."""

    version: int = 0
    term: int = 0
    specs: dict[str, ServiceSpec] = field(default_factory=dict)

    @property
    def order(self) -> tuple[int, int]:
        return (self.version, self.term)

    def newer_than(self, other: SpecSet | tuple[int, int]) -> bool:
        theirs = other.order if isinstance(other, SpecSet) else tuple(other)
        return self.order > theirs

    def with_spec(self, spec: ServiceSpec, term: int) -> SpecSet:
        """The next version, holding ``spec`` (new or changed); checked across specs."""
        for other in self.specs.values():
            if other.name != spec.name and spec.vip and other.vip == spec.vip and \
                    other.vip_node == spec.vip_node:
                raise SpecError(f"service {spec.name}: endpoint {spec.vip} on node "
                                f"{spec.vip_node} is service {other.name}'s already")
        return SpecSet(self.version + 1, term, {**self.specs, spec.name: spec})

    def without(self, name: str, term: int) -> SpecSet:
        specs = dict(self.specs)
        specs.pop(name, None)
        return SpecSet(self.version + 1, term, specs)

    def to_dict(self) -> dict:
        return {"version": self.version, "term": self.term,
                "specs": {n: s.to_dict() for n, s in sorted(self.specs.items())}}

    @classmethod
    def from_dict(cls, data: Any) -> SpecSet:
        if not isinstance(data, dict):
            raise SpecError("a spec set is a map")
        version, term = data.get("version", 0), data.get("term", 0)
        check_count("version", version, 0, 1 << 62)
        check_count("term", term, 0, 1 << 62)
        specs = data.get("specs") or {}
        if not isinstance(specs, dict):
            raise SpecError("specs must be a map of name -> spec")
        parsed = {}
        for name, body in specs.items():
            spec = ServiceSpec.from_dict(body)
            if spec.name != name:
                raise SpecError(f"spec {name!r} names itself {spec.name!r}")
            parsed[name] = spec
        return cls(version, term, parsed)
