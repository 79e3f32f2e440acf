"""Calls to node services over the bus: one request, one result per answering node.

A service ``S`` on node ``N`` listens on ``$svc.S.N`` (that node) and ``$svc.S``
(group/tag targets, which the node's routing narrows). Publishing to ``$svc.S…``
needs the permission ``S`` on the publishing client's token.

    request (msgpack):  {"op": str, "args": {...}, "reply": subject}
    on ``reply``:        {"node", "stream": str, "data": any}        zero or more
                         {"node", "ok": true, "result": any}          exactly one, last
                         {"node", "ok": false, "error": str}

``ServiceEndpoint`` is the server side (handlers run in a bounded thread pool, never
on the client's I/O thread); ``call`` is the client side, used by tsctl and tests.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgpack

from treescale.client import Client, Event
from treescale.services import ServiceContext

log = logging.getLogger("treescale.services")

SERVICE_PREFIX = "$svc."


def service_subject(service: str, node: str | None = None) -> str:
    return f"{SERVICE_PREFIX}{service}" + (f".{node}" if node else "")


class ServiceError(Exception):
    """A request the service refuses or cannot do; the message goes back to the caller."""


Emit = Callable[[str, Any], None]  # (stream name, data) -> sends a stream message
Handler = Callable[[dict, Emit], Any]  # (args, emit) -> result (msgpack-able)


class ServiceEndpoint:
    """Serve ``ops`` (name -> handler) for service ``service`` on this node."""

    def __init__(self, ctx: ServiceContext, service: str, ops: dict[str, Handler],
                 workers: int = 8, client: Client | None = None) -> None:
        self.ctx, self.service, self.ops = ctx, service, ops
        self.node = ctx.node
        self.client = client or ctx.client  # shared by the node's services
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=service)
        for subject in (service_subject(service, ctx.node), service_subject(service)):
            self.client.subscribe(subject, handler=self._on_request)

    def close(self) -> None:
        """Stop serving (the client belongs to whoever made it: the node closes its
        shared one after its services)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def publish(self, name: str, data: Any) -> None:
        """Publish ``data`` (msgpack) as event ``name``, e.g. ``$sys.docker.N.start``."""
        self.client.publish(name, msgpack.packb(data, use_bin_type=True))

    def _on_request(self, ev: Event) -> None:
        try:
            req = msgpack.unpackb(ev.data, raw=False)
            op, reply = req["op"], req["reply"]
            args = req.get("args") or {}
            if not isinstance(op, str) or not isinstance(reply, str) \
                    or not isinstance(args, dict):
                raise TypeError("op and reply must be strings, args a map")
        except Exception as exc:
            log.warning("bad %s request from %s: %s", self.service, ev.source, exc)
            return
        self._pool.submit(self._serve, op, args, reply, ev.source)

    def _serve(self, op: str, args: dict, reply: str, requester: str) -> None:
        handler = self.ops.get(op)
        try:
            if handler is None:
                raise ServiceError(f"unknown {self.service} operation {op!r} "
                                   f"(known: {', '.join(sorted(self.ops))})")
            result = handler({**args, "_requester": requester},
                             lambda stream, data: self._send(reply, {"stream": stream,
                                                                     "data": data}))
            self._send(reply, {"ok": True, "result": result})
        except ServiceError as exc:
            self._send(reply, {"ok": False, "error": str(exc)})
        except Exception as exc:  # a bug or an unexpected failure: still answer
            log.exception("%s %s failed", self.service, op)
            self._send(reply, {"ok": False,
                               "error": f"{self.service} {op} failed on node "
                                        f"{self.node}: {type(exc).__name__}: {exc}"})

    def _send(self, reply: str, body: dict) -> None:
        self.client.publish(reply, msgpack.packb({"node": self.node, **body},
                                                 use_bin_type=True))


@dataclass
class Result:
    """One node's answer to a call."""

    node: str
    ok: bool = False
    result: Any = None
    error: str | None = None
    streams: list[tuple[str, Any]] = field(default_factory=list)
    done: bool = False

    def as_dict(self) -> dict:
        return {"node": self.node, "ok": self.ok, "result": self.result,
                "error": self.error}


def target_of(node: str | None, group: str | None, tag: str | None) -> tuple[str, str | None]:
    """(subject suffix node, routing target) for exactly one of node/group/tag."""
    if sum(x is not None for x in (node, group, tag)) != 1:
        raise ValueError("give exactly one of a node, a group or a tag")
    if node is not None:
        return node, None
    return "", f"group:{group}" if group is not None else f"tag:{tag}"


def call(client: Client, service: str, op: str, args: dict | None = None, *,
         node: str | None = None, group: str | None = None, tag: str | None = None,
         timeout: float = 10.0, quiet: float = 1.0,
         on_stream: Callable[[str, str, Any], None] | None = None) -> list[Result]:
    """Ask service ``service`` on one node (or every node of a group/tag) to do ``op``.

    For one node: returns as soon as it answered; raises TimeoutError if it did not
    within ``timeout``. For a group/tag: collects answers until none came for ``quiet``
    seconds after the last finished one (or ``timeout``). ``on_stream(node, stream,
    data)`` sees stream messages (logs, progress) as they arrive."""
    results = list(iter_call(client, service, op, args, node=node, group=group, tag=tag,
                             timeout=timeout, quiet=quiet, on_stream=on_stream))
    if node is not None and not results:
        raise TimeoutError(f"no answer from {service} on node {node!r} within "
                           f"{timeout:g}s (is the node in the tree, the service on?)")
    if node is None and not results:
        raise TimeoutError(f"no node of {group and 'group ' + group or 'tag ' + str(tag)} "
                           f"answered {service} {op} within {timeout:g}s")
    return results


def iter_call(client: Client, service: str, op: str, args: dict | None = None, *,
              node: str | None = None, group: str | None = None, tag: str | None = None,
              timeout: float = 10.0, quiet: float = 1.0,
              on_stream: Callable[[str, str, Any], None] | None = None) -> Iterator[Result]:
    """Like ``call``, yielding each node's Result as it finishes."""
    suffix, target = target_of(node, group, tag)
    reply = f"_svc.{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}"
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    client.subscribe(reply, handler=inbox.put)  # its own queue: calls may overlap
    try:
        client.publish(service_subject(service, suffix or None),
                       msgpack.packb({"op": op, "args": args or {}, "reply": reply},
                                     use_bin_type=True), target=target)
        client.flush(timeout)
        if client.errors:
            raise client.errors.popleft()
        pending: dict[str, Result] = {}
        deadline = time.monotonic() + timeout
        quiet_until: float | None = None
        while True:
            now = time.monotonic()
            limit = deadline if quiet_until is None else min(deadline, quiet_until)
            if now >= limit:
                return
            try:
                ev = inbox.get(timeout=limit - now)
            except queue.Empty:
                continue
            msg = msgpack.unpackb(ev.data, raw=False)
            r = pending.setdefault(msg["node"], Result(msg["node"]))
            if "stream" in msg:
                r.streams.append((msg["stream"], msg["data"]))
                if on_stream:
                    on_stream(r.node, msg["stream"], msg["data"])
                continue
            r.ok, r.result, r.error, r.done = msg["ok"], msg.get("result"), \
                msg.get("error"), True
            yield r
            if node is not None:
                return
            quiet_until = time.monotonic() + quiet
    finally:
        try:
            client.unsubscribe(reply)
        except Exception:
            pass
