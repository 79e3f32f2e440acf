"""Events through WebSocket, same run: 100 B events from one publisher to one subscriber.

Owns: the WebSocket benchmark of BENCHMARKS.md ("browsers on the bus"). Subscribers:
* ``treescale-ws-process``: a Node.js program with the JavaScript client (clients/js)
  through the node's gateway (``websocket_port``), which runs as a child process of
  the node (the default); ``treescale-ws-thread``: the same, the gateway on a thread
  of the node (``websocket_gateway = "thread"``);
* ``treescale-zmq``: a Python ZeroMQ client of the same node (per-event ``events()``),
  the shape a backend program uses; ``treescale-zmq+ws-process`` and ``-thread``: its
  rate while a WebSocket subscriber takes the same stream (what the gateway costs the
  node, apart or on its thread);
* ``nats-ws``: a Node.js program with ``nats.ws`` through nats-server's own websocket
  listener, and ``nats-tcp``, nats-py over TCP, for scale.
The publisher is Python in every case (``publish_many`` for TreeScale, nats-py for
NATS). A rate is the subscriber's: events over the time from its first event to its
last. Each system runs ``--repeat`` times; the median counts. Every run is bounded in
count and time; all traffic stays on 127.0.0.1.

    python -m bench.websocket [--count 200000] [--repeat 3] [--json FILE]
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from bench.harness import broker, free_port
from bench.peer_programs import runnable_systems
from bench.peers import NATS_CONF, NatsSystem

ROOT = Path(__file__).resolve().parent.parent
JS_DIR = Path(__file__).resolve().parent / "js"
SUBJECT = "bench.ws"
SIZE = 100
READY_TIMEOUT = 30.0
NODE_FLAGS = ["--experimental-websocket"]

PY_SUBSCRIBER = r"""
import json, sys, time
from treescale import Client
address, subject, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
with Client(address, name="bench-zmq-sub") as c:
    c.subscribe(subject)
    c.flush()
    print("ready", flush=True)
    received = size = 0
    first = last = None
    deadline = time.monotonic() + timeout
    for ev in c.events(timeout=timeout):
        if first is None:
            first = time.perf_counter()
        received += 1
        size += len(ev.data)
        if received >= count or time.monotonic() > deadline:
            break
    last = time.perf_counter()
    print(json.dumps({"how": "done" if received >= count else "timeout",
                      "received": received, "bytes": size,
                      "seconds": last - (first or last)}), flush=True)
"""


def say(text: str) -> None:
    click.echo(text, err=True)


def js_ready() -> str | None:
    """Why the Node.js subscribers cannot run (None: they can): node and npm, and
    bench/js's packages (installed here on first use)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not installed (Debian: apt-get install nodejs npm)"
    if not (JS_DIR / "node_modules" / "nats.ws").exists() or \
            not (JS_DIR / "node_modules" / "treescale").exists():
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund",
                               "--loglevel=error"], cwd=JS_DIR, capture_output=True,
                              text=True, timeout=300)
        if done.returncode != 0:
            return f"npm install in {JS_DIR} failed: {done.stderr.strip()[-300:]}"
    return None


@contextmanager
def process(argv: list[str], log: Path, **kw) -> Iterator[subprocess.Popen]:
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=kw.pop("stdout", out), stderr=out,
                                stdin=subprocess.DEVNULL, cwd=kw.pop("cwd", ROOT), **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_line(proc: subprocess.Popen, want: str | None, timeout: float) -> str:
    """The subscriber's next line (the first that equals ``want``, if given)."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            raise TimeoutError(f"subscriber silent for {timeout:g}s")
        line = proc.stdout.readline().decode().strip()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"subscriber exited with {proc.returncode}")
        if want is None or line == want:
            return line


def run_once(sub_argv: list[str], publish: Callable[[], None], count: int,
             timeout: float, log: Path, cwd: Path = ROOT,
             beside: list[str] | None = None) -> dict:
    """Start a subscriber (and ``beside``, a second one on the same stream, from
    JS_DIR), publish once both are ready, return the first one's report."""
    with process(sub_argv, log, stdout=subprocess.PIPE, cwd=cwd) as sub, \
            _maybe(beside, log) as other:
        wait_line(sub, "ready", READY_TIMEOUT)
        if other is not None:
            wait_line(other, "ready", READY_TIMEOUT)
        started = time.perf_counter()
        publish()
        published = time.perf_counter() - started
        report = json.loads(wait_line(sub, None, timeout + 10))
        if other is not None:
            report["beside"] = json.loads(wait_line(other, None, timeout + 10))
    report["publish_seconds"] = published
    report["rate"] = report["received"] / report["seconds"] if report["seconds"] else 0.0
    report["lost"] = count - report["received"]
    return report


