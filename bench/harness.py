"""Generic benchmark runner: shapes, worker plumbing, broker processes and result math.

A *System* (see :class:`System`) knows how to start its broker and provides four
worker functions.  The harness runs every worker in its own process (``spawn``
context, so workers must be module-level functions or staticmethods), starts the
publisher only after every subscriber reported that its subscription is live,
and bounds every shape by message count *and* wall time.  Anything still alive
when a shape ends is terminated, then killed.

Timestamps that are compared across processes come from ``time.monotonic()``
(CLOCK_MONOTONIC, system-wide on Linux); latencies measured inside a single
process use ``time.perf_counter()``.

Writing a System (e.g. ``bench/treescale_system.py`` exporting ``SYSTEMS = [...]``):
subclass :class:`BaseSystem`, set ``name``, implement ``server()`` (usually via
:func:`broker`) and the four workers as staticmethods.  Subscribers build a
:class:`Tally`, set ``ready_evt`` only once the subscription is live end to end, then
use :func:`receive_loop` (blocking receive) or :func:`wait_done` (callback receive) and
put ``tally.report()`` on ``result_queue``.  Publishers iterate :func:`batches`;
requesters iterate :class:`RoundTrips`.  A system named ``treescale`` gets ratio rows
(``treescale-3hop`` and ``treescale-batch`` a row each beside it).

Loss policy: every peer is configured to *buffer* rather than drop (Redis
``client-output-buffer-limit pubsub 0 0 0``, mosquitto ``max_queued_messages 0``,
NATS large ``max_pending`` and unlimited client pending limits, ZeroMQ HWM 0 on
PUB/SUB).  If a system still loses messages the shape is reported as ``lossy``
with the received count; it is never hidden.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue as queue_mod
import socket
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Protocol

from treescale.local import free_port as _free_port

HOST = "127.0.0.1"

#: Workers give up after this long even if the harness did not kill them.
WORKER_BUDGET_S = 55.0
#: A subscriber that already got data stops after this much silence (loss detection
#: without waiting for the whole shape timeout).
IDLE_GAP_S = 5.0
#: How often blocking receive loops wake up to check their deadlines.
POLL_S = 0.25
#: Deadline for a broker to accept connections / a client to get its subscription acked.
START_TIMEOUT_S = 10.0
#: One request/reply round trip longer than this is an error, not a data point.
REQUEST_TIMEOUT_S = 5.0
#: Round trips discarded before measuring (connection setup, JIT-less warmup of caches).
WARMUP = 200
#: Publishers send in batches of about this many bytes (pipeline depth / wait points).
BATCH_BYTES = 4 << 20
MAX_BATCH = 1000
#: Subscribers get this much less time than the harness so they can report partials.
SUBSCRIBER_GRACE_S = 5.0


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Shape:
    """One traffic pattern.  ``count`` is per subscriber (pub/sub) or measured requests."""

    name: str
    size: int
    count: int
    subscribers: int
    timeout: float = 60.0


SHAPES: dict[str, Shape] = {
    "small": Shape("small", size=100, count=300_000, subscribers=1),
    "large": Shape("large", size=1 << 20, count=2_000, subscribers=1),
    "fanout": Shape("fanout", size=100, count=50_000, subscribers=10),
    "reqrep": Shape("reqrep", size=100, count=5_000, subscribers=0),
}


def select_shapes(names: list[str], scale: float = 1.0) -> list[Shape]:
    """Return the named shapes with counts multiplied by ``scale`` (``--quick`` uses 0.1)."""
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shapes {unknown}; known: {sorted(SHAPES)}")
    return [replace(SHAPES[n], count=max(1, int(SHAPES[n].count * scale))) for n in names]


def subject_for(shape: Shape) -> str:
    """Subject/channel/topic for one run: ``bench.<shape>.<pid>`` (see :func:`shape_of`)."""
    return f"bench.{shape.name}.{os.getpid()}"


def shape_of(subject: str) -> str:
    """Shape name encoded in a subject.  Only brokerless systems need it: raw ZeroMQ picks
    PUSH/PULL or PUB/SUB by shape because its worker signatures carry no shape."""
    return subject.split(".")[1]


# --------------------------------------------------------------------------- system API


class System(Protocol):
    """What a benchmarked system provides.  Workers run in spawned processes."""

    name: str
    #: True for a brokerless ceiling (raw ZeroMQ) that ratios compare against separately.
    ceiling: bool

    def server(self) -> AbstractContextManager[str]:
        """Start the broker; yield its address; stop and clean it up on exit."""
        ...

    def supports(self, shape: str) -> bool: ...

    def version(self) -> str: ...

    @staticmethod
    def publisher(address: str, subject: str, count: int, size: int) -> None: ...

    @staticmethod
    def subscriber(
        address: str, subject: str, count: int, ready_evt: Event, result_queue: Any, timeout: float
    ) -> None: ...

    @staticmethod
    def responder(address: str, subject: str, ready_evt: Event, stop_evt: Event) -> None: ...

    @staticmethod
    def requester(address: str, subject: str, count: int, result_queue: Any) -> None: ...


class BaseSystem:
    """Defaults for :class:`System`: supports every shape, is not a ceiling, no version."""

    name = "base"
    ceiling = False

    def supports(self, shape: str) -> bool:
        return True

    def version(self) -> str:
        return ""


def command_version(argv: list[str]) -> str:
    """First line of a ``--version`` style command, or ``""`` if it cannot run."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


