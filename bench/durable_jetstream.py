"""NATS JetStream as bench.durable's peer: its servers and its four workers.

Owns: starting nats-server with JetStream on file storage in a temp dir (one server, or
a hub with two leafnodes for the tree shape) and driving it with nats-py the way nats-py
recommends for throughput: ``js.publish_async`` with many acks in flight, then
``publish_async_completed``; a durable pull consumer with explicit acks (``fetch``
batches, ``ack`` each). Does not own the shapes, the tables or the ratios
(bench.durable) and never touches TreeScale.

fsync: nats-server 2.9's file store syncs every 2 minutes and 2.9.10 refuses
``sync_interval`` as an unknown field: a PubAck means "in the server's page cache",
not "on disk".

Workers run in spawned processes (module-level functions); each returns a dict.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from bench.durable_shapes import PROBE, SUBJECTS, recv, stamp_of, stamped
from bench.harness import HOST, Deadline, broker, command_version, free_port

NAME = "jetstream"
STREAM = "BENCH"
DURABLE = "bench"
FSYNC = "sync_interval 2 min (2.9 default): PubAck before fsync"
#: In-flight publish_async acks for 100 B (bounded to ~64 MiB for large payloads).
ASYNC_WINDOW = 4000
FETCH_BATCH = 1000  # == max_ack_pending, like TreeScale's max_pending
MAX_ACK_PENDING = 1000
ACK_WAIT_S = 30.0
API_TIMEOUT_S = 10.0
DOMAIN = "hub"  # the tree's JetStream domain


def version() -> str:
    return command_version(["nats-server", "--version"])


def _hub_conf(workdir: Path, port: int, leaf_port: int | None) -> list[str]:
    conf = workdir / "hub.conf"
    # Leaves reach the hub's JetStream only through a domain (else the leafnode link
    # denies $JS.API: "JetStream Not Extended"); their clients name it.
    domain = f", domain: {DOMAIN}" if leaf_port else ""
    leaf = f"leafnodes {{ listen: \"{HOST}:{leaf_port}\" }}\n" if leaf_port else ""
    conf.write_text(f"host: {HOST}\nport: {port}\nmax_payload: 8MB\nmax_pending: 1GB\n"
                    f"jetstream {{ store_dir: \"{workdir / 'js'}\"{domain} }}\n{leaf}")
    return ["nats-server", "-c", str(conf)]


def _leaf_conf(workdir: Path, port: int, hub_leaf_port: int) -> list[str]:
    """A leafnode without JetStream of its own: the hub's stream serves its clients."""
    conf = workdir / "leaf.conf"
    conf.write_text(f"host: {HOST}\nport: {port}\nmax_payload: 8MB\nmax_pending: 1GB\n"
                    f"leafnodes {{ remotes: [ {{ url: \"nats-leaf://{HOST}:{hub_leaf_port}\" }} ] }}\n")
    return ["nats-server", "-c", str(conf)]


@contextmanager
def server(tree: bool) -> Iterator[str]:
    """One JetStream server ("host:port"), or for ``tree`` a hub with JetStream and two
    leafnodes ("LEAF_A|LEAF_B": publisher on A, consumer on B, the stream on the hub)."""
    with ExitStack() as stack:
        if not tree:
            yield stack.enter_context(broker("jetstream",
                                             lambda p, w: _hub_conf(w, p, None)))
            return
        leaf_port = free_port()
        stack.enter_context(broker("jetstream-hub", lambda p, w: _hub_conf(w, p, leaf_port)))
        a = stack.enter_context(broker("jetstream-leaf-a",
                                       lambda p, w: _leaf_conf(w, p, leaf_port)))
        b = stack.enter_context(broker("jetstream-leaf-b",
                                       lambda p, w: _leaf_conf(w, p, leaf_port)))
        asyncio.run(_wait_leaves(a, b))
        yield f"{a}|{b}"


async def _connect(address: str) -> Any:
    return await nats.connect(servers=[f"nats://{address}"], allow_reconnect=False,
                              connect_timeout=API_TIMEOUT_S, max_outstanding_pings=10)


def _js(nc: Any, address: str, **kw: Any) -> Any:
    """The JetStream context: through the hub's domain when ``address`` is the tree."""
    return nc.jetstream(timeout=API_TIMEOUT_S, domain=DOMAIN if "|" in address else None, **kw)


async def _wait_leaves(a: str, b: str, timeout: float = 30.0) -> None:
    """Until both leaves reach the hub's JetStream API (their leafnode links are up)."""
    deadline = Deadline(timeout)
    for address in (a, b):
        nc = await _connect(address)
        try:
            while True:
                try:
                    await nc.jetstream(timeout=1, domain=DOMAIN).account_info()
                    break
                except Exception:
                    if deadline.expired():
                        raise TimeoutError(f"leafnode {address} has no JetStream after "
                                           f"{timeout:g}s") from None
                    await asyncio.sleep(0.1)  # bounded poll of a link coming up
        finally:
            await nc.close()


async def _setup(js: Any) -> None:
    """The stream on file storage and the durable pull consumer, both fresh."""
    await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECTS],
                                     storage=StorageType.FILE))
    await js.add_consumer(STREAM, ConsumerConfig(
        durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S,
        max_ack_pending=MAX_ACK_PENDING, filter_subject=SUBJECTS))


