"""The simulated fabric behind bench/simulate.py: real tables, no sockets.

Owns: the subscription mix, the tree the auto-join rule builds (``complete_tree``), and
``Fabric``: every node's real ``RoutingTable`` (treescale/routing.py) and
``InterestTable`` (treescale/interest.py), driven the way brokers/exchange.py and
brokers/links.py drive them, with INTEREST messages carried by an in-memory queue
instead of sockets. It also builds one node's tables alone from what its neighbours
would advertise (``sample_node``), for trees too big to hold every node's tables.

What a message is here: what ``exchange.flush`` sends, one INTEREST per link with
changes per wakeup of a node's loop. A node wakes up once per message it receives (the
most messages the real loop could send: a real loop reading two messages in one wakeup
sends one), and once per local operation.

Must not touch: the logic of the modules it drives (it only calls them), sockets, time.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from treescale import subjects
from treescale.interest import LOCAL, InterestTable, PatternIndex, minimal_cover
from treescale.routing import RoutingTable, split_pattern
from treescale.tree import NodeSpec, Tree

Key = tuple[str, str | None]
FANOUT = 10
SERVICES = 100  # svc.s0.rpc .. svc.s99.rpc, each a queue group of its own name
WILD_POOL = ("orders.*", "orders.>", "logs.eu.>", "logs.us.>", "metrics.*.cpu",
             "metrics.*.mem", "events.>", "alerts.*", "audit.>", "deploy.*")
EXACT_POOL = ("config.changed", "deploy.prod", "deploy.staging", "orders.created",
              "orders.paid", "alerts.disk", "alerts.oom", "metrics.web.cpu",
              "users.signup", "cache.flush")
MONITOR_EVERY = 100  # every 100th node runs a monitor: node.*.health


def node_name(i: int, n: int) -> str:
    """Zero-padded, so names sort in join order (the placement rule's tie-break)."""
    return f"n{i:0{len(str(max(n - 1, 1)))}d}"


def local_subs(i: int, name: str, seed: int = 1) -> list[Key]:
    """Node ``i``'s clients' subscriptions (its inbox, ``$inbox.NAME.>``, is added by
    the node itself, as brokers/exchange.py does): 3 unique (two exact names, one
    ``jobs.NAME.>``), 2 services (exact, queue group, Zipf-like popularity), one
    shared wildcard, one shared exact name; every 100th node also ``node.*.health``."""
    rng = random.Random(seed * 1_000_003 + i)
    subs: list[Key] = [(f"node.{name}.cmd", None), (f"node.{name}.health", None),
                       (f"jobs.{name}.>", None)]
    for _ in range(2):
        k = min(int(rng.paretovariate(1.2)) - 1, SERVICES - 1)
        subs.append((f"svc.s{k}.rpc", f"s{k}"))
    subs.append((rng.choice(WILD_POOL), None))
    subs.append((rng.choice(EXACT_POOL), None))
    if i % MONITOR_EVERY == 0:
        subs.append(("node.*.health", None))
    return list(dict.fromkeys(subs))


def all_keys(i: int, name: str, seed: int = 1) -> list[Key]:
    """Everything node ``i`` holds locally, its inbox included."""
    return [(subjects.node_inboxes(name), None), *local_subs(i, name, seed)]


def complete_tree(n: int, fanout: int = FANOUT) -> Tree:
    """The tree that joining nodes 0..n-1 one by one through node 0 builds (Tree.place's
    open slot: shallowest level first, fewest children, then name: round-robin over the
    level above). Built in one go: Tree.with_node re-validates the whole tree per join
    (O(N^2) for N joins). ``joined_tree`` builds it the slow way; the tests and each run
    of bench/simulate.py check that the two agree."""
    names = [node_name(i, n) for i in range(n)]
    kids: list[list[str]] = [[] for _ in range(n)]
    level, i = [0], 1
    while i < n:
        nxt = []
        for k in range(min(len(level) * fanout, n - i)):
            kids[level[k % len(level)]].append(names[i])
            nxt.append(i)
            i += 1
        level = nxt
    specs = (NodeSpec(names[j], f"h{j}", 7000, children=tuple(kids[j])) for j in range(n))
    return Tree.from_specs(specs, fanout)


def joined_tree(n: int, fanout: int = FANOUT, seed: int | None = None) -> Tree:
    """Nodes joining one by one, placed by Tree.place: through node 0, or (``seed``)
    through random contacts, which admit a joiner when they have room at the open
    slot's depth: the same levels, spread differently over the parents."""
    rng = random.Random(seed)
    first = node_name(0, n)
    tree = Tree.from_specs([NodeSpec(first, "h0", 7000)], fanout)
    for j in range(1, n):
        contact = first if seed is None else rng.choice(tree.names)
        spot = tree.place(node_name(j, n), contact)
        tree = tree.with_node(NodeSpec(node_name(j, n), f"h{j}", 7000), spot.parent)
    return tree


def depth_profile(tree: Tree) -> list[int]:
    """How many nodes sit at each depth."""
    return [c for _, c in sorted(Counter(tree.depth(x) for x in tree.names).items())]


def link_id(neighbour: str) -> str:
    """A link's member id in both tables (the node uses routing ids; any hashable)."""
    return "@" + neighbour


def client_id(node: str) -> str:
    return "c:" + node


@dataclass
class SimNode:
    """One node's tables, as brokers/exchange.py holds them."""

    name: str
    routes: RoutingTable
    interest: InterestTable
    pending: dict = field(default_factory=dict)  # link -> key -> add (exchange.pending)

    @classmethod
    def start(cls, name: str, subs: Iterable[Key], inbox: bool = True) -> SimNode:
        node = cls(name, RoutingTable(name), InterestTable())
        if inbox:  # InterestExchange.__init__: replies find us
            node.interest.add(LOCAL, subjects.node_inboxes(name))
        node.routes.add_member(client_id(name))
        for pattern, queue in subs:
            node.subscribe(pattern, queue)
        return node

    # what brokers/exchange.py does for each input
    def subscribe(self, pattern: str, queue: str | None = None) -> None:
        if self.routes.subscribe(client_id(self.name), pattern, queue):
            self.queue(self.interest.add(LOCAL, pattern, queue))

    def unsubscribe(self, pattern: str, queue: str | None = None) -> None:
        if self.routes.unsubscribe(client_id(self.name), pattern, queue):
            self.queue(self.interest.remove(LOCAL, pattern, queue))

    def link_up(self, neighbour: str) -> None:
        self.routes.add_member(link_id(neighbour), link=True)
        self.queue(self.interest.add_link(link_id(neighbour)))

    def link_down(self, neighbour: str) -> None:
        member = link_id(neighbour)
        self.routes.remove_member(member)
        self.pending.pop(member, None)
        self.queue(self.interest.drop_link(member))

    def on_interest(self, neighbour: str, ops: list[tuple[bool, str, str | None]]) -> None:
        member, updates = link_id(neighbour), []
        for add, pattern, queue in ops:
            if add:
                self.routes.subscribe(member, pattern, queue)
                updates += self.interest.add(member, pattern, queue)
            else:
                self.routes.unsubscribe(member, pattern, queue)
                updates += self.interest.remove(member, pattern, queue)
        self.queue(updates)

    def queue(self, updates: list) -> None:
        """exchange.queue_updates: a change told and withdrawn before a flush cancels."""
        for u in updates:
            changes = self.pending.setdefault(u.link, {})
            key = (u.pattern, u.queue)
            if changes.get(key) is (not u.add):
                del changes[key]
            else:
                changes[key] = u.add

    def flush(self) -> list[tuple[str, list]]:
        """exchange.flush: one message per link with changes, (neighbour, ops)."""
        pending, self.pending = self.pending, {}
        return [(link[1:], [(add, p, q) for (p, q), add in sorted(
                    changes.items(), key=lambda c: (c[1], c[0][0], c[0][1] or ""))])
                for link, changes in pending.items() if changes]


@dataclass
class Tally:
    """What one operation cost: INTEREST messages, their entries, who had to hear."""

    messages: int = 0
    entries: int = 0
    woken: set = field(default_factory=set)


class Fabric:
    """Every node of a tree with its real tables; messages delivered until quiet."""

    def __init__(self, tree: Tree, keys_of: dict[str, list[Key]] | None = None,
                 seed: int = 1, inbox: bool = True) -> None:
        self.tree = tree
        self.nodes: dict[str, SimNode] = {}
        self.inbox = inbox
        self.queue: deque = deque()
        for name in tree.names:
            subs = (keys_of.get(name, []) if keys_of is not None
                    else local_subs(int(name[1:]), name, seed))
            self.nodes[name] = SimNode.start(name, subs, inbox)
        for name in tree.names:
            for child in tree.children(name):
                self.connect(name, child)
        self.settle()

    def connect(self, a: str, b: str) -> None:
        """A link comes up: both ends tell each other what they hold (links.up)."""
        self.nodes[a].link_up(b)
        self.nodes[b].link_up(a)
        self._flush(a)
        self._flush(b)

    def cut(self, dead: str) -> None:
        """``dead`` is gone: each neighbour takes its link down (links.down)."""
        node = self.nodes.pop(dead)
        for member in list(node.interest.advertised):
            other = member[1:]
            if other in self.nodes:
                self.nodes[other].link_down(dead)
                self._flush(other)

    def _flush(self, name: str) -> None:
        for neighbour, ops in self.nodes[name].flush():
            self.queue.append((name, neighbour, ops))

    def settle(self, tally: Tally | None = None) -> Tally:
        """Deliver until no node has anything left to say; one wakeup per message."""
        tally = tally or Tally()
        q, nodes = self.queue, self.nodes
        while q:
            src, dst, ops = q.popleft()
            node = nodes.get(dst)
            if node is None:
                continue
            tally.messages += 1
            tally.entries += len(ops)
            tally.woken.add(dst)
            node.on_interest(src, ops)
            self._flush(dst)
        return tally

    # -- operations -------------------------------------------------------------------

    def subscribe(self, name: str, pattern: str, queue: str | None = None) -> Tally:
        self.nodes[name].subscribe(pattern, queue)
        self._flush(name)
        return self.settle()

    def unsubscribe(self, name: str, pattern: str, queue: str | None = None) -> Tally:
        self.nodes[name].unsubscribe(pattern, queue)
        self._flush(name)
        return self.settle()

    def join(self, name: str, parent: str, subs: Iterable[Key]) -> Tally:
        self.nodes[name] = SimNode.start(name, subs, self.inbox)
        self.connect(parent, name)
        return self.settle()

    def kill(self, dead: str, healed: Tree) -> Tally:
        """``dead`` dies; its orphans re-attach where ``healed`` (Tree.without) says."""
        old = self.tree
        self.cut(dead)
        tally = self.settle()
        for orphan in old.children(dead):
            parent = healed.parent(orphan)
            if parent is not None:  # None: the heir, now the root
                self.connect(parent, orphan)
        self.tree = healed
        return self.settle(tally)

    def event_hops(self, src: str, dst: str, name: str) -> int | None:
        """Follow an event for ``name`` (subscribed at ``dst`` only) through every
        node's real routing table from ``src``; the links it crossed, or None."""
        at, came, hops = src, None, 0
        while True:
            route = self.nodes[at].routes.lookup(name)
            if client_id(at) in route.everyone and at == dst:
                return hops
            onward = [m for m in route.everyone if m != came and m.startswith("@")]
            if len(onward) != 1 or hops > 2 * len(self.tree):
                return None
            came, at, hops = link_id(at), onward[0][1:], hops + 1


# -- one node alone, from what its neighbours would advertise ------------------------


def side_keys(tree: Tree, keys_of, node: str) -> dict[str, Counter]:
    """For each neighbour of ``node``: how many nodes on its side hold each key."""
    sides: dict[str, Counter] = {}
    for child in tree.children(node):
        c: Counter = Counter()
        for x in (child, *tree.descendants(child)):
            c.update(keys_of(x))
        sides[child] = c
    parent = tree.parent(node)
    if parent is not None:
        mine = {node, *tree.descendants(node)}
        c = Counter()
        for x in tree.names:
            if x not in mine:
                c.update(keys_of(x))
        sides[parent] = c
    return sides


def sample_node(name: str, own: list[Key], sides: dict[str, Iterable[Key]]) -> SimNode:
    """``name``'s tables as the running node ends up with them: its clients' ``own``
    keys, and on each link what that neighbour advertises, which InterestTable keeps
    equal to the minimal cover of everything held on its side (its invariant, checked
    against the full Fabric in tests/unit/test_simulate.py)."""
    node = SimNode.start(name, own)
    for neighbour, keys in sides.items():
        node.link_up(neighbour)
        node.on_interest(neighbour, [(True, p, q) for p, q in
                                     sorted(minimal_cover(keys), key=_order)])
    node.pending.clear()
    return node


def _order(key: Key) -> tuple[str, str]:
    return key[0], key[1] or ""


def related(touched: Iterable[Key], pool: Iterable[Key]) -> set[Key]:
    """The keys of ``pool`` an InterestTable consults when the ``touched`` keys change
    (asked of interest.PatternIndex, the index it asks): same queue and covering or
    covered by one, and, for those a touched key covers, what covers them (a withdrawn
    wildcard reveals them unless another key still hides them)."""
    touched = set(touched)
    index = PatternIndex()
    for key in set(pool) | touched:
        index.add(split_pattern(key[0]), key)
    out = set(touched)
    for key in touched:
        tokens = index.tokens[key]
        out.update(index.covering(tokens, key))
        for n in index.covered(tokens, key):
            out.add(n)
            out.update(index.covering(index.tokens[n], n))
    return out


def project(keys_of: dict[Hashable, list[Key]], keep: set[Key]) -> dict:
    """Every node's keys, limited to ``keep``."""
    return {n: [k for k in ks if k in keep] for n, ks in keys_of.items()}


# -- the full mesh beside it ----------------------------------------------------------


class MeshFabric:
    """A full mesh, NATS-style routes: every node has a route to every other and keeps
    each route's interest as that route's subscriptions in its real RoutingTable; a
    node tells every route when its local interest in a key starts or stops (routes
    never pass on what they heard). Small sizes only: N^2 routes."""

    def __init__(self, keys_of: dict[str, list[Key]]) -> None:
        self.routes: dict[str, RoutingTable] = {}
        self.local: dict[str, Counter] = {}
        self.messages = 0
        for name, keys in keys_of.items():
            self._start(name, keys)
        names = list(keys_of)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                self._connect(a, b)

    def _start(self, name: str, keys: Iterable[Key]) -> None:
        self.routes[name] = RoutingTable(name)
        self.routes[name].add_member(client_id(name))
        self.local[name] = Counter()
        for key in keys:
            self.routes[name].subscribe(client_id(name), *key)
            self.local[name][key] += 1

    def _connect(self, a: str, b: str) -> None:
        """A route comes up: each end sends the other its interest, one message."""
        for x, y in ((a, b), (b, a)):
            self.routes[y].add_member("@" + x, link=True)
            for key in self.local[x]:
                self.routes[y].subscribe("@" + x, *key)
            self.messages += 1

    def join(self, name: str, keys: Iterable[Key]) -> int:
        """``name`` dials every node; both ends exchange their interest."""
        before = self.messages
        self._start(name, keys)
        for other in list(self.routes):
            if other != name:
                self._connect(name, other)
        return self.messages - before

    def subscribe(self, name: str, pattern: str, queue: str | None = None) -> int:
        before = self.messages
        key = (pattern, queue)
        if self.routes[name].subscribe(client_id(name), pattern, queue):
            self.local[name][key] += 1
            if self.local[name][key] == 1:
                for other, table in self.routes.items():
                    if other != name:
                        table.subscribe("@" + name, pattern, queue)
                        self.messages += 1
        return self.messages - before

    def hops(self, src: str, dst: str, name: str) -> int | None:
        """An event for ``name`` (held at ``dst``) goes straight down dst's route."""
        if src == dst:
            return 0
        return 1 if "@" + dst in self.routes[src].lookup(name).everyone else None