# --------------------------------------------------------------------------- worker helpers


class Deadline:
    """A point in monotonic time; workers check it so no loop can run unbounded."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at


def payload(size: int) -> bytes:
    return b"x" * size


def batches(count: int, size: int, deadline: Deadline | None = None) -> Iterator[int]:
    """Split ``count`` sends into batches of ~BATCH_BYTES, stopping early at the deadline.

    Publishers pipeline/flush/wait per batch, which also bounds client-side memory for
    1 MiB payloads.
    """
    deadline = deadline or Deadline(WORKER_BUDGET_S)
    per = max(1, min(MAX_BATCH, BATCH_BYTES // max(1, size)))
    left = count
    while left > 0 and not deadline.expired():
        n = min(per, left)
        yield n
        left -= n


def split_hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


_now = time.monotonic  # module-level binding: Tally.add runs once per message


class Tally:
    """What one subscriber received.

    Bounded three ways: ``count`` messages, ``timeout`` seconds total, or IDLE_GAP_S of
    silence after the first message (so lossy systems end quickly instead of waiting for
    the full timeout).  ``add`` is on every system's per-message path, so it stays lean.
    """

    __slots__ = ("count", "deadline", "received", "bytes", "first", "last")

    def __init__(self, count: int, timeout: float) -> None:
        self.count = count
        self.deadline = _now() + timeout
        self.received = 0
        self.bytes = 0
        self.first: float | None = None
        self.last: float | None = None

    def add(self, nbytes: int) -> bool:
        """Record one message; return False once the subscriber should stop."""
        now = self.last = _now()
        if self.first is None:
            self.first = now
        self.received += 1
        self.bytes += nbytes
        return self.received < self.count and now < self.deadline

    def add_many(self, count: int, nbytes: int) -> bool:
        """Record ``count`` messages of ``nbytes`` in all at once (a subscriber that
        receives batches); return False once the subscriber should stop."""
        now = self.last = _now()
        if self.first is None:
            self.first = now
        self.received += count
        self.bytes += nbytes
        return self.received < self.count and now < self.deadline

    @property
    def done(self) -> bool:
        now = _now()
        return (
            self.received >= self.count
            or now >= self.deadline
            or (self.last is not None and now - self.last > IDLE_GAP_S)
        )

    def report(self) -> dict[str, Any]:
        return {"received": self.received, "first": self.first, "last": self.last, "bytes": self.bytes}


def receive_loop(tally: Tally, recv: Callable[[float], int | None]) -> dict[str, Any]:
    """Drive a blocking receiver: ``recv(timeout)`` returns a payload size or None when
    nothing arrived within ``timeout`` (POLL_S, so deadlines overshoot by at most that)."""
    add = tally.add
    while True:
        n = recv(POLL_S)
        if n is None:
            if tally.done:
                break
        elif not add(n):
            break
    return tally.report()


def wait_done(done: Any, tally: Tally) -> None:
    """Wait on a threading.Event set by a callback-driven subscriber, honouring the tally's
    deadline and idle gap."""
    while not done.wait(POLL_S):
        if tally.done:
            return


class RoundTrips:
    """Sequential round-trip timer: WARMUP unrecorded trips, then ``count`` recorded ones,
    all within WORKER_BUDGET_S."""

    def __init__(self, count: int, warmup: int = WARMUP) -> None:
        self.total = warmup + count
        self.warmup = warmup
        self.deadline = Deadline(WORKER_BUDGET_S)
        self.latencies_us: list[float] = []
        self._i = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.total):
            if self.deadline.expired():
                return
            self._i = i
            yield i

    @staticmethod
    def start() -> float:
        return time.perf_counter()

    def stop(self, t0: float) -> None:
        if self._i >= self.warmup:
            self.latencies_us.append((time.perf_counter() - t0) * 1e6)

    def report(self) -> dict[str, Any]:
        return {"latencies_us": self.latencies_us}


# --------------------------------------------------------------------------- broker processes


def free_port() -> int:
    """An unused TCP port on 127.0.0.1, below the ephemeral range (treescale.local)."""
    return _free_port(HOST)


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll until the broker accepts a TCP connection; fail fast if it exits."""
    deadline = Deadline(timeout)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}: {_tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=0.25):
                return
        except OSError:
            if deadline.expired():
                raise TimeoutError(f"broker did not listen on {port}: {_tail(log)}") from None
            time.sleep(0.02)  # the one allowed sleep: polling a port with a deadline


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Terminate, then kill if it ignores SIGTERM."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


