"""Scale on paper, from the real code: `python -m bench.simulate [--sizes ...] [--json F]
[--plot docs/scale.png] [--reuse EARLIER.json ...]`.

What a node holds and what each operation costs at 10^2..10^6 nodes, tree vs full
mesh, from the modules the nodes run rather than from a model of them. Sizes can be
run one at a time (``--sizes 100000 --json b.json``) and joined (``--reuse b.json``).

Drives the real sans-I/O modules with no sockets: ``treescale.tree`` (the tree the
auto-join rule builds, routes, ``Tree.without`` for a death), ``treescale.healing``
(who an orphan dials first, who succeeds a dead root), ``treescale.routing`` and
``treescale.interest`` (every table, every INTEREST message), via bench/sim_fabric.py,
which calls them the way brokers/exchange.py and brokers/links.py do. Fan-out 10.

The subscription mix (``sim_fabric.local_subs``), per node: its inbox ``$inbox.NAME.>``
(the node adds it itself), two unique exact names (``node.NAME.cmd``,
``node.NAME.health``), one unique wildcard (``jobs.NAME.>``), two of 100 services
(``svc.sK.rpc``, queue group ``sK``, Zipf-like: s0 is on about half the nodes), one of
10 shared wildcards (``orders.*``, ``logs.eu.>``, ``metrics.*.cpu`` ...), one of 10
shared exact names (some hidden by those wildcards); every 100th node also
``node.*.health`` (a monitor, which hides ``node.X.health`` on the links it covers).

How each figure is obtained, by size (``--full-max``, ``--sample-max``):

* **full** (N <= --full-max, default 300): every node's tables, the whole fabric's
  interest settled by delivering every INTEREST message; each operation counted as
  it happens; hops followed through every routing table an event crosses; the
  deaths (parent of the last leaf, first child of the root, the root) one after the
  other, each in the tree the previous one left.
* **sampled tables** (N <= --sample-max, default 100000): one node per depth, built
  alone from what each neighbour advertises: the minimal cover of the keys held on
  its side (InterestTable's invariant; the test checks it against the full fabric).
  Mean entries weight each depth by its node count. Memory: tracemalloc's current
  size after building the node's RoutingTable + InterestTable minus before (the
  pattern strings themselves are shared with the generator and not counted).
* **projected operations** (N <= --sample-max, above --full-max): a full fabric whose
  nodes hold only the keys an InterestTable consults for the keys the operations
  touch (same queue, covering or covered: ``sim_fabric.related``); other keys never
  change, so the messages are the same (the test checks this against the full
  fabric); their entries are not (a snapshot carries only projected keys): not shown.
* **tree geometry and healing**: real ``Tree`` at every size, 10^6 included: hops
  between 2000 random pairs (and the first leaf to the last 50, the longest paths);
  for each death, ``Tree.without`` and ``healing.ParentLinkState`` (whom each orphan
  dials first, who succeeds the root), and the nodes whose state changes: orphans
  (new parent), adopters (new children), and every node whose ancestry changed (its
  parent re-sends LINKED: the ancestors it would dial next time).
* anything else at a bigger size is **extrapolated** from the last two measured
  sizes (log-log slope) and marked so in the table, the JSON and the plot.

The full mesh (NATS-style routes) beside it: N(N-1)/2 links, one hop; a node that
gains or drops its first local subscriber of a name tells every other node (N-1
messages, known name or not); a joiner and each of the N nodes exchange their
interest (2N); a death costs no message, but all N-1 others drop its route and its
interest. Simulated with ``sim_fabric.MeshFabric`` (real RoutingTables, one member per
route holding that node's keys: no cover across nodes) up to --mesh-full, by that rule
beyond; one mesh node's real table sampled like the tree's up to --mesh-max.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import tracemalloc
from collections import Counter

from bench.sim_fabric import (
    FANOUT,
    Fabric,
    MeshFabric,
    Tally,
    all_keys,
    complete_tree,
    depth_profile,
    joined_tree,
    local_subs,
    project,
    related,
    sample_node,
    side_keys,
)
from treescale import healing
from treescale.routing import RoutingTable
from treescale.tree import Tree

SIZES = (100, 300, 1_000, 10_000, 100_000, 1_000_000)
PAIRS = 2000


def keys_by_name(tree: Tree, seed: int) -> dict[str, list]:
    return {name: all_keys(int(name[1:]), name, seed) for name in tree.names}


# -- tree geometry and healing (real Tree, real healing state machine) ----------------


def geometry(tree: Tree, rng: random.Random) -> dict:
    names = tree.names
    hops = [len(tree.path(a, b)) - 1
            for a, b in (rng.sample(names, 2) for _ in range(PAIRS))]
    leaves = [n for n in names if not tree.children(n)]
    return {"links": len(tree) - 1, "height": tree.height,
            "hops_mean": sum(hops) / len(hops), "hops_max_sampled": max(hops),
            "hops_max": max(len(tree.path(leaves[0], x)) - 1 for x in leaves[-50:])}


def first_dial(tree: Tree, orphan: str, dead: str) -> str:
    """Whom ``orphan`` dials first once ``dead`` (its parent) is gone, per healing."""
    me = (orphan, tree.spec(orphan).address)
    # what LINKED told it (placement.ancestry): the parent's ancestors, nearest first
    state = healing.ParentLinkState(me, healing.LINKED,
                                    ancestors=[(a, tree.spec(a).address)
                                               for a in tree.ancestors(dead)],
                                    siblings=[(s, tree.spec(s).address)
                                              for s in tree.children(dead) if s != orphan])
    state.disconnected(0.0)
    if state.state == healing.ROOT_GRACE_STATE:  # the root went silent
        state.due(healing.ROOT_GRACE)
        if state.state == healing.ACTING_ROOT:
            return orphan
    return state.target[0]


def rehome(tree: Tree, dead: str) -> tuple[Tree, dict]:
    """``dead`` dies: who changes state, by the real healing model."""
    healed = tree.without(dead)
    orphans = tree.children(dead)
    dials = {o: first_dial(tree, o, dead) for o in orphans}
    if tree.parent(dead) is None:
        assert healed.root in dials.values(), "the heir leads the healed tree"
    # sent down into the subtree of the node it dialled (the heir dials nobody)
    moved = {o for o in orphans if dials[o] != o and healed.parent(o) != dials[o]}
    scope = tree.names if tree.parent(dead) is None else tree.descendants(dead)
    # a new LINKED for each (the ancestors it would dial if its parent died)
    ancestry = {x for x in scope if x != dead and tree.ancestors(x) != healed.ancestors(x)}
    adopters = {n for n in healed.names if healed.children(n) != tuple(
        c for c in tree.children(n) if c != dead)}
    return healed, {"orphans": len(orphans), "redirected": len(moved),
                    "adopters": len(adopters), "new_ancestry": len(ancestry),
                    "nodes_changed": len(set(orphans) | adopters | ancestry),
                    "height_after": healed.height}


def victims(tree: Tree) -> dict[str, str]:
    last = tree.names[-1]
    """The parent of the last leaf, the first child of the root, the root: each once
    (in a small tree the first may be the root)."""
    out: dict[str, str] = {}
    for label, dead in (("low", tree.parent(last)), ("depth1", tree.children(tree.root)[0]),
                        ("root", tree.root)):
        if dead not in out.values():
            out[label] = dead
    return out


# -- tables: one node at a time --------------------------------------------------------


def measured_node(tree: Tree, keys: dict, name: str) -> dict:
    sides = side_keys(tree, keys.__getitem__, name)
    own = local_subs(int(name[1:]), name)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t0 = time.process_time()
    node = sample_node(name, own, {k: list(c) for k, c in sides.items()})
    cpu = time.process_time() - t0
    size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    told = sum(len(v) for v in node.interest.advertised.values())
    return {"entries": node.routes.subscription_count(), "advertised": told,
            "bytes": size, "build_cpu_s": cpu}


def tables(tree: Tree, keys: dict) -> dict:
    by_depth: dict[int, list[str]] = {}
    for n in tree.names:
        by_depth.setdefault(tree.depth(n), []).append(n)
    samples = {d: measured_node(tree, keys, ns[0]) for d, ns in by_depth.items()}
    weight = {d: len(ns) / len(tree) for d, ns in by_depth.items()}
    out = {f: sum(weight[d] * s[f] for d, s in samples.items())
           for f in ("entries", "bytes", "advertised")}
    root, leaf = samples[0], samples[max(samples)]
    return {"entries_mean": out["entries"], "entries_max": max(s["entries"] for s in
                                                               samples.values()),
            "entries_root": root["entries"], "entries_leaf": leaf["entries"],
            "advertised_mean": out["advertised"],
            "bytes_mean": out["bytes"], "bytes_root": root["bytes"],
            "bytes_leaf": leaf["bytes"], "by_depth": samples}


def mesh_node(keys: dict, name: str) -> dict:
    """A mesh node's table: one route member per other node, each with its keys."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    routes = RoutingTable(name)
    for other, ks in keys.items():
        if other != name:
            routes.add_member("@" + other, link=True)
            for p, q in ks:
                routes.subscribe("@" + other, p, q)
    size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {"entries": routes.subscription_count(), "bytes": size}


