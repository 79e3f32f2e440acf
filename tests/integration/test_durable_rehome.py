"""A durable's node re-homes while durable events wait for it in custody: they follow
it to its new place in the tree, even where the new path crosses a link those events
already went over for another durable (real node processes, a `kill -9`, a restart
under another parent)."""

from __future__ import annotations

import json
import time

from treescale import Client, subjects


def stats_of(watch: Client, name: str, timeout: float) -> dict:
    """The next ``$sys.node.stats`` of node ``name``."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ev = watch.next_event(min(left, 1.0))
        if ev is not None and ev.json().get("node") == name:
            return ev.json()
    raise AssertionError(f"no stats from {name} in {timeout}s")


def wait_stats(watch: Client, name: str, ok, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out after {timeout}s waiting for {what}"
        if ok(stats_of(watch, name, left)):
            return


def test_events_owed_to_an_away_node_follow_it_across_a_link_they_crossed(
        node_factory, tmp_path):
    """a <- b <- c and a <- d; durable "near" on d, durable "far" on c. c dies; events
    published at a go to d (for "near") and to b, which keeps them for c. c comes back
    under d: b re-routes them to a, which has each of them already and had already
    sent them to d (for "near"). a must send them to d again all the same (d has
    never sent them to c): before, a dropped them as copies it had handed to d, b
    released them once c's durable showed up behind a, and "far" never got them."""
    a = node_factory("a", {})
    b = node_factory("b", {"parent": a.address})
    d = node_factory("d", {"parent": a.address})
    c = node_factory("c", {"parent": b.address})
    with Client(a.address, name="watch") as watch, \
            Client(a.address, name="shop") as pub:
        watch.subscribe(subjects.NODE_STATS)
        with Client(d.address, name="near") as near:
            assert near.subscribe("orders.>", durable="near")["nodes"] >= 4
        with Client(c.address, name="far") as far:
            assert far.subscribe("orders.>", durable="far")["nodes"] >= 4
        c.kill()  # b's link to c closes: b stands in for c's durable interest
        ids = [f"o:{i:03d}" for i in range(20)]
        for eid in ids:
            pub.publish("orders.created", eid.encode(), durable=True, id=eid)
        pub.flush(10)
        wait_stats(watch, "b", lambda s: s["durable"]["owed_links"].get("c") == 20,
                   20, "b holding the events for c")
        # c comes back under d (same name, same store)
        assert c.config_path is not None
        c.config_path.write_text(json.dumps({"node": {"name": "c",
                                                      "parent": d.address}}))
        c.start()
        wait_stats(watch, "c", lambda s: s["parent"] == "d", 20, "c linked under d")
        with Client(c.address, name="far") as far:
            info = far.subscribe("orders.>", durable="far")
            assert info["created"] is False
            got: set[str] = set()
            deadline = time.monotonic() + 40
            while not set(ids) <= got and time.monotonic() < deadline:
                ev = far.next_event(1.0)
                if ev is not None and ev.durable is not None:
                    got.add(ev.id)
                    ev.ack()
            assert set(ids) <= got, (f"{len(set(ids) - got)} of {len(ids)} confirmed "
                                     f"events never reached 'far': "
                                     f"{sorted(set(ids) - got)[:5]}")

