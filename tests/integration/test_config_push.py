"""Config push over the bus, against a real 3-node tree: every node stores the new version
atomically, reports it, and a node that was down catches up when it rejoins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from tests.conftest import ROOT, NodeProcess, secure, wait_until
from treescale import Client
from treescale.fabric import read_db
from treescale.services.config import call_nodes

NAMES = ("n1", "n2", "n3")


def tsctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsctl.main", *args], cwd=ROOT,
                          capture_output=True, timeout=timeout)


def tree_file(path: Path, nodes: dict[str, NodeProcess], version: int | None,
              tags: tuple[str, ...] = ()) -> Path:
    """n1 <- n2 <- n3 on the nodes' ports, config service on, with an ssh entry each."""
    data: dict = {"tree_node": {}, "ssh": {}}
    if version is not None:
        data["version"] = version
    for i, name in enumerate(NAMES):
        child = NAMES[i + 1:i + 2]
        data["tree_node"][name] = secure({"name": name, "tree_ip": "127.0.0.1",
                                          "tree_port": nodes[name].port,
                                          "childs": list(child), "tags": list(tags)},
                                         "config")
        data["ssh"][name] = {"host": "127.0.0.1", "username": "ts", "password": "secret",
                             "install_root": f"/opt/ts/{name}"}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def tree(tmp_path):
    """Three node processes started from one tree file (version 1): n1 <- n2 <- n3."""
    nodes = {n: NodeProcess(tmp_path, n) for n in NAMES}
    config = tree_file(tmp_path / "tree.json", nodes, version=1)
    try:
        for n in NAMES:
            nodes[n].args = ("--config", str(config))
            nodes[n].start()
        yield nodes
    finally:
        for n in nodes.values():
            n.kill()


def versions(client: Client, names=NAMES) -> dict[str, int | None]:
    results = call_nodes(client, "version", None, list(names), timeout=2)
    return {n: r.result["version"] if r.ok else None for n, r in results.items()}


def applied_events(client: Client, want: set, timeout: float = 20) -> set:
    """(node, version) of $sys.config.applied events until ``want`` were all seen."""
    seen: set = set()
    for ev in client.events(timeout=timeout):
        if ev.name == "$sys.config.applied":
            msg = msgpack.unpackb(ev.data, raw=False)
            seen.add((msg["node"], msg["version"]))
            if want <= seen:
                break
    return seen


def test_push_reaches_every_node_and_a_returning_node_catches_up(tree, tmp_path):
    n1, n2, n3 = (tree[n] for n in NAMES)
    with Client(n1.address, name="watcher") as c:
        c.subscribe("$sys.config.applied")
        # each node keeps the tree it was started from (version 1)
        wait_until(lambda: versions(c) == dict.fromkeys(NAMES, 1), 20,
                   "every node to hold version 1")
        assert read_db(n2.db_path).tree.names == NAMES

        pushed = tsctl("config", "push", "-p", str(tmp_path / "tree.json"), "--version", "2",
                       "-a", n1.address, "--json")
        assert pushed.returncode == 0, pushed.stderr.decode()
        report = json.loads(pushed.stdout)
        assert report["version"] == 2
        assert [(r["node"], r["ok"], r["version"], r["applied"]) for r in report["nodes"]] \
            == [(n, True, 2, True) for n in NAMES]
        assert applied_events(c, {(n, 2) for n in NAMES}) >= {(n, 2) for n in NAMES}
        for n in tree.values():
            assert read_db(n.db_path).version == 2

        listed = tsctl("config", "version", "-a", n2.address, "--json")
        assert listed.returncode == 0, listed.stderr.decode()
        assert [(r["node"], r["version"]) for r in json.loads(listed.stdout)] == \
            [(n, 2) for n in NAMES]

        # pushing the same version again changes nothing and still confirms
        again = tsctl("config", "push", "-p", str(tmp_path / "tree.json"), "--version", "2",
                      "-a", n1.address, "--json")
        assert again.returncode == 0
        assert {r["applied"] for r in json.loads(again.stdout)["nodes"]} == {False}

        n3.kill()
        newer = tree_file(tmp_path / "tree3.json", tree, version=None, tags=("v3",))
        down = tsctl("config", "push", "-p", str(newer), "-a", n1.address, "--json",
                     "--timeout", "3")
        assert down.returncode == 1  # n3 did not confirm
        report = json.loads(down.stdout)
        assert report["version"] == 3  # one more than the connected node held
        rows = {r["node"]: r for r in report["nodes"]}
        assert rows["n1"]["ok"] and rows["n2"]["ok"] and not rows["n3"]["ok"]
        assert "no answer" in rows["n3"]["status"]
        err = down.stderr.decode().strip().splitlines()
        assert err == ["error: 1 of 3 node(s) did not confirm version 3: n3: no answer "
                       "within 3s (down, or not in the tree?)"]
        assert read_db(n3.db_path).version == 2

        n3.start()  # same database; nobody pushes: it catches up by itself
        wait_until(lambda: read_db(n3.db_path).version == 3, 30,
                   "the restarted node to catch up to version 3")
        assert ("n3", 3) in applied_events(c, {("n3", 3)})
        assert read_db(n3.db_path).tree.spec("n1").tags == ("v3",)
        assert versions(c) == dict.fromkeys(NAMES, 3)

    # the returning node's database alone rebuilds the whole fabric, ssh included
    shown = tsctl("config", "show", "--db", str(n3.db_path), "--json")
    assert shown.returncode == 0, shown.stderr.decode()
    (tmp_path / "rebuilt.json").write_text(shown.stdout.decode())
    rebuilt = tsctl("config", "compile", "-p", str(tmp_path / "rebuilt.json"), "-o",
                    str(tmp_path / "rebuilt.db"))
    assert rebuilt.returncode == 0, rebuilt.stderr.decode()
    original = read_db(n1.db_path)
    assert read_db(tmp_path / "rebuilt.db") == original
    assert original.ssh["n3"].install_root == "/opt/ts/n3"
    assert original.ssh["n3"].password is None  # a push never spreads ssh passwords


