"""The chaos run's verdict, as Jepsen's queue checker gives it, per durable
subscription: what was confirmed and never delivered (lost), what was delivered and
never published (unexpected), and what came twice without saying so (a second
delivery of an id to the same durable whose redelivered flag is false). Pure.

Owns: reading the workers' record files into sets and that comparison. Must not
touch: processes, clocks, the network.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Published:
    """One publisher's record: every id it tried, and those a flush confirmed."""

    attempted: set[str] = field(default_factory=set)
    confirmed: set[str] = field(default_factory=set)
    failed_flushes: int = 0


@dataclass
class Verdict:
    durable: str
    delivered: int
    lost: list[str]
    unexpected: list[str]
    duplicates: list[str]
    redelivered: int  # deliveries flagged as redelivered (allowed)
    corrupt: list[str]  # payload does not carry the event's id

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unexpected or self.duplicates or self.corrupt)


def lines(path: Path) -> Iterable[dict]:
    """The complete JSON lines of a record file (a killed worker may leave half a
    last line: it is ignored)."""
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        try:
            yield json.loads(line)
        except ValueError:
            continue


def read_publisher(path: Path) -> Published:
    p = Published()
    for rec in lines(path):
        if "a" in rec:
            p.attempted.update(rec["a"])
        elif "c" in rec:
            p.confirmed.update(rec["c"])
        elif "f" in rec:
            p.failed_flushes += 1
    return p


def read_deliveries(path: Path) -> list[list]:
    """``[id, redelivered, deliveries, seq, payload_id]`` for every delivery."""
    return [row for rec in lines(path) for row in rec.get("d", ())]


def verdict(durable: str, deliveries: list[list], attempted: set[str],
            confirmed: set[str]) -> Verdict:
    fresh = Counter(row[0] for row in deliveries if not row[1])
    seen = {row[0] for row in deliveries}
    return Verdict(
        durable=durable, delivered=len(seen),
        lost=sorted(confirmed - seen), unexpected=sorted(seen - attempted),
        duplicates=sorted(i for i, n in fresh.items() if n > 1),
        redelivered=sum(1 for row in deliveries if row[1]),
        corrupt=sorted({row[0] for row in deliveries if row[4] != row[0]}))


def report(verdicts: list[Verdict], first: int = 5) -> str:
    out = []
    for v in verdicts:
        out.append(f"{v.durable}: delivered {v.delivered}, lost {len(v.lost)}, "
                   f"unexpected {len(v.unexpected)}, unmarked duplicates "
                   f"{len(v.duplicates)}, corrupt {len(v.corrupt)}, "
                   f"redeliveries {v.redelivered}")
        for what in ("lost", "unexpected", "duplicates", "corrupt"):
            ids = getattr(v, what)
            if ids:
                out.append(f"  {what}: {', '.join(ids[:first])}"
                           f"{' ...' if len(ids) > first else ''}")
    return "\n".join(out)
