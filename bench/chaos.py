"""Chaos for durable delivery: `python -m bench.chaos [--nodes 20] [--seconds 300]
[--seed S]` (`make chaos`).

A tree of nodes, each with a database of its own (its durable store survives a
restart), durable subscribers on five nodes (two of them queue groups: two clients
sharing one durable on one node), four publishers of durable events with unique ids.
Meanwhile: `kill -9` and restart of nodes, SIGSTOP/SIGCONT pauses, and (as root)
links cut between network namespaces. Then everything heals, the subscribers drain,
and each durable is checked as Jepsen's queue checker does (bench/chaos_check.py):
nothing confirmed lost, nothing delivered that was never published, no second
delivery that does not say it is one. Exits 1 if any is found.

Owns: the tree's node processes, the workers' processes, the fault schedule, healing,
draining. Must not touch: the clients' behaviour (the workers use the public Client
API alone), the verdict's rules (chaos_check.py).
"""

from __future__ import annotations

import argparse
import atexit
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import chaos_net
from bench.chaos_check import (
    Published,
    Verdict,
    read_deliveries,
    read_publisher,
    report,
    verdict,
)
from tests.conftest import ROOT, NodeProcess

PUBLISHERS = 4
# (durable, queue, clients): on five nodes; two are queue groups of two clients
DURABLES = (("d1", None, 1), ("d2", "q", 2), ("d3", None, 1), ("d4", "q", 2),
            ("d5", None, 1))
FANOUT = 3


@dataclass
class Options:
    nodes: int = 20
    seconds: float = 300.0
    seed: int | None = None
    rate: float = 40.0  # events a second, each publisher
    link_cuts: bool = True
    drain: float = 120.0  # at most this long after healing
    quiet: float = 5.0  # drained: every confirmed id arrived and this long nothing new
    workdir: Path | None = None
    log: Callable[[str], None] = print


class ChaosFailure(Exception):
    """The run could not get as far as a verdict: a node that does not come back."""


class ChaosNode(NodeProcess):
    """A node of the chaos tree: in the root namespace, or alone in its own (``ns``),
    listening on ``host``."""

    def __init__(self, tmp: Path, name: str, parent: str | None, host: str,
                 ns: str | None = None, index: int = 0) -> None:
        args = ("--host", host, "--insecure") if host != "127.0.0.1" else ()
        super().__init__(tmp, name, {"parent": parent} if parent else {}, args)
        self.address = f"tcp://{host}:{self.port}"
        self.ns, self.index = ns, index
        self.paused = False

    def launch(self) -> ChaosNode:
        cmd = [sys.executable, "-m", "tsctl.main", "node", "start", "--name", self.name,
               "--port", str(self.port), "--config", str(self.config_path), *self.args]
        if self.ns:  # `ip netns exec` execs the command: our pid is the node's
            cmd = ["ip", "netns", "exec", self.ns, *cmd]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1",
                     "TREE_DB_PATH": str(self.db_path)})
        self.paused = False
        return self

    def signal(self, sig: int) -> None:
        if self.alive:
            os.kill(self.proc.pid, sig)
            self.paused = sig == signal.SIGSTOP


def tree(n: int, rng: random.Random) -> list[int | None]:
    """A random tree: each node's parent among the nodes before it, at most FANOUT
    children each."""
    parents: list[int | None] = [None]
    kids = [0] * n
    for i in range(1, n):
        p = rng.choice([j for j in range(i) if kids[j] < FANOUT])
        kids[p] += 1
        parents.append(p)
    return parents


