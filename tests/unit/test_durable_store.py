"""The durable store reads back what it wrote: a restarted node finds what it owes."""

from __future__ import annotations

from treescale.durable_store import DurableStore


def test_owed_entries_survive_a_reopen(tmp_path) -> None:
    store = DurableStore(tmp_path / "d.durable")
    seqs = [1, 255, 256, 65_536, 2**40 + 7]  # packed, each holds NUL bytes
    for seq in seqs:
        store.owe("node-a", seq, 2)
    store.owe("b", 3)
    store.commit(0.0)
    store.close()
    owed = DurableStore(tmp_path / "d.durable").load()["owed"]
    assert owed == {"node-a": dict.fromkeys(seqs, 2), "b": {3: 0}}
