"""The chaos run's clients, each in a process of its own (`python -m
bench.chaos_workers pub|sub ...`): publishers of durable events with unique ids and
durable subscribers that ack every delivery. Each writes what it did to a JSON-lines
record file as it goes, so a record survives the worker being killed.

Owns: the publishers' and subscribers' loops and their records. Must not touch: node
processes and the network (bench/chaos.py and chaos_net.py fault them); the verdict
(chaos_check.py). The workers use only the public Client API: a Client whose node
was killed reconnects, resends and resumes by itself; the worker never helps.

Records: a publisher writes ``{"a": [ids]}`` before publishing them, ``{"c": [ids]}``
once a flush returned for them and ``{"f": [ids], "err": ...}`` when it raised (those
stay attempted, not confirmed). A subscriber writes ``{"ready": ...}`` once its
subscribe returned, then ``{"d": [[id, redelivered, deliveries, seq, payload id],
...]}`` before acking them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

# A test may run the harness against a stand-in with the same API (a module that
# exports Client and DeliveryError); by default, TreeScale's own.
CLIENT_MODULE = os.environ.get("TREESCALE_CHAOS_CLIENT", "treescale")

stopping = False


def _stop(*_: Any) -> None:
    global stopping
    stopping = True


def _api() -> tuple[Any, type]:
    mod = importlib.import_module(CLIENT_MODULE)
    return mod.Client, mod.DeliveryError


def _count(value: Any) -> int:
    """DeliveryError's counts: a number, or a collection of the events."""
    if isinstance(value, int):
        return value
    return len(value or ())


class Record:
    def __init__(self, path: Path) -> None:
        self.f = open(path, "a", buffering=1)

    def write(self, **rec: Any) -> None:
        self.f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.f.flush()


def publisher(address: str, name: str, out: Path, rate: float, batch: int,
              flush_timeout: float) -> None:
    """Publish ``batch`` events at a time at about ``rate`` a second, each with id
    ``NAME:NNNNNN`` (its payload the id again), then flush; until SIGTERM."""
    Client, DeliveryError = _api()
    rec = Record(out)
    client = Client(address, name=name)
    n = 0
    started = time.monotonic()
    try:
        while not stopping:
            ids = [f"{name}:{n + i:06d}" for i in range(batch)]
            n += batch
            rec.write(a=ids)
            for eid in ids:
                client.publish(f"chaos.{name}", eid.encode(), durable=True, id=eid)
            try:
                client.flush(timeout=flush_timeout)
            except DeliveryError as e:
                rec.write(f=ids, err=repr(e)[:300],
                          unconfirmed=_count(getattr(e, "unconfirmed", 0)),
                          refused=_count(getattr(e, "refused", 0)))
            except Exception as e:  # noqa: BLE001 - a fault the record must show
                rec.write(f=ids, err=repr(e)[:300])
            else:
                rec.write(c=ids)
            wait = started + n / rate - time.monotonic()
            if wait > 0 and not stopping:
                time.sleep(min(wait, 1.0))
    finally:
        rec.write(done=n)
        try:
            client.close(timeout=2)
        except Exception:  # noqa: BLE001 - closing a client of a dead node
            pass


def subscriber(address: str, name: str, durable: str, queue: str | None, out: Path,
               ack_wait: float, max_pending: int) -> None:
    """Subscribe ``chaos.>`` durably, record and ack every delivery; until SIGTERM."""
    Client, _ = _api()
    rec = Record(out)
    client = Client(address, name=name)
    try:
        result = client.subscribe("chaos.>", durable=durable, queue=queue,
                                  ack_wait=ack_wait, max_pending=max_pending)
        rec.write(ready=True, result=repr(result)[:300])
        while not stopping:
            rows, got = [], []
            for ev in client.events(timeout=0.2):
                data = ev.data
                rows.append([ev.id, bool(ev.redelivered), ev.deliveries, ev.seq,
                             bytes(data).decode(errors="replace")])
                got.append(ev)
                if len(rows) >= 200 or stopping:
                    break
            if rows:
                rec.write(d=rows)  # recorded before acked: at least once on record
                for ev in got:
                    ev.ack()
    finally:
        try:
            client.close(timeout=2)
        except Exception:  # noqa: BLE001 - closing a client of a dead node
            pass


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    p = argparse.ArgumentParser(prog="bench.chaos_workers")
    sub = p.add_subparsers(dest="role", required=True)
    pp = sub.add_parser("pub")
    pp.add_argument("address")
    pp.add_argument("name")
    pp.add_argument("out", type=Path)
    pp.add_argument("--rate", type=float, default=50.0)
    pp.add_argument("--batch", type=int, default=10)
    pp.add_argument("--flush-timeout", type=float, default=10.0)
    sp = sub.add_parser("sub")
    sp.add_argument("address")
    sp.add_argument("name")
    sp.add_argument("durable")
    sp.add_argument("out", type=Path)
    sp.add_argument("--queue")
    sp.add_argument("--ack-wait", type=float, default=5.0)
    sp.add_argument("--max-pending", type=int, default=1000)
    a = p.parse_args(argv)
    if a.role == "pub":
        publisher(a.address, a.name, a.out, a.rate, a.batch, a.flush_timeout)
    else:
        subscriber(a.address, a.name, a.durable, a.queue, a.out, a.ack_wait,
                   a.max_pending)


if __name__ == "__main__":
    sys.exit(main())