# -- operations ------------------------------------------------------------------------


def pick_known(tree: Tree, keys: dict) -> tuple[str, tuple[str, str | None]]:
    """The last leaf, and the most widely held service it does not hold yet."""
    leaf = tree.names[-1]
    held = Counter(k for ks in keys.values() for k in ks if k[0].startswith("svc."))
    return leaf, next(k for k, _ in held.most_common() if k not in keys[leaf])


def count(t: Tally) -> dict:
    return {"messages": t.messages, "entries": t.entries, "nodes": len(t.woken)}


def ops_on(fabric_for, tree: Tree, keys: dict, rng: random.Random) -> dict:
    """Each operation, one after the other, on the fabric ``fabric_for(touched keys)``
    makes: the full one, or one projected onto what the operations touch (each op is
    undone before the next, or is the last)."""
    leaf = tree.names[-1]
    new = (f"new.{leaf}.topic", None)
    known_at, known = pick_known(tree, keys)
    joiner = "j" + leaf
    spot = tree.place(joiner, rng.choice(tree.names))
    jkeys = all_keys(len(tree) + 1, joiner)  # +1: a typical node, not a monitor
    f = fabric_for({new, known, *jkeys})
    out = {"sub_new": count(f.subscribe(leaf, *new)),
           "unsub_new": count(f.unsubscribe(leaf, *new)),
           "sub_known": count(f.subscribe(known_at, *known)),
           "unsub_known": count(f.unsubscribe(known_at, *known))}
    out["sub_known"]["key"] = list(known)
    # the full fabric's nodes add their inbox themselves, a projected one's do not
    out["join"] = count(f.join(joiner, spot.parent, [
        k for k in jkeys if not (f.inbox and k[0].startswith("$"))]))
    out["join"]["redirects"] = len(spot.hops) - 1
    f.cut(joiner)
    out["leave"] = count(f.settle())
    return out


