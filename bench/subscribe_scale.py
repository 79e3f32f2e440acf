"""What one SUB costs at scale: `python -m bench.subscribe_scale [--sizes 1000,10000,100000]`.

A node keeps its clients' and children's subscriptions in the routing table
(``treescale.routing``) and in the interest table (``treescale.interest``) that decides
what each link is told; both run on the node's one event loop, so a SUB that costs
milliseconds starves everything else the loop does (heartbeats, placement, links).

Two parts, each at every size (subscriptions already held) and with each number of
links in ``--links`` (0 and 4), every link advertising interest of its own:

* **in-process**: the pure structures, driven the way ``brokers/exchange.py`` drives
  them (``RoutingTable.subscribe`` then ``InterestTable.add``). Filled up to the size,
  then ``--measure`` fresh SUBs timed one by one (CPU time: other work on the
  machine does not count), then their UNSUBs.
* **end to end**: a real node process (``tsctl node start``). A raw client fills it in
  chunks of ``--chunk`` SUBs, each followed by a PING; at each size one more chunk of
  fresh SUBs is timed until its PONG (µs per SUB, wall, and of the node loop's CPU,
  from ``/proc/PID/schedstat``), then their UNSUBs. Meanwhile a second client pings
  every 50 ms, and the raw links (DEALER sockets speaking the link protocol) record
  the gaps between the node's once-a-second PLACEMENT heartbeats to them and any
  snapshot they were sent unasked (the node had to drop an INTEREST): together they
  say whether the loop starved.

The subscriptions are a fixed-seed mix of exact names and wildcards (``*``, ``>``,
some with a queue group) whose covers overlap the way an application's do. Every case
is bounded by ``--budget`` seconds: a fill that does not reach its size in time is
reported at the size it reached. Everything started is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from bench.harness import Deadline, free_port, stop_process, wait_for_port
from treescale import protocol as P
from treescale.interest import LOCAL, InterestTable
from treescale.routing import RoutingTable

Key = tuple[str, str | None]
ENTITIES = ["orders", "users", "metrics", "logs", "jobs", "carts", "pay", "mail",
            "audit", "cache"]
SUBS_PER_CLIENT = 50
LINK_KEYS = 200  # what each link advertises for its side of the tree
PROBE_EVERY = 0.05
HEARTBEAT = 1.0  # a child pings its parent every second, as a node does


class Mix:
    """An endless, reproducible stream of distinct subscriptions."""

    def __init__(self, seed: int, prefix: str = "app") -> None:
        self.rng = random.Random(seed)
        self.prefix = prefix
        self.seen: set[Key] = set()

    def _one(self) -> Key:
        r, rng = self.rng.random(), self.rng
        app = f"{self.prefix}{rng.randrange(100)}"
        ent = rng.choice(ENTITIES)
        ident = rng.randrange(1_000_000)
        if r < 0.50:
            return f"{app}.{ent}.{ident}", None          # exact
        if r < 0.60:
            return f"{app}.{ent}.{ident}", "workers"     # exact, queue group
        if r < 0.75:
            return f"{app}.*.{ident}", None              # '*' inside
        if r < 0.80:
            return f"*.{ent}.{ident}", None              # leading '*'
        if r < 0.90:
            return f"{app}.{ent}.{ident}.>", None        # '>' on one object
        if r < 0.95:
            return f"{app}.{ent}.>", None                # '>' on a whole kind: covers many
        return f"{app}.{ent}.*", None                    # '*' on a whole kind: covers many

    def take(self, n: int) -> list[Key]:
        out = []
        while len(out) < n:
            key = self._one()
            if key not in self.seen:
                self.seen.add(key)
                out.append(key)
        return out


def summary(samples_ns: list[int]) -> dict:
    s = sorted(samples_ns)
    if not s:
        return {"n": 0}
    return {"n": len(s), "mean_us": statistics.fmean(s) / 1000,
            "p99_us": s[min(len(s) - 1, int(len(s) * 0.99))] / 1000, "max_us": s[-1] / 1000}


# ------------------------------------------------------------------------- in-process


class Stack:
    """The node's two tables, driven like ``brokers/exchange.py`` drives them."""

    def __init__(self, links: int) -> None:
        self.routes = RoutingTable("bench")
        self.table = InterestTable()
        self.table.add(LOCAL, "$inbox.bench.>")
        self.clients: list[str] = []
        self.updates = 0
        mix = Mix(seed=99, prefix="remote")
        for i in range(links):
            link = f"link{i}"
            self.routes.add_member(link, link=True)
            self.updates += len(self.table.add_link(link))
            for pattern, queue in mix.take(LINK_KEYS):
                self.routes.subscribe(link, pattern, queue)
                self.updates += len(self.table.add(link, pattern, queue))

    def client(self, i: int) -> str:
        while len(self.clients) <= i:
            name = f"c{len(self.clients)}"
            self.routes.add_member(name)
            self.clients.append(name)
        return self.clients[i]

    def sub(self, member: str, pattern: str, queue: str | None) -> None:
        if self.routes.subscribe(member, pattern, queue):
            self.updates += len(self.table.add(LOCAL, pattern, queue))

    def unsub(self, member: str, pattern: str, queue: str | None) -> None:
        if self.routes.unsubscribe(member, pattern, queue):
            self.updates += len(self.table.remove(LOCAL, pattern, queue))


