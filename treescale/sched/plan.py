"""Where replicas run: the scheduler's decisions as a pure function of what it knows.

Owns: which nodes may run a service (Docker up, ``--group``/``--tag``), the spread
(fewest replicas of the service, then fewest in all, then least load, then name), what
goes when there are too many (misplaced first, then the most crowded node's), the
rebalance that spreads a service again once a node came back, and which services have
been idle long enough to be culled. Must not touch: clocks, Docker, the bus; the
scheduler (treescale/services/scheduler.py) carries the actions out.

A replica counts once it is asked for (``pending``), so a plan made again before the
start is seen never starts it twice; it never asks for more than one replica too many
(the rebalance adds one, then the next plan takes one from the crowded node).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from treescale.sched.spec import ServiceSpec

PENDING = "pending"  # asked for, not yet seen in its node's report
ALIVE = frozenset({PENDING, "created", "starting", "running", "restarting"})


@dataclass(frozen=True)
class Replica:
    """One container of a service, as its node reports it (or as asked for)."""

    service: str
    node: str
    cid: str
    state: str = "running"
    address: str | None = None  # "IP:PORT" where it serves, with a port
    ready: bool = False

    @property
    def alive(self) -> bool:
        return self.state in ALIVE

    def to_dict(self) -> dict:
        return {"service": self.service, "node": self.node, "cid": self.cid,
                "state": self.state, "address": self.address, "ready": self.ready}


@dataclass(frozen=True)
class NodeView:
    """A node as the scheduler sees it (from its last report)."""

    name: str
    groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    docker: bool = False
    load: float = 0.0


@dataclass(frozen=True)
class Start:
    service: str
    node: str


@dataclass(frozen=True)
class Stop:
    service: str
    node: str
    cid: str
    why: str


Action = Start | Stop


def eligible(spec: ServiceSpec, node: NodeView) -> bool:
    """Whether ``node`` may run a replica of ``spec``."""
    if not node.docker:
        return False
    if spec.group is not None:
        return spec.group in node.groups
    if spec.tag is not None:
        return spec.tag in node.tags
    return True


def problem(spec: ServiceSpec, nodes: Mapping[str, NodeView]) -> str | None:
    """Why ``spec`` cannot be placed at all (None: some node may run it)."""
    if spec.replicas == 0 or any(eligible(spec, n) for n in nodes.values()):
        return None
    with_docker = sorted(n.name for n in nodes.values() if n.docker)
    if not with_docker:
        return "no node runs the Docker service (docker_enabled, an engine that answers)"
    return (f"no node with Docker matches {spec.where()} (nodes with Docker: "
            f"{', '.join(with_docker)})")


def plan(specs: Mapping[str, ServiceSpec], nodes: Mapping[str, NodeView],
         replicas: Iterable[Replica], avoid: frozenset[tuple[str, str]] = frozenset()
         ) -> list[Action]:
    """What to start and stop so each service has its count, spread. ``replicas`` on
    nodes missing from ``nodes`` (lost) are ignored; ``avoid`` holds (service, node)
    pairs where a start just failed."""
    known = [r for r in replicas if r.node in nodes]
    totals = Counter(r.node for r in known if r.alive)
    actions: list[Action] = []
    for r in known:
        if not r.alive and r.state != PENDING:
            actions.append(Stop(r.service, r.node, r.cid, f"its container is {r.state}"))
        elif r.service not in specs:
            actions.append(Stop(r.service, r.node, r.cid, "the service was removed"))
            totals[r.node] -= 1
    for name, spec in sorted(specs.items()):
        mine = [r for r in known if r.service == name and r.alive]
        actions += _service(spec, nodes, mine, totals, avoid)
    return actions


def _service(spec: ServiceSpec, nodes: Mapping[str, NodeView], mine: list[Replica],
             totals: Counter, avoid: frozenset[tuple[str, str]]) -> list[Action]:
    places = [n for n in nodes.values() if eligible(spec, n)]
    good = [r for r in mine if eligible(spec, nodes[r.node])]
    misplaced = [r for r in mine if r not in good]
    counts = Counter(r.node for r in good)
    actions: list[Action] = []

    def crowding(name: str) -> tuple:
        return (counts[name], totals[name], nodes[name].load, name)

    missing = spec.replicas - len(good)
    choices = [n.name for n in places if (spec.name, n.name) not in avoid] or \
        [n.name for n in places]
    for _ in range(max(missing, 0)):
        if not choices:
            break
        where = min(choices, key=crowding)
        actions.append(Start(spec.name, where))
        counts[where] += 1
        totals[where] += 1
    if missing <= 0:
        for r in misplaced:
            actions.append(Stop(spec.name, r.node, r.cid,
                                f"its node no longer matches {spec.where()}"))
    if missing < 0:
        actions += _excess(spec, good, -missing, counts, totals, crowding)
    elif missing == 0 and not misplaced and all(r.ready for r in good) and places:
        actions += _rebalance(spec, places, counts, totals, crowding, avoid)
    return actions


def _excess(spec: ServiceSpec, good: list[Replica], extra: int, counts: Counter,
            totals: Counter, crowding) -> list[Action]:
    """Stop ``extra`` replicas: from the most crowded node, not-yet-ready first; never
    one only asked for (its container is not known yet: the next plan sees it)."""
    candidates = [r for r in good if r.state != PENDING]
    actions: list[Action] = []
    for _ in range(extra):
        if not candidates:
            break
        victim = max(candidates, key=lambda r: (crowding(r.node), not r.ready, r.cid))
        candidates.remove(victim)
        counts[victim.node] -= 1
        totals[victim.node] -= 1
        actions.append(Stop(spec.name, victim.node, victim.cid,
                            f"{spec.replicas} wanted"))
    return actions


def _rebalance(spec: ServiceSpec, places: list[NodeView], counts: Counter,
               totals: Counter, crowding, avoid: frozenset[tuple[str, str]]
               ) -> list[Action]:
    """One replica more on the emptiest node when two nodes differ by two or more;
    the next plan then stops one on the most crowded (a node came back)."""
    names = [n.name for n in places]
    most, least = max(names, key=crowding), min(names, key=crowding)
    if counts[most] - counts[least] >= 2 and (spec.name, least) not in avoid:
        return [Start(spec.name, least)]
    return []


def to_cull(specs: Mapping[str, ServiceSpec], idle_for: Mapping[str, float]
            ) -> list[str]:
    """Services idle (no request or connection) for their ``--idle`` seconds and above
    their minimum: their count goes back to the minimum. ``idle_for``: seconds since
    each service was last used or woken (a service missing from it is not idle)."""
    return [name for name, spec in sorted(specs.items())
            if spec.idle is not None and spec.replicas > spec.floor and
            idle_for.get(name, 0.0) >= spec.idle]
