"""``svc.NAME`` requests: from the bus to a replica's port, and its answer back.

Every node's orchestrator subscribes to ``svc.*`` in one queue group, so a request
for a service is taken by exactly one node, which relays it: it connects to a ready
replica (its own first, else the others in turn, from the reports every node hears),
writes the request's payload, closes its side, and replies with everything the
replica writes until it closes (a request/response over TCP: HTTP/1.0 requests work
as they are). A service with no replica ready and ``--min 0`` is woken (the scheduler
scales it to one) and the request is held until a replica is ready, at most the
service's ``hold`` seconds. Failures are answered, never dropped: an empty reply
whose header ``error`` says why.

Owns: relaying, holding, and when each service was last used here (idle culling
reads it). Must not touch: placement or waking itself (the scheduler does it),
containers.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from treescale import subjects
from treescale.sched.plan import Replica
from treescale.sched.spec import ServiceSpec

log = logging.getLogger("treescale.service")

QUEUE = "treescale.svc"
CONNECT_TIMEOUT = 3.0
ANSWER_TIMEOUT = 30.0
ERROR_HEADER = "error"


class RequestRelay:
    """Relays ``svc.NAME`` requests of this node to replicas."""

    def __init__(self, node: str, client: Any, spec_of: Callable[[str], ServiceSpec | None],
                 replicas_of: Callable[[str], list[Replica]],
                 wake: Callable[[str], None], max_bytes: int) -> None:
        self.node, self.client = node, client
        self.spec_of, self.replicas_of, self.wake = spec_of, replicas_of, wake
        self.max_bytes = max_bytes
        self.changed = threading.Condition()
        self.used: dict[str, float] = {}
        self._turn = itertools.count()
        self._pool = ThreadPoolExecutor(16, thread_name_prefix=f"svc-relay@{node}")
        client.subscribe(subjects.service_request("*"), queue=QUEUE, handler=self._on_request)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.notify()

    def notify(self) -> None:
        """Replicas changed somewhere: held requests look again."""
        with self.changed:
            self.changed.notify_all()

    def idle(self, now: float) -> dict[str, float]:
        return {name: now - at for name, at in list(self.used.items())}

    def _on_request(self, ev: Any) -> None:
        if ev.reply:
            self._pool.submit(self._serve, ev)

    def _serve(self, ev: Any) -> None:
        name = subjects.requested_service(ev.name) or ""
        try:
            data = self._relay(name, bytes(ev.data))
            self.client.reply(ev, data)
        except RelayError as exc:
            self.client.reply(ev, b"", headers={ERROR_HEADER: str(exc)})
        except Exception as exc:  # still answer
            log.exception("relaying %s", ev.name)
            self.client.reply(ev, b"", headers={ERROR_HEADER: f"svc {name} on node "
                                                 f"{self.node}: {type(exc).__name__}: {exc}"})

    def _relay(self, name: str, payload: bytes) -> bytes:
        spec = self.spec_of(name)
        if spec is None:
            raise RelayError(f"no service {name!r} (tsctl service ls)")
        self.used[name] = time.monotonic()
        deadline = time.monotonic() + spec.hold
        woken = False
        tried: set[str] = set()
        while True:
            ready = [r for r in self.replicas_of(name)
                     if r.ready and r.address and r.address not in tried]
            if ready:
                replica = self._pick(ready)
                try:
                    return self._exchange(replica.address, payload)
                except OSError as exc:
                    log.info("svc %s: replica %s at %s: %s", name, replica.cid,
                             replica.address, exc)
                    tried.add(replica.address)
                    continue
            if spec.replicas == 0 and spec.scales_from_zero and not woken:
                self.wake(name)
                woken = True
            left = deadline - time.monotonic()
            if left <= 0:
                raise RelayError(f"svc {name}: no replica ready within {spec.hold:g}s "
                                 f"(tsctl service info {name})")
            with self.changed:
                self.changed.wait(min(left, 0.5))
            tried.clear()  # every ready one failed: after a pause, each may again
            spec = self.spec_of(name) or spec
            self.used[name] = time.monotonic()

    def _pick(self, ready: list[Replica]) -> Replica:
        local = [r for r in ready if r.node == self.node]
        choices = sorted(local or ready, key=lambda r: r.cid)
        return choices[next(self._turn) % len(choices)]

    def _exchange(self, address: str, payload: bytes) -> bytes:
        host, _, port = address.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT) as s:
            s.settimeout(ANSWER_TIMEOUT)
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            chunks, size = [], 0
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise RelayError(f"the replica at {address} answered more than "
                                     f"{self.max_bytes} bytes")
                chunks.append(chunk)
        if not chunks:
            raise ConnectionResetError("closed without an answer")
        return b"".join(chunks)


class RelayError(Exception):
    """A request that cannot be relayed; the message goes back to the requester."""
