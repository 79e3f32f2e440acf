"""`tsctl config` as a user runs it (subprocesses): exit codes, one-line errors, --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from tests.conftest import ROOT, free_port
from treescale.fabric import load_fabric, read_db, without_passwords

CONFIGS = ROOT / "configs"


def tsctl(*args: str, env: dict | None = None, timeout: float = 60):
    return subprocess.run([sys.executable, "-m", "tsctl.main", "config", *args], cwd=ROOT,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def error_lines(result) -> list[str]:
    err = result.stderr.decode()
    assert result.returncode == 1, (result.returncode, err)
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if ln.strip()]


def test_validate_ok_and_json(tmp_path):
    r = tsctl("validate", "-p", "configs", "--for-build")
    assert r.returncode == 0 and "ok: 7 node(s) under root tree1, 7 ssh target(s)" in \
        r.stderr.decode()
    r = tsctl("validate", "--files", "configs/tree.toml,configs/ssh.toml", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout) == {"ok": True, "nodes": 7, "root": "tree1", "ssh": 7,
                                    "version": 0,
                                    "sources": ["configs/tree.toml", "configs/ssh.toml"]}


def test_validate_prints_every_problem_one_line_each(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[tree_node.a]\ntree_ip = "h"\ntree_port = 1\nchilds = ["b", "x"]\n'
                   '[tree_node.b]\ntree_ip = "h"\ntree_port = 1\nspeed = 3\n')
    r = tsctl("validate", "-p", str(bad))
    assert error_lines(r) == [f"error: {bad}: node b: unknown key 'speed'",
                              f"{bad}: node b: tree_ip:tree_port h:1 is also used by node a",
                              f"{bad}: node a: childs lists unknown node x"]
    r = tsctl("validate", "-p", str(bad), "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["problems"][0].endswith("'speed'")
    r = tsctl("validate", "-p", str(CONFIGS / "tree.toml"), "--for-build")
    lines = error_lines(r)
    assert len(lines) == 7 and lines[0] == (
        f"error: {CONFIGS / 'tree.toml'}: node tree1: no ssh entry: add an ssh.tree1 table "
        "with host, username, and password, key_file or agent")


def test_compile_show_restore_and_rebuild_from_the_json(tmp_path):
    db = tmp_path / "tree.db"
    r = tsctl("compile", "-p", "configs", "-o", str(db), "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout) == {"path": str(db), "version": 1, "nodes": 7}
    node_db = tmp_path / "node" / "tree.db"
    r = tsctl("restore", "-f", str(db), env={"TREE_DB_PATH": str(node_db)})
    assert r.returncode == 0, r.stderr.decode()
    assert f"version 1 (was 0), into {node_db}" in r.stderr.decode()
    r = tsctl("show", env={"TREE_DB_PATH": str(node_db), "COLUMNS": "200"})
    assert r.returncode == 0
    table = r.stdout.decode()
    assert "version 1 · 7 node(s)" in table and "127.0.0.1:8894" in table
    assert "treescale@127.0.0.1:22" in table
    shown = tsctl("show", "--db", str(node_db), "--json")
    (tmp_path / "again.json").write_text(shown.stdout.decode())
    r = tsctl("compile", "-p", str(tmp_path / "again.json"), "-o", str(tmp_path / "b.db"))
    assert r.returncode == 0, r.stderr.decode()
    # the database holds everything but the SSH passwords (never compiled in)
    source = load_fabric(["configs"])
    assert any(t.password for t in source.ssh.values())
    assert read_db(tmp_path / "b.db") == read_db(db) == replace(without_passwords(source),
                                                                version=1)
    for fmt in ("toml", "yaml"):
        out = tsctl("show", "-f", str(db), "--format", fmt)
        path = tmp_path / f"again.{fmt}"
        path.write_text(out.stdout.decode())
        assert load_fabric([path]) == read_db(db)


def test_errors_are_one_line(tmp_path):
    assert error_lines(tsctl("show", "--db", str(tmp_path / "none.db"))) == [
        f"error: {tmp_path / 'none.db'}: no such database file"]
    r = tsctl("show", "--db", "x.db", "-f", "configs")
    assert r.returncode == 2 and "give --db or -f, not both" in r.stderr.decode()
    port = free_port()
    lines = error_lines(tsctl("push", "-p", "configs/tree.toml", "-a",
                              f"tcp://127.0.0.1:{port}", "--timeout", "1"))
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    lines = error_lines(tsctl("version", "-a", f"tcp://127.0.0.1:{port}", "--timeout", "1"))
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    empty = Path(tmp_path / "plain.db")
    r = tsctl("restore", "-f", str(CONFIGS / "tree.toml"), "--db", str(empty))
    assert r.returncode == 0 and read_db(empty).version == 1


def test_help_everywhere():
    for cmd in ("validate", "compile", "restore", "show", "push", "version"):
        r = tsctl(cmd, "--help")
        assert r.returncode == 0 and b"Usage:" in r.stdout, cmd