class Run:
    """One chaos run: call ``run()``; ``close()`` (also at exit) ends every process
    and namespace it made."""

    def __init__(self, opts: Options) -> None:
        self.o = opts
        self.seed = opts.seed if opts.seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.dir = opts.workdir or Path(tempfile.mkdtemp(prefix="treescale-chaos-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.net: chaos_net.Net | None = None
        self.nodes: list[ChaosNode] = []
        self.workers: list[subprocess.Popen] = []
        self.subs: list[tuple[str, Path]] = []  # (durable, record file)
        self.pubs: list[Path] = []
        self.faults = {"kill": 0, "pause": 0, "cut": 0}
        self.crashes: dict[str, int] = {}  # node -> exits nobody asked for
        self.closed = False
        atexit.register(self.close)

    # ------------------------------------------------------------------ the tree

    def build(self) -> None:
        n = self.o.nodes
        parents = tree(n, self.rng)
        leaves = [i for i in range(1, n) if i not in parents]
        isolated: set[int] = set()
        why = chaos_net.unavailable() if self.o.link_cuts else "link cuts turned off"
        if why is None:
            self.net = chaos_net.Net()
            # leaves under a root-namespace parent (see chaos_net's docstring)
            isolated = set(self.rng.sample(leaves, max(1, min(len(leaves), n // 4))))
        else:
            self.o.log(f"chaos: {why}")
        host = self.net.host_ip if self.net else "127.0.0.1"
        for i in range(n):
            ns, h = None, host
            if i in isolated:
                ns, h = self.net.add(i + 1)
            parent = self.nodes[parents[i]].address if parents[i] is not None else None
            self.nodes.append(ChaosNode(self.dir, f"c{i:02d}", parent, h, ns, i + 1))
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_ready(60)
        shape = ", ".join(f"{nd.name}<{self.nodes[p].name}" + (" [ns]" if nd.ns else "")
                          for nd, p in zip(self.nodes[1:], parents[1:], strict=True))
        self.o.log(f"chaos: seed {self.seed}, {n} nodes in {self.dir}: {shape}")
        self.wait_linked(60)

    def wait_linked(self, timeout: float) -> None:
        """Until every node reports a parent (the root none), seen at the root."""
        from treescale import Client, subjects

        want = {nd.name for nd in self.nodes[1:]}
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        with Client(self.nodes[0].address, name="chaos-watch") as watch:
            watch.subscribe(subjects.NODE_STATS)
            while not want <= seen and time.monotonic() < deadline:
                ev = watch.next_event(1)
                if ev is not None and ev.json().get("parent"):
                    seen.add(ev.json()["node"])
        if not want <= seen:
            missing = sorted(want - seen)
            self.dump_stacks(missing)
            raise RuntimeError(f"not linked after {timeout}s: {missing}")

    def dump_stacks(self, names: list[str]) -> None:
        """What the loops of nodes that did not heal are doing (py-spy, if present),
        into the run directory, for the one who reads the failure."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        for node in self.nodes:
            if node.name in names and node.alive and os.path.exists(spy):
                out = subprocess.run([spy, "dump", "--pid", str(node.proc.pid)],
                                     capture_output=True, text=True, timeout=30)
                (self.dir / f"stack-{node.name}.txt").write_text(out.stdout + out.stderr)
                self.o.log(f"chaos: stack of {node.name} in stack-{node.name}.txt")

    # ------------------------------------------------------------------- workers

    def _worker(self, *args: str, log: str) -> subprocess.Popen:
        with open(self.dir / log, "ab") as out:
            p = subprocess.Popen([sys.executable, "-m", "bench.chaos_workers", *args],
                                 cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.workers.append(p)
        return p

    def start_subscribers(self, timeout: float = 60.0) -> None:
        homes = self.rng.sample(self.nodes, len(DURABLES))
        for (durable, queue, count), home in zip(DURABLES, homes, strict=True):
            for k in range(count):
                name = f"s-{durable}-{k}"
                out = self.dir / f"{name}.jsonl"
                args = ["sub", home.address, name, durable, str(out)]
                self._worker(*args, *(["--queue", queue] if queue else []),
                             log=f"{name}.log")
                self.subs.append((durable, out))
            self.o.log(f"chaos: durable {durable} on {home.name}"
                       + (f", queue {queue!r} x{count}" if queue else ""))
        deadline = time.monotonic() + timeout
        for _, out in self.subs:
            while not (out.exists() and '"ready"' in out.read_text()):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"subscriber {out.stem} not ready in {timeout}s")
                time.sleep(0.1)

    def start_publishers(self) -> list[subprocess.Popen]:
        procs = []
        for k, home in enumerate(self.rng.sample(self.nodes, PUBLISHERS), 1):
            out = self.dir / f"p{k}.jsonl"
            self.pubs.append(out)
            procs.append(self._worker("pub", home.address, f"p{k}", str(out),
                                      "--rate", str(self.o.rate), log=f"p{k}.log"))
            self.o.log(f"chaos: publisher p{k} on {home.name}")
        return procs

    # -------------------------------------------------------------------- faults

    def chaos(self, seconds: float) -> None:
        """Faults for ``seconds``: a new one every 0.3-1.5 s while fewer than
        ``max_busy`` nodes are faulted; each undone after a random short time."""
        max_busy = max(2, len(self.nodes) // 6)
        busy: dict[int, tuple[float, Callable[[], None]]] = {}  # node -> (when, undo)
        end = time.monotonic() + seconds
        next_fault = time.monotonic() + 1.0
        relaunched: dict[int, float] = {}
        while time.monotonic() < end:
            now = time.monotonic()
            for i, (when, undo) in list(busy.items()):
                if now >= when:
                    undo()
                    del busy[i]
            if now >= next_fault and len(busy) < max_busy:
                self.fault(busy, now)
                next_fault = now + self.rng.uniform(0.3, 1.5)
            for i, node in enumerate(self.nodes):  # a restart that did not take
                if i not in busy and not node.alive and relaunched.get(i, 0) < now - 1:
                    self.o.log(f"chaos: {node.name} exited ({node.proc.returncode}): "
                               "starting it again")
                    self.crashes[node.name] = self.crashes.get(node.name, 0) + 1
                    relaunched[i] = now
                    node.launch()
            time.sleep(0.05)
        for _, undo in busy.values():
            undo()

    def fault(self, busy: dict, now: float) -> None:
        free = [i for i in range(len(self.nodes)) if i not in busy]
        cuttable = [i for i in free if self.nodes[i].ns]
        kinds = ["kill", "pause"] + (["cut"] if cuttable else [])
        kind = self.rng.choice(kinds)
        i = self.rng.choice(cuttable if kind == "cut" else free)
        node = self.nodes[i]
        self.faults[kind] += 1
        if kind == "kill":
            delay = self.rng.uniform(0.5, 4.0)
            node.kill()
            busy[i] = (now + delay, node.launch)
        elif kind == "pause":
            delay = self.rng.uniform(1.0, 4.0)
            node.signal(signal.SIGSTOP)
            busy[i] = (now + delay, lambda: node.signal(signal.SIGCONT))
        else:
            delay = self.rng.uniform(1.0, 6.0)
            self.net.cut(node.index)
            busy[i] = (now + delay, lambda: self.net.restore(node.index))
        self.o.log(f"chaos: {time.strftime('%H:%M:%S')} {kind} {node.name} "
                   f"for {delay:.1f}s")

    def heal(self) -> None:
        if self.net:
            for k in list(self.net.spaces):
                self.net.restore(k)
        for node in self.nodes:
            if node.alive:
                node.signal(signal.SIGCONT)
            else:
                node.launch()
        for node in self.nodes:
            try:
                node.wait_ready(60)
            except AssertionError:
                tail = "\n".join(node.log().splitlines()[-12:])
                raise ChaosFailure(f"{node.name} does not come back after the faults "
                                   f"(it exited {self.crashes.get(node.name, 0)} "
                                   f"time(s) by itself); its log ends:\n{tail}") from None
        self.wait_linked(90)
        self.o.log("chaos: healed (every node up and linked)")

    # --------------------------------------------------------------- the verdict

    def published(self) -> Published:
        total = Published()
        for out in self.pubs:
            p = read_publisher(out)
            total.attempted |= p.attempted
            total.confirmed |= p.confirmed
            total.failed_flushes += p.failed_flushes
        return total

    def delivered(self) -> dict[str, list[list]]:
        rows: dict[str, list[list]] = {d: [] for d, _, _ in DURABLES}
        for durable, out in self.subs:
            rows[durable] += read_deliveries(out)
        return rows

    def drain(self, confirmed: set[str]) -> None:
        """Until every durable has every confirmed id and nothing new came for
        ``quiet`` seconds; at most ``drain`` seconds."""
        deadline = time.monotonic() + self.o.drain
        last, changed = -1, time.monotonic()
        while time.monotonic() < deadline:
            rows = self.delivered()
            count = sum(len(r) for r in rows.values())
            if count != last:
                last, changed = count, time.monotonic()
            complete = all(confirmed <= {r[0] for r in rs} for rs in rows.values())
            if complete and time.monotonic() - changed >= self.o.quiet:
                return
            time.sleep(0.5)
        self.o.log(f"chaos: drain ended by its bound ({self.o.drain:.0f}s)")

    def stop(self, procs: list[subprocess.Popen], timeout: float) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def run(self) -> list[Verdict]:
        self.build()
        self.start_subscribers()
        pubs = self.start_publishers()
        self.o.log(f"chaos: faults for {self.o.seconds:.0f}s")
        self.chaos(self.o.seconds)
        self.heal()
        self.stop(pubs, 30)  # after healing: their last flush can succeed
        for p in pubs:
            if p.returncode not in (0, None) and p.returncode != -signal.SIGTERM:
                self.o.log(f"chaos: a publisher exited with {p.returncode} "
                           f"(see {self.dir}/p*.log)")
        pub = self.published()
        self.o.log(f"chaos: faults {self.faults}, nodes that exited by themselves "
                   f"{self.crashes or 'none'}; published {len(pub.attempted)}, "
                   f"confirmed {len(pub.confirmed)}, failed flushes "
                   f"{pub.failed_flushes}; draining")
        self.drain(pub.confirmed)
        self.stop([w for w in self.workers if w.poll() is None], 15)
        rows = self.delivered()
        verdicts = [verdict(d, rows[d], pub.attempted, pub.confirmed) for d in rows]
        self.o.log(report(verdicts))
        return verdicts

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for p in self.workers:
            if p.poll() is None:
                p.kill()
                p.wait()
        for node in self.nodes:
            node.kill()  # SIGKILL ends a stopped process too
        if self.net:
            self.net.close()


def run(opts: Options) -> list[Verdict]:
    r = Run(opts)
    try:
        return r.run()
    finally:
        r.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--rate", type=float, default=40.0,
                   help="events a second, each of the 4 publishers")
    p.add_argument("--drain", type=float, default=120.0)
    p.add_argument("--no-link-cuts", action="store_true")
    p.add_argument("--dir", type=Path, help="keep records and logs here")
    a = p.parse_args(argv)
    if a.nodes < len(DURABLES) or a.nodes < PUBLISHERS:
        p.error(f"--nodes must be at least {len(DURABLES)}")
    try:
        verdicts = run(Options(nodes=a.nodes, seconds=a.seconds, seed=a.seed,
                               rate=a.rate, drain=a.drain,
                               link_cuts=not a.no_link_cuts, workdir=a.dir))
    except ChaosFailure as e:
        print(f"chaos: FAILED: {e}")
        return 1
    ok = all(v.ok for v in verdicts)
    print("chaos: OK" if ok else "chaos: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
