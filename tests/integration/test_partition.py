"""A silent link (a pulled cable): two nodes in their own network namespaces joined
by a veth pair; `ip link set down` cuts it without a FIN or RST. The parent must
declare the child down from heartbeats alone. Needs root and iproute2 (CI has both)."""

from __future__ import annotations

import json
import os
import select
import time

import msgpack
import pytest

from tests.netns import sh
from tests.netns import two_hosts as netns_hosts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@pytest.fixture
def two_hosts():
    """Namespaces a/b with 10.231.0.1 and 10.231.0.2 on a veth pair (test-assigned
    addresses inside namespaces this test creates; removed afterwards)."""
    with netns_hosts("10.231.0.1", "10.231.0.2") as hosts:
        yield hosts


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
    # namespaces this test made: a trusted network, no auth needed (--insecure)
    run(a, "node", "start", "--name", "pa", "--host", "10.231.0.1", "--port", "7401",
        "--insecure")
    # a watcher next to the parent, subscribed before the child exists
    watch = run(a, "sub", "$sys.node.*", "--json", "-a", "tcp://10.231.0.1:7401",
                "--timeout", "20")
    ready, _, _ = select.select([watch.stderr], [], [], 30)
    assert ready and b"subscribed" in watch.stderr.readline()
    run(b, "node", "start", "--name", "cb", "--host", "10.231.0.2", "--port", "7402",
        "--parent", "tcp://10.231.0.1:7401", "--insecure")
    deadline = time.monotonic() + 30
    while True:
        name, info = next_sys_event(watch.stdout, deadline)
        if name == "$sys.node.up" and info.get("node") == "cb":
            break
    # The parent drops a silent child by the TTL of the child's ZMTP pings (the
    # parent's socket sends none: see brokers/parent.py heartbeats), so the link must
    # have lived past the first ping: two of the parent's once-a-second reports.
    reports = 0
    while reports < 2:
        name, info = next_sys_event(watch.stdout, deadline)
        reports += name == "$sys.node.stats" and info.get("node") == "pa"
    sh("ip", "-n", b, "link", "set", vb, "down")  # no FIN, no RST: silence
    deadline = time.monotonic() + 15  # heartbeats declare it in about a second
    while True:
        name, info = next_sys_event(watch.stdout, deadline)
        if name == "$sys.node.down":
            break
    assert info["node"] == "cb" and info["detected_by"] == "pa"
    # By the TTL of the child's last ZMTP ping ("disconnected", in about a second), or,
    # when a data message came after that ping, by the node's own link timeout:
    # libzmq disarms the TTL on every message and only a ping re-arms it, and the
    # parent's socket sends no pings of its own (they could abort it: see parent.py).
    assert info["reason"] in ("disconnected", "timeout")
