"""Custom event handlers: a node runs a shell command when a matching event reaches it.

The seed promises "evented infrastructure, with custom events and handlers"; this is
it. A handler is ``(id, pattern, command, timeout, max_concurrent, queue)``, kept in
the node's LMDB (table ``handlers``, key = id, the pattern unless given) so it
survives restarts. Management is the ``handlers`` service (treescale.services.rpc):
ops ``add``, ``rm``, ``ls`` and ``match``; publishing to ``$svc.handlers…`` needs the
permission ``handlers``.

How events reach a handler: the service is a client of its node and subscribes to
every handler's pattern. Subscriptions propagate interest through the tree, so a
plain publish of ``deploy.web`` anywhere in the tree reaches every node that has a
handler on ``deploy.*`` (or ``deploy.>``); a publish with target ``node:N``,
``group:G`` or ``tag:T`` runs only the handlers of those nodes (``tsctl event
trigger`` does that). A request (an event with a reply subject) is delivered to one
subscriber tree-wide, as requests always are.

Each run is ``/bin/sh -c COMMAND`` with the payload on stdin and the event in the
environment::

    TREESCALE_EVENT    the event name          TREESCALE_SOURCE   who published it
    TREESCALE_NODE     this node               TREESCALE_HANDLER  the handler id
    TREESCALE_ADDRESS  this node's address (so `tsctl pub` inside a handler works)
    TREESCALE_REPLY    the reply subject, for a request
    TREESCALE_HEADER_<KEY>  each header (KEY upper-cased, other characters -> "_")

Its result (a map: node, handler, event, source, ok, exit, duration, stdout, stderr
(each at most MAX_OUTPUT bytes, then ``truncated``), error, trigger; output is text,
decoded as UTF-8 with replacement) is published as
``$sys.handlers.<node>.result`` and, for a request, sent back as the reply (msgpack).
Every run, and every refusal, is audited as ``$sys.audit.handler``. The ``trigger``
header of the event, if any, is copied into the result so a caller can pick out the
results of its own event.

Limits: a run longer than its timeout is killed (its whole process group); at most
``max_concurrent`` runs of a handler at a time, then up to ``queue`` events wait,
then events are refused with a result whose ``error`` names the limit.

The payload and headers come from whoever may publish the event: a command should
treat ``$TREESCALE_HEADER_*`` and stdin as untrusted input (quote them, never eval).

Owns: handler specs and their checks, the handlers table, running and limiting runs.
Must not touch: how a process is started and killed (treescale.services.process),
subject spellings (treescale.subjects).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import msgpack

from treescale import subjects
from treescale.client import Client, Event
from treescale.routing import (
    WILDCARD_ONE,
    WILDCARD_REST,
    PatternError,
    RoutingTable,
    split_name,
    split_pattern,
)
from treescale.services import ServiceContext
from treescale.services.process import ProcessResult, kill_group, run_command
from treescale.services.rpc import ServiceEndpoint, ServiceError

log = logging.getLogger("treescale.handlers")

SERVICE = "handlers"
TABLE = "handlers"
TRIGGER_HEADER = "trigger"  # copied into the result: lets a caller find its own runs

DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 24 * 3600.0
DEFAULT_MAX_CONCURRENT = 4
MAX_MAX_CONCURRENT = 64
DEFAULT_QUEUE = 16
MAX_QUEUE = 10_000
MAX_COMMAND = 16 * 1024
MAX_ID = 200
MAX_OUTPUT = 64 * 1024  # bytes of stdout (and of stderr) kept in a result


class HandlerError(ValueError):
    """A handler definition or request that cannot be accepted (message says why)."""


# ------------------------------------------------------------------ pure core


@dataclass(frozen=True)
class HandlerSpec:
    """One handler as stored in LMDB (``asdict`` is the stored record)."""

    id: str
    pattern: str
    run: str
    timeout: float = DEFAULT_TIMEOUT
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    queue: int = DEFAULT_QUEUE


def check_pattern(pattern: Any) -> tuple[str, ...]:
    """The tokens of a handler pattern; HandlerError if it is invalid or would loop.

    ``$sys…`` events may be handled (a handler on ``$sys.node.down`` is the point of
    an evented fleet), but not the handlers' own results and audits: a handler
    triggered by its own output would run forever. ``$svc`` and ``$inbox`` subjects
    belong to services and requesters."""
    try:
        tokens = split_pattern(pattern)
    except PatternError as exc:
        raise HandlerError(f"invalid event pattern: {exc}") from None
    first = tokens[0]
    if first.startswith("$") and first != subjects.SYS:  # reserved, and not $sys
        raise HandlerError(f"pattern {pattern!r}: {first} subjects cannot have handlers "
                           f"(only {subjects.SYS} system events and application events "
                           "can)")
    if any(_may_reach(tokens, own) for own in _OWN_OUTPUT):
        raise HandlerError(f"pattern {pattern!r} would match the handlers' own "
                           "results or audit events and trigger itself in a loop")
    return tokens


# What handlers publish themselves, as leading tokens: every result
# (``$sys.handlers.…``) and the audit event.
_OWN_OUTPUT = (split_name(subjects.HANDLERS), split_name(subjects.AUDIT_HANDLER))


def _may_reach(tokens: tuple[str, ...], own: tuple[str, ...]) -> bool:
    """Whether a pattern may match a subject that starts with the ``$``-tokens ``own``
    (a leading wildcard never matches those)."""
    if tokens[0] != own[0]:
        return False
    for i in range(1, len(own)):
        if i >= len(tokens) or tokens[i] not in (own[i], WILDCARD_ONE, WILDCARD_REST):
            return False
        if tokens[i] == WILDCARD_REST:
            return True
    return True


def _number(args: Mapping, key: str, default: float, low: float, high: float,
            kind: type) -> Any:
    value = args.get(key)
    if value is None:
        return kind(default)
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or (kind is int and not float(value).is_integer()):
        raise HandlerError(f"{key} must be a {'whole ' if kind is int else ''}number, "
                           f"got {value!r}")
    if not low <= value <= high:
        raise HandlerError(f"{key} must be between {low:g} and {high:g}, got {value:g}")
    return kind(value)


def spec_from_args(args: Mapping) -> HandlerSpec:
    """Validate an ``add`` request (or a stored record) into a HandlerSpec."""
    pattern = args.get("pattern")
    check_pattern(pattern)
    run = args.get("run")
    if not isinstance(run, str) or not run.strip():
        raise HandlerError("the command to run is empty (give --run \"COMMAND\")")
    if "\0" in run:
        raise HandlerError("the command contains a NUL byte")
    if len(run) > MAX_COMMAND:
        raise HandlerError(f"the command is {len(run)} characters long "
                           f"(at most {MAX_COMMAND})")
    hid = args.get("id") or pattern
    if not isinstance(hid, str) or len(hid) > MAX_ID or any(c.isspace() for c in hid):
        raise HandlerError(f"handler id {hid!r} must be a string of at most {MAX_ID} "
                           "characters without white space")
    return HandlerSpec(
        id=hid, pattern=pattern, run=run,
        timeout=_number(args, "timeout", DEFAULT_TIMEOUT, 0.001, MAX_TIMEOUT, float),
        max_concurrent=_number(args, "max_concurrent", DEFAULT_MAX_CONCURRENT, 1,
                               MAX_MAX_CONCURRENT, int),
        queue=_number(args, "queue", DEFAULT_QUEUE, 0, MAX_QUEUE, int))


_NOT_ENV = re.compile(r"[^A-Z0-9_]")


def header_env_name(key: str) -> str:
    """``content-type`` -> ``TREESCALE_HEADER_CONTENT_TYPE``."""
    return "TREESCALE_HEADER_" + _NOT_ENV.sub("_", str(key).upper())


def _env_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode(errors="replace")
    return str(value).replace("\0", "")  # the environment cannot carry NUL


def handler_env(base: Mapping[str, str], *, handler: str, event: str, source: str,
                node: str, address: str, headers: Mapping | None = None,
                reply: str | None = None) -> dict[str, str]:
    """The environment of one run: ``base`` without any TREESCALE_* of its own (the
    node's settings and tokens are not the handler's), plus the event's facts."""
    env = {k: v for k, v in base.items() if not k.startswith("TREESCALE_")}
    for key, value in (headers or {}).items():
        env[header_env_name(key)] = _env_text(value)
    env.update(TREESCALE_EVENT=event, TREESCALE_SOURCE=_env_text(source),
               TREESCALE_NODE=node, TREESCALE_HANDLER=handler, TREESCALE_ADDRESS=address)
    if reply:
        env["TREESCALE_REPLY"] = reply
    return env


