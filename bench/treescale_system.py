"""TreeScale in the benchmark harness: one node process, driven by the Python Client.

Subscribers use the ordinary per-event API (``Client.events()``, one ``Event`` object per
message), exactly what an application would write; the count goes through the same
``Tally.add`` per message as every peer. The responder is a subscription handler, the
way a service answers requests (like a nats-py subscription callback).
"""

from __future__ import annotations

import json
import sys
from contextlib import AbstractContextManager
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
from treescale import Client, __version__

REQREP_SIZE = 100


def _address(hostport: str) -> str:
    return hostport if hostport.startswith("tcp://") else f"tcp://{hostport}"


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
                   result_queue: Any, timeout: float) -> None:
        tally = Tally(count, timeout)
        with Client(_address(address), name="bench-sub") as c:
            c.subscribe(subject)  # returns once the node routes to us
            ready_evt.set()
            add = tally.add
            while not tally.done:
                for ev in c.events(timeout=POLL_S):
                    if not add(len(ev.data)):
                        break
                else:
                    continue
                break
            result_queue.put(tally.report())

    @staticmethod
    def responder(address: str, subject: str, ready_evt: MpEvent, stop_evt: MpEvent) -> None:
        deadline = Deadline(WORKER_BUDGET_S)
        with Client(_address(address), name="bench-responder") as c:
            # A handler runs on the client's I/O thread: no hand-off per request.
            c.subscribe(subject, handler=lambda ev: c.reply(ev, ev.data))
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


SYSTEMS = [TreeScaleSystem()]
