"""How fast services keep themselves running: `python -m bench.services` (root).

Three real Docker machines on this host (tests.enginekit: a dockerd per network
namespace; the busybox test image only in A's engine), a node per machine driving its
own engine as a subprocess (A the root, B and C its children; client auth on; the
docker, image, service and lb services on), and a client on each node. Measured:

* add -> running: from the ``add`` call of ``web`` (3 replicas, port 8080, busybox
  httpd) at A until A's ``ls`` shows 3 ready replicas, one per node. Cold: B's and
  C's engines lack the image and no node's tar cache holds it (A saves it, B and C
  fetch it through the tree); warm: every engine has it. Between runs the service is
  removed and its containers are waited away.
* reschedule: with 3 running, ``kill -9`` node B's process (its engine is left up, so
  its container runs on, unseen); until A's ``ls`` shows 3 ready replicas, none on
  B (goal: 5 s). B is restarted between runs (it adopts its container; one replica is
  stopped) and 3 spread again are waited for.
* failover: ``kill -9`` node A (the root and scheduler; its engine is left up); until
  C's ``ls`` names B (A's heir) as the scheduler, and until C's ``ls`` shows 3 ready
  replicas, none on A. A is restarted between runs and schedules again.

Each run also notes when a client of C saw ``$sys.node.down``/``$sys.node.root`` and
the ``started`` event of the replacement replica (the phases). Every wait is bounded;
nodes, engines, namespaces and temp files are removed at the end, pass or fail.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.conftest import ADMIN, NodeProcess, secure
from tests.dockerkit import httpd_command, services_answering
from tests.enginekit import IMAGE, Machine, machines
from treescale import Client, subjects
from treescale import protocol as P
from treescale.services.rpc import call

GOAL_RESCHEDULE = 5.0
SERVICE = "web"


class Timeout(Exception):
    pass


def until(predicate: Callable[[], Any], timeout: float, what: str,
          interval: float = 0.05) -> float:
    """Poll ``predicate`` until true; the monotonic time it first was (Timeout after
    ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Watch:
    """Events a client saw, with their arrival time: node down/root, the service's
    events, image transfers."""

    def __init__(self, client: Client) -> None:
        self.seen: list[tuple[float, str, dict]] = []
        self._lock = threading.Lock()
        for pattern in (subjects.NODE_DOWN, subjects.NODE_ROOT,
                        subjects.service_events(SERVICE), subjects.image_events()):
            client.subscribe(pattern, handler=self._on)

    def _on(self, ev: Any) -> None:
        try:
            body = P.loads(ev.data)
        except Exception:
            body = {}
        with self._lock:
            self.seen.append((time.monotonic(), ev.name, body if isinstance(body, dict)
                              else {}))

    def first(self, name: str, after: float, **match: Any) -> float | None:
        """When ``name`` (with ``match`` in its body) first arrived after ``after``."""
        with self._lock:
            for at, got, body in self.seen:
                if at >= after and got == name and \
                        all(body.get(k) == v for k, v in match.items()):
                    return at
        return None


class Fabric:
    """Nodes A <- B, A <- C on machines A, B, C, and a client on each."""

    def __init__(self, ms: list[Machine], tmp: Path) -> None:
        self.machines = {m.name: m for m in ms}
        self.nodes: dict[str, NodeProcess] = {}
        self.caches: dict[str, Path] = {}
        self.clients: dict[str, Client] = {}
        for m in ms:
            self.caches[m.name] = tmp / f"image-cache-{m.name}"
            cfg = {"docker_host": m.docker_host, "service_address": m.ip,
                   "image_cache_path": str(self.caches[m.name])}
            if m.name != "A":
                cfg["parent"] = self.nodes["A"].address
            self.nodes[m.name] = NodeProcess(tmp, m.name, secure(
                cfg, "docker", "image", "service", "lb"))

    def start(self) -> None:
        for node in self.nodes.values():
            node.start(30)
        for n, node in self.nodes.items():
            self.clients[n] = Client(node.address, token=ADMIN, name=f"bench-svc-{n}")
        self.watch = Watch(self.clients["C"])
        until(lambda: self.scheduler("A") == "A", 30, "A to schedule")
        until(lambda: len(self.reporting()) == 3, 30, "every node to report")

    def close(self) -> None:
        for c in self.clients.values():
            try:
                c.close(timeout=2)
            except Exception:
                pass
        for node in self.nodes.values():
            node.kill()

    def call(self, op: str, args: dict | None = None, at: str = "A",
             timeout: float = 30) -> tuple[bool, Any]:
        [r] = call(self.clients[at], "service", op, args or {}, node=at, timeout=timeout)
        return r.ok, r.result if r.ok else r.error

    def ls(self, at: str) -> dict | None:
        try:
            ok, result = self.call("ls", at=at, timeout=3)
        except TimeoutError:
            return None
        return result if ok else None

    def scheduler(self, at: str) -> str | None:
        result = self.ls(at)
        return result["scheduler"] if result else None

    def reporting(self) -> set[str]:
        return services_answering(self.clients["A"], self.nodes)

    def placed(self, at: str = "A") -> list[str]:
        """Nodes of the ready replicas, once the service has exactly its count."""
        result = self.ls(at)
        s = next((s for s in (result or {}).get("services", ())
                  if s["name"] == SERVICE), None)
        if not s or len(s["replicas"]) != s["desired"]:
            return []
        return sorted(r["node"] for r in s["replicas"] if r["ready"])

    def containers(self) -> int:
        """Replica containers of the service in every running engine."""
        return sum(len(m.client().api.containers(
            all=True, filters={"label": f"treescale.service={SERVICE}"}))
            for m in self.machines.values() if m.engine_running)

    def spread_out(self) -> None:
        """Three replicas, one per node, from whatever runs now."""
        if not self.spread():
            self.remove()
            self.add()
            until(self.spread, 120, "3 spread")

    def spread(self, at: str = "A") -> bool:
        return self.placed(at) == ["A", "B", "C"] and self.containers() == 3

    def add(self) -> None:
        ok, result = self.call("add", {"name": SERVICE, "image": IMAGE, "replicas": 3,
                                       "port": 8080, "command": httpd_command(),
                                       "env": {"MSG": "bench"}})
        if not ok:
            raise RuntimeError(f"add refused: {result}")

    def remove(self) -> None:
        ok, result = self.call("rm", {"name": SERVICE})
        if not ok and "no service" not in str(result):
            raise RuntimeError(f"rm refused: {result}")
        until(lambda: self.containers() == 0, 60, "the replicas to go")
        until(lambda: self.placed() == [] and self._gone(), 30, "ls without the service")

    def _gone(self) -> bool:
        result = self.ls("A")
        return result is not None and all(s["name"] != SERVICE
                                          for s in result["services"])

    def make_cold(self) -> None:
        """B's and C's engines without the image, and no node's tar cache holding it."""
        for n in "BC":
            try:
                self.machines[n].client().images.remove(IMAGE, force=True)
            except Exception:  # not there
                pass
        for cache in self.caches.values():
            for f in cache.glob("*"):
                f.unlink(missing_ok=True)

    def make_warm(self) -> None:
        for n in "BC":
            m = self.machines[n]
            try:
                m.client().images.get(IMAGE)
            except Exception:
                m.load_image(IMAGE)


def measure_add(f: Fabric, cold: bool, runs: int, verbose: bool, out: list[dict]) -> None:
    for i in range(runs):
        f.remove()
        f.make_cold() if cold else f.make_warm()
        # the nodes' image checks follow the spec change (rm) and run every 5 s; the
        # engines changed under them: let each see it before the clock starts
        until(lambda: _images_seen(f, cold), 15, "the nodes to see their images")
        t0 = time.monotonic()
        f.add()
        answered = time.monotonic()
        done = until(f.spread, 120, "3 ready replicas, one per node")
        row = {"case": "cold" if cold else "warm", "run": i + 1,
               "seconds": round(done - t0, 3), "add_call": round(answered - t0, 3)}
        starts = [at for at, name, _ in f.watch.seen
                  if at >= t0 and name == subjects.service_event(SERVICE, "started")]
        if starts:
            row["last_started"] = round(max(starts) - t0, 3)
        loads = [(at, body) for at, name, body in f.watch.seen
                 if at >= t0 and name.endswith(".loaded")]
        if loads:  # the image transfers (cold): the slowest, and when it was loaded
            row["fetch"] = max(float(body.get("seconds") or 0) for _, body in loads)
            row["last_loaded"] = round(max(at for at, _ in loads) - t0, 3)
        out.append(row)
        if verbose:
            print(row, flush=True)


def _images_seen(f: Fabric, cold: bool) -> bool:
    for n in "BC":
        try:
            [r] = call(f.clients["A"], "service", "image_check", {"image": IMAGE},
                       node=n, timeout=2)
        except TimeoutError:
            return False
        if not r.ok or bool(r.result.get("id")) == cold:
            return False
    return True


def measure_reschedule(f: Fabric, runs: int, verbose: bool, out: list[dict]) -> None:
    f.make_warm()
    f.spread_out()
    b = f.nodes["B"]
    for i in range(runs):
        t0 = time.monotonic()
        b.kill()  # kill -9; B's engine stays up (its replica runs on, unseen)
        done = until(lambda: len(p := f.placed("A")) == 3 and "B" not in p, 60,
                     "3 ready replicas without B")
        down = f.watch.first(subjects.NODE_DOWN, t0, node="B")
        started = f.watch.first(subjects.service_event(SERVICE, "started"), t0)
        row = {"run": i + 1, "seconds": round(done - t0, 3),
               "node_down": _rel(down, t0), "started": _rel(started, t0),
               "where": f.placed("A")}
        out.append(row)
        if verbose:
            print(row, flush=True)
        b.start(30)
        until(f.spread, 120, "B back and 3 spread again")


def measure_failover(f: Fabric, runs: int, verbose: bool, out: list[dict]) -> None:
    f.spread_out()
    a = f.nodes["A"]
    for i in range(runs):
        t0 = time.monotonic()
        a.kill()  # kill -9; A's engine stays up
        sched = until(lambda: f.scheduler("C") == "B", 60, "C's ls to name B")
        done = until(lambda: len(p := f.placed("C")) == 3 and "A" not in p, 60,
                     "A's replica replaced")
        root = f.watch.first(subjects.NODE_ROOT, t0)
        started = f.watch.first(subjects.service_event(SERVICE, "started"), t0)
        row = {"run": i + 1, "scheduler": round(sched - t0, 3),
               "replaced": round(done - t0, 3), "node_root": _rel(root, t0),
               "started": _rel(started, t0), "where": f.placed("C")}
        out.append(row)
        if verbose:
            print(row, flush=True)
        a.start(30)
        until(lambda: f.scheduler("C") == "A", 60, "A to schedule again")
        until(lambda: f.spread("A"), 120, "3 spread again")


def _rel(at: float | None, t0: float) -> float | None:
    return None if at is None else round(at - t0, 3)


def summary(rows: list[dict], key: str) -> dict:
    xs = [r[key] for r in rows if r.get(key) is not None]
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": round(statistics.median(xs), 3),
            "min": round(min(xs), 3), "max": round(max(xs), 3)}


