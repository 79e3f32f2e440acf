"""`tsctl up` / `status` / `down`: a seven-node tree from a seed file, on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, free_port, ping, wait_until
from treescale import AuthError, Client
from treescale.local import down

SHAPE = {"tree1": ["tree2", "tree4"], "tree2": ["tree3"], "tree3": [],
         "tree4": ["tree5", "tree6", "tree7"], "tree5": [], "tree6": [], "tree7": []}


def seed_file(path) -> dict:
    """configs/tree.toml's shape on free ports, as a tree file."""
    ports = {name: free_port() for name in SHAPE}
    lines = ["[tree_node]"]
    for name, kids in SHAPE.items():
        lines += [f"[tree_node.{name}]", f'name = "{name}"', f"tree_port = {ports[name]}",
                  'tree_ip = "10.9.9.9"',  # rewritten to 127.0.0.1 by `up`
                  f"tags = {json.dumps(['edge'] if name == 'tree5' else [])}",
                  f"groups = {json.dumps(['frontend'] if name == 'tree5' else [])}",
                  f"childs = {json.dumps(kids)}"]
    path.write_text("\n".join(lines) + "\n")
    return ports


@pytest.fixture
def tree(tmp_path):
    cfg = tmp_path / "tree.toml"
    ports = seed_file(cfg)
    env = {**os.environ, "TREESCALE_STATE": str(tmp_path / "state" / "up.json"),
           "COLUMNS": "160"}  # wide enough that table rows do not wrap

    def tsctl(*args: str, timeout: float = 60):
        return subprocess.run([sys.executable, "-m", "tsctl.main", *args], cwd=ROOT,
                              env=env, capture_output=True, timeout=timeout)

    r = tsctl("up", str(cfg))
    assert r.returncode == 0, r.stderr.decode()
    yield ports, tsctl
    down(tmp_path / "state" / "up.json")


def test_up_status_down(tree):
    ports, tsctl = tree
    leaf = f"tcp://127.0.0.1:{ports['tree7']}"

    def all_linked() -> bool:
        r = tsctl("status", "--json", "-a", leaf, "--wait", "1.5")
        nodes = {n["node"]: n for n in json.loads(r.stdout or b"[]")}
        return len(nodes) == 7 and all(
            nodes[kid]["parent"] == parent for parent, kids in SHAPE.items()
            for kid in kids)

    wait_until(all_linked, 30, "seven linked nodes in `tsctl status`")
    table = tsctl("status", "-a", leaf, "--wait", "1.5").stdout.decode()
    row = next(line for line in table.splitlines()
               if "│" in line and line.split("│")[1].strip() == "tree5")
    assert "frontend" in row and "edge" in row  # tree5's group and tag from the file
    with Client(f"tcp://127.0.0.1:{ports['tree3']}") as sub, Client(leaf) as pub:
        sub.subscribe("demo.>")
        seen: list = []
        pub.publish("demo.hello", b"to all")

        def arrived() -> bool:
            ev = sub.next_event(0.2)
            if ev is None:
                pub.publish("demo.hello", b"to all")
            seen.extend([ev] if ev else [])
            return bool(seen)

        wait_until(arrived, 15, "an event from tree7 to reach tree3")
        assert bytes(seen[0].data) == b"to all"
    r = tsctl("down")
    assert r.returncode == 0 and b"stopped 7 node(s)" in r.stderr
    r = tsctl("status", "-a", leaf, "--timeout", "0.5")
    assert r.returncode == 1 and b"no answer" in r.stderr


def test_each_node_up_starts_is_a_process_of_its_own(tree, tmp_path):
    """The launcher forks the nodes from one interpreter; each is still its own process
    (own session, log, database), and a kill -9 stops that node alone."""
    ports, tsctl = tree
    state = tmp_path / "state" / "up.json"
    nodes = {n["name"]: n for n in json.loads(state.read_text())}
    assert set(nodes) == set(SHAPE) and len({n["pid"] for n in nodes.values()}) == 7
    for name, n in nodes.items():
        assert os.getsid(n["pid"]) == n["pid"], name  # its own session
        assert f"node {name} listening on" in open(n["log"]).read()
        assert list((tmp_path / "state" / "db").glob(f"{name}.db*")), name  # its own
    victim = nodes["tree3"]["pid"]
    os.kill(victim, signal.SIGKILL)

    def gone() -> bool:
        try:
            os.kill(victim, 0)
        except ProcessLookupError:
            return True  # reaped by the launcher, its parent
        return False

    wait_until(gone, 10, "the killed node's process to go")
    for name in set(SHAPE) - {"tree3"}:
        assert ping(f"tcp://127.0.0.1:{ports[name]}"), name
    r = tsctl("down")
    assert r.returncode == 0 and b"stopped 7 node(s)" in r.stderr
    for n in nodes.values():
        with pytest.raises(ProcessLookupError):
            os.kill(n["pid"], 0)


def test_up_serves_local_applications_on_each_nodes_unix_socket(tree, tmp_path):
    """Every node `up` starts also listens on a socket in the state directory (pytest's
    short tmp paths fit the 107-byte limit), recorded in the state file and shown; a
    client on it is an ordinary client of that node, auth included."""
    ports, tsctl = tree
    state = tmp_path / "state" / "up.json"
    nodes = {n["name"]: n for n in json.loads(state.read_text())}
    for name, n in nodes.items():
        assert n["ipc"] == f"ipc://{tmp_path / 'state' / 'sockets' / name}.sock", name
    with pytest.raises(AuthError):
        Client(nodes["tree3"]["ipc"], token="wrong", timeout=5)
    with Client(nodes["tree3"]["ipc"], name="local") as local, \
            Client(f"tcp://127.0.0.1:{ports['tree3']}", name="remote") as remote:
        assert local.node == "tree3"
        remote.subscribe("local.>")
        local.publish("local.hello", b"over ipc")
        ev = remote.next_event(5)
        assert ev is not None and (ev.data, ev.source) == (b"over ipc", "local")
