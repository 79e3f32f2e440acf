"""The config service: every node keeps the whole fabric, versioned, in its database.

Operations on ``$svc.config.<node>`` (and ``$svc.config``), permission ``config``:

    apply   {version, fabric, sources?, compiled_at?}  store it if newer than ours
            -> {version, applied, previous}            (``tsctl config push``)
    version {} -> {version, compiled_at, nodes}        (``tsctl config version``)
    get     {} -> {version, compiled_at, sources, fabric}

Only a token with "*" may push a fabric that changes a node's auth (tokens,
auth_command, auth_url), its link credential or a ``*_enabled`` switch of a service
that runs commands (config.PRIVILEGED_FIELDS): anyone else's push is refused naming
the field. ``get`` shows tokens and link tokens only to a token with "*".

A newly stored version is announced as ``$sys.config.applied`` {node, version,
previous, via}. Catching up needs no push: each node says which version it holds in a
``$sys.config.version`` event {node, version} when it starts, whenever one of its links
comes up, and every ANNOUNCE_INTERVAL seconds. A node that hears a newer version fetches
it from that node (op ``get``); a node that hears an older one answers the lagging node
with its own version (targeted at it), so a node that was down catches up as soon as
it rejoins. Applying is one LMDB transaction, and only ever moves the version forward.

Owns: the config ops and catch-up. Must not touch: what a valid fabric is or how it is
stored (treescale.fabric), subject spellings (treescale.subjects).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any

import msgpack

from treescale import protocol as P
from treescale import subjects
from treescale.config import PRIVILEGED_FIELDS, SECRET_FIELDS, ConfigError, NodeConfig
from treescale.fabric import (
    META_TABLE,
    SSH_TABLE,
    TREE_TABLE,
    fabric_from_dict,
    fabric_from_store,
    load_any,
    store_fabric,
    stored_version,
)
from treescale.services import ServiceContext
from treescale.services.rpc import ServiceEndpoint, ServiceError, call

log = logging.getLogger("treescale.config")

SERVICE = "config"
ANNOUNCE_INTERVAL = 30.0  # safety net: a missed announcement is repeated this often
FETCH_TIMEOUT = 10.0
REDACTED = "<redacted: needs a token with *>"


class ConfigService:
    """Serves the config ops and keeps this node's fabric up to date with the tree's."""

    def __init__(self, ctx: ServiceContext, announce_interval: float = ANNOUNCE_INTERVAL
                 ) -> None:
        self.ctx, self.node = ctx, ctx.node
        self.store = ctx.store
        self.announce_interval = announce_interval
        self._lock = threading.Lock()  # one apply at a time: read version, write
        self._closed = threading.Event()
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._seed()
        self.endpoint = ServiceEndpoint(ctx, SERVICE, {"apply": self._op_apply,
                                                       "version": self._op_version,
                                                       "get": self._op_get})
        self.client = self.endpoint.client
        self.client.subscribe(subjects.CONFIG_VERSION, handler=self._on_version)
        self.client.subscribe(subjects.NODE_UP, handler=self._on_link_up)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"config-sync@{self.node}")
        self._thread.start()
        self._tasks.put(("announce", None))

    @classmethod
    def start(cls, ctx: ServiceContext) -> ConfigService:
        return cls(ctx)

    def close(self) -> None:
        self._closed.set()
        self._tasks.put(("stop", None))
        self.endpoint.close()

    @property
    def version(self) -> int:
        return stored_version(self.store)

    # ---------------------------------------------------------------- applying

    def apply(self, version: Any, data: Any, sources: Any = None,
              compiled_at: Any = None, via: str = "push",
              permissions: frozenset[str] = frozenset({"*"})) -> dict:
        """Store fabric ``data`` as ``version`` if newer than ours (atomically). Only
        ``permissions`` with "*" may change a node's auth, link credential or the
        switches of the services that run commands."""
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ServiceError(f"version must be a positive integer, got {version!r}")
        if not isinstance(data, dict):
            raise ServiceError("fabric must be a map (tsctl config push sends one)")
        try:
            fabric = fabric_from_dict(data, f"config version {version}")
        except ConfigError as exc:
            raise ServiceError(f"node {self.node} refused version {version}: "
                               + "; ".join(exc.problems)) from None
        fabric.sources = [str(s) for s in sources] if isinstance(sources, list) else []
        stamp = compiled_at if isinstance(compiled_at, int | float) else None
        with self._lock:
            previous = self.version
            if version <= previous:
                return {"version": previous, "applied": False, "previous": previous}
            if "*" not in permissions:
                self._check_unprivileged(fabric, version, permissions)
            store_fabric(self.store, fabric, version, stamp)
        log.info("node %s: config version %d applied (%s; was %d)", self.node, version,
                 via, previous)
        self.endpoint.publish(subjects.CONFIG_APPLIED, {"node": self.node, "version": version,
                                              "previous": previous, "via": via})
        return {"version": version, "applied": True, "previous": previous}

    def _check_unprivileged(self, fabric: Any, version: int,
                            permissions: frozenset[str]) -> None:
        """Refuse, naming the field, a fabric that changes what only "*" may."""
        current = fabric_from_store(self.store, str(self.store.path))
        before = current.nodes if current is not None else {}
        for name in sorted(set(fabric.nodes) | set(before)):
            old = before.get(name) or NodeConfig(name=name)
            new = fabric.nodes.get(name) or NodeConfig(name=name)
            for key in PRIVILEGED_FIELDS:
                if getattr(old, key, None) != getattr(new, key, None):
                    raise ServiceError(
                        f"node {self.node} refused version {version}: changing {key} of "
                        f"node {name} needs a token with \"*\" (this one allows "
                        f"{', '.join(sorted(permissions)) or 'nothing'})")

    def _seed(self) -> None:
        """A node started from a tree file or database keeps that tree (unless the
        database already holds a newer, pushed one)."""
        source = self.ctx.config.extra.get("fabric_source")
        if not source or _same_file(source, self.store.path):
            return
        try:
            fabric = load_any(source)
        except ConfigError as exc:
            log.warning("node %s: not keeping the tree of %s: %s", self.node, source,
                        "; ".join(exc.problems))
            return
        with self._lock:
            current = self.version
            if current == 0 or fabric.version > current:
                store_fabric(self.store, fabric, fabric.version, fabric.compiled_at)

    # -------------------------------------------------------------------- ops

    def _op_apply(self, args: dict, emit: Any) -> dict:
        return self.apply(args.get("version"), args.get("fabric"), args.get("sources"),
                          args.get("compiled_at"), via=f"push from {args['_requester']}",
                          permissions=args["_permissions"])

    def _op_version(self, args: dict, emit: Any) -> dict:
        with self._lock:
            return {"version": self.version,
                    "compiled_at": self.store.get(META_TABLE, "compiled_at"),
                    "nodes": sorted(self.store.items(TREE_TABLE))}

    def _op_get(self, args: dict, emit: Any) -> dict:
        with self._lock:
            meta = self.store.items(META_TABLE)
            nodes = self.store.items(TREE_TABLE)
            ssh = self.store.items(SSH_TABLE)
        if not nodes:
            raise ServiceError(f"node {self.node} holds no tree config")
        version = meta.get("version", 0)
        if "*" not in args["_permissions"]:  # secrets only for who may change them
            nodes = {n: {k: REDACTED if k in SECRET_FIELDS else v for k, v in t.items()}
                     for n, t in nodes.items()}
        return {"version": version, "compiled_at": meta.get("compiled_at"),
                "sources": meta.get("sources", []),
                "fabric": {"version": version, "tree_node": nodes, "ssh": ssh}}

    # ----------------------------------------------------------------- catch-up

    def _on_version(self, ev: Any) -> None:
        """(client I/O thread: decide only, the sync thread does the work)"""
        try:
            msg = P.loads(ev.data)
            other, theirs = msg["node"], msg["version"]
            if not isinstance(other, str) or not isinstance(theirs, int):
                raise TypeError("node must be a string, version an integer")
        except Exception as exc:
            log.warning("bad %s event from %s: %s", subjects.CONFIG_VERSION, ev.source, exc)
            return
        if other == self.node:
            return
        mine = self.version
        if theirs > mine:
            self._tasks.put(("fetch", (other, theirs)))
        elif theirs < mine and not msg.get("answer"):
            self._tasks.put(("announce", other))

    def _on_link_up(self, ev: Any) -> None:
        try:
            msg = P.loads(ev.data)
        except Exception:
            return
        if isinstance(msg, dict) and msg.get("detected_by") == self.node:
            self._tasks.put(("announce", None))

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                kind, arg = self._tasks.get(timeout=self.announce_interval)
            except queue.Empty:
                kind, arg = "announce", None
            if self._closed.is_set():
                return
            try:
                if kind == "announce":
                    self._announce(arg)
                elif kind == "fetch":
                    self._fetch(*arg)
            except Exception as exc:  # the next announcement retries
                if not self._closed.is_set():
                    log.warning("node %s: config %s failed: %s", self.node, kind, exc)

    def _announce(self, to: str | None) -> None:
        body = {"node": self.node, "version": self.version}
        if to is not None:
            body["answer"] = True
        self.client.publish(subjects.CONFIG_VERSION, msgpack.packb(body, use_bin_type=True),
                            target=f"node:{to}" if to else None)

    def _fetch(self, source: str, version: int) -> None:
        if version <= self.version:
            return  # another node's copy arrived first
        [r] = call(self.client, SERVICE, "get", node=source, timeout=FETCH_TIMEOUT)
        if not r.ok:
            raise RuntimeError(f"node {source} did not give its config: {r.error}")
        res = r.result
        self.apply(res["version"], res["fabric"], res.get("sources"), res.get("compiled_at"),
                   via=f"catch-up from {source}")


def _same_file(a: Any, b: Any) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def call_nodes(client: Any, op: str, args: dict | None, nodes: list[str], timeout: float,
               on_done: Any = None) -> dict[str, Any]:
    """Call config op ``op`` on each of ``nodes`` at once; node -> Result (a node that
    did not answer within ``timeout`` gets ok=False and an error saying so)."""
    from concurrent.futures import ThreadPoolExecutor

    from treescale.services.rpc import Result

    def one(name: str) -> Result:
        try:
            [r] = call(client, SERVICE, op, args, node=name, timeout=timeout)
        except TimeoutError:
            r = Result(name, error=f"no answer within {timeout:g}s (down, or not in the "
                                   "tree?)")
        if on_done is not None:
            on_done(r)
        return r

    if not nodes:
        return {}
    with ThreadPoolExecutor(min(16, len(nodes)), thread_name_prefix="config-call") as pool:
        return dict(zip(nodes, pool.map(one, nodes), strict=True))
