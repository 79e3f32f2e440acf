"""Calls to node services over the bus: one request, one result per answering node.

Owns: the one convention by which anything asks a node service to do something, its
server side (``ServiceEndpoint``) and its client side (``call``, ``iter_call``).

Must not touch: what a service does (docker.py, lb.py, exec.py…), subject spelling
(treescale.subjects), sockets (it works through a ``Client``).

A service ``S`` on node ``N`` listens on ``$svc.S.N`` (that node) and ``$svc.S``
(group/tag targets, which the node's routing narrows). A call is a protocol REQUEST
(mode all: every matching node answers), so the answers go to the caller's private
inbox ``$inbox.NODE.CLIENT.REQ``, which no other client can subscribe to. Sending a
request to ``$svc.S…`` needs the permission ``S`` on the caller's token.

    request payload (msgpack): {"op": str, "args": {...}}
    replies (msgpack), each node: {"node", "stream": str, "data": any}   zero or more
                                  {"node", "ok": true, "result": any}     exactly one, last
                                  {"node", "ok": false, "error": str}

Handlers run in a bounded thread pool, never on the client's I/O thread; they answer
with ``Client.reply``, which keeps the replies of one request in order. A handler's
args carry ``_requester`` (the requester's name) and ``_permissions`` (what its token
allows, as the node it is attached to says).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgpack

from treescale import protocol as P
from treescale import subjects
from treescale.client import Client, Event, NoResponders
from treescale.services import ServiceContext

log = logging.getLogger("treescale.services")


class ServiceError(Exception):
    """A request the service refuses or cannot do; the message goes back to the caller."""


Emit = Callable[[str, Any], None]  # (stream name, data) -> sends a stream message
Handler = Callable[[dict, Emit], Any]  # (args, emit) -> result (msgpack-able)


def _pack(body: dict) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


class ServiceEndpoint:
    """Serve ``ops`` (name -> handler) for service ``service`` on this node."""

    def __init__(self, ctx: ServiceContext, service: str, ops: dict[str, Handler],
                 workers: int = 8, client: Client | None = None) -> None:
        self.ctx, self.service, self.ops = ctx, service, ops
        self.node = ctx.node
        self.client = client or ctx.client  # shared by the node's services
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=service)
        for subject in (subjects.service(service, ctx.node), subjects.service(service)):
            self.client.subscribe(subject, handler=self._on_request)

    def close(self) -> None:
        """Stop serving (the client belongs to whoever made it: the node closes its
        shared one after its services)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def publish(self, name: str, data: Any) -> None:
        """Publish ``data`` (msgpack) as event ``name``, e.g. ``$sys.docker.N.start``."""
        self.client.publish(name, _pack(data))

    def _on_request(self, ev: Event) -> None:
        if not ev.reply:
            log.warning("%s: ignored a publish to %s from %s (services answer requests: "
                        "use rpc.call)", self.service, ev.name, ev.source)
            return
        try:
            req = P.loads(ev.data)
            op, args = req["op"], req.get("args") or {}
            if not isinstance(op, str) or not isinstance(args, dict):
                raise TypeError("op must be a string, args a map")
        except Exception as exc:
            log.warning("bad %s request from %s: %s", self.service, ev.source, exc)
            self._answer(ev, {"ok": False, "error": f"bad {self.service} request: {exc}"})
            return
        self._pool.submit(self._serve, ev, op, args)

    def _serve(self, ev: Event, op: str, args: dict) -> None:
        handler = self.ops.get(op)
        try:
            if handler is None:
                raise ServiceError(f"unknown {self.service} operation {op!r} "
                                   f"(known: {', '.join(sorted(self.ops))})")
            result = handler({**args, "_requester": ev.source,
                              "_permissions": _permissions_of(ev)},
                             lambda stream, data: self._answer(ev, {"stream": stream,
                                                                    "data": data}))
            self._answer(ev, {"ok": True, "result": result})
        except ServiceError as exc:
            self._answer(ev, {"ok": False, "error": str(exc)})
        except Exception as exc:  # a bug or an unexpected failure: still answer
            log.exception("%s %s failed", self.service, op)
            self._answer(ev, {"ok": False,
                              "error": f"{self.service} {op} failed on node "
                                       f"{self.node}: {type(exc).__name__}: {exc}"})

    def _answer(self, ev: Event, body: dict) -> None:
        self.client.reply(ev, _pack({"node": self.node, **body}))


def _permissions_of(ev: Event) -> frozenset[str]:
    """What the requester's token allows, as its node stamped it on the request
    (nothing if no node did)."""
    stamped = (ev.headers or {}).get(subjects.PERMISSIONS_HEADER)
    if not isinstance(stamped, list):
        return frozenset()
    return frozenset(p for p in stamped if isinstance(p, str))


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
    within ``timeout``. For a group/tag: collects answers until every node heard from
    has finished and no message came for ``quiet`` seconds (or ``timeout``).
    ``on_stream(node, stream, data)`` sees stream messages (logs, progress) as they
    arrive. A refusal by the node (e.g. the token lacks the service's permission)
    raises its NodeError."""
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
    """Like ``call``, yielding each node's Result as it finishes (nothing if no node
    serves ``service`` there)."""
    suffix, target = target_of(node, group, tag)
    body = _pack({"op": op, "args": args or {}})
    pending: dict[str, Result] = {}
    with client.request_stream(subjects.service(service, suffix or None), body,
                               target=target, mode="all", timeout=timeout) as replies:
        while True:
            settled = pending and all(r.done for r in pending.values())
            try:
                ev = replies.get(quiet if settled else None)
            except NoResponders:
                return
            if ev is None:
                return
            msg = P.loads(ev.data)
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
