"""What `tsctl monitor` knows about the fabric, folded from `$sys` events. Pure.

The monitor is just a subscriber: every node publishes ``$sys.node.stats`` about itself
once a second, neighbours publish ``$sys.node.up`` / ``$sys.node.down`` when a link
changes, and a Docker service publishes ``$sys.docker.<node>.stats`` and
``$sys.docker.<node>.<action>``. ``FabricModel.apply(name, data, now)`` folds one such
event into the state; ``rows(now, max_rows)`` lays the tree out as lines for a screen of
a given height. Nothing here reads a clock or a socket: the caller passes ``now``
(monotonic seconds), so every rule below is tested without I/O.

Rules:
- Rates come from successive stats of one node, over the node's own uptime clock.
- A node is *down* when a down event about it is newer than its last stats, or when
  its stats stopped for longer than ``stale_after`` seconds. Fresh stats revive it.
- A node is *re-homing* while its parent is down, or when it had a parent and now
  reports none (and did not announce itself as the new root).
- The tree comes from each node's latest parent (stats, or a newer up event), so a
  re-homed node moves under its new parent as soon as either says so.
- Big trees collapse: the deepest level that fits ``max_rows`` is shown fully and each
  deeper subtree becomes one summary row; the path to a down node is always shown.

Must not touch: sockets, clocks, the screen (tsctl monitor draws the rows), subject
spellings (treescale.subjects names every event it folds).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from treescale import subjects

UP, DOWN, REHOMING = "up", "down", "re-homing"
STALE_AFTER = 2.5  # seconds without stats before a node counts as down
FORGET_AFTER = 600.0  # a down node leaves the view after this long
CONTAINER_GONE = frozenset({"destroy", "remove", "delete"})
CONTAINER_STOPPED = frozenset({"stop", "die", "kill", "exited", "oom", "pause"})


@dataclass
class Container:
    """One container of a node, from the Docker service's events."""

    id: str
    name: str = ""
    image: str = ""
    state: str = "running"
    cpu_percent: float | None = None
    mem_bytes: int | None = None
    mem_limit: int | None = None