@contextmanager
def broker(name: str, make_argv: Callable[[int, Path], list[str]]) -> Iterator[str]:
    """Run a broker on a free 127.0.0.1 port in a fresh temp dir and yield ``host:port``.

    ``make_argv(port, workdir)`` writes any config file into ``workdir`` and returns the
    command line.  Output goes to ``workdir/<name>.log`` (shown if startup fails).
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        workdir = Path(tmp)
        log = workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                make_argv(port, workdir), stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
            try:
                wait_for_port(port, proc, log, START_TIMEOUT_S)
                yield f"{HOST}:{port}"
            finally:
                stop_process(proc)


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    """Outcome of one (system, shape).  status: ok | lossy | error | timeout | unsupported."""

    system: str
    shape: str
    status: str
    expected: int = 0
    received: int = 0
    events_per_s: float | None = None
    bytes_per_s: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    wall_s: float = 0.0
    error: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def loss(self) -> float | None:
        return None if not self.expected else 1.0 - self.received / self.expected

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "loss": self.loss}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def pubsub_rates(reports: list[dict[str, Any]]) -> tuple[int, float | None, float | None]:
    """(received, events/s, bytes/s) over all subscribers: sum received divided by the span
    from the earliest first message to the latest last message."""
    got = [r for r in reports if r.get("received")]
    received = sum(r["received"] for r in got)
    if not got:
        return 0, None, None
    span = max(r["last"] for r in got) - min(r["first"] for r in got)
    if span <= 0:
        return received, None, None
    return received, received / span, sum(r["bytes"] for r in got) / span


# --------------------------------------------------------------------------- running


class WorkerFailed(Exception):
    """A worker raised, crashed, or did not finish in time."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


def _trampoline(role: str, fn: Callable[..., None], args: tuple[Any, ...], errors: Any) -> None:
    """Process entry point: run a worker and report its exception instead of dying silently."""
    try:
        fn(*args)
    except Exception as exc:
        errors.put({"role": role, "error": f"{type(exc).__name__}: {exc}",
                    "trace": traceback.format_exc()[-3000:]})