class OutputBuffer:
    """The first ``limit`` bytes of a stream; counts the rest instead of keeping it."""

    def __init__(self, limit: int = MAX_OUTPUT) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.kept = 0
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - self.kept
        if room > 0:
            piece = bytes(chunk[:room])
            self.parts.append(piece)
            self.kept += len(piece)

    @property
    def truncated(self) -> bool:
        return self.total > self.kept

    def text(self) -> str:
        return b"".join(self.parts).decode(errors="replace")


def run_result(node: str, handler: str, event: Event, run: ProcessResult | None,
               stdout: OutputBuffer | None = None, stderr: OutputBuffer | None = None,
               error: str | None = None) -> dict:
    """The result record of one run (or refusal, when ``run`` is None)."""
    record: dict[str, Any] = {
        "node": node, "handler": handler, "event": event.name, "source": event.source,
        "exit": None if run is None else run.exit,
        "duration": 0.0 if run is None else round(run.duration, 6),
        "stdout": stdout.text() if stdout else "", "stderr": stderr.text() if stderr else "",
        "truncated": bool((stdout and stdout.truncated) or (stderr and stderr.truncated)),
        "error": error,
        "trigger": _env_text(event.headers[TRIGGER_HEADER])
        if TRIGGER_HEADER in event.headers else None,
    }
    record["ok"] = error is None and record["exit"] == 0
    return record


