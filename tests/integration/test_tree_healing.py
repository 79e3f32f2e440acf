"""Self-healing under repeated failures, on real processes: whatever dies, the live
nodes end up as one tree (one root, no cycle, everyone reachable), and a stream keeps
flowing through kills and restarts of the nodes it crosses."""

from __future__ import annotations

import threading
import time

from tests.conftest import NodeProcess, start_all, wait_until
from tests.integration.test_tree_links import arrives
from treescale import Client


def tree_views(watch: Client, names: set[str], seconds: float = 1.5) -> dict[str, dict]:
    """Each live node's latest self-report ($sys.node.stats), gathered for a while."""
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ev = watch.next_event(max(0.0, deadline - time.monotonic()))
        if ev is not None and ev.json()["node"] in names:
            seen[ev.json()["node"]] = ev.json()
    return seen


def is_one_tree(views: dict[str, dict], names: set[str]) -> bool:
    """One root, every live node's parent live and agreeing it is a child, no cycle."""
    if set(views) != names:
        return False
    roots = [n for n, v in views.items() if v["parent"] is None]
    if len(roots) != 1:
        return False
    for n, v in views.items():
        p = v["parent"]
        if p is not None and (p not in names or n not in views[p]["children"]):
            return False
    for n in names:  # walking up from anywhere ends at the root within len(names)
        steps, cur = 0, n
        while views[cur]["parent"] is not None:
            cur, steps = views[cur]["parent"], steps + 1
            if steps > len(names):
                raise AssertionError(f"a cycle through {n}: {views}")
    return True


def test_repeated_losses_always_leave_one_tree_without_cycles(tmp_path):
    """r0 <- (a1 <- a3, a4), (b2 <- b5 <- b6): kill the root, then the new root, then a
    middle node; after each loss the survivors form one tree again."""
    shape = {"r0": None, "a1": "r0", "b2": "r0", "a3": "a1", "a4": "a1", "b5": "b2",
             "b6": "b5"}
    nodes: dict[str, NodeProcess] = {}
    for name, parent in shape.items():
        args = ("--parent", nodes[parent].address) if parent else ()
        nodes[name] = NodeProcess(tmp_path, name, None, args)
    start_all(list(nodes.values()))
    watch = Client(nodes["b6"].address, name="watch", timeout=30)  # b6 survives all
    try:
        watch.subscribe("$sys.node.stats")
        live = set(shape)
        for victim in (None, "r0", "a1", "b5"):
            if victim is not None:
                nodes[victim].kill()
                live.discard(victim)
            wait_until(lambda: is_one_tree(tree_views(watch, live), live), 30,
                       f"one tree of {sorted(live)} after losing {victim}")
        views = tree_views(watch, live)
        # r0 died: a1 (smallest of its children) took over; a1 died as root: a3
        # (smallest of a1's children then: a3, a4, b2) took over; b5 died: b6 re-homed.
        assert [n for n, v in views.items() if v["parent"] is None] == ["a3"]
        assert views["b6"]["parent"] == "b2"
    finally:
        watch.close(timeout=1)
        for n in nodes.values():
            n.kill()


def test_a_stream_survives_kill_and_restart_of_the_node_it_crosses(node_factory, clients):
    """pub@n3 -> n2 -> n1 -> sub@n1 while n2 is killed and restarted twice: the
    publisher never stops, events flow again after each heal, nothing arrives twice and
    order is kept. (Events in flight at a kill are lost: delivery without durable
    subscriptions is at most once, by design.)"""
    n1 = node_factory("n1")
    n2 = node_factory("n2", args=("--parent", n1.address))
    n3 = node_factory("n3", args=("--parent", n2.address))
    sub = clients(n1.address, name="sub")
    sub.subscribe("stream")
    pub = clients(n3.address, name="pub")
    arrives(sub, pub, "stream")
    while sub.next_event(0.2) is not None:
        pass
    stop = threading.Event()
    sent = [0]

    def publish() -> None:  # bounded: at most 60 s and 2 million events
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline and sent[0] < 2_000_000:
            pub.publish("stream", b"%d" % sent[0])
            sent[0] += 1
            if sent[0] % 200 == 0:
                time.sleep(0.001)  # pacing: ~100k events/s at most

    got: list[int] = []

    def received_more(than: int) -> bool:
        for ev in sub.events(timeout=0.05):
            got.append(int(bytes(ev.data)))
            if len(got) > than:
                return True
        return len(got) > than

    worker = threading.Thread(target=publish, daemon=True)
    worker.start()
    try:
        wait_until(lambda: received_more(1000), 20, "the stream to flow")
        for round_ in range(2):
            n2.kill()
            n2.start()  # same name and port: n3 re-attaches (to n1 or n2), n2 relinks
            mark = len(got)
            wait_until(lambda m=mark: received_more(m + 1000), 30,
                       f"the stream to flow again after restart {round_ + 1}")
    finally:
        stop.set()
        worker.join(10)
    assert got == sorted(got), "events arrived out of order"
    assert len(got) == len(set(got)), "an event arrived twice"
    assert got[-1] > got[0]


def test_a_returning_root_takes_its_tree_back(tmp_path):
    """r0 is killed: a1 (smallest child) leads and b2 attaches under it. r0 restarts on
    its address: a1 links under it again, with b2, so there is one tree, rooted at r0
    (a restart of the root, e.g. by `tsctl build`, must not split the fabric)."""
    names = {"r0", "a1", "b2"}
    r0 = NodeProcess(tmp_path, "r0", {"services": []})
    a1 = NodeProcess(tmp_path, "a1", {"services": []}, ("--parent", r0.address))
    b2 = NodeProcess(tmp_path, "b2", {"services": []}, ("--parent", r0.address))
    start_all([r0, a1, b2])
    watch = Client(b2.address, name="watch", timeout=30)
    try:
        watch.subscribe("$sys.node.stats")
        wait_until(lambda: is_one_tree(tree_views(watch, names), names), 30, "the tree")
        r0.kill()
        live = {"a1", "b2"}
        wait_until(lambda: is_one_tree(tree_views(watch, live), live), 30,
                   "a1 leading, b2 under it")
        r0.start()  # same name, same port
        wait_until(lambda: is_one_tree(tree_views(watch, names), names), 30,
                   "one tree again after r0 returned")
        views = tree_views(watch, names)
        assert views["r0"]["parent"] is None and views["a1"]["parent"] == "r0"
        assert views["b2"]["parent"] in ("a1", "r0")
    finally:
        watch.close(timeout=1)
        for n in (r0, a1, b2):
            n.kill()
