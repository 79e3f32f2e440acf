"""Durable delivery under chaos, short: a 7-node tree, about 30 s of `kill -9` and
restart, SIGSTOP/SIGCONT and (as root) link cuts while four publishers send durable
events to five durables (two of them queue groups). Nothing confirmed may be lost,
nothing delivered that was never published, no second delivery unmarked
(`make chaos` is the 20-node, 5-minute run of the same harness: bench/chaos.py)."""

from __future__ import annotations

import os

from bench.chaos import Options, run
from bench.chaos_check import report


def test_durable_delivery_survives_kills_pauses_and_link_cuts(tmp_path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", "0")) or None  # a failure prints its seed
    lines: list[str] = []
    verdicts = run(Options(nodes=7, seconds=30, seed=seed, rate=30, drain=60,
                           workdir=tmp_path, log=lines.append))
    assert len(verdicts) == 5
    assert all(v.delivered > 0 for v in verdicts), "\n".join(lines)
    assert all(v.ok for v in verdicts), "\n".join(lines) + "\n" + report(verdicts, 20)