@dataclass
class NodeView:
    """Everything known about one node."""

    name: str
    parent: str | None = None
    report: dict = field(default_factory=dict)  # latest $sys.node.stats payload
    seen_at: float | None = None  # when its latest stats arrived (monitor clock)
    down_at: float | None = None  # when a down event about it arrived
    down_reason: str = ""
    had_parent: bool = False
    is_root: bool = False  # announced itself as the new root ($sys.node.root)
    rate_in: float | None = None
    rate_out: float | None = None
    containers: dict[str, Container] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One line of the laid-out tree: a node, a container, or a collapsed summary."""

    kind: str  # "node" | "container" | "summary"
    depth: int
    prefix: str  # tree guides ("│  ├─ ") to print before the label
    name: str
    state: str = UP
    node: NodeView | None = None
    container: Container | None = None
    count: int = 0  # summary: how many nodes it stands for
    counts: tuple = ()  # summary: ((state, n), ...) of those nodes


def _num(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


class FabricModel:
    """The fabric as the monitor sees it (see the module docstring for the rules)."""

    def __init__(self, stale_after: float = STALE_AFTER,
                 forget_after: float = FORGET_AFTER) -> None:
        self.stale_after = stale_after
        self.forget_after = forget_after
        self.nodes: dict[str, NodeView] = {}

    # ------------------------------------------------------------------ folding

    def apply(self, name: str, data: Any, now: float) -> None:
        """Fold one event (its name and decoded payload) into the state; events
        with a payload of the wrong shape are ignored (the monitor must not crash)."""
        if not isinstance(data, dict):
            return
        if name == subjects.NODE_STATS:
            self.on_stats(data, now)
        elif name == subjects.NODE_DOWN:
            self.on_link(data, now, up=False)
        elif name == subjects.NODE_UP:
            self.on_link(data, now, up=True)
        elif name == subjects.NODE_ROOT:
            node = self._node(data.get("node"))
            if node is not None:
                node.is_root, node.parent = True, None
        else:
            docker = subjects.parse_docker_event(name)
            if docker is not None:
                self.on_container(*docker, data)

    def on_stats(self, report: dict, now: float) -> None:
        node = self._node(report.get("node"))
        if node is None:
            return
        prev = node.report
        parent = report.get("parent")
        node.parent = parent if isinstance(parent, str) else None
        if node.parent is not None:
            node.had_parent, node.is_root = True, False
        up, prev_up = _num(report.get("uptime")), _num(prev.get("uptime"))
        if up is not None and prev_up is not None and up > prev_up:
            node.rate_in = _rate(prev, report, "events_in", up - prev_up)
            node.rate_out = _rate(prev, report, "events_out", up - prev_up)
        elif up is not None and prev_up is not None and up < prev_up:
            node.rate_in = node.rate_out = None  # restarted: counters began again
        node.report = report
        node.seen_at = now
        node.down_at, node.down_reason = None, ""  # it speaks: it is alive

    def on_link(self, data: dict, now: float, up: bool) -> None:
        """``$sys.node.up/down``: ``node`` is the neighbour, ``detected_by`` the node
        that saw it, ``role`` what the neighbour is to that node."""
        node = self._node(data.get("node"))
        by = data.get("detected_by")
        if node is None:
            return
        role = data.get("role")
        if not up:
            node.down_at = now
            node.down_reason = f"{data.get('reason') or 'lost'} (seen by {by})"
            return
        if not isinstance(by, str):
            return
        for name in (node.name, by):  # heard of just now: not stale before its stats
            other = self._node(name)
            if other is not None and other.seen_at is None:
                other.seen_at = now
        if role == "child":  # `by` took the node as its child
            node.parent, node.had_parent, node.is_root = by, True, False
        elif role == "parent":  # `by` linked under the node
            child = self._node(by)
            if child is not None:
                child.parent, child.had_parent, child.is_root = node.name, True, False

    def on_container(self, node_name: str, action: str, data: dict) -> None:
        node = self._node(data.get("node") or node_name)
        if node is not None and action == "engine" and data.get("state") == "down":
            node.containers.clear()  # unknown until the engine is back and reports
            return
        cid = data.get("id")
        if node is None or not isinstance(cid, str) or not cid:
            return
        if action in CONTAINER_GONE:
            node.containers.pop(cid, None)
            return
        box = node.containers.setdefault(cid, Container(cid))
        for key in ("name", "image"):
            if isinstance(data.get(key), str) and data[key]:
                setattr(box, key, data[key])
        if action == "stats":
            box.state = "running"
            box.cpu_percent = _num(data.get("cpu_percent"))
            box.mem_bytes = _num(data.get("mem_bytes"))
            box.mem_limit = _num(data.get("mem_limit"))
        elif action in CONTAINER_STOPPED:
            box.state, box.cpu_percent = "stopped", None
        elif action in ("start", "restart", "unpause", "create"):
            box.state = "running" if action != "create" else "created"

    def _node(self, name: Any) -> NodeView | None:
        if not isinstance(name, str) or not name:
            return None
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = NodeView(name)
        return node

    # ------------------------------------------------------------------ reading

    def is_down(self, node: NodeView, now: float) -> bool:
        if node.down_at is not None:
            return True
        return node.seen_at is None or now - node.seen_at > self.stale_after

    def state(self, name: str, now: float) -> str:
        node = self.nodes[name]
        if self.is_down(node, now):
            return DOWN
        parent = self.nodes.get(node.parent) if node.parent else None
        if parent is not None and self.is_down(parent, now):
            return REHOMING
        if node.parent is None and node.had_parent and not node.is_root:
            return REHOMING
        return UP

    def forget(self, now: float) -> None:
        """Drop nodes that have been down for longer than ``forget_after``."""
        for name, node in list(self.nodes.items()):
            since = node.down_at if node.down_at is not None else node.seen_at
            if self.is_down(node, now) and since is not None \
                    and now - since > self.forget_after:
                del self.nodes[name]

    def children(self) -> dict[str | None, list[str]]:
        """Parent name -> sorted child names; roots under None. A node whose parent is
        unknown is a root, and a parent cycle (stale reports) is cut at its smallest
        name, so every node appears exactly once."""
        kids: dict[str | None, list[str]] = {}
        for name in sorted(self.nodes):
            parent = self.nodes[name].parent
            if parent not in self.nodes or parent == name:
                parent = None
            kids.setdefault(parent, []).append(name)
        reached: set[str] = set()
        stack = list(kids.get(None, []))
        while stack:
            name = stack.pop()
            reached.add(name)
            stack.extend(kids.get(name, []))
        for name in sorted(self.nodes):
            if name in reached:
                continue
            # `name` sits on (or under) a cycle: make the cycle's smallest name a root.
            seen, cur = [], name
            while cur not in seen:
                seen.append(cur)
                cur = self.nodes[cur].parent
            cut = min(seen[seen.index(cur):])
            kids[self.nodes[cut].parent].remove(cut)
            kids.setdefault(None, []).append(cut)
            stack = [cut]
            while stack:
                n = stack.pop()
                reached.add(n)
                stack.extend(kids.get(n, []))
        kids.setdefault(None, []).sort()
        return kids

    def rows(self, now: float, max_rows: int | None = None,
             containers: bool = True) -> list[Row]:
        """The tree as lines: fully when it fits ``max_rows`` (None: always), else
        down to the deepest level that fits, deeper subtrees summarised."""
        kids = self.children()
        states = {name: self.state(name, now) for name in self.nodes}
        down = {n for n, s in states.items() if s == DOWN}
        keep = set()  # nodes on the path to a down node: never collapsed
        for name in down:
            cur: str | None = name
            while cur is not None and cur not in keep:
                keep.add(cur)
                parent = self.nodes[cur].parent
                cur = parent if parent in self.nodes else None
        height = _height(kids) + 1  # leaves may have containers to show
        best: list[Row] = []
        for limit in range(height, -1, -1):
            for with_boxes in ((True, False) if containers else (False,)):
                best = _layout(self, kids, states, keep, limit, with_boxes)
                if max_rows is None or len(best) <= max_rows:
                    return best
        return best

    def to_json(self, now: float) -> list[dict]:
        """Every node with its state and rates (for `tsctl monitor --once --json`)."""
        kids = self.children()
        out = []
        for name in _preorder(kids):
            node = self.nodes[name]
            out.append({**node.report, "node": name, "parent": node.parent,
                        "children": kids.get(name, []), "state": self.state(name, now),
                        "down_reason": node.down_reason or None,
                        "rate_in": node.rate_in, "rate_out": node.rate_out,
                        "containers": [vars(c) for c in _boxes(node)]})
        return out


def _rate(prev: dict, cur: dict, key: str, seconds: float) -> float | None:
    a, b = _num(prev.get(key)), _num(cur.get(key))
    if a is None or b is None or b < a:
        return None
    return (b - a) / seconds


def _boxes(node: NodeView) -> list[Container]:
    return sorted(node.containers.values(), key=lambda c: (c.name, c.id))


def _preorder(kids: dict) -> Iterable[str]:
    stack = list(reversed(kids.get(None, [])))
    while stack:
        name = stack.pop()
        yield name
        stack.extend(reversed(kids.get(name, [])))


def _height(kids: dict) -> int:
    """Depth of the deepest node (roots are depth 0)."""
    best, stack = 0, [(r, 0) for r in kids.get(None, [])]
    while stack:
        name, depth = stack.pop()
        best = max(best, depth)
        stack.extend((c, depth + 1) for c in kids.get(name, []))
    return best


def _subtree(kids: dict, name: str) -> list[str]:
    out, stack = [], list(kids.get(name, []))
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(kids.get(n, []))
    return out


def _layout(model: FabricModel, kids: dict, states: dict, keep: set, limit: int,
            with_boxes: bool) -> list[Row]:
    """Rows with nodes deeper than ``limit`` summarised (except the paths in ``keep``)."""
    rows: list[Row] = []

    def emit(name: str, depth: int, lead: str, branch: str, last: bool) -> None:
        node = model.nodes[name]
        rows.append(Row("node", depth, lead + branch, name, states[name], node=node))
        child_lead = lead + ("" if depth == 0 and not branch else
                             "   " if last else "│  ")
        items: list[tuple] = []
        expanded = depth < limit
        if with_boxes and expanded:
            items += [("box", c) for c in _boxes(node)]
        shown = kids.get(name, []) if expanded else \
            [c for c in kids.get(name, []) if c in keep]
        hidden = [c for c in kids.get(name, []) if c not in shown]
        items += [("node", c) for c in shown]
        if hidden:
            members = [m for c in hidden for m in (c, *_subtree(kids, c))]
            tally: dict[str, int] = {}
            for m in members:
                tally[states[m]] = tally.get(states[m], 0) + 1
            items.append(("summary", len(members), tuple(sorted(tally.items()))))
        for i, item in enumerate(items):
            end = i == len(items) - 1
            mark = "└─ " if end else "├─ "
            if item[0] == "node":
                emit(item[1], depth + 1, child_lead, mark, end)
            elif item[0] == "box":
                rows.append(Row("container", depth + 1, child_lead + mark, item[1].name
                                or item[1].id[:12], item[1].state, container=item[1]))
            else:
                rows.append(Row("summary", depth + 1, child_lead + mark,
                                summary_text(item[1], item[2]), count=item[1],
                                counts=item[2]))

    for root in kids.get(None, []):
        emit(root, 0, "", "", True)
    return rows


def summary_text(count: int, counts: tuple) -> str:
    """'… 37 nodes (all up)' or '… 5 nodes (3 up, 2 re-homing)'."""
    noun = "node" if count == 1 else "nodes"
    if len(counts) == 1 and counts[0][0] == UP:
        return f"… {count} {noun} (all up)"
    return f"… {count} {noun} (" + ", ".join(f"{n} {s}" for s, n in counts) + ")"
