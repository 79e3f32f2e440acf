"""The monitor's model: stats, up/down and container events folded into a tree. Pure."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from treescale.monitor_model import DOWN, REHOMING, UP, FabricModel, summary_text

SEVEN = {"tree1": None, "tree2": "tree1", "tree3": "tree2", "tree4": "tree1",
         "tree5": "tree4", "tree6": "tree4", "tree7": "tree4"}


def stats(node: str, parent: str | None, uptime: float = 10.0, events_in: int = 0,
          events_out: int = 0, **more) -> dict:
    return {"node": node, "parent": parent, "uptime": uptime, "events_in": events_in,
            "events_out": events_out, **more}


def fed(shape: dict, now: float = 100.0) -> FabricModel:
    m = FabricModel()
    for name, parent in shape.items():
        m.apply("$sys.node.stats", stats(name, parent), now)
    return m


def layout(m: FabricModel, now: float, max_rows: int | None = None) -> dict[str, int]:
    """node name -> indentation (length of its tree guides) of its row."""
    return {r.name: len(r.prefix) for r in m.rows(now, max_rows) if r.kind == "node"}


def test_rates_come_from_successive_stats_over_the_nodes_own_clock():
    m = FabricModel()
    m.apply("$sys.node.stats", stats("a", None, 10.0, 100, 50), 1.0)
    assert m.nodes["a"].rate_in is None  # one report: no rate yet
    m.apply("$sys.node.stats", stats("a", None, 12.0, 300, 450), 1.3)  # late delivery
    assert m.nodes["a"].rate_in == 100.0 and m.nodes["a"].rate_out == 200.0


def test_a_restarted_node_has_no_rate_until_its_next_report():
    m = FabricModel()
    m.apply("$sys.node.stats", stats("a", None, 50.0, 1000), 1.0)
    m.apply("$sys.node.stats", stats("a", None, 51.0, 2000), 2.0)
    m.apply("$sys.node.stats", stats("a", None, 0.5, 10), 3.0)
    assert m.nodes["a"].rate_in is None


def test_a_down_event_marks_the_node_down_at_once_and_its_stats_revive_it():
    m = fed(SEVEN)
    m.apply("$sys.node.down", {"node": "tree4", "detected_by": "tree1",
                               "reason": "disconnected", "role": "child"}, 100.1)
    assert m.state("tree4", 100.1) == DOWN
    assert "disconnected" in m.nodes["tree4"].down_reason
    assert m.state("tree5", 100.1) == REHOMING  # its parent is down
    assert m.state("tree2", 100.1) == UP
    m.apply("$sys.node.stats", stats("tree4", "tree1", 11.0), 100.5)
    assert m.state("tree4", 100.5) == UP and m.state("tree5", 100.5) == UP


def test_silence_longer_than_the_stale_limit_is_down():
    m = fed({"a": None, "b": "a"}, now=10.0)
    m.apply("$sys.node.stats", stats("a", None, 11.0), 12.0)
    assert m.state("b", 12.4) == UP  # 2.4 s of silence
    assert m.state("b", 12.6) == DOWN  # 2.6 s
    assert m.state("a", 12.6) == UP


def test_rehomed_children_move_under_their_new_parent():
    m = fed(SEVEN)
    m.apply("$sys.node.down", {"node": "tree4", "detected_by": "tree1", "role": "child"},
            100.2)
    for kid in ("tree5", "tree6", "tree7"):  # the new parent says so first ...
        m.apply("$sys.node.up", {"node": kid, "detected_by": "tree1", "role": "child"},
                100.4)
    rows = layout(m, 100.5)
    assert rows["tree5"] == rows["tree4"] == rows["tree2"]  # siblings under tree1
    assert m.state("tree5", 100.5) == UP and m.state("tree4", 100.5) == DOWN
    # ... and their own stats agree; the dead node stays in view, red, without children
    m.apply("$sys.node.stats", stats("tree6", "tree1", 11.0), 100.9)
    assert m.children()["tree1"] == ["tree2", "tree4", "tree5", "tree6", "tree7"]
    assert "tree4" not in m.children()


def test_an_up_event_from_the_child_side_sets_the_childs_parent():
    m = fed({"a": None, "b": None})
    m.apply("$sys.node.up", {"node": "a", "detected_by": "b", "role": "parent"}, 100.0)
    assert m.nodes["b"].parent == "a"


def test_a_node_without_its_parent_is_rehoming_unless_it_became_root():
    m = fed({"a": None, "b": "a"})
    m.apply("$sys.node.stats", stats("b", None, 11.0), 100.5)
    assert m.state("b", 100.5) == REHOMING
    m.apply("$sys.node.root", {"node": "b", "previous": "lost"}, 100.6)
    assert m.state("b", 100.6) == UP


def test_nodes_heard_of_only_through_link_events_are_not_down_before_they_report():
    m = fed({"a": None})
    m.apply("$sys.node.up", {"node": "new", "detected_by": "a", "role": "child"}, 100.0)
    assert m.state("new", 101.0) == UP
    assert m.state("new", 103.0) == DOWN  # never reported at all


def test_bad_payloads_are_ignored():
    m = fed({"a": None})
    for name, data in (("$sys.node.stats", b"junk"), ("$sys.node.stats", {"node": 3}),
                       ("$sys.node.down", {"node": None}), ("$sys.docker.a.stats", {}),
                       ("$sys.node.up", {"node": "a", "detected_by": 7}),
                       ("$sys.docker.a.stats", {"id": 5})):
        m.apply(name, data, 100.0)
    assert list(m.nodes) == ["a"] and m.state("a", 100.0) == UP


def test_containers_from_docker_events():
    m = fed({"a": None, "b": "a"})
    m.apply("$sys.docker.b.start", {"node": "b", "id": "c1" * 6, "name": "web",
                                    "image": "busybox"}, 100.0)
    m.apply("$sys.docker.b.stats", {"node": "b", "id": "c1" * 6, "name": "web",
                                    "image": "busybox", "cpu_percent": 12.5,
                                    "mem_bytes": 1 << 20, "mem_limit": 1 << 30}, 100.1)
    m.apply("$sys.docker.b.stats", {"node": "b", "id": "c2" * 6, "name": "db",
                                    "cpu_percent": 1.0, "mem_bytes": 5}, 100.1)
    boxes = [r for r in m.rows(100.2) if r.kind == "container"]
    assert [(r.name, r.container.cpu_percent, r.container.mem_bytes) for r in boxes] == \
        [("db", 1.0, 5), ("web", 12.5, 1 << 20)]
    assert boxes[0].depth == 2 and m.to_json(100.2)[1]["containers"][1]["image"] == \
        "busybox"
    m.apply("$sys.docker.b.die", {"node": "b", "id": "c1" * 6}, 100.3)
    assert m.nodes["b"].containers["c1" * 6].state == "stopped"
    m.apply("$sys.docker.b.destroy", {"node": "b", "id": "c1" * 6}, 100.4)
    assert list(m.nodes["b"].containers) == ["c2" * 6]
    m.apply("$sys.docker.b.engine", {"node": "b", "action": "engine", "state": "down"},
            100.5)
    assert m.nodes["b"].containers == {}


def big_tree(fanout: int = 6, depth: int = 3) -> dict:
    shape, level = {"root": None}, ["root"]
    for _ in range(depth):
        nxt = []
        for p in level:
            for i in range(fanout):
                name = f"{p}-{i}" if p != "root" else f"n{i}"
                shape[name] = p
                nxt.append(name)
        level = nxt
    return shape


def test_a_big_tree_collapses_to_fit_80x24_and_keeps_the_path_to_a_down_node():
    shape = big_tree()  # 1 + 6 + 36 + 216 nodes
    m = fed(shape)
    rows = m.rows(100.0, max_rows=21)
    assert len(rows) <= 21
    nodes = [r.name for r in rows if r.kind == "node"]
    assert nodes[:2] == ["root", "n0"] and "n0-0" not in nodes  # depth 1 fits, 2 not
    summaries = [r for r in rows if r.kind == "summary"]
    assert sum(r.count for r in summaries) + len(nodes) == len(shape)
    assert summaries[0].name == "… 42 nodes (all up)"  # n0's 6 children + 36 grandkids
    m.apply("$sys.node.down", {"node": "n3-2-5", "detected_by": "n3-2", "role": "child"},
            100.1)
    rows = m.rows(100.1, max_rows=21)
    shown = {r.name: r for r in rows if r.kind == "node"}
    assert {"n3", "n3-2", "n3-2-5"} <= set(shown) and shown["n3-2-5"].state == DOWN
    assert len(rows) <= 21
    assert sum(r.count for r in rows if r.kind == "summary") + len(shown) == len(shape)


def test_the_whole_tree_is_shown_when_it_fits():
    m = fed(SEVEN)
    rows = m.rows(100.0, max_rows=24)
    assert [r.name for r in rows] == ["tree1", "tree2", "tree3", "tree4", "tree5",
                                      "tree6", "tree7"]
    assert [r.prefix for r in rows] == ["", "├─ ", "│  └─ ", "└─ ", "   ├─ ", "   ├─ ",
                                        "   └─ "]


def test_summary_text():
    assert summary_text(37, (("up", 37),)) == "… 37 nodes (all up)"
    assert summary_text(1, (("re-homing", 1),)) == "… 1 node (1 re-homing)"


names = st.sampled_from([f"n{i}" for i in range(12)])


@settings(max_examples=120, deadline=None)
@given(st.dictionaries(names, st.one_of(st.none(), names), min_size=1),
       st.sets(names), st.integers(min_value=1, max_value=30))
def test_every_node_is_accounted_for_exactly_once(parents, downs, max_rows):
    """Whatever the (possibly stale, even cyclic) parent reports: each node is one row
    or inside one summary, down nodes are always rows, and the layout fits if any can."""
    m = fed(parents)
    for name in downs:
        m.apply("$sys.node.down", {"node": name, "detected_by": "x", "role": "child"},
                100.5)
    for limit in (None, max_rows):
        rows = m.rows(100.5, limit)
        shown = [r.name for r in rows if r.kind == "node"]
        assert len(shown) == len(set(shown))
        assert len(shown) + sum(r.count for r in rows if r.kind == "summary") == \
            len(m.nodes)
        assert {n for n in m.nodes if m.state(n, 100.5) == DOWN} <= set(shown)
        for r in rows:
            assert len(r.prefix) == 3 * r.depth
    smallest = min(len(m.rows(100.5, 0)), len(m.rows(100.5, None)))
    if smallest <= max_rows:
        assert len(m.rows(100.5, max_rows)) <= max_rows