def timed(ops: list[tuple], fn: Callable, deadline: Deadline) -> list[int]:
    """CPU nanoseconds of each ``fn(*args)``, as many as fit before ``deadline``: CPU,
    not wall time, so that other work on the machine does not count."""
    clock, out = time.thread_time_ns, []
    for args in ops:
        t0 = clock()
        fn(*args)
        out.append(clock() - t0)
        if deadline.expired():
            break
    return out


def in_process(size: int, links: int, measure: int, budget: float) -> dict:
    stack, mix = Stack(links), Mix(seed=size)
    deadline = Deadline(budget)
    filled, t0 = 0, time.thread_time()
    while filled < size and not deadline.expired():
        for pattern, queue in mix.take(min(1000, size - filled)):
            stack.sub(stack.client(filled // SUBS_PER_CLIENT), pattern, queue)
            filled += 1
    fill_s = time.thread_time() - t0
    member = stack.client(filled // SUBS_PER_CLIENT + 1)
    fresh = [(member, p, q) for p, q in mix.take(measure)]
    subs = timed(fresh, stack.sub, Deadline(budget / 4))
    unsubs = timed(fresh[:len(subs)], stack.unsub, Deadline(budget / 4))
    return {"size": size, "reached": filled, "links": links,
            "fill_us_per_sub": fill_s * 1e6 / max(filled, 1),
            "sub": summary(subs), "unsub": summary(unsubs)}


# ------------------------------------------------------------------------ end to end


@dataclass
class Probe:
    """Ping RTTs seen by a client that only pings, and the links' heartbeat gaps."""

    rtts: list[float] = field(default_factory=list)
    placement_gaps: list[float] = field(default_factory=list)
    interest_ops: int = 0
    snapshots: int = 0  # full INTEREST a link got without asking: the node dropped some
    dropped_links: int = 0


def _dealer(ctx: zmq.Context, address: str, rid: bytes | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    if rid is not None:
        sock.setsockopt(zmq.ROUTING_ID, rid)
    sock.connect(address)
    return sock


def _expect(sock: zmq.Socket, kind: type, timeout: float, where=lambda m: True):
    deadline = Deadline(timeout)
    while sock.poll(max(1, int(deadline.remaining() * 1000))):
        msg = P.decode(sock.recv_multipart())
        if isinstance(msg, kind) and where(msg):
            return msg
        if deadline.expired():
            break
    raise TimeoutError(f"no {kind.__name__} within {timeout}s")


def _hello(ctx: zmq.Context, address: str, name: str) -> zmq.Socket:
    sock = _dealer(ctx, address)
    sock.send_multipart(P.encode_hello(name))
    _expect(sock, P.Ready, 10)
    return sock


def _link_thread(ctx: zmq.Context, address: str, i: int, probe: Probe,
                 stop: threading.Event, ready: threading.Barrier) -> None:
    """A child link: its own interest, a ping a second, and the node's heartbeats."""
    sock = _dealer(ctx, address, f"node:benchlink{i}".encode())
    try:
        sock.send_multipart(P.encode_link(f"benchlink{i}", address="tcp://127.0.0.1:9"))
        _expect(sock, P.Linked, 10)
        keys = Mix(seed=1000 + i, prefix=f"remote{i}-").take(LINK_KEYS)
        sock.send_multipart(P.encode_interest(1, [(True, p, q) for p, q in keys]))
        ready.wait()
        last_placement = next_ping = time.monotonic()
        while not stop.is_set():
            if sock.poll(100):
                msg = P.decode(sock.recv_multipart())
                now = time.monotonic()
                if isinstance(msg, P.Interest):
                    probe.interest_ops += len(msg.ops)
                    probe.snapshots += msg.full
                elif isinstance(msg, P.PlacementInfo):
                    probe.placement_gaps.append(now - last_placement)
                    last_placement = now
                elif isinstance(msg, P.Error) or isinstance(msg, P.Bye):
                    probe.dropped_links += 1
            if time.monotonic() >= next_ping:
                sock.send_multipart(P.encode_ping(1))
                next_ping += HEARTBEAT
        probe.placement_gaps.append(time.monotonic() - last_placement)
    finally:
        sock.close()


def _probe_thread(ctx: zmq.Context, address: str, probe: Probe, stop: threading.Event,
                  ready: threading.Barrier) -> None:
    sock = _hello(ctx, address, "bench-probe")
    try:
        ready.wait()
        token = 0
        while not stop.wait(PROBE_EVERY):
            token += 1
            t0 = time.monotonic()
            sock.send_multipart(P.encode_ping(token))
            answered = False
            while not answered and not stop.is_set():  # a late PONG still counts
                if sock.poll(100):
                    msg = P.decode(sock.recv_multipart())
                    answered = isinstance(msg, P.Pong) and msg.token == token
            probe.rtts.append(time.monotonic() - t0)  # unanswered at the end: a floor
    finally:
        sock.close()


class Rounds:
    """The subscriber's side: batches of SUB/UNSUB, each followed by a PING."""

    def __init__(self, sock: zmq.Socket, pid: int, deadline: Deadline) -> None:
        self.sock, self.pid, self.deadline, self.token = sock, pid, deadline, 0

    def run(self, encode: Callable, keys: list[Key]) -> tuple[float, float]:
        """Send one message per key, then a PING: µs per key until the PONG, and µs
        of the node loop's CPU per key."""
        self.token += 1
        token, cpu0, t0 = self.token, loop_cpu_ns(self.pid), time.perf_counter()
        for pattern, queue in keys:
            self.sock.send_multipart(encode(pattern, queue))
        self.sock.send_multipart(P.encode_ping(token))
        _expect(self.sock, P.Pong, self.deadline.remaining() + 5,
                where=lambda m: m.token == token)
        wall, cpu = time.perf_counter() - t0, loop_cpu_ns(self.pid) - cpu0
        return wall * 1e6 / len(keys), cpu / 1000 / len(keys)


@contextmanager
def node_process() -> Iterator[tuple[str, int]]:
    """A node on a free port, no machine services; its address and pid."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-subscribe-") as tmp:
        config, log = Path(tmp) / "node.json", Path(tmp) / "node.log"
        config.write_text(json.dumps({"node": {"services": []}}))
        argv = [sys.executable, "-m", "tsctl.main", "node", "start", "--name", "bench",
                "--port", str(port), "--config", str(config)]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for_port(port, proc, log, 15)
            yield f"tcp://127.0.0.1:{port}", proc.pid
        finally:
            stop_process(proc)


def loop_cpu_ns(pid: int) -> int:
    """CPU time of the node's main thread (its event loop), in ns (schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def _fill_and_measure(rounds: Rounds, sizes: list[int], links: int,
                      chunk: int) -> list[dict]:
    """Fill up to each size in chunks; there, time a chunk of fresh SUBs, then their
    UNSUBs (back to the size)."""
    mix, done, rows = Mix(seed=7), 0, []
    for size in sizes:
        row: dict = {"size": size, "reached": done, "links": links}
        rows.append(row)
        fill: list[float] = []
        try:
            while done < size and not rounds.deadline.expired():
                keys = mix.take(min(chunk, size - done))
                fill.append(rounds.run(P.encode_sub, keys)[1])
                done += len(keys)
                row["reached"] = done
            if fill:  # the loop's CPU per SUB on the way up, for a steadier figure
                row["fill_cpu_us"] = statistics.fmean(fill)
            if done < size:
                return rows  # not within the budget: the fill says how slow it was
            keys = mix.take(chunk)
            row["sub_us"], row["sub_cpu_us"] = rounds.run(P.encode_sub, keys)
            row["unsub_us"], row["unsub_cpu_us"] = rounds.run(P.encode_unsub, keys)
        except TimeoutError:
            row["note"] = "no PONG within the budget"
            return rows
    return rows


def end_to_end(sizes: list[int], links: int, chunk: int, budget: float) -> dict:
    """One node; SUBs in chunks up to the largest size; figures at every size."""
    probe, stop = Probe(), threading.Event()
    ctx = zmq.Context()
    with node_process() as (address, pid):
        ready = threading.Barrier(links + 2)
        threads = [threading.Thread(target=_link_thread, daemon=True,
                                    args=(ctx, address, i, probe, stop, ready))
                   for i in range(links)]
        threads.append(threading.Thread(target=_probe_thread, daemon=True,
                                        args=(ctx, address, probe, stop, ready)))
        for t in threads:
            t.start()
        sub = _hello(ctx, address, "bench-sub")
        try:
            ready.wait(30)
            rows = _fill_and_measure(Rounds(sub, pid, Deadline(budget)), sorted(sizes),
                                     links, chunk)
        finally:
            stop.set()
            for t in threads:
                t.join(5)
            sub.close()
    ctx.term()
    rtts = sorted(probe.rtts)
    heartbeat = {"probe_pings": len(rtts),
                 "probe_max_ms": rtts[-1] * 1000 if rtts else None,
                 "probe_p99_ms": rtts[int(len(rtts) * 0.99)] * 1000 if rtts else None,
                 "placement_max_gap_s": max(probe.placement_gaps, default=None),
                 "interest_ops_to_links": probe.interest_ops,
                 "snapshots_to_links": probe.snapshots,
                 "link_errors": probe.dropped_links}
    return {"links": links, "rows": rows, "heartbeat": heartbeat}


# ------------------------------------------------------------------------------ CLI


def _fmt(value: float | None, spec: str = ",.1f") -> str:
    return "-" if value is None else format(value, spec)


def print_in_process(results: list[dict]) -> None:
    print("in-process (routing + interest tables), µs per operation at each size")
    print(f"{'size':>8} {'links':>5} {'reached':>8} {'fill/SUB':>9} {'SUB mean':>9} "
          f"{'p99':>8} {'max':>9} {'UNSUB mean':>10} {'p99':>8} {'max':>9}")
    for r in results:
        s, u = r["sub"], r["unsub"]
        print(f"{r['size']:>8,} {r['links']:>5} {r['reached']:>8,} "
              f"{_fmt(r['fill_us_per_sub']):>9} {_fmt(s.get('mean_us')):>9} "
              f"{_fmt(s.get('p99_us')):>8} {_fmt(s.get('max_us')):>9} "
              f"{_fmt(u.get('mean_us')):>10} {_fmt(u.get('p99_us')):>8} "
              f"{_fmt(u.get('max_us')):>9}")


def print_end_to_end(result: dict, chunk: int) -> None:
    hb = result["heartbeat"]
    print(f"end to end, one node process, {result['links']} links: at each size, {chunk} "
          f"fresh SUBs then a PING, µs per SUB until the PONG (wall) and of the node "
          f"loop's CPU; then their UNSUBs")
    for r in result["rows"]:
        print(f"  {r['size']:>8,} (reached {r['reached']:>7,}): "
              f"SUB {_fmt(r.get('sub_us')):>8} wall {_fmt(r.get('sub_cpu_us')):>8} cpu "
              f"(filling {_fmt(r.get('fill_cpu_us')):>7} cpu)   "
              f"UNSUB {_fmt(r.get('unsub_us')):>8} wall {_fmt(r.get('unsub_cpu_us')):>8} cpu"
              f"  {r.get('note', '')}")
    print(f"  heartbeats meanwhile: a client's ping every {PROBE_EVERY * 1000:.0f} ms "
          f"answered within max {_fmt(hb['probe_max_ms'])} ms (p99 "
          f"{_fmt(hb['probe_p99_ms'])} ms, {hb['probe_pings']} pings); the node's "
          f"placement to its links: max gap {_fmt(hb['placement_max_gap_s'], '.2f')} s "
          f"(sent every {HEARTBEAT:.0f} s); {hb['interest_ops_to_links']:,} interest ops "
          f"reached the links; {hb['snapshots_to_links']} snapshots owed after dropped "
          f"sends; link errors {hb['link_errors']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,100000",
                   help="subscriptions held when measuring (comma separated)")
    p.add_argument("--links", default="0,4", help="links attached, one run each (comma "
                   "separated)")
    p.add_argument("--measure", type=int, default=1000, help="SUBs timed per case")
    p.add_argument("--chunk", type=int, default=1000, help="SUBs per PING end to end")
    p.add_argument("--budget", type=float, default=60.0, help="seconds per case at most")
    p.add_argument("--skip", choices=["in-process", "e2e"], default=None)
    p.add_argument("--json", type=Path, default=None, help="append the results here")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    link_counts = [int(n) for n in args.links.split(",")]
    out: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sizes": sizes}
    if args.skip != "in-process":
        out["in_process"] = [in_process(size, links, args.measure, args.budget)
                             for links in link_counts for size in sizes]
        print_in_process(out["in_process"])
    if args.skip != "e2e":
        out["end_to_end"] = []
        for links in link_counts:
            result = end_to_end(sizes, links, args.chunk, args.budget)
            out["end_to_end"].append(result)
            print_end_to_end(result, args.chunk)
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
