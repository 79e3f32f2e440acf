"""The seed README's commands, verbatim, through the installed `treescale` script:
build, config compile, config restore and api exec (against a real local tree).

Each test runs in a directory of its own holding a `configs/` like the repository's, so
the relative paths of the seed (`configs/tree.toml`, `./configs`, `tree.db`) mean what
they say. The real build over SSH is tested against real sshd hosts in test_build.py
(where the seed spelling is run too); here `build` meets servers whose SSH port has
nothing listening: every server is tried, and fails alone, at the connect step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, wait_until
from tests.scripts import run_line
from treescale.fabric import read_db
from treescale.local import down, up

SEED_BUILD = "treescale build  --files=configs/tree.toml,configs/ssh.toml"
SEED_COMPILE = "treescale config compile -p ./configs -o tree.db"
SEED_RESTORE = "treescale config restore -f tree.db"
SEED_EXEC = 'treescale api exec -c "uname" -n tree1 -t tree3'
NODES = [f"tree{i}" for i in range(1, 8)]


def no_traceback(r) -> None:
    assert "Traceback" not in r.stderr, r.stderr


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory with a copy of the repository's configs/ and a home of its own (so
    known hosts and caches stay in the test's directory)."""
    work = tmp_path / "work"
    shutil.copytree(ROOT / "configs", work / "configs")
    (tmp_path / "home").mkdir()
    return work


def env_for(work: Path) -> dict[str, str]:
    """The test's own home, database and place for the admin token build makes."""
    home = work.parent / "home"
    return {"HOME": str(home), "TREE_DB_PATH": str(work / "restored.db"),
            "TREESCALE_CONFIG_DIR": str(home / ".config" / "treescale")}


@pytest.mark.parametrize("line", ["treescale --help", "treescale build --help",
                                  "treescale config --help", "treescale api exec --help"])
def test_treescale_help(line, workdir):
    r = run_line(line, workdir)
    assert r.returncode == 0 and r.stdout.startswith("Usage: treescale"), r.stderr


def test_treescale_version_names_package_protocol_and_zmq(workdir):
    import zmq

    from treescale import __version__
    from treescale.protocol import PROTOCOL_VERSION

    r = run_line("treescale --version", workdir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"treescale {__version__} (protocol {PROTOCOL_VERSION}, "
                               f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}")


def test_seed_build_tries_every_server_of_both_files(workdir):
    """`--files=a,b` is read as two files that merge (a node without its ssh target
    would fail before any connection); each server is tried over SSH and fails alone,
    one line naming the server, its host and the step."""
    closed = free_port()  # nothing listens there
    ssh = ["[ssh]"]
    for n in NODES:  # the seed's ways to log in: the SSH agent (tree1), a password
        ssh += [f"[ssh.{n}]", 'host = "127.0.0.1"', f'port = "{closed}"',
                'username = "treescale"', f'install_root = "/opt/treescale/{n}"']
        ssh += [] if n == "tree1" else ['password = "tree"']
    (workdir / "configs" / "ssh.toml").write_text("\n".join(ssh) + "\n")
    r = run_line(SEED_BUILD, workdir, env_for(workdir))
    no_traceback(r)
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {n} (127.0.0.1): connect: connection refused (is sshd "
                      "listening on that port?)" for n in NODES], r.stderr
    assert "7 of 7 server(s) failed" in r.stderr
    # the fleet would have been closed: build made its admin token first, for this user only
    token = workdir.parent / "home" / ".config" / "treescale" / "tree1.token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and f"{token}" in r.stderr
    # the same command as a dry run, with its JSON summary: servers in tree order
    r = run_line(SEED_BUILD + " --dry-run --json", workdir, env_for(workdir))
    assert r.returncode == 1, r.stderr
    servers = json.loads(r.stdout)["servers"]
    assert [(s["name"], s["host"], s["step"]) for s in servers] == \
        [(n, "127.0.0.1", "connect") for n in NODES]
    assert not (workdir.parent / "home" / ".treescale" / "known_hosts").exists()


def test_seed_build_without_files_says_what_it_needs(tmp_path):
    r = run_line("treescale build", tmp_path, {"HOME": str(tmp_path)})
    no_traceback(r)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: no such file: configs/tree.toml, configs/ssh.toml (give the tree and ssh "
        "files: --files=TREE,SSH; default configs/tree.toml,configs/ssh.toml)"]


def test_seed_compile_then_restore(workdir):
    env = env_for(workdir)
    r = run_line(SEED_COMPILE, workdir, env)
    assert r.returncode == 0, r.stderr
    assert (workdir / "tree.db").is_file()
    assert r.stderr.startswith("compiled 7 node(s) into tree.db (version 1)"), r.stderr
    r = run_line(SEED_RESTORE, workdir, env)
    assert r.returncode == 0, r.stderr
    assert f"restored 7 node(s), version 1 (was 0), into {env['TREE_DB_PATH']}" in \
        r.stderr.replace("\n", " ")
    restored = read_db(env["TREE_DB_PATH"])
    assert list(restored.tree.names) == NODES and restored.version == 1
    assert restored.ssh["tree3"].host == "127.0.0.1"
    # what the node would read: `config show` on the default database ($TREE_DB_PATH)
    r = run_line("treescale config show --json", workdir, env)
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(r.stdout)["tree_node"]) == NODES


@pytest.fixture
def seed_tree(workdir: Path):
    """The repository's 7-node configs/tree.toml, on free ports, running as local
    processes; stopped at teardown, pass or fail."""
    tree = workdir / "configs" / "tree.toml"
    tree.write_text(re.sub(r"(tree_port|metrics_port) = \d+",
                           lambda m: f"{m[1]} = {free_port()}", tree.read_text()))
    state = workdir.parent / "state" / "up.json"
    try:
        up(tree, state)
        yield workdir
    finally:
        down(state)


def test_seed_api_exec_runs_on_tree3_through_tree1(seed_tree):
    def reachable() -> bool:  # tree3's exec service answers once the tree has linked
        return run_line('treescale api exec -c "true" -n tree1 -t tree3 --exec-timeout 2 '
                        "--timeout 3", seed_tree).returncode == 0

    wait_until(reachable, 30, "tree3's exec service through tree1")
    r = run_line(SEED_EXEC, seed_tree)
    assert r.returncode == 0, r.stderr
    assert r.stdout == os.uname().sysname + "\n" and r.stderr == ""
    # -t picks where it runs: tree2 has exec off (no service runs), said in one line
    r = run_line('treescale api exec -c "uname" -n tree1 -t tree2', seed_tree)
    no_traceback(r)
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "error: no answer from node 'tree2': it is not in the tree, or its exec service "
        "is off (it runs with exec_enabled = true and client auth)"]
