"""A silent link (a pulled cable): two nodes in their own network namespaces joined
by a veth pair; `ip link set down` cuts it without a FIN or RST. The parent must
declare the child down from heartbeats alone. Needs root and iproute2 (CI has both)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import uuid

import msgpack
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


@pytest.fixture
def two_hosts():
    """Namespaces a/b with 10.231.0.1 and 10.231.0.2 on a veth pair (test-assigned
    addresses inside namespaces this test creates; removed afterwards)."""
    tag = uuid.uuid4().hex[:6]
    a, b = f"tsa{tag}", f"tsb{tag}"
    va, vb = f"va{tag}", f"vb{tag}"
    procs: list[subprocess.Popen] = []
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        sh("ip", "link", "set", va, "netns", a)
        sh("ip", "link", "set", vb, "netns", b)
        sh("ip", "-n", a, "addr", "add", "10.231.0.1/24", "dev", va)
        sh("ip", "-n", b, "addr", "add", "10.231.0.2/24", "dev", vb)
        for ns, dev in ((a, va), (b, vb)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

        def run(ns: str, *args: str) -> subprocess.Popen:
            p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m",
                                  "tsctl.main", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
            procs.append(p)
            return p

        yield run, (a, va), (b, vb)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def next_sys_event(stream, deadline: float) -> tuple[str, dict]:
    """The next `$sys.node.*` event printed by `tsctl sub --json` (payload decoded)."""
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([stream], [], [], max(0.0, left))
        assert ready, "no event before the deadline"
        ev = json.loads(stream.readline())
        return ev["name"], msgpack.unpackb(bytes.fromhex(ev["data"]))


def test_silent_link_is_detected_by_heartbeats(two_hosts):
    run, (a, _), (b, vb) = two_hosts
    run(a, "node", "start", "--name", "pa", "--host", "10.231.0.1", "--port", "7401")
    # a watcher next to the parent, subscribed before the child exists
    watch = run(a, "sub", "$sys.node.*", "--json", "-a", "tcp://10.231.0.1:7401",
                "--timeout", "20")
    ready, _, _ = select.select([watch.stderr], [], [], 30)
    assert ready and b"subscribed" in watch.stderr.readline()
    run(b, "node", "start", "--name", "cb", "--host", "10.231.0.2", "--port", "7402",
        "--parent", "tcp://10.231.0.1:7401")
    deadline = time.monotonic() + 30
    while True:
        name, info = next_sys_event(watch.stdout, deadline)
        if name == "$sys.node.up" and info.get("node") == "cb":
            break
    sh("ip", "-n", b, "link", "set", vb, "down")  # no FIN, no RST: silence
    deadline = time.monotonic() + 15  # heartbeats declare it in about a second
    while True:
        name, info = next_sys_event(watch.stdout, deadline)
        if name == "$sys.node.down":
            break
    assert info["node"] == "cb" and info["detected_by"] == "pa"
    assert info["reason"] == "disconnected"
