"""`tsctl api exec`: commands run on remote nodes through the tree; output streams
back, exit codes carry over, permissions and the off switch are enforced."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, secure, wait_until


def tsctl(*args: str, timeout: float = 60):
    return subprocess.run([sys.executable, "-m", "tsctl.main", *args], cwd=ROOT,
                          capture_output=True, timeout=timeout)


TOKENS = {"admin": ["*"], "viewer": ["pub", "sub"]}


@pytest.fixture
def tree(node_factory):
    """root (tokens: admin may exec, viewer may not) <- mid (exec on) <- leaf (exec on);
    children link with the tests' link token."""
    root = node_factory("root", secure({"tokens": TOKENS}))
    mid = node_factory("mid", secure({"tokens": TOKENS, "groups": ["workers"]}, "exec"),
                       args=("--parent", root.address))
    leaf = node_factory("leaf", secure({"tokens": TOKENS, "groups": ["workers"]}, "exec"),
                        args=("--parent", mid.address))
    return root, mid, leaf


def exec_on(root, *args: str):
    return tsctl("api", "exec", "-a", root.address, "--token", "admin", *args)


def reachable(root, node: str) -> bool:
    return exec_on(root, "-c", "true", "-t", node, "--exec-timeout", "2",
                   "--timeout", "3").returncode == 0


def test_exec_streams_output_and_carries_the_exit_code(tree):
    root, _, _ = tree
    wait_until(lambda: reachable(root, "leaf"), 30, "the leaf's exec service")
    r = exec_on(root, "-c", "echo out; echo err >&2; exit 3", "-t", "leaf")
    assert r.returncode == 3
    assert r.stdout == b"out\n" and r.stderr == b"err\n"


def test_exec_on_a_group_labels_each_node(tree):
    root, _, _ = tree
    wait_until(lambda: reachable(root, "leaf") and reachable(root, "mid"), 30,
               "both exec services")
    r = exec_on(root, "-c", "echo hello", "--group", "workers", "--json")
    assert r.returncode == 0, r.stderr
    results = {d["node"]: d for d in map(json.loads, r.stdout.splitlines())}
    assert set(results) == {"mid", "leaf"}
    assert all(d["stdout"] == "hello\n" and d["exit"] == 0 for d in results.values())


def test_exec_needs_permission_and_an_enabled_node(tree):
    root, _, _ = tree
    wait_until(lambda: reachable(root, "leaf"), 30, "the leaf's exec service")
    r = tsctl("api", "exec", "-a", root.address, "--token", "viewer", "-c", "id",
              "-t", "leaf")
    assert r.returncode == 1 and b"does not allow exec" in r.stderr
    assert b"Traceback" not in r.stderr
    r = exec_on(root, "-c", "id", "-t", "root")  # exec is off on the root: not running
    assert r.returncode == 124 and b"its exec service is off" in r.stderr


def test_exec_is_audited(tree, clients):
    root, _, _ = tree
    wait_until(lambda: reachable(root, "leaf"), 30, "the leaf's exec service")
    watcher = clients(root.address, token="admin")
    watcher.subscribe("$sys.audit.exec")
    assert exec_on(root, "-c", "echo audited", "-t", "leaf").returncode == 0
    ev = watcher.next_event(10)
    assert ev is not None
    audit = ev.json()
    assert audit["node"] == "leaf" and audit["command"] == "echo audited"
    assert audit["requester"] == "tsctl-exec" and audit["exit"] == 0