def test_a_bad_push_is_refused_and_the_node_keeps_serving(tree, tmp_path):
    n1 = tree["n1"]
    from treescale.services.rpc import call

    with Client(n1.address, name="pusher") as c:
        wait_until(lambda: versions(c, ["n1"]) == {"n1": 1}, 20, "n1's config service")
        [r] = call(c, "config", "apply", {"version": 5, "fabric": {
            "tree_node": {"a": {"tree_ip": "h", "tree_port": 1, "childs": ["a"]}}}},
            node="n1", timeout=5)
        assert not r.ok
        assert r.error == ("node n1 refused version 5: config version 5: node a: childs "
                           "makes a cycle: a -> a")
        [r] = call(c, "config", "apply", {"version": "7", "fabric": {}}, node="n1",
                   timeout=5)
        assert not r.ok and r.error == "version must be a positive integer, got '7'"
        assert versions(c, ["n1"]) == {"n1": 1}
    assert read_db(n1.db_path).version == 1


def test_config_ops_need_the_config_permission(node_factory, tmp_path):
    n = node_factory("n1", secure({"tokens": {"admin": ["*"], "viewer": ["pub", "sub"]}},
                                  "config"))
    config = tmp_path / "one.json"
    config.write_text(json.dumps({"tree_node": {"n1": {"tree_ip": "127.0.0.1",
                                                       "tree_port": n.port}}}))
    denied = tsctl("config", "push", "-p", str(config), "-a", n.address, "--token",
                   "viewer", "--timeout", "3")
    assert denied.returncode == 1
    err = denied.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "does not allow config" in err[0], err
    ok = tsctl("config", "push", "-p", str(config), "-a", n.address, "--token", "admin",
               "--json")
    assert ok.returncode == 0, ok.stderr.decode()
    assert json.loads(ok.stdout)["nodes"][0]["version"] == 1


def test_nodes_start_from_a_compiled_database(tmp_path):
    """`tsctl node start --config tree.db --name X`: the node takes its options and parent
    from the database, and keeps the database's tree (and version) as its own."""
    nodes = {n: NodeProcess(tmp_path, n) for n in NAMES}
    source = tree_file(tmp_path / "tree.json", nodes, version=5)
    compiled = tsctl("config", "compile", "-p", str(source), "-o", str(tmp_path / "tree.db"))
    assert compiled.returncode == 0, compiled.stderr.decode()
    try:
        for n in NAMES:
            nodes[n].args = ("--config", str(tmp_path / "tree.db"))
            nodes[n].start()
        with Client(nodes["n1"].address, name="asker") as c:
            # n3 answers through n1 and n2: the links came from the database
            wait_until(lambda: versions(c) == dict.fromkeys(NAMES, 5), 20,
                       "every node to hold version 5")
        assert read_db(nodes["n3"].db_path) == read_db(tmp_path / "tree.db")
    finally:
        for n in nodes.values():
            n.kill()