def full_run(tree: Tree, keys: dict, rng: random.Random) -> tuple[dict, dict]:
    t0 = time.process_time()
    fabric = Fabric(tree, keys_of={n: [k for k in ks if not k[0].startswith("$")]
                                   for n, ks in keys.items()})
    build = time.process_time() - t0
    entries = {n: fabric.nodes[n].routes.subscription_count() for n in tree.names}
    leaves = [n for n in tree.names if not tree.children(n)]
    full = {"entries_mean": sum(entries.values()) / len(tree),
            "entries_max": max(entries.values()), "entries_root": entries[tree.root],
            "entries_leaf": entries[leaves[-1]], "build_cpu_s": build}
    hops = []
    for _ in range(min(PAIRS, 200)):
        a, b = rng.sample(tree.names, 2)
        got = fabric.event_hops(a, b, f"node.{b}.cmd")
        assert got == len(tree.path(a, b)) - 1, (a, b, got)
        hops.append(got)
    full["hops_via_tables_mean"] = sum(hops) / len(hops)
    ops = ops_on(lambda _touched: fabric, tree, keys, rng)
    # one after the other, each in the tree the previous death left
    full["rehome_interest"] = {label: count(fabric.kill(dead, fabric.tree.without(dead)))
                               for label, dead in victims(tree).items()}
    return full, ops