class _Workers:
    """Spawned worker processes plus the queue they report to; always reaped on exit."""

    def __init__(self, deadline: Deadline) -> None:
        self.ctx = mp.get_context("spawn")
        self.queue = self.ctx.Queue()
        self.deadline = deadline
        self.procs: list[tuple[str, mp.process.BaseProcess]] = []

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for _, p in self.procs:
            if p.is_alive():
                p.terminate()
        for _, p in self.procs:
            p.join(2)
            if p.is_alive():
                p.kill()
                p.join(2)
        self.queue.close()
        self.queue.join_thread()

    def event(self) -> Event:
        return self.ctx.Event()

    def spawn(self, role: str, fn: Callable[..., None], *args: Any) -> mp.process.BaseProcess:
        p = self.ctx.Process(target=_trampoline, args=(role, fn, args, self.queue),
                             name=f"bench-{role}", daemon=True)
        p.start()
        self.procs.append((role, p))
        return p

    def _check(self, pending: list[dict[str, Any]] | None = None) -> None:
        """Raise if a worker reported an error or died; keep other reports in ``pending``."""
        while True:
            try:
                msg = self.queue.get_nowait()
            except queue_mod.Empty:
                break
            if "error" in msg:
                raise WorkerFailed(f"{msg['role']}: {msg['error']}\n{msg['trace']}")
            if pending is not None:
                pending.append(msg)
        for role, p in self.procs:
            if p.exitcode not in (None, 0):
                raise WorkerFailed(f"{role} exited with code {p.exitcode}")

    def wait_ready(self, events: list[Event]) -> None:
        for evt in events:
            while not evt.wait(0.1):
                self._check()
                if self.deadline.expired():
                    raise WorkerFailed("workers not ready before the shape timeout", timeout=True)

    def collect(self, n: int, into: list[dict[str, Any]]) -> None:
        """Gather ``n`` reports into ``into`` (partial reports stay there on failure)."""
        while len(into) < n:
            try:
                msg = self.queue.get(timeout=min(0.1, self.deadline.remaining()) or 0.001)
            except queue_mod.Empty:
                self._check(into)
                if self.deadline.expired() and len(into) < n:
                    raise WorkerFailed(f"only {len(into)}/{n} reports before the shape timeout",
                                       timeout=True) from None
                continue
            if "error" in msg:
                raise WorkerFailed(f"{msg['role']}: {msg['error']}\n{msg['trace']}")
            into.append(msg)

    def join(self, proc: mp.process.BaseProcess, what: str, grace: float = 10.0) -> None:
        """Wait for a worker that should be finishing (its peers already reported)."""
        proc.join(min(grace, self.deadline.remaining()))
        self._check()
        if proc.is_alive():
            raise WorkerFailed(f"{what} did not exit after its peers finished", timeout=True)


def _run_pubsub(system: System, shape: Shape, address: str, res: Result, deadline: Deadline) -> None:
    subject = subject_for(shape)
    reports: list[dict[str, Any]] = []
    res.expected = shape.count * shape.subscribers
    try:
        with _Workers(deadline) as w:
            sub_timeout = max(1.0, deadline.remaining() - SUBSCRIBER_GRACE_S)
            ready = [w.event() for _ in range(shape.subscribers)]
            for i, evt in enumerate(ready):
                w.spawn(f"subscriber-{i}", system.subscriber, address, subject, shape.count,
                        evt, w.queue, sub_timeout)
            w.wait_ready(ready)
            pub = w.spawn("publisher", system.publisher, address, subject, shape.count, shape.size)
            w.collect(shape.subscribers, reports)
            w.join(pub, "publisher")
    finally:
        res.received, res.events_per_s, res.bytes_per_s = pubsub_rates(reports)


def _run_reqrep(system: System, shape: Shape, address: str, res: Result, deadline: Deadline) -> None:
    subject = subject_for(shape)
    reports: list[dict[str, Any]] = []
    res.expected = shape.count
    try:
        with _Workers(deadline) as w:
            ready, stop = w.event(), w.event()
            responder = w.spawn("responder", system.responder, address, subject, ready, stop)
            w.wait_ready([ready])
            w.spawn("requester", system.requester, address, subject, shape.count, w.queue)
            w.collect(1, reports)
            stop.set()
            w.join(responder, "responder")
    finally:
        lat = sorted(reports[0]["latencies_us"]) if reports else []
        res.received = len(lat)
        if lat:
            res.p50_us, res.p99_us = percentile(lat, 50), percentile(lat, 99)


def run_shape(system: System, shape: Shape) -> Result:
    """Run one shape against one system on a fresh broker; never raises for worker problems."""
    res = Result(system.name, shape.name, "unsupported",
                 params={"size": shape.size, "count": shape.count, "subscribers": shape.subscribers})
    if not system.supports(shape.name):
        return res
    t0 = time.monotonic()
    try:
        with system.server() as address:
            deadline = Deadline(shape.timeout)
            if shape.subscribers:
                _run_pubsub(system, shape, address, res, deadline)
            else:
                _run_reqrep(system, shape, address, res, deadline)
        res.status = "ok" if res.received >= res.expected else "lossy"
    except WorkerFailed as exc:
        res.status, res.error = ("timeout" if exc.timeout else "error"), str(exc)
    except Exception as exc:  # broker failed to start, bad config, ...
        res.status, res.error = "error", f"{type(exc).__name__}: {exc}"
    res.wall_s = time.monotonic() - t0
    return res
