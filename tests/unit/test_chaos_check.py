"""The chaos run's checker finds each kind of violation, and only those."""

from __future__ import annotations

from bench.chaos_check import read_publisher, verdict


def row(eid: str, redelivered: bool = False, payload: str | None = None) -> list:
    return [eid, redelivered, 2 if redelivered else 1, 1, payload or eid]


def test_a_clean_run_with_marked_redeliveries_is_ok() -> None:
    v = verdict("d1", [row("p1:1"), row("p1:2"), row("p1:1", redelivered=True)],
                attempted={"p1:1", "p1:2", "p1:3"}, confirmed={"p1:1", "p1:2"})
    assert v.ok and v.delivered == 2 and v.redelivered == 1


def test_lost_unexpected_unmarked_duplicates_and_corrupt_payloads_are_found() -> None:
    rows = [row("p1:1"), row("p1:1"), row("zz:9"), row("p1:3", payload="p1:4")]
    v = verdict("d1", rows, attempted={"p1:1", "p1:2", "p1:3"},
                confirmed={"p1:1", "p1:2"})
    assert (v.lost, v.unexpected, v.duplicates, v.corrupt) == (
        ["p1:2"], ["zz:9"], ["p1:1"], ["p1:3"])
    assert not v.ok


def test_a_failed_flush_leaves_its_ids_attempted_only(tmp_path) -> None:
    f = tmp_path / "p1.jsonl"
    f.write_text('{"a":["p1:1"]}\n{"c":["p1:1"]}\n{"a":["p1:2"]}\n'
                 '{"f":["p1:2"],"err":"x"}\n{"a":["p1:3"')  # a killed writer's last line
    p = read_publisher(f)
    assert p.attempted == {"p1:1", "p1:2"} and p.confirmed == {"p1:1"}
    assert p.failed_flushes == 1