def projected_ops(tree: Tree, keys: dict, rng: random.Random) -> dict:
    pool = set().union(*map(set, keys.values()))

    def fabric_for(touched: set) -> Fabric:
        keep = related(touched, pool)
        return Fabric(tree, keys_of=project(keys, keep), inbox=False)
    out = ops_on(fabric_for, tree, keys, rng)
    for op in out.values():  # a projected message carries only the projected keys
        op.pop("entries")
    return out


def mesh(n: int, tree: Tree, keys: dict | None, simulate_all: bool,
         sample: bool) -> dict:
    """The full mesh's figures: by its rule (module doc), simulated with MeshFabric
    where ``simulate_all``, a node's real table where ``sample``."""
    out = {"links": n * (n - 1) // 2, "hops_mean": 1.0, "hops_max": 1,
           "sub_new": n - 1, "unsub_new": n - 1, "sub_known": n - 1,
           "unsub_known": n - 1, "join": 2 * n, "leave": 0,
           "death_nodes_changed": n - 1, "how": "rule"}
    if simulate_all and keys is not None:
        mf = MeshFabric(keys)
        leaf = tree.names[-1]
        known_at, known = pick_known(tree, keys)
        out["sub_new"] = mf.subscribe(leaf, f"new.{leaf}.topic")
        out["sub_known"] = mf.subscribe(known_at, *known)
        out["join"] = mf.join("j" + leaf, all_keys(n + 1, "j" + leaf))
        rng = random.Random(1)
        pairs = [rng.sample(tree.names, 2) for _ in range(200)]
        hops = [mf.hops(a, b, f"node.{b}.cmd") for a, b in pairs]
        out["hops_mean"], out["hops_max"] = sum(hops) / len(hops), max(hops)
        out["how"] = "simulated (MeshFabric); unsubscribe, leave, death by the rule"
    if sample and keys is not None:
        node = mesh_node(keys, tree.names[-1])
        out["entries"], out["bytes"] = node["entries"], node["bytes"]
    return out


# -- one size ---------------------------------------------------------------------------