def audit_record(result: dict) -> dict:
    """What ``$sys.audit.handler`` says about a run (no output: audits stay small)."""
    keys = ("node", "handler", "event", "source", "exit", "duration", "error", "trigger")
    return {k: result[k] for k in keys}


def limit_message(node: str, spec: HandlerSpec, event: str) -> str:
    return (f"handler {spec.id!r} on node {node} refused {event}: already "
            f"{spec.max_concurrent} running (max_concurrent {spec.max_concurrent}) and "
            f"{spec.queue} queued (queue {spec.queue})")


# ------------------------------------------------------------------- service


class Runner:
    """One handler's runs: at most ``max_concurrent`` threads, a bounded wait queue."""

    def __init__(self, service: HandlerService, spec: HandlerSpec) -> None:
        self.service, self.spec = service, spec
        self.lock = threading.Lock()
        self.pending: deque[Event] = deque()
        self.running = 0
        self.runs = 0
        self.refused = 0
        self.last: dict | None = None
        self.retired = False

    def submit(self, ev: Event) -> bool:
        """Start or queue a run of ``ev``; False if the handler is at its limits."""
        with self.lock:
            if self.retired:
                return True  # removed meanwhile: nothing to do, nothing to refuse
            if self.running < self.spec.max_concurrent:
                self.running += 1
            elif len(self.pending) < self.spec.queue:
                self.pending.append(ev)
                return True
            else:
                self.refused += 1
                return False
        threading.Thread(target=self._work, args=(ev,), daemon=True,
                         name=f"handler-{self.spec.id}").start()
        return True

    def retire(self) -> None:
        with self.lock:
            self.retired = True
            self.pending.clear()

    def _work(self, ev: Event) -> None:
        while True:
            try:
                result = self.service.run_once(self.spec, ev)
            except Exception:  # a bug must not stop the queue behind it
                log.exception("handler %s failed on %s", self.spec.id, ev.name)
                result = None
            with self.lock:
                if result is not None:
                    self.runs += 1
                    self.last = result
                if not self.pending:
                    self.running -= 1
                    return
                ev = self.pending.popleft()

    def describe(self) -> dict:
        with self.lock:
            last = self.last
            return {**asdict(self.spec), "runs": self.runs, "running": self.running,
                    "queued": len(self.pending), "refused": self.refused,
                    "last_exit": last["exit"] if last else None,
                    "last_error": last["error"] if last else None}


