"""TreeScale in the benchmark harness: one node process, driven by the Python Client.

Subscribers use the ordinary per-event API (``Client.events()``, one ``Event`` object per
message), exactly what an application would write; the count goes through the same
``Tally.add`` per message as every peer. The responder is a subscription handler, the
way a service answers requests (like a nats-py subscription callback).
``treescale-batch`` is the same node driven by the batch API (``publish_many``,
``batches()``), which counts a delivery at a time.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

from bench.harness import (
    POLL_S,
    REQUEST_TIMEOUT_S,
    WORKER_BUDGET_S,
    BaseSystem,
    Deadline,
    RoundTrips,
    Tally,
    batches,
    broker,
    payload,
)
from treescale import Client, NoResponders, __version__

REQREP_SIZE = 100


def _address(hostport: str) -> str:
    return hostport if "://" in hostport else f"tcp://{hostport}"


class TreeScaleSystem(BaseSystem):
    """A TreeScale node (`tsctl node start`) on a free loopback port."""

    name = "treescale"

    def version(self) -> str:
        return f"treescale {__version__}"

    def server(self) -> AbstractContextManager[str]:
        def argv(port: int, workdir: Path) -> list[str]:
            # Like every peer here, buffer for a slow subscriber instead of dropping
            # (the default is to drop past 64 MiB and say so).
            config = workdir / "node.json"
            config.write_text(json.dumps({"node": {
                "slow_consumer_bytes": 4 << 30, "slow_consumer_messages": 1_000_000}}))
            return [sys.executable, "-m", "tsctl.main", "node", "start", "--name", "bench",
                    "--port", str(port), "--config", str(config)]
        return broker("treescale", argv)

    @staticmethod
    def publisher(address: str, subject: str, count: int, size: int) -> None:
        body = payload(size)
        with Client(_address(address), name="bench-pub") as c:
            publish = c.publish
            for n in batches(count, size):
                for _ in range(n):
                    publish(subject, body)
            c.flush(WORKER_BUDGET_S)

    @staticmethod
    def subscriber(address: str, subject: str, count: int, ready_evt: MpEvent,
                   result_queue: Any, timeout: float,
                   counter: Any = None) -> None:
        """Subscribe, then count with ``counter(client, tally)`` (per event unless
        another counter is given)."""
        tally = Tally(count, timeout)
        with Client(_address(address), name="bench-sub") as c:
            c.subscribe(subject)  # returns once the node routes to us
            ready_evt.set()
            (counter or count_until_done)(c, tally)
            result_queue.put(tally.report())

    @staticmethod
    def responder(address: str, subject: str, ready_evt: MpEvent, stop_evt: MpEvent,
                  requesters_node: str | None = None) -> None:
        """Answer until stopped; with ``requesters_node``, ready only once a request
        from that node is answered (its way through the tree is known)."""
        deadline = Deadline(WORKER_BUDGET_S)
        with Client(_address(address), name="bench-responder") as c:
            # A handler runs on the client's I/O thread: no hand-off per request.
            c.subscribe(subject, handler=lambda ev: c.reply(ev, ev.data))
            if requesters_node is not None:
                _wait_for_answer(requesters_node, subject, deadline)
            ready_evt.set()
            while not stop_evt.wait(POLL_S) and not deadline.expired():
                pass

    @staticmethod
    def requester(address: str, subject: str, count: int, result_queue: Any) -> None:
        body, trips = payload(REQREP_SIZE), RoundTrips(count)
        with Client(_address(address), name="bench-requester") as c:
            for _ in trips:
                t0 = trips.start()
                c.request(subject, body, timeout=REQUEST_TIMEOUT_S)
                trips.stop(t0)
        result_queue.put(trips.report())


class TreeScaleIpc(TreeScaleSystem):
    """The same node, its clients on its Unix socket (``ipc_path``): how applications
    next to their node connect in a real deployment."""

    name = "treescale-ipc"

    @contextmanager
    def server(self) -> Iterator[str]:
        with tempfile.TemporaryDirectory(prefix="bench-ipc-") as tmp:
            path = f"{tmp}/node.sock"

            def argv(port: int, workdir: Path) -> list[str]:
                return _node_argv("bench", None)(port, workdir) + ["--ipc", path]
            with broker("treescale-ipc", argv):
                yield f"ipc://{path}"


class TreeScaleThreeHops(TreeScaleSystem):
    """Leaf -> root -> leaf: three node processes, publisher and subscribers on the
    two leaves. The address handed to workers is "PUBLISHER_NODE|SUBSCRIBER_NODE"."""

    name = "treescale-3hop"

    def supports(self, shape: str) -> bool:
        return shape in ("small", "large", "fanout", "reqrep")

    @contextmanager
    def server(self) -> Iterator[str]:
        with broker("treescale-root", _node_argv("root", None)) as root, \
                broker("treescale-leaf-a", _node_argv("leaf-a", root)) as a, \
                broker("treescale-leaf-b", _node_argv("leaf-b", root)) as b:
            yield f"{a}|{b}"

    @staticmethod
    def publisher(address: str, subject: str, count: int, size: int) -> None:
        TreeScaleSystem.publisher(address.split("|")[0], subject, count, size)

    @staticmethod
    def responder(address: str, subject: str, ready_evt: MpEvent, stop_evt: MpEvent) -> None:
        pub_node, sub_node = address.split("|")
        TreeScaleSystem.responder(sub_node, subject, ready_evt, stop_evt, pub_node)

    @staticmethod
    def requester(address: str, subject: str, count: int, result_queue: Any) -> None:
        TreeScaleSystem.requester(address.split("|")[0], subject, count, result_queue)

    @staticmethod
    def subscriber(address: str, subject: str, count: int, ready_evt: MpEvent,
                   result_queue: Any, timeout: float) -> None:
        pub_node, sub_node = address.split("|")
        _wait_for_interest(pub_node, sub_node, subject)
        TreeScaleSystem.subscriber(sub_node, subject, count, ready_evt, result_queue,
                                   timeout)


def _node_argv(name: str, parent: str | None):
    def argv(port: int, workdir: Path) -> list[str]:
        config = workdir / "node.json"
        config.write_text(json.dumps({"node": {
            "slow_consumer_bytes": 4 << 30, "slow_consumer_messages": 1_000_000}}))
        cmd = [sys.executable, "-m", "tsctl.main", "node", "start", "--name", name,
               "--port", str(port), "--config", str(config)]
        return cmd + (["--parent", _address(parent)] if parent else [])
    return argv


def _wait_for_answer(node: str, subject: str, deadline: Deadline) -> None:
    """Request ``subject`` from ``node`` until an answer comes (interest crosses the
    tree after subscribe() returns at the responder's own node)."""
    with Client(_address(node), name="probe-requester") as c:
        while not deadline.expired():
            try:
                c.request(subject, b"?", timeout=0.5)
                return
            except (NoResponders, TimeoutError):
                continue
    raise TimeoutError(f"no answer to {subject!r} from {node}")


def _wait_for_interest(pub_node: str, sub_node: str, subject: str) -> None:
    """Interest crosses the tree after subscribe() returns at the subscriber's node:
    probe until an event from the publisher's node arrives, so the timed run does
    not start into a tree that has not heard of the subscriber yet."""
    probe = subject + ".probe"
    deadline = Deadline(30)
    with Client(_address(sub_node), name="probe-sub") as sub, \
            Client(_address(pub_node), name="probe-pub") as pub:
        sub.subscribe(probe)
        while not deadline.expired():
            pub.publish(probe, b"?")
            if sub.next_event(0.1) is not None:
                break
        # the subscriber's own subject rides the same links; give its interest the
        # same proof: subscribe it here first, then hand over
        sub.subscribe(subject)
        while not deadline.expired():
            pub.publish(probe, b"?")
            if sub.next_event(0.1) is not None:
                return


class TreeScaleBatches(TreeScaleSystem):
    """One node, driven by the batch API: the publisher hands each chunk of the
    harness's ``batches`` (at most MAX_BATCH events) to ``publish_many``; the
    subscriber takes each delivery from ``batches()`` and counts it with its payloads
    built (``batch.payloads``), what an application reading them would pay."""

    name = "treescale-batch"

    def supports(self, shape: str) -> bool:
        return shape in ("small", "large", "fanout")

    @staticmethod
    def publisher(address: str, subject: str, count: int, size: int) -> None:
        body = payload(size)
        with Client(_address(address), name="bench-pub") as c:
            publish_many = c.publish_many
            for n in batches(count, size):
                publish_many(subject, [body] * n)
            c.flush(WORKER_BUDGET_S)

    @staticmethod
    def subscriber(address: str, subject: str, count: int, ready_evt: MpEvent,
                   result_queue: Any, timeout: float) -> None:
        TreeScaleSystem.subscriber(address, subject, count, ready_evt, result_queue,
                                   timeout, count_batches_until_done)


SYSTEMS = [TreeScaleSystem(), TreeScaleIpc(), TreeScaleThreeHops(), TreeScaleBatches()]


def count_until_done(c: Client, tally: Tally) -> None:
    """Feed every event ``c`` receives to ``tally`` until it has them all or gives up."""
    add = tally.add
    while not tally.done:
        for ev in c.events(timeout=POLL_S):
            if not add(len(ev.data)):
                return


def count_batches_until_done(c: Client, tally: Tally) -> None:
    """``count_until_done`` a delivery at a time (``batches()``), payloads built."""
    add_many = tally.add_many
    while not tally.done:
        for batch in c.batches(timeout=POLL_S):
            payloads = batch.payloads
            if not add_many(len(payloads), sum(map(len, payloads))):
                return