@contextmanager
def _maybe(argv: list[str] | None, log: Path) -> Iterator[subprocess.Popen | None]:
    if argv is None:
        yield None
        return
    with process(argv, log, stdout=subprocess.PIPE, cwd=JS_DIR) as proc:
        yield proc


def treescale_publisher(address: str, count: int) -> Callable[[], None]:
    def publish() -> None:
        from treescale import Client

        body = b"x" * SIZE
        with Client(address, name="bench-ws-pub") as c:
            sent = 0
            while sent < count:
                n = min(1000, count - sent)
                c.publish_many(SUBJECT, [body] * n)
                sent += n
            c.flush(timeout=60)
    return publish


def nats_publisher(address: str, count: int) -> Callable[[], None]:
    def publish() -> None:
        import nats

        async def main() -> None:
            nc = await nats.connect(servers=[f"nats://{address}"], allow_reconnect=False)
            body = b"x" * SIZE
            for _ in range(count):
                await nc.publish(SUBJECT, body)
            await nc.flush(timeout=60)
            await nc.close()

        asyncio.run(main())
    return publish


@contextmanager
def treescale_node(workdir: Path, gateway: str) -> Iterator[tuple[str, int]]:
    """A node whose WebSocket gateway runs as ``gateway`` (process or thread)."""
    from treescale.local import answers_ping

    port, ws_port = free_port(), free_port()
    conf = workdir / f"node-{gateway}.json"
    conf.write_text(json.dumps({"node": {"websocket_gateway": gateway}}))
    argv = [sys.executable, "-m", "tsctl.main", "node", "start", "--name", "bench",
            "--port", str(port), "--ws-port", str(ws_port), "--max-payload", str(1 << 24),
            "--config", str(conf)]
    env = {**os.environ, "TREE_DB_PATH": str(workdir / "bench.db"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "cli")])}
    env.pop("TREESCALE_TOKEN", None)
    with process(argv, workdir / "node.log", env=env) as proc:
        address = f"tcp://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT
        while not answers_ping(address):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bench node did not start: "
                                   + (workdir / "node.log").read_text()[-500:])
        yield address, ws_port


def nats_ws_conf(ws_port: int) -> str:
    return NATS_CONF + f"websocket {{\n  host: 127.0.0.1\n  port: {ws_port}\n  no_tls: true\n}}\n"


