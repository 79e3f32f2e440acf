"""TreeScale durable delivery in bench.durable: its nodes and its four workers.

Owns: starting node processes whose database and durable log live in the run's temp dir (one node,
or a root with two children for the tree shape), at a chosen ``durable_sync``, and
driving them with the public Client: ``publish(..., durable=True)`` then ``flush``
(returns once every event is confirmed), ``publish(..., durable=True, wait=True)`` for
one confirmed event, ``subscribe(SUBJECTS, durable=...)`` and ``ev.ack()``. Does not own
the shapes, the tables or the ratios (bench.durable), never touches JetStream.

The durable is created (subscribed, then its client closed: the durable stays) before
any publish is timed, so every confirmed event is stored for a consumer, as in the
JetStream stream. ``unavailable()`` says why not when this Client has no durable API.

Workers run in spawned processes (module-level functions); each returns a dict.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.durable_shapes import PROBE, SUBJECTS, recv, stamp_of, stamped
from bench.harness import Deadline, broker

NAME = "treescale"
DURABLE = "bench"
ACK_WAIT_S = 30.0
MAX_PENDING = 1000  # == JetStream's max_ack_pending
#: Each durable_sync the node knows, and what a confirm then means.
FSYNC = {None: "node default (always/group): confirm after fsync",
         "always": "fsync each event before its confirm",
         "group": "group commit: one fsync per batch, confirm after it",
         "none": "no fsync: confirm once written (like JetStream 2.9)"}


def unavailable() -> str | None:
    """Why this TreeScale cannot run the benchmark (None: it can)."""
    try:
        from treescale import Client, DeliveryError  # noqa: F401
    except ImportError as exc:
        return f"treescale has no durable delivery yet ({exc})"
    for method in ("publish", "subscribe"):
        if "durable" not in inspect.signature(getattr(Client, method)).parameters:
            return f"Client.{method} takes no durable= yet"
    return None


def version() -> str:
    from treescale import __version__
    return f"treescale {__version__}"


def _address(hostport: str) -> str:
    return hostport if hostport.startswith("tcp://") else f"tcp://{hostport}"


def _node_argv(name: str, parent: str | None, sync: str | None):
    def argv(port: int, workdir: Path) -> list[str]:
        node: dict[str, Any] = {
            # buffer rather than drop, like every peer in bench/ (see bench.harness)
            "slow_consumer_bytes": 4 << 30, "slow_consumer_messages": 1_000_000,
            # the durable log defaults to next to the db: both in the run's temp dir
            "services": [], "db_path": str(workdir / f"{name}.db")}
        if sync is not None:
            node["durable_sync"] = sync
        if parent is not None:
            node["parent"] = _address(parent)
        config = workdir / f"{name}.json"
        config.write_text(json.dumps({"node": node}))
        return [sys.executable, "-m", "tsctl.main", "node", "start", "--name", name,
                "--port", str(port), "--config", str(config)]
    return argv


@contextmanager
def server(tree: bool, sync: str | None) -> Iterator[str]:
    """One node ("host:port"), or for ``tree`` a root with two children ("LEAF_A|LEAF_B":
    publisher on A, durable subscriber on B)."""
    with ExitStack() as stack:
        if not tree:
            yield stack.enter_context(broker("ts-durable", _node_argv("bench", None, sync)))
            return
        root = stack.enter_context(broker("ts-root", _node_argv("root", None, sync)))
        a = stack.enter_context(broker("ts-leaf-a", _node_argv("leaf-a", root, sync)))
        b = stack.enter_context(broker("ts-leaf-b", _node_argv("leaf-b", root, sync)))
        _wait_linked(a, b)
        yield f"{a}|{b}"


def _wait_linked(a: str, b: str, timeout: float = 30.0) -> None:
    """Until a plain event from leaf A reaches a subscriber on leaf B: both links are up
    and interest crosses the root."""
    from treescale import Client

    deadline = Deadline(timeout)
    with Client(_address(b), name="probe-sub") as sub, \
            Client(_address(a), name="probe-pub") as pub:
        sub.subscribe("probe.link")
        while not deadline.expired():
            pub.publish("probe.link", b"?")
            if sub.next_event(0.1) is not None:
                return
    raise TimeoutError(f"leaf A did not reach leaf B through the root within {timeout:g}s")


def _create_durable(address: str) -> None:
    """The durable exists (and is detached) before anything is published."""
    from treescale import Client

    with Client(_address(address), name="bench-durable") as s:
        s.subscribe(SUBJECTS, durable=DURABLE, ack_wait=ACK_WAIT_S, max_pending=MAX_PENDING)


def _publish_many(c: Any, subject: str, body: bytes, count: int,
                  deadline: Deadline) -> tuple[int, list[str]]:
    """Publish ``count`` durable events and wait until every one is confirmed."""
    from treescale import DeliveryError

    sent = 0
    publish = c.publish
    while sent < count and not deadline.expired():
        publish(subject, body, durable=True)
        sent += 1
    try:
        c.flush(timeout=max(1.0, deadline.remaining()))
    except (DeliveryError, TimeoutError) as exc:
        return 0, [f"{type(exc).__name__}: {exc}"[:500]]
    return sent, []


def publish_rate(address: str, subject: str, size: int, count: int,
                 budget: float) -> dict[str, Any]:
    """``count`` confirmed durable publishes: first publish to the last confirm."""
    from treescale import Client

    node = address.split("|")[0]
    _create_durable(node)
    with Client(_address(node), name="bench-pub") as c:
        deadline = Deadline(budget)
        t0 = time.perf_counter()
        confirmed, errors = _publish_many(c, subject, b"x" * size, count, deadline)
        return {"count": confirmed, "seconds": time.perf_counter() - t0, "errors": errors}


def consume_rate(address: str, subject: str, size: int, count: int,
                 budget: float) -> dict[str, Any]:
    """``count`` events stored first (not timed), then the durable resumed: time from
    its subscribe to the last ack flushed to the node."""
    from treescale import Client

    node = _address(address.split("|")[0])
    _create_durable(node)
    deadline = Deadline(budget)
    with Client(node, name="bench-pub") as c:
        stored, errors = _publish_many(c, subject, b"x" * size, count, deadline)
    got = redelivered = 0
    with Client(node, name="bench-consumer") as s:
        t0 = time.perf_counter()
        s.subscribe(SUBJECTS, durable=DURABLE, ack_wait=ACK_WAIT_S, max_pending=MAX_PENDING)
        while got < stored and not deadline.expired():
            n = got
            for ev in s.events(timeout=5):
                ev.ack()
                got += 1
                redelivered += bool(ev.redelivered)
                if got >= stored:
                    break
            if got == n:  # five seconds without an event
                break
        s.flush(timeout=max(1.0, deadline.remaining()))
        return {"count": got, "seconds": time.perf_counter() - t0, "stored": stored,
                "redelivered": redelivered, "errors": errors}


def latency_publisher(address: str, subject: str, size: int, count: int,
                      conn: Connection, budget: float) -> dict[str, Any]:
    """One event at a time: stamp, publish durable and wait for its confirm, then wait
    for the consumer's "next". Probes first, until the consumer says one reached it
    (in the tree its durable interest has crossed the root)."""
    from treescale import Client, DeliveryError

    deadline = Deadline(budget)
    if recv(conn, 30) != "ready":
        raise TimeoutError("the consumer did not attach within 30 s")
    with Client(_address(address.split("|")[0]), name="bench-pub") as c:
        while True:
            try:
                c.publish(subject, PROBE, durable=True, wait=True)
            except DeliveryError:  # e.g. no durable interest here yet
                pass
            if recv(conn, 0.2) == "probe-seen":
                break
            if deadline.expired():
                raise TimeoutError("no probe reached the consumer")
        sent = 0
        while sent < count and not deadline.expired():
            c.publish(subject, stamped(size), durable=True, wait=True)
            sent += 1
            if recv(conn, min(10.0, deadline.remaining())) != "next":
                raise TimeoutError(f"event {sent} not delivered within 10 s")
        return {"sent": sent}


def latency_consumer(address: str, count: int, conn: Connection,
                     budget: float) -> dict[str, Any]:
    """Creates the durable, takes each event's latency from its stamp, acks it, says
    "next"."""
    from treescale import Client

    deadline = Deadline(budget)
    lat: list[float] = []
    probed = False
    with Client(_address(address.split("|")[-1]), name="bench-consumer") as s:
        s.subscribe(SUBJECTS, durable=DURABLE, ack_wait=ACK_WAIT_S, max_pending=MAX_PENDING)
        conn.send("ready")
        while len(lat) < count and not deadline.expired():
            for ev in s.events(timeout=1):
                now = time.monotonic()
                ev.ack()
                if ev.data == PROBE:  # later probes are only acked
                    if not probed:
                        probed = True
                        conn.send("probe-seen")
                else:
                    lat.append((now - stamp_of(ev.data)) * 1e6)
                    conn.send("next")
                if len(lat) >= count or deadline.expired():
                    break
    return {"latencies_us": lat}


def config_note(tree: bool) -> str:
    return ("root + 2 child nodes; publisher on leaf A, durable subscriber on leaf B "
            "(its log on B)" if tree else "one node")