class HandlerService:
    """The node's handler service: management over rpc, runs on matching events."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx, self.node = ctx, ctx.node
        self._lock = threading.Lock()  # runners + table (short holds; event path)
        self._manage = threading.Lock()  # one add/rm at a time (holds across subscribe)
        self._runners: dict[str, Runner] = {}
        self._table = RoutingTable(ctx.node)
        self._procs: set[subprocess.Popen] = set()
        self._closing = False
        # A client of its own, not the node's shared one: handler patterns are
        # subscribed and unsubscribed at run time and must not touch other services'.
        self.client = Client(ctx.address, name=f"{SERVICE}@{ctx.node}", timeout=30,
                             options=ctx.client_options(), **ctx.client_keys())
        # The stored handlers are live before the service answers: once `ls` or
        # `match` answer after a restart, the handlers they list run.
        try:
            for key, record in ctx.store.items(TABLE).items():
                try:
                    self._install(spec_from_args(record))
                except (HandlerError, TypeError, AttributeError) as exc:
                    log.warning("node %s: skipping stored handler %r: %s", self.node,
                                key, exc)
            self.endpoint = ServiceEndpoint(ctx, SERVICE, {
                "add": self._op_add, "rm": self._op_rm, "ls": self._op_ls,
                "match": self._op_match}, client=self.client)
        except BaseException:
            self.client.close(timeout=2)
            raise

    @classmethod
    def start(cls, ctx: ServiceContext) -> HandlerService:
        return cls(ctx)

    def close(self) -> None:
        self._closing = True
        with self._lock:
            runners = list(self._runners.values())
            procs = list(self._procs)
        for runner in runners:
            runner.retire()
        for proc in procs:  # a node that stops leaves no handler command behind
            kill_group(proc)
        self.endpoint.close()
        self.client.close(timeout=2)  # its own: handlers come and go as subscriptions

    # -------------------------------------------------------------- management

    def _install(self, spec: HandlerSpec) -> bool:
        """Make ``spec`` live (replacing a handler of the same id); True if replaced."""
        with self._manage:
            with self._lock:
                old = self._runners.pop(spec.id, None)
                if old is not None:
                    old.retire()
                    self._table.remove_member(spec.id)
                self._runners[spec.id] = Runner(self, spec)
                self._table.add_member(spec.id)
                self._table.subscribe(spec.id, spec.pattern)
                dropped = self._unused(old.spec.pattern) if old else False
            self.client.subscribe(spec.pattern, handler=self._on_event)
            if dropped:
                self.client.unsubscribe(old.spec.pattern)
        return old is not None

    def _unused(self, pattern: str) -> bool:
        return all(r.spec.pattern != pattern for r in self._runners.values())

    def _op_add(self, args: dict, emit: Any) -> dict:
        try:
            spec = spec_from_args(args)
        except HandlerError as exc:
            raise ServiceError(str(exc)) from None
        self.ctx.store.put(TABLE, spec.id, asdict(spec))
        replaced = self._install(spec)
        return {"id": spec.id, "pattern": spec.pattern, "replaced": replaced}

    def _op_rm(self, args: dict, emit: Any) -> dict:
        hid = args.get("id")
        with self._manage:
            with self._lock:
                runner = self._runners.pop(hid, None) if isinstance(hid, str) else None
                if runner is None:
                    known = ", ".join(sorted(self._runners)) or "none"
                    raise ServiceError(f"no handler {hid!r} on node {self.node} "
                                       f"(known: {known})")
                runner.retire()
                self._table.remove_member(hid)
                dropped = self._unused(runner.spec.pattern)
            self.ctx.store.delete(TABLE, hid)
            if dropped:
                self.client.unsubscribe(runner.spec.pattern)
        return {"id": hid, "pattern": runner.spec.pattern}

    def _op_ls(self, args: dict, emit: Any) -> list[dict]:
        with self._lock:
            runners = sorted(self._runners.values(), key=lambda r: r.spec.id)
        return [r.describe() for r in runners]

    def _op_match(self, args: dict, emit: Any) -> list[dict]:
        """The handlers an event named ``event`` would run here (tsctl event trigger
        asks first, so it knows whose results to wait for)."""
        name = args.get("event")
        try:
            split_name(name)
        except PatternError as exc:
            raise ServiceError(str(exc)) from None
        with self._lock:
            ids = self._table.lookup(name).everyone
            return [{"id": i, "timeout": self._runners[i].spec.timeout,
                     "queue": self._runners[i].spec.queue} for i in ids]

    # -------------------------------------------------------------------- runs

    def _on_event(self, ev: Event) -> None:
        """On the client's I/O thread: hand the event to each matching handler."""
        if self._closing:
            return
        with self._lock:
            runners = [self._runners[i] for i in self._table.lookup(ev.name).everyone]
        for runner in runners:
            if not runner.submit(ev):
                self._report(run_result(self.node, runner.spec.id, ev, None,
                                        error=limit_message(self.node, runner.spec,
                                                            ev.name)), ev)

    def run_once(self, spec: HandlerSpec, ev: Event) -> dict:
        """Run ``spec`` for ``ev``, publish and return the result."""
        # both streams must fit in one event under the node's payload limit
        limit = min(MAX_OUTPUT, self.ctx.config.max_payload // 4)
        out, err = OutputBuffer(limit), OutputBuffer(limit)
        streams = {"stdout": out, "stderr": err}
        env = handler_env(os.environ, handler=spec.id, event=ev.name, source=ev.source,
                          node=self.node, address=self.ctx.address, headers=ev.headers,
                          reply=ev.reply)
        try:
            run = run_command(spec.run, lambda stream, chunk: streams[stream].add(chunk),
                              timeout=spec.timeout, stdin=bytes(ev.data), env=env,
                              on_start=self._track)
        except OSError as exc:
            result = run_result(self.node, spec.id, ev, ProcessResult(127, 0.0),
                                error=f"cannot run handler {spec.id!r} on node "
                                      f"{self.node}: {exc}")
        else:
            error = (f"handler {spec.id!r} timed out after {spec.timeout:g}s on node "
                     f"{self.node} (killed)") if run.timed_out else None
            result = run_result(self.node, spec.id, ev, run, out, err, error)
        self._report(result, ev)
        return result

    def _track(self, proc: subprocess.Popen, alive: bool) -> None:
        with self._lock:
            if alive:
                self._procs.add(proc)
            else:
                self._procs.discard(proc)

    def _report(self, result: dict, ev: Event) -> None:
        """Result event, audit event, and the reply when the event was a request."""
        try:
            packed = msgpack.packb(result, use_bin_type=True)
            self.client.publish(subjects.handler_result(self.node), packed)
            self.client.publish(subjects.AUDIT_HANDLER,
                                msgpack.packb(audit_record(result), use_bin_type=True))
            if ev.reply:
                # A reply subject routes back to the requester like any subject (the
                # requester's session subscribes its inbox), so it leaves in order
                # with the result through this client's batched publish path.
                self.client.publish(ev.reply, packed)
        except Exception:
            if not self._closing:
                log.exception("node %s: cannot publish the result of handler %s",
                              self.node, result["handler"])