def measure(count: int, repeat: int, timeout: float, workdir: Path) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    js_problem = js_ready()
    if js_problem:
        say(f"treescale-ws, nats-ws: {js_problem}; benchmarking without them")
    node = ["node", *NODE_FLAGS, str(JS_DIR / "ws_sub.mjs")]
    log = workdir / "subscribers.log"

    def record(name: str, argv: list[str], publish: Callable[[], None], cwd: Path,
               beside: list[str] | None = None) -> None:
        for i in range(repeat):
            report = run_once(argv, publish, count, timeout, log, cwd, beside)
            results.setdefault(name, []).append(report)
            say(f"{name} run {i + 1}: {report['rate']:,.0f} events/s "
                f"({report['received']:,} of {count:,})")

    for mode in ("process", "thread"):
        with treescale_node(workdir, mode) as (address, ws_port):
            publish = treescale_publisher(address, count)
            args = [SUBJECT, str(count), str(timeout)]
            zmq_sub = [sys.executable, "-c", PY_SUBSCRIBER, address, *args]
            if mode == "process":
                record("treescale-zmq", zmq_sub, publish, ROOT)
            if js_problem:
                continue
            ws_sub = [*node, "treescale", f"ws://127.0.0.1:{ws_port}/", *args]
            record(f"treescale-ws-{mode}", ws_sub, publish, JS_DIR)
            # what the gateway costs the node: a ZeroMQ subscriber's rate while a
            # WebSocket subscriber takes the same stream
            record(f"treescale-zmq+ws-{mode}", zmq_sub, publish, ROOT, beside=ws_sub)
    if not runnable_systems({"nats": NatsSystem()}, install=True, say=say):
        return results
    ws_port = free_port()

    def argv(port: int, conf_dir: Path) -> list[str]:
        conf = conf_dir / "nats.conf"
        conf.write_text(nats_ws_conf(ws_port))
        return ["nats-server", "-c", str(conf), "-a", "127.0.0.1", "-p", str(port)]

    with broker("nats-ws", argv) as address:
        publish = nats_publisher(address, count)
        if not js_problem:
            record("nats-ws", [*node, "nats", f"ws://127.0.0.1:{ws_port}", SUBJECT,
                               str(count), str(timeout)], publish, JS_DIR)
        record("nats-tcp", [sys.executable, "-c", NATS_SUBSCRIBER, address, SUBJECT,
                            str(count), str(timeout)], publish, ROOT)
    return results


NATS_SUBSCRIBER = r"""
import asyncio, json, sys, time
import nats
address, subject, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
async def main():
    nc = await nats.connect(servers=[f"nats://{address}"], allow_reconnect=False)
    done = asyncio.Event()
    state = {"n": 0, "bytes": 0, "first": None, "last": None}
    async def on_msg(msg):
        if state["first"] is None:
            state["first"] = time.perf_counter()
        state["n"] += 1
        state["bytes"] += len(msg.data)
        if state["n"] >= count:
            state["last"] = time.perf_counter()
            done.set()
    await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=0, pending_bytes_limit=0)
    await nc.flush()
    print("ready", flush=True)
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    last = state["last"] or time.perf_counter()
    print(json.dumps({"how": "done" if done.is_set() else "timeout", "received": state["n"],
                      "bytes": state["bytes"], "seconds": last - (state["first"] or last)}),
          flush=True)
    await nc.close()
asyncio.run(main())
"""


def summary(results: dict[str, list[dict]]) -> dict[str, float]:
    return {name: statistics.median(r["rate"] for r in runs)
            for name, runs in results.items()}


def print_table(rates: dict[str, float], results: dict[str, list[dict]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{SIZE} B events, one publisher, one subscriber (median)")
    for col in ("system", "events/s", "vs treescale-zmq", "vs nats-ws", "lost"):
        table.add_column(col, justify="right" if col != "system" else "left")
    for name, rate in rates.items():
        ratio = [f"{rate / rates[ref]:.2f}x" if rates.get(ref) else "—"
                 for ref in ("treescale-zmq", "nats-ws")]
        lost = sum(r["lost"] for r in results[name])
        table.add_row(name, f"{rate:,.0f}", *ratio, str(lost))
    Console().print(table)


@click.command()
@click.option("--count", default=200_000, show_default=True, help="Events per run.")
@click.option("--repeat", default=3, show_default=True, help="Runs per system.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds per run, at most.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results.")
def main(count: int, repeat: int, timeout: float, json_path: str | None) -> None:
    import platform
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp:
        results = measure(count, repeat, timeout, Path(tmp))
    rates = summary(results)
    print_table(rates, results)
    if json_path:
        Path(json_path).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
            "count": count, "size": SIZE, "rates": rates, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
