"""Prometheus metrics of real node processes, scraped over HTTP on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, free_port, wait_until


def scrape(port: int) -> dict:
    """{(sample name, ((label, value), ...)): value} of one /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def once_json(address: str) -> dict:
    """`tsctl monitor --once --json`: every node it heard of, by name."""
    r = subprocess.run([sys.executable, "-m", "tsctl.main", "monitor", "--once", "--json",
                        "--wait", "1.5", "-a", address], cwd=ROOT, capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return {n["node"]: n for n in json.loads(r.stdout)}


def test_counters_move_by_exactly_what_real_clients_sent(node_factory, clients):
    metrics_port = free_port()
    parent = node_factory("p", args=("--metrics-port", str(metrics_port)))
    child = node_factory("c", {"parent": parent.address, "metrics_port": 0})

    # The monitor's snapshot sees both nodes, linked, with the child's RTT measured and
    # its metrics port (0 = picked by the node) announced.
    def linked() -> bool:
        nodes = once_json(parent.address)
        return set(nodes) == {"p", "c"} and nodes["c"]["parent"] == "p" and \
            nodes["c"]["rtt"] is not None and nodes["c"]["state"] == "up"

    wait_until(linked, 60, "the child linked, with an RTT, in `tsctl monitor --once`")
    nodes = once_json(parent.address)
    assert nodes["p"]["children"] == ["c"] and nodes["p"]["metrics_port"] == metrics_port
    child_port = nodes["c"]["metrics_port"]
    assert isinstance(child_port, int) and child_port > 0

    # No client left attached (the monitor said bye): nothing else moves the counters.
    wait_until(lambda: scrape(metrics_port)[("treescale_clients", ())] == 0, 10,
               "the monitor's client to leave")
    before = scrape(metrics_port)
    sub = clients(parent.address, name="sub")
    sub.subscribe("mtest.>")
    sub.flush()
    far = clients(child.address, name="far")

    pub = clients(parent.address, name="pub")
    for _ in range(37):
        pub.publish("mtest.a", b"x" * 100)
    for _ in range(13):
        pub.publish("mtest.b.deep", b"y" * 7)
    pub.flush()
    got = []
    wait_until(lambda: got.extend(sub.events(timeout=0.2)) or len(got) >= 50, 20,
               "50 events at the subscriber")
    assert len(got) == 50
    after = scrape(metrics_port)

    def delta(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("treescale_events_in_total", **{"class": "clients"}) == 50
    assert delta("treescale_bytes_in_total", **{"class": "clients"}) == 37 * 100 + 13 * 7
    assert delta("treescale_events_out_total", **{"class": "clients"}) == 50
    assert delta("treescale_bytes_out_total", **{"class": "clients"}) == 37 * 100 + 13 * 7
    assert delta("treescale_topic_events_in_total", topic="mtest") == 50
    assert after[("treescale_subscriptions", ())] == 1  # sub's mtest.> (inboxes aside)
    assert after[("treescale_clients", ())] == 2

    # Events from a client of the child cross the link: counted per link at both ends.
    def far_event_arrived() -> bool:
        far.publish("mtest.far", b"zz")  # until the child has learnt of `sub`
        far.flush()
        got.extend(sub.events(timeout=0.2))
        return any(ev.name == "mtest.far" for ev in got)

    wait_until(far_event_arrived, 20, "an event from the child's client at the parent")
    here, there = scrape(metrics_port), scrape(child_port)
    link_in = here[("treescale_link_events_in_total", (("link", "c"), ("role", "child")))]
    link_out = there[("treescale_link_events_out_total",
                      (("link", "p"), ("role", "parent")))]
    assert link_in >= 1 and link_out >= link_in  # the parent cannot get more than sent
    assert here[("treescale_link_bytes_in_total", (("link", "c"), ("role", "child")))] \
        >= 2

    # The child's link RTT to its parent, the tree as labels, build and process info.
    rtt = there[("treescale_link_rtt_seconds", (("parent", "p"),))]
    ewma = there[("treescale_link_rtt_ewma_seconds", (("parent", "p"),))]
    assert 0 <= rtt < 60 and 0 <= ewma < 60
    assert there[("treescale_tree_depth", ())] == 1
    info = [labels for (name, labels) in here if name == "treescale_node_info"]
    assert dict(info[0])["children"] == "c" and dict(info[0])["node"] == "p"
    assert any(name == "treescale_build_info" for name, _ in here)
    assert here[("process_resident_memory_bytes", ())] > 0
    assert ("treescale_link_rtt_seconds", (("parent", ""),)) not in here  # root: none


def test_a_busy_metrics_port_is_one_clear_error(node_factory, tmp_path):
    taken = node_factory("a", args=("--metrics-port", str(free_port())))
    port = int(taken.args[1])
    assert scrape(port)  # serving
    r = subprocess.run([sys.executable, "-m", "tsctl.main", "node", "start", "--name", "b",
                        "--port", str(free_port()), "--metrics-port", str(port)],
                       cwd=ROOT, capture_output=True, timeout=60,
                       env={**os.environ, "TREE_DB_PATH": str(tmp_path / "b.db")})
    assert r.returncode == 1
    err = r.stderr.decode()
    assert f"metrics port {port}" in err and "Traceback" not in err


def test_the_sample_scrape_config_covers_every_node_of_the_sample_tree():
    import yaml

    from treescale.loader import load_node_config, load_tree

    tree = ROOT / "configs" / "tree.toml"
    ports = {load_node_config(tree, n).metrics_port for n in load_tree(tree).names}
    scrape_cfg = yaml.safe_load((ROOT / "configs" / "prometheus.yml").read_text())
    [job] = scrape_cfg["scrape_configs"]
    targets = {int(t.rsplit(":", 1)[1]) for sc in job["static_configs"]
               for t in sc["targets"]}
    assert targets == ports == set(range(9101, 9108))


def test_topic_counters_stay_bounded_and_count_mixed_batches_exactly():
    """Pure: the per-topic counters (first name token) of treescale.metrics.Traffic."""
    from treescale import protocol as P
    from treescale.metrics import Traffic

    def batch(*names: str):
        meta, body, large = P.encode_events([(n, b"abc", None, 0, None, None)
                                             for n in names])
        return P.decode_events(meta, body, large, 1 << 20)

    t = Traffic(max_topics=2)
    t.count_in("clients", None, batch("a.x", "a.y", "a.x"))  # one topic, three names
    t.count_in("links", ("p", "parent"), batch("b.x", "c.x", "b.y", "d.z", "a.q"))
    t.count_in("services", None, batch("e"))
    assert t.topics == {"a": 4, "b": 2, "other": 3}
    assert t.classes["clients"][:2] == [3, 9] and t.classes["links"][:2] == [5, 15]
    assert t.links == {("p", "parent"): [5, 15, 0, 0]}