def run_size(n: int, args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    tree = complete_tree(n, FANOUT)
    row: dict = {"nodes": n, "how": {}}
    if n <= args.check_join:
        assert joined_tree(n, FANOUT) == tree, "placement disagrees"
        assert depth_profile(joined_tree(n, FANOUT, args.seed)) == depth_profile(tree)
        row["how"]["tree"] = ("built in one go; equal to joining one by one through the "
                              "root (Tree.place); random contacts: same levels")
    else:
        row["how"]["tree"] = "built in one go (equal to joins where checked)"
    row["tree"] = geometry(tree, rng)
    row["heal"] = {label: rehome(tree, dead)[1] for label, dead in victims(tree).items()}
    keys = keys_by_name(tree, args.seed) if n <= args.sample_max else None
    if n <= args.full_max:
        row["full"], row["ops"] = full_run(tree, keys, rng)
        row["how"]["ops"] = "full fabric"
    elif keys is not None:
        row["ops"] = projected_ops(tree, keys, rng)
        row["how"]["ops"] = "projected fabric"
    if keys is not None:
        row["tables"] = tables(tree, keys)
        row["how"]["tables"] = "one node per depth, from its neighbours' covers"
    row["mesh"] = mesh(n, tree, keys, n <= args.mesh_full, n <= args.mesh_max)
    row["wall_s"] = time.monotonic() - t0
    return row


# -- extrapolation, output ---------------------------------------------------------------

PLOTTED = {  # (section, field): what the table, the plot and the JSON carry
    "entries_mean": ("tables", "entries_mean"), "entries_root": ("tables", "entries_root"),
    "entries_leaf": ("tables", "entries_leaf"), "bytes_mean": ("tables", "bytes_mean"),
    "sub_new": ("ops", "sub_new", "messages"), "sub_known": ("ops", "sub_known", "messages"),
    "unsub_new": ("ops", "unsub_new", "messages"),
    "unsub_known": ("ops", "unsub_known", "messages"),
    "join": ("ops", "join", "messages"), "leave": ("ops", "leave", "messages"),
    "hops_mean": ("tree", "hops_mean"), "hops_max": ("tree", "hops_max"),
    "links": ("tree", "links"),
    "rehome_messages": ("full", "rehome_interest", "depth1", "messages"),
    "rehome_nodes": ("heal", "depth1", "nodes_changed"),
    "root_death_nodes": ("heal", "root", "nodes_changed"),
    "mesh_entries": ("mesh", "entries"), "mesh_bytes": ("mesh", "bytes"),
}


LABELS = {
    "entries_mean": "tree: routing entries/node, mean", "entries_root": "tree: ... root",
    "entries_leaf": "tree: ... leaf", "bytes_mean": "tree: bytes/node (tables), mean",
    "sub_new": "tree: INTEREST msgs, SUB new name", "sub_known": "tree: ... SUB known name",
    "unsub_new": "tree: ... UNSUB last holder", "unsub_known": "tree: ... UNSUB, others hold",
    "join": "tree: ... join of a node", "leave": "tree: ... leave (death) of a leaf",
    "hops_mean": "tree: hops/event, mean", "hops_max": "tree: hops/event, max",
    "links": "tree: links", "rehome_messages": "tree: INTEREST msgs, depth-1 node dies",
    "rehome_nodes": "tree: nodes changing state, depth-1 dies",
    "root_death_nodes": "tree: nodes changing state, root dies",
    "mesh_entries": "mesh: routing entries/node", "mesh_bytes": "mesh: bytes/node (table)",
}
MESH_ROWS = {"mesh: INTEREST msgs, SUB (new or known)": "sub_new",
             "mesh: ... join of a node": "join", "mesh: ... leave/death": "leave",
             "mesh: nodes changing state, a death": "death_nodes_changed",
             "mesh: hops/event": "hops_mean", "mesh: links": "links"}


def _get(row: dict, path: tuple) -> float | None:
    x = row
    for p in path:
        if not isinstance(x, dict) or p not in x:
            return None
        x = x[p]
    return x


def summarise(rows: list[dict]) -> dict[str, dict[int, dict]]:
    """Each plotted figure by size: measured, or extrapolated from the last two
    measured sizes along their log-log slope."""
    out: dict[str, dict[int, dict]] = {}
    for name, path in PLOTTED.items():
        measured = [(r["nodes"], _get(r, path)) for r in rows]
        known = [(n, v) for n, v in measured if v is not None]
        fig: dict[int, dict] = {}
        for n, v in measured:
            if v is not None:
                fig[n] = {"value": v, "extrapolated": False}
            elif len(known) >= 2 and n > known[-1][0]:
                (n1, v1), (n2, v2) = known[-2], known[-1]
                slope = (math.log(v2 / v1) / math.log(n2 / n1)
                         if v1 > 0 and v2 > 0 else 0.0)  # a zero stays flat
                fig[n] = {"value": v2 * (n / n2) ** slope, "extrapolated": True,
                          "from": [n1, n2], "slope": slope}
        out[name] = fig
    return out


def render(rows: list[dict], summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title="TreeScale tree (fan-out 10) vs full mesh, simulated from the "
                  "real modules; * extrapolated")
    table.add_column("figure")
    for r in rows:
        table.add_column(f"N={r['nodes']:,}", justify="right")

    def cell(fig: dict | None) -> str:
        if not fig:
            return "-"
        v = fig["value"]
        text = f"{v:,.1f}" if isinstance(v, float) and v < 100 else f"{v:,.0f}"
        return text + ("*" if fig["extrapolated"] else "")
    for name in PLOTTED:
        table.add_row(LABELS[name], *(cell(summary[name].get(r["nodes"])) for r in rows))
    for label, field in MESH_ROWS.items():
        table.add_row(label, *(cell({"value": r["mesh"][field], "extrapolated": False})
                               for r in rows))
    console = Console(width=150)
    console.print(table)
    for r in rows:
        how = "; ".join(f"{k}: {v}" for k, v in r["how"].items())
        console.print(f"N={r['nodes']:,}: {how}; mesh: {r['mesh'].get('how', 'rule')}")


def plot(rows: list[dict], summary: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ns = [r["nodes"] for r in rows]
    mesh = {"ls": "--", "marker": "s", "color": "black"}
    panels = [("routing-table entries per node", [("tree mean", "entries_mean", {}),
                                                  ("tree root", "entries_root", {}),
                                                  ("mesh", "mesh_entries", mesh)]),
              ("INTEREST messages per subscribe", [("tree, new name", "sub_new", {}),
                                                   ("tree, known name", "sub_known", {}),
                                                   ("mesh", "mesh_sub", mesh)]),
              ("hops per event (2000 random pairs of nodes)", [
                  ("tree mean", "hops_mean", {}), ("tree max", "hops_max", {}),
                  ("mesh", "mesh_hops", mesh)]),
              ("links", [("tree", "links", {}), ("mesh", "mesh_links", mesh)])]
    summary = {**summary,
               "mesh_sub": _plain(rows, "sub_new"), "mesh_hops": _plain(rows, "hops_mean"),
               "mesh_links": _plain(rows, "links")}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (title, series) in zip(axes.flat, panels, strict=True):
        for label, name, style in series:
            pts = summary[name]
            xs = [n for n in ns if n in pts]
            ys = [max(pts[n]["value"], 0.5) for n in xs]  # log axes: 0 drawn at 0.5
            done = [i for i, n in enumerate(xs) if not pts[n]["extrapolated"]]
            line, = ax.plot([xs[i] for i in done], [ys[i] for i in done],
                            **{"ls": "-", "marker": "o", **style}, label=label)
            ext = [i for i, n in enumerate(xs) if pts[n]["extrapolated"]]
            if ext:
                tail = [ext[0] - 1, *ext] if ext[0] else ext
                ax.plot([xs[i] for i in tail], [ys[i] for i in tail], ls=":",
                        color=line.get_color())
                ax.plot([xs[i] for i in ext], [ys[i] for i in ext], "o", mfc="white",
                        mec=line.get_color(), ms=9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("nodes")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("TreeScale (tree, fan-out 10) vs full mesh, simulated from the real "
                 "modules (hollow rings, dotted: extrapolated)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plain(rows: list[dict], field: str) -> dict[int, dict]:
    """A mesh figure by size (simulated or by its rule: never extrapolated)."""
    return {r["nodes"]: {"value": r["mesh"][field], "extrapolated": False} for r in rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--full-max", type=int, default=300,
                    help="simulate every node's tables up to this size")
    ap.add_argument("--sample-max", type=int, default=100_000,
                    help="sampled tables and projected operations up to this size")
    ap.add_argument("--mesh-max", type=int, default=100_000,
                    help="build a mesh node's real table up to this size")
    ap.add_argument("--mesh-full", type=int, default=1000,
                    help="simulate every mesh node's table up to this size")
    ap.add_argument("--check-join", type=int, default=1000,
                    help="check the tree against one-by-one joins up to this size")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--reuse", action="append", default=[], metavar="JSON",
                    help="take the sizes an earlier --json file holds from it (run "
                    "sizes one at a time, then join them: each run stays short)")
    ap.add_argument("--plot", help="write the log-log plot here (PNG)")
    args = ap.parse_args(argv)
    earlier = {}
    for path in args.reuse:
        with open(path) as fh:
            earlier.update({r["nodes"]: r for r in json.load(fh)["rows"]})
    rows = []
    for n in sorted(int(s) for s in args.sizes.split(",")):
        rows.append(earlier.get(n) or run_size(n, args))
        print(f"N={n}: {rows[-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    summary = summarise(rows)
    render(rows, summary)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"date": time.strftime("%Y-%m-%d"), "rows": rows,
                       "figures": {k: {str(n): v for n, v in fig.items()}
                                   for k, fig in summary.items()}},
                      fh, indent=1, default=_jsonable)
    if args.plot:
        plot(rows, summary, args.plot)
    return 0


def _jsonable(x: object) -> object:
    if isinstance(x, set | frozenset):
        return sorted(x)
    if isinstance(x, Counter):
        return dict(x)
    raise TypeError(type(x))


if __name__ == "__main__":
    sys.exit(main())
