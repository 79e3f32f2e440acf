"""A partition between network namespaces (`ip link set down`: no FIN, no RST), then
healed: durable events the publisher's node confirmed before, during and after the
cut all reach the durable on the other side. Needs root and iproute2 (CI has both)."""

from __future__ import annotations

import json
import os
import queue
import select
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT
from tests.netns import sh
from tests.netns import two_hosts as netns_hosts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

PUBLISH = """
import sys
from treescale import Client
address, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Client(address, name="shop") as c:
    for i in range(n):
        c.publish("orders.created", b"x", durable=True, id=f"{prefix}:{i:04d}")
    c.flush(30)
print("confirmed", n, flush=True)
"""


def in_ns(ns: str, *argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'cli'}"}
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def publish(ns: str, address: str, prefix: str, n: int) -> set[str]:
    """Publish ``n`` durable events from inside ``ns``; their ids once confirmed."""
    p = in_ns(ns, "-c", PUBLISH, address, prefix, str(n))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and out.startswith(b"confirmed"), err.decode()[-2000:]
    return {f"{prefix}:{i:04d}" for i in range(n)}


class Lines:
    """JSON lines of a process's stream, read by a thread (select() on a buffered
    stream misses lines already in its buffer)."""

    def __init__(self, stream) -> None:
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.queue.put(json.loads(line))
        self.queue.put(None)

    def until(self, done, timeout: float) -> None:
        """Take lines until ``done(obj)`` is true (or fail)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                obj = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("nothing came before the deadline") from None
            assert obj is not None, "the stream ended"
            if done(obj):
                return


def test_durable_events_cross_a_healed_partition(tmp_path):
    with netns_hosts("10.232.0.1", "10.232.0.2", prefix="dp") as (run, (a, _), (b, vb)):
        configs = {}
        for name, host, port, parent in (("pa", "10.232.0.1", 7501, None),
                                         ("cb", "10.232.0.2", 7502, "10.232.0.1:7501")):
            node = {"name": name, "host": host, "port": port, "insecure": True,
                    "db_path": str(tmp_path / f"{name}.db")}
            if parent:
                node["parent"] = f"tcp://{parent}"
            configs[name] = tmp_path / f"{name}.json"
            configs[name].write_text(json.dumps({"node": node}))
        run(a, "node", "start", "--config", str(configs["pa"]))
        watch = run(a, "sub", "$sys.node.*", "--json", "-a", "tcp://10.232.0.1:7501",
                    "--timeout", "20")
        ready, _, _ = select.select([watch.stderr], [], [], 30)
        assert ready and b"subscribed" in watch.stderr.readline()
        run(b, "node", "start", "--config", str(configs["cb"]))
        events = Lines(watch.stdout)
        events.until(lambda e: e["name"] == "$sys.node.up", 30)
        sub = run(b, "sub", "orders.>", "--durable", "billing", "--ack", "--json",
                  "-a", "tcp://10.232.0.2:7502", "--timeout", "20")
        ready, _, _ = select.select([sub.stderr], [], [], 30)
        assert ready and b"subscribed" in sub.stderr.readline()

        confirmed = publish(a, "tcp://10.232.0.1:7501", "before", 50)
        sh("ip", "-n", b, "link", "set", vb, "down")  # the cut: silence
        events.until(lambda e: e["name"] == "$sys.node.down", 30)
        # The publisher's node confirms what it now holds in custody for the far side.
        confirmed |= publish(a, "tcp://10.232.0.1:7501", "during", 50)
        sh("ip", "-n", b, "link", "set", vb, "up")  # healed
        confirmed |= publish(a, "tcp://10.232.0.1:7501", "after", 50)
        got: dict[str, bool] = {}
        unmarked = []

        def complete(ev: dict) -> bool:
            if ev["id"] in got and not ev["redelivered"]:
                unmarked.append(ev["id"])
            got[ev["id"]] = ev["redelivered"]
            return confirmed <= set(got)

        Lines(sub.stdout).until(complete, 90)
        assert confirmed <= set(got)
        assert not unmarked, "a copy came without the redelivered mark"