async def _publish_many(js: Any, subject: str, body: bytes, count: int,
                        deadline: Deadline) -> tuple[int, list[str]]:
    """publish_async ``count`` times (the window bounds acks in flight), then wait for
    every PubAck: (confirmed, first errors)."""
    futures = []
    for _ in range(count):
        if deadline.expired():
            break
        # no wait_stall: with one, every call pays an asyncio.wait_for (a task and a
        # timer), which costs JetStream two thirds of its rate; the gather is bounded
        futures.append(await js.publish_async(subject, body))
    done = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True),
                                  max(0.1, deadline.remaining()))
    errors = [f"{type(r).__name__}: {r}" for r in done if isinstance(r, BaseException)]
    return len(done) - len(errors), errors[:5]


def publish_rate(address: str, subject: str, size: int, count: int,
                 budget: float) -> dict[str, Any]:
    """``count`` confirmed publishes of ``size`` bytes: time from the first publish to
    the last PubAck."""
    async def main() -> dict[str, Any]:
        nc = await _connect(address.split("|")[0])
        try:
            window = max(1, min(ASYNC_WINDOW, (64 << 20) // max(1, size)))
            js = _js(nc, address, publish_async_max_pending=window)
            await _setup(js)
            deadline = Deadline(budget)
            t0 = time.perf_counter()
            confirmed, errors = await _publish_many(js, subject, b"x" * size, count, deadline)
            return {"count": confirmed, "seconds": time.perf_counter() - t0,
                    "errors": errors, "window": window}
        finally:
            await nc.close()
    return asyncio.run(main())


def consume_rate(address: str, subject: str, size: int, count: int,
                 budget: float) -> dict[str, Any]:
    """``count`` events stored first (not timed), then fetched and acked one by one:
    time from the first fetch to the last ack flushed to the server."""
    async def main() -> dict[str, Any]:
        nc = await _connect(address.split("|")[0])
        try:
            js = _js(nc, address, publish_async_max_pending=ASYNC_WINDOW)
            await _setup(js)
            deadline = Deadline(budget)
            stored, errors = await _publish_many(js, subject, b"x" * size, count, deadline)
            psub = await js.pull_subscribe_bind(DURABLE, STREAM)
            got = 0
            t0 = time.perf_counter()
            while got < stored and not deadline.expired():
                try:
                    msgs = await psub.fetch(min(FETCH_BATCH, stored - got), timeout=5)
                except TimeoutError:
                    break
                for msg in msgs:
                    await msg.ack()
                got += len(msgs)
            await nc.flush(timeout=int(API_TIMEOUT_S))
            return {"count": got, "seconds": time.perf_counter() - t0, "stored": stored,
                    "errors": errors}
        finally:
            await nc.close()
    return asyncio.run(main())


def latency_publisher(address: str, subject: str, size: int, count: int,
                      conn: Connection, budget: float) -> dict[str, Any]:
    """One event at a time: stamp it, publish it, await its PubAck, then wait for the
    consumer's "next". Probes first, until the consumer says one reached it."""
    async def main() -> dict[str, Any]:
        deadline = Deadline(budget)
        if recv(conn, 30) != "ready":
            raise TimeoutError("the consumer did not attach within 30 s")
        nc = await _connect(address.split("|")[0])
        try:
            js = _js(nc, address)
            while True:
                await js.publish(subject, PROBE)
                if recv(conn, 0.2) == "probe-seen":
                    break
                if deadline.expired():
                    raise TimeoutError("no probe reached the consumer")
            sent = 0
            while sent < count and not deadline.expired():
                await js.publish(subject, stamped(size))
                sent += 1
                if recv(conn, min(10.0, deadline.remaining())) != "next":
                    raise TimeoutError(f"event {sent} not delivered within 10 s")
            return {"sent": sent}
        finally:
            await nc.close()
    return asyncio.run(main())


def latency_consumer(address: str, count: int, conn: Connection,
                     budget: float) -> dict[str, Any]:
    """Creates the stream and the durable, keeps one fetch(1) waiting at the server
    (flushed before it says "next"), takes each event's latency from its stamp, acks."""
    async def main() -> dict[str, Any]:
        nc = await _connect(address.split("|")[-1])
        deadline = Deadline(budget)
        lat: list[float] = []
        probed = False  # a probe arrived: the publisher may start
        say: str | None = None  # told once the next fetch waits at the server
        try:
            js = _js(nc, address)
            await _setup(js)
            psub = await js.pull_subscribe_bind(DURABLE, STREAM)
            conn.send("ready")
            while len(lat) < count and not deadline.expired():
                fetch = asyncio.ensure_future(psub.fetch(1, timeout=5))
                await asyncio.sleep(0)  # the fetch task sends its pull request
                await nc.flush(timeout=int(API_TIMEOUT_S))  # ...and the server has it
                if say:
                    conn.send(say)
                    say = None
                try:
                    msgs = await fetch
                except TimeoutError:
                    msgs = []
                now = time.monotonic()
                for msg in msgs:
                    await msg.ack()
                    if msg.data == PROBE:  # later probes are only acked
                        if not probed:
                            say, probed = "probe-seen", True
                    else:
                        lat.append((now - stamp_of(msg.data)) * 1e6)
                        say = "next"
                        if len(lat) >= count:  # no next fetch: tell it now
                            conn.send(say)
            return {"latencies_us": lat}
        finally:
            await nc.close()
    return asyncio.run(main())


def config_note(tree: bool) -> str:
    return ("hub (JetStream, file store) + 2 leafnodes; publisher on leaf A, "
            "consumer on leaf B" if tree else "one server, JetStream file store")

