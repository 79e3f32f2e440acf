"""`tsctl doctor` on this machine, for real: a free port and a fresh database directory
pass, a port held by a listening socket fails (naming the port, its holder and what to
do), a database path that cannot be created or written fails, and every other check
still runs. Run as root, like CI."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from treescale.store import Store

CHECKS = ["python", "zmq", "port", "database", "keys", "auth", "services", "docker",
          "nftables", "ipvs", "clock"]
DOCTOR = [sys.executable, "-m", "tsctl.main", "doctor"]


def doctor(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *DOCTOR, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def report(*args: str, prefix: tuple[str, ...] = ()) -> tuple[int, dict[str, dict]]:
    """Exit status and the checks by name, from `tsctl doctor --json`."""
    r = doctor(*args, "--json", prefix=prefix)
    assert "Traceback" not in r.stderr, r.stderr
    body = json.loads(r.stdout)
    checks = {c["name"]: c for c in body["checks"]}
    assert list(checks) == CHECKS, list(checks)  # every check ran, in order
    assert all(c["status"] in ("ok", "warn", "fail") for c in checks.values())
    assert all(c["fix"] for c in checks.values() if c["status"] != "ok"), checks
    assert body["ok"] == (r.returncode == 0) == all(c["status"] != "fail"
                                                    for c in checks.values())
    return r.returncode, checks


def test_a_free_port_and_a_fresh_database_directory_pass(tmp_path):
    port = free_port()
    db = tmp_path / "new" / "dir" / "tree.db"
    code, checks = report("--port", str(port), "--db", str(db))
    assert code == 0, checks
    assert checks["port"]["status"] == "ok" and str(port) in checks["port"]["detail"]
    assert checks["database"]["status"] == "ok"
    assert "will be created" in checks["database"]["detail"] and not db.parent.exists()
    assert checks["keys"] == {"name": "keys", "status": "warn",
                              "detail": "no link keys (links are not encrypted)",
                              "fix": checks["keys"]["fix"]}
    assert checks["ipvs"]["status"] in ("ok", "warn")  # this kernel: no ip_vs, a warning
    if checks["ipvs"]["status"] == "warn":
        assert "not a TreeScale error" in checks["ipvs"]["detail"]
    assert list(tmp_path.rglob(".tsctl-doctor-*")) == []  # the write probe is gone

    # The text report: one line per check, status first; a fix after each warning.
    r = doctor("--port", str(port), "--db", str(db))
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == len(CHECKS), r.stdout
    for line, name in zip(lines, CHECKS, strict=True):
        status, shown = line.split()[:2]
        assert shown == name and status == checks[name]["status"], line
        assert ("→" in line) == (status != "ok"), line
    assert "11 checks: 0 failed" in r.stderr


def test_lmdb_files_readable_by_everyone_are_a_warning_until_made_private(tmp_path):
    db = tmp_path / "tree.db"
    with Store(db) as store:
        store.put("meta", "version", 1)
    os.chmod(db, 0o644)
    os.chmod(f"{db}-lock", 0o644)
    code, checks = report("--port", str(free_port()), "--db", str(db))
    assert code == 0 and checks["database"]["status"] == "warn", checks["database"]
    assert "readable by every user" in checks["database"]["detail"]
    assert checks["database"]["fix"] == f"chmod 600 {db} {db}-lock"
    os.chmod(db, 0o600)
    os.chmod(f"{db}-lock", 0o600)
    code, checks = report("--port", str(free_port()), "--db", str(db))
    assert checks["database"]["status"] == "ok" and "private" in checks["database"]["detail"]


def test_a_port_held_by_a_listening_socket_fails_and_says_what_to_do(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code, checks = report("--port", str(port), "--db", str(tmp_path / "tree.db"))
        r = doctor("--port", str(port), "--db", str(tmp_path / "tree.db"))
    assert code == 1
    port_check = checks["port"]
    assert port_check["status"] == "fail" and f"port {port}" in port_check["detail"]
    assert f"pid {os.getpid()}" in port_check["detail"]  # this test holds it
    assert "--port" in port_check["fix"] and "stop that process" in port_check["fix"]
    assert checks["database"]["status"] == "ok"  # the others still ran
    [line] = [ln for ln in r.stdout.splitlines() if ln.split()[:2] == ["fail", "port"]]
    assert str(port) in line and "→" in line and r.returncode == 1
    assert "1 failed" in r.stderr and "Traceback" not in r.stderr


def test_a_database_path_under_a_file_fails_and_the_rest_still_run(tmp_path):
    assert Path("/etc/hostname").is_file()
    code, checks = report("--port", str(free_port()), "--db", "/etc/hostname/x/tree.db")
    assert code == 1
    db = checks["database"]
    assert db["status"] == "fail" and "/etc/hostname is a file" in db["detail"], db
    assert "db_path" in db["fix"] and "TREE_DB_PATH" in db["fix"]
    assert checks["port"]["status"] == "ok" and checks["python"]["status"] == "ok"
    assert not Path("/etc/hostname/x").exists()


def test_a_read_only_database_directory_fails(tmp_path):
    """A directory on a read-only mount (a tmpfs mounted ro in a mount namespace of the
    test's own: the rest of the machine never sees it)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare command (util-linux) to make a read-only mount")
    trial = subprocess.run([unshare, "--mount", "sh", "-c",
                            f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(ro))}"],
                           capture_output=True, text=True, timeout=30)
    if trial.returncode != 0:
        pytest.skip(f"cannot mount in a new mount namespace here: {trial.stderr.strip()}")
    inner = " ".join(shlex.quote(a) for a in [*DOCTOR, "--port", str(free_port()), "--db",
                                              str(ro / "tree.db"), "--json"])
    prefix = (unshare, "--mount", "sh", "-c",
              f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(ro))} && exec {inner}")
    r = subprocess.run(prefix, cwd=ROOT, capture_output=True, text=True, timeout=120)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.returncode == 1 and list(checks) == CHECKS
    assert checks["database"]["status"] == "fail", checks["database"]
    assert "not writable: Read-only file system" in checks["database"]["detail"]
    assert checks["port"]["status"] == "ok"