def render(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="services that keep themselves running (3 Docker machines, "
              "seconds)")
    for col in ("measure", "runs", "median", "min", "max", "note"):
        t.add_column(col, justify="left" if col in ("measure", "note") else "right")
    for label, s, note in result["table"]:
        if s.get("n"):
            t.add_row(label, str(s["n"]), f"{s['median']:.2f}", f"{s['min']:.2f}",
                      f"{s['max']:.2f}", note)
        else:
            t.add_row(label, "0", "-", "-", "-", note)
    Console().print(t)
    for e in result.get("errors", ()):
        print(f"error: {e}", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="add runs per case (cold, warm)")
    p.add_argument("--kills", type=int, default=5, help="reschedule runs (kill -9 B)")
    p.add_argument("--failovers", type=int, default=3, help="kill -9 A runs")
    p.add_argument("--json", metavar="FILE", help="also write the figures here")
    p.add_argument("--verbose", action="store_true", help="print every run")
    p.add_argument("--keep", action="store_true", help="keep the nodes' logs (temp dir)")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, a dockerd per machine)")
    for n in (args.runs, args.kills, args.failovers):
        if not 0 <= n <= 20:
            sys.exit("runs, kills and failovers: 0..20 each")
    os.environ.setdefault("TREESCALE_TOKEN", ADMIN)
    tmp = Path(tempfile.mkdtemp(prefix="bench-services-"))
    runs: dict[str, list[dict]] = {"cold": [], "warm": [], "reschedule": [],
                                   "failover": []}
    errors: list[str] = []
    started = time.time()
    try:
        with ExitStack() as stack:
            ms = stack.enter_context(machines(3))
            f = Fabric(ms, tmp)
            stack.callback(f.close)
            f.start()
            steps = [("cold", lambda out: measure_add(f, True, args.runs, args.verbose,
                                                      out)),
                     ("warm", lambda out: measure_add(f, False, args.runs, args.verbose,
                                                      out)),
                     ("reschedule", lambda out: measure_reschedule(f, args.kills,
                                                                   args.verbose, out)),
                     ("failover", lambda out: measure_failover(f, args.failovers,
                                                               args.verbose, out))]
            for name, step in steps:
                try:
                    step(runs[name])
                except (Timeout, RuntimeError, AssertionError) as exc:
                    errors.append(f"{name}: {exc}")
                    _dump_logs(f, name)
                    break  # the fabric's state is unknown now: stop measuring
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    resched = summary(runs["reschedule"], "seconds")
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "cpus": os.cpu_count(), "image": IMAGE, "runs": runs, "errors": errors,
        "goal_reschedule_s": GOAL_RESCHEDULE,
        "table": [
            ("add -> 3 ready, cold (image streamed to B, C)",
             summary(runs["cold"], "seconds"), "add call median "
             f"{summary(runs['cold'], 'add_call').get('median', '-')}s"),
            ("add -> 3 ready, warm (image everywhere)", summary(runs["warm"], "seconds"),
             "add call median "
             f"{summary(runs['warm'], 'add_call').get('median', '-')}s"),
            ("kill -9 B -> 3 ready without B", resched,
             f"goal {GOAL_RESCHEDULE:g}s; node.down median "
             f"{summary(runs['reschedule'], 'node_down').get('median', '-')}s; "
             "B's engine left up"),
            ("kill -9 A -> C's ls names B", summary(runs["failover"], "scheduler"),
             "node.root median "
             f"{summary(runs['failover'], 'node_root').get('median', '-')}s"),
            ("kill -9 A -> A's replica replaced", summary(runs["failover"], "replaced"),
             "A's engine left up"),
        ],
    }
    render(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if errors:
        sys.exit(1)


def _dump_logs(f: Fabric, step: str) -> None:
    print(f"--- {step} failed; last lines of each node's log:", file=sys.stderr)
    for n, node in f.nodes.items():
        try:
            tail = node.log().splitlines()[-25:]
        except OSError:
            tail = ["(no log)"]
        print(f"--- {n}\n" + "\n".join(tail), file=sys.stderr)


if __name__ == "__main__":
    main()