def test_a_key_directory_must_be_private(tmp_path):
    from treescale import keys as K

    keys = tmp_path / "keys"
    K.generate(keys)
    os.chmod(keys, 0o755)
    os.chmod(keys / "node.key_secret", 0o644)
    args = ("--port", str(free_port()), "--db", str(tmp_path / "tree.db"), "--keys",
            str(keys))
    code, checks = report(*args)
    assert code == 1 and checks["keys"]["status"] == "fail"
    assert "open to other users" in checks["keys"]["detail"]
    assert checks["keys"]["fix"] == f"chmod 700 {keys} && chmod 600 {keys}/*"
    os.chmod(keys, 0o700)
    os.chmod(keys / "node.key_secret", 0o600)
    code, checks = report(*args)
    assert checks["keys"]["status"] == "ok" and code == 0, checks
    assert K.load_own(keys).public in checks["keys"]["detail"]
    # a damaged keypair is a failure naming the file
    (keys / "node.key_secret").write_text("secret")
    os.chmod(keys / "node.key_secret", 0o600)
    code, checks = report(*args)
    assert code == 1 and checks["keys"]["status"] == "fail"
    assert checks["keys"]["detail"] == f"{keys}/node.key_secret: malformed key file (no " \
        "public-key line)"


def test_the_config_gives_the_port_and_bad_input_is_one_line(tmp_path):
    port = free_port()
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nname = "n9"\nport = {port}\n')
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        code, checks = report("--config", str(cfg), "--db", str(tmp_path / "tree.db"))
    assert code == 1 and f"port {port}" in checks["port"]["detail"]
    r = doctor("--config", str(tmp_path / "none.toml"))
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "none.toml" in r.stderr and "Traceback" not in r.stderr
    assert doctor("--help").returncode == 0
