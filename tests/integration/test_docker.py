"""The docker service against a real dockerd: every operation through the bus via a real
node process, lifecycle and stats events on the bus, errors, and `tsctl docker`.

Containers run the busybox test image (tests/dockerkit.py) and publish on 127.0.0.1
only; each test's containers carry its label and are removed at teardown.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest

from tests import dockerkit
from tests.conftest import ROOT, secure, wait_until
from tests.dockerkit import IMAGE, LABEL, docker_service_answers, host_port, http_get
from treescale.services.docker import parse_port, parse_restart, stats_sample
from treescale.services.rpc import ServiceError, call

# The kit's fixtures, found by pytest as attributes of this module.
docker_client, test_label, docker_node, loopback_registry = (
    dockerkit.docker_client, dockerkit.test_label, dockerkit.docker_node,
    dockerkit.loopback_registry)
httpd_command = dockerkit.httpd_command


def docker(c, op: str, args: dict | None = None, node: str = "d1", timeout: float = 30,
           **kw):
    [r] = call(c, "docker", op, args or {}, node=node, timeout=timeout, **kw)
    return r


def ok(c, op: str, args: dict | None = None, **kw):
    r = docker(c, op, args, **kw)
    assert r.ok, r.error
    return r.result


def web(c, labels: dict, msg: str = "hello", node: str = "d1", **extra) -> list[dict]:
    """Start busybox httpd container(s) serving ``msg`` on a 127.0.0.1 port."""
    return ok(c, "run", {"image": IMAGE, "command": httpd_command(), "env": {"MSG": msg},
                         "ports": ["127.0.0.1::8080"], "labels": labels, **extra},
              node=node)


def next_event(c, pred: Callable[[str, dict], bool], timeout: float = 20) -> dict:
    """The first event (name, msgpack body) matching ``pred``; the others are skipped."""
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        ev = c.next_event(left)
        if ev is None:
            break
        body = msgpack.unpackb(ev.data, raw=False)
        seen.append(ev.name)
        if pred(ev.name, body):
            return body
    raise AssertionError(f"no matching event within {timeout}s; saw {seen[-20:]}")


def tsctl(command: str, address: str, *args: str,
          timeout: float = 60) -> subprocess.CompletedProcess:
    """`tsctl docker COMMAND -a ADDRESS ARGS...`, tables wide enough to read."""
    return subprocess.run([sys.executable, "-m", "tsctl.main", "docker", command,
                           "-a", address, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "250"})


# ----------------------------------------------------------------- pure parts


def test_port_specs_parse_like_docker_run():
    assert parse_port("8080") == ("8080/tcp", None)
    assert parse_port("9000:8080") == ("8080/tcp", 9000)
    assert parse_port("127.0.0.1::8080/udp") == ("8080/udp", ("127.0.0.1",))
    assert parse_port("127.0.0.1:9000:8080") == ("8080/tcp", ("127.0.0.1", 9000))
    for bad in ("", "x", "70000", "0:8080", "8080/icmp", "127.0.0.1::"):
        with pytest.raises(ServiceError, match="port"):
            parse_port(bad)
    assert parse_restart("on-failure:3") == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert parse_restart("no") is None
    with pytest.raises(ServiceError, match="restart policy"):
        parse_restart("sometimes")


def test_stats_sample_computes_cpu_percent_and_sums():
    raw = {"cpu_stats": {"cpu_usage": {"total_usage": 300}, "system_cpu_usage": 2000,
                         "online_cpus": 2},
           "precpu_stats": {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 1000},
           "memory_stats": {"usage": 5000, "limit": 9000,
                            "stats": {"total_inactive_file": 1000}},
           "networks": {"eth0": {"rx_bytes": 1, "tx_bytes": 2},
                        "eth1": {"rx_bytes": 10, "tx_bytes": 20}},
           "blkio_stats": {"io_service_bytes_recursive": [
               {"op": "Read", "value": 7}, {"op": "Write", "value": 8},
               {"op": "read", "value": 1}]}}
    s = stats_sample(raw)
    assert s == {"cpu_percent": 40.0, "mem_bytes": 4000, "mem_limit": 9000, "net_rx": 11,
                 "net_tx": 22, "blk_read": 8, "blk_write": 8}
    assert stats_sample({})["cpu_percent"] == 0.0  # the first sample has no previous one


# ------------------------------------------------------------- through the bus


def test_run_count_serves_http_and_ps_lists_them(docker_node, test_label):
    _, c = docker_node
    started = web(c, test_label, msg="from-the-bus", name=f"web-{os.getpid()}", count=2,
                  cpus=0.5, memory="64m", restart="on-failure:2")
    assert [s["name"] for s in started] == [f"web-{os.getpid()}-1", f"web-{os.getpid()}-2"]
    rows = ok(c, "ps", {"filters": {"label": f"{LABEL}={test_label[LABEL]}"}})
    assert sorted(r["name"] for r in rows) == sorted(s["name"] for s in started)
    for row in rows:
        assert row["state"] == "running" and row["image"] == IMAGE
        assert row["labels"]["treescale.node"] == "d1"  # the service marks its node
        port = host_port(row)
        wait_until(lambda p=port: http_get(p) == "from-the-bus\n", 15, f"httpd on {port}")
    attrs = ok(c, "inspect", {"container": started[0]["name"]})
    assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
    assert attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert attrs["HostConfig"]["RestartPolicy"] == {"Name": "on-failure",
                                                    "MaximumRetryCount": 2}
    assert attrs["Config"]["Labels"][LABEL] == test_label[LABEL]


def test_lifecycle_ops_and_their_events_on_the_bus(docker_node, test_label):
    _, c = docker_node
    c.subscribe("$sys.docker.d1.>")
    [s] = web(c, test_label, msg="v1")
    cid = s["full_id"]
    mine = lambda action: lambda name, b: b.get("id") == cid and b.get("action") == action  # noqa: E731
    created = next_event(c, mine("create"))
    assert created["name"] == s["name"] and created["image"] == IMAGE
    assert created["labels"][LABEL] == test_label[LABEL]
    start = next_event(c, mine("start"))
    # what the load balancer follows: the container's addresses and published ports
    [ip] = start["ips"].values()
    assert ip and not ip.startswith("127.")
    [binding] = start["ports"]["8080/tcp"]
    assert binding["HostIp"] == "127.0.0.1"
    wait_until(lambda: http_get(int(binding["HostPort"])) == "v1\n", 15, "httpd")

    [stopped] = ok(c, "stop", {"containers": [s["name"]], "timeout": 1})
    assert stopped["state"] == "exited"
    died = next_event(c, mine("die"))
    assert isinstance(died["exit_code"], int) and died["node"] == "d1"
    next_event(c, mine("stop"))
    [row] = ok(c, "ps", {"all": True, "filters": {"id": cid}})
    assert row["state"] == "exited"
    assert ok(c, "ps", {"filters": {"id": cid}}) == []  # not running: only with all

    assert ok(c, "start", {"containers": [s["id"]]})[0]["state"] == "running"
    restarted = next_event(c, mine("start"))
    port = int(restarted["ports"]["8080/tcp"][0]["HostPort"])
    wait_until(lambda: http_get(port) == "v1\n", 15, "httpd after start")
    assert ok(c, "restart", {"containers": [s["name"]], "timeout": 1})[0]["state"] == \
        "running"
    next_event(c, mine("restart"))

    r = docker(c, "rm", {"containers": [s["name"]]})
    assert not r.ok and "running" in r.error  # without force the engine refuses
    assert ok(c, "rm", {"containers": [s["name"]], "force": True}) == \
        [{"id": s["id"], "name": s["name"], "state": "removed"}]
    next_event(c, mine("destroy"))
    assert ok(c, "ps", {"all": True, "filters": {"id": cid}}) == []


def test_logs_tail_follow_and_exec(docker_node, test_label):
    _, c = docker_node
    [talker] = ok(c, "run", {"image": IMAGE, "labels": test_label, "command": [
        "sh", "-c", "for i in 1 2 3 4; do echo line$i; done; exec httpd -f -p 8080"]})
    wait_until(lambda: b"line4" in b"".join(
        d for _, d in docker(c, "logs", {"container": talker["name"]}).streams), 15,
        "the container's output")
    r = docker(c, "logs", {"container": talker["name"], "tail": 2})
    assert r.ok and b"".join(d for _, d in r.streams) == b"line3\nline4\n"

    # follow: bounded by its duration while the container runs
    r = docker(c, "logs", {"container": talker["name"], "follow": True, "duration": 1,
                           "tail": 1})
    assert r.ok and r.result["ended"] == "duration"
    assert b"".join(d for _, d in r.streams) == b"line4\n"

    # follow: ends with the container, every line streamed as it came
    [short] = ok(c, "run", {"image": IMAGE, "labels": test_label, "command": [
        "sh", "-c", "echo first; sleep 1; echo second"]})
    seen = []
    r = docker(c, "logs", {"container": short["id"], "follow": True, "duration": 60},
               on_stream=lambda n, s, d: seen.append((n, s, bytes(d))))
    assert r.ok and r.result["ended"] == "container stopped"
    assert b"".join(d for _, _, d in seen) == b"first\nsecond\n"
    assert {n for n, _, _ in seen} == {"d1"}

    res = ok(c, "exec", {"container": talker["name"],
                         "command": ["sh", "-c", "echo out; echo err >&2; exit 3"]})
    assert res == {"exit_code": 3, "stdout": "out\n", "stderr": "err\n"}
    r = docker(c, "exec", {"container": talker["name"], "command": "sleep 30",
                           "timeout": 1})
    assert not r.ok and "timed out after 1s" in r.error


def test_stats_events_and_the_stats_op(docker_node, test_label):
    _, c = docker_node
    c.subscribe("$sys.docker.d1.stats")
    [s] = web(c, test_label, memory="32m")
    sample = next_event(c, lambda n, b: b.get("id") == s["full_id"], timeout=20)
    assert set(sample) == {"node", "id", "name", "image", "cpu_percent", "mem_bytes",
                           "mem_limit", "net_rx", "net_tx", "blk_read", "blk_write", "time"}
    assert sample["node"] == "d1" and sample["name"] == s["name"]
    assert sample["image"] == IMAGE and sample["mem_limit"] == 32 * 1024 * 1024
    assert 0 < sample["mem_bytes"] <= sample["mem_limit"] and sample["cpu_percent"] >= 0
    # traffic to the container shows in its network counters
    port = int(ok(c, "inspect", {"container": s["id"]})["NetworkSettings"]["Ports"][
        "8080/tcp"][0]["HostPort"])
    wait_until(lambda: http_get(port) is not None, 15, "httpd")
    before = sample["net_tx"]
    for _ in range(20):
        http_get(port)
    next_event(c, lambda n, b: b.get("id") == s["full_id"] and b["net_tx"] > before,
               timeout=20)
    latest = ok(c, "stats", {"containers": [s["name"]]})
    assert [x["id"] for x in latest] == [s["full_id"]]


def test_monitor_shows_the_containers_the_docker_service_reports(docker_node, test_label):
    """`tsctl monitor --once --json` lists a running container under its node, with the
    CPU and memory from the Docker service's live stats."""
    n, c = docker_node
    [s] = web(c, test_label, memory="32m")

    def listed() -> dict | None:
        r = subprocess.run([sys.executable, "-m", "tsctl.main", "monitor", "--once",
                            "--json", "--wait", "1.5", "-a", n.address], cwd=ROOT,
                           capture_output=True, timeout=60)
        nodes = {x["node"]: x for x in json.loads(r.stdout or b"[]")}
        boxes = [b for b in nodes.get("d1", {}).get("containers", [])
                 if b["id"] == s["full_id"] and b.get("mem_bytes")]
        return boxes[0] if boxes else None

    seen: list[dict] = []
    wait_until(lambda: seen.append(listed()) or seen[-1] is not None, 30,
               "the container in the monitor")
    box = seen[-1]
    assert box["name"] == s["name"] and box["state"] == "running"
    assert box["mem_limit"] == 32 * 1024 * 1024


def test_clear_errors_and_the_service_keeps_serving(docker_node, test_label):
    _, c = docker_node
    for op, args in (("inspect", {"container": "no-such-box"}),
                     ("logs", {"container": "no-such-box"}),
                     ("stop", {"containers": ["no-such-box"]}),
                     ("exec", {"container": "no-such-box", "command": "true"})):
        r = docker(c, op, args)
        assert not r.ok and r.error == "no such container 'no-such-box' on node d1"
    r = docker(c, "run", {"image": "foo:1", "labels": test_label})
    assert not r.ok and r.error == ("image 'foo:1' not found on node d1 (no registry "
                                    "reachable? use `docker import`/load)")
    r = docker(c, "run", {"image": IMAGE, "ports": ["127.0.0.1::99999"]})
    assert not r.ok and "container port must be 1-65535" in r.error
    r = docker(c, "run", {"image": IMAGE, "cpus": "lots"})
    assert not r.ok and r.error == "cpus must be a non-negative number, got 'lots'"
    r = docker(c, "run", {"image": IMAGE, "count": 0})
    assert not r.ok and "count must be 1-100" in r.error
    r = docker(c, "rmi", {"image": "foo:1"})
    assert not r.ok and r.error == "image 'foo:1' not found on node d1"
    r = docker(c, "frobnicate")
    assert not r.ok and "unknown docker operation 'frobnicate'" in r.error
    # a pull from a registry that is not there (a closed loopback port) fails clearly
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    r = docker(c, "pull", {"image": f"127.0.0.1:{closed}/nothing:1"}, timeout=60)
    assert not r.ok and f"127.0.0.1:{closed}" in r.error and "d1" in r.error
    assert ok(c, "images") and [row["tags"] for row in ok(c, "images")
                                if IMAGE in row["tags"]]


def test_pull_from_a_loopback_registry_then_rmi(docker_node, loopback_registry):
    n, c = docker_node
    image = loopback_registry.image
    progress = []
    r = docker(c, "pull", {"image": image}, timeout=60,
               on_stream=lambda node, stream, data: progress.append((stream, data)))
    assert r.ok, r.error
    assert r.result["image"] == image and image in r.result["tags"]
    assert progress and {s for s, _ in progress} == {"progress"}
    assert any("Pull complete" in str(d.get("status")) for _, d in progress), progress
    assert any(image in row["tags"] for row in ok(c, "images"))
    assert any(p.endswith("/manifests/1") for p in loopback_registry.requests)
    assert ok(c, "rmi", {"image": image}) == {"image": image, "removed": True}
    assert not any(image in row["tags"] for row in ok(c, "images"))
    res = tsctl("pull", n.address, "-t", "d1", image)  # the CLI, progress on stderr
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"d1\t{image}\t")
    res = tsctl("rmi", n.address, "-t", "d1", image, "--json")
    assert res.returncode == 0 and json.loads(res.stdout)[0]["result"]["removed"]


class _SocketProxy:
    """A unix socket forwarding to the real engine: an engine that appears later."""

    def __init__(self, path: Path, target: str = "/var/run/docker.sock") -> None:
        self.path, self.target = path, target
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(16)
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX)
            up.connect(self.target)
            self.conns += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()
        for s in self.conns:
            s.close()


@pytest.fixture
def late_engine(tmp_path) -> Iterator[tuple[str, Callable[[], _SocketProxy]]]:
    """An engine address with nothing behind it until the test calls ``appear()``."""
    path = tmp_path / "docker.sock"
    made: list[_SocketProxy] = []

    def appear() -> _SocketProxy:
        made.append(_SocketProxy(path))
        return made[-1]

    yield f"unix://{path}", appear
    for p in made:
        p.close()


def test_engine_unreachable_answers_clearly_then_recovers(node_factory, clients,
                                                           docker_client, test_label,
                                                           late_engine):
    url, appear = late_engine
    n = node_factory("d2", secure({"docker_host": url, "docker_stats_interval": 0.5},
                                  "docker"))
    c = clients(n.address)
    wait_until(lambda: docker_service_answers_or_errs(c, "d2"), 30, "d2's docker service")
    for op, args in (("ps", {}), ("run", {"image": IMAGE}), ("logs", {"container": "x"})):
        r = docker(c, op, args, node="d2")
        assert not r.ok and r.error == (f"Docker engine unreachable at {url} (node d2): "
                                        "No such file or directory"), r.error
    assert n.alive
    c.subscribe("$sys.docker.d2.>")
    appear()  # the engine comes (back): the next call connects, events follow
    assert ok(c, "images", node="d2")
    up = next_event(c, lambda name, b: b.get("action") == "engine"
                    and b["state"] == "up", timeout=30)
    assert up == {"node": "d2", "action": "engine", "state": "up", "url": url,
                  "time": up["time"]}
    [s] = web(c, test_label, node="d2")
    started = next_event(c, lambda name, b: b.get("name") == s["name"]
                         and b.get("action") == "start", timeout=30)
    assert started["node"] == "d2" and started["ports"]["8080/tcp"]


def docker_service_answers_or_errs(c, node: str) -> bool:
    """The service answered (ok or not): it is up."""
    try:
        docker(c, "ps", node=node, timeout=1)
        return True
    except TimeoutError:
        return False


def test_group_targets_and_permission(node_factory, clients, docker_client, test_label):
    tokens = {"admin": ["*"], "viewer": ["pub", "sub"], "ops": ["pub", "sub", "docker"]}
    top = node_factory("d1", secure({"groups": ["web"], "tokens": tokens}, "docker"))
    node_factory("d2", secure({"groups": ["web"], "parent": top.address, "tokens": tokens},
                              "docker"))
    admin = clients(top.address, token="admin")
    wait_until(lambda: docker_service_answers(admin, "d1")
               and docker_service_answers(admin, "d2"), 30, "both docker services")
    results = call(admin, "docker", "images", {}, group="web", timeout=10)
    assert sorted(r.node for r in results) == ["d1", "d2"]
    assert all(r.ok and any(IMAGE in i["tags"] for i in r.result) for r in results)
    viewer = clients(top.address, token="viewer", on_error=lambda e: None)
    with pytest.raises(Exception, match="does not allow docker"):
        call(viewer, "docker", "ps", {}, node="d1", timeout=2)
    [r] = call(clients(top.address, token="ops"), "docker", "ps", {}, node="d2", timeout=10)
    assert r.ok
    res = tsctl("ps", top.address, "--token", "viewer", "-t", "d1")
    assert res.returncode == 1 and "does not allow docker" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


# ------------------------------------------------------------------- the CLI


def test_cli_run_ps_exec_logs_stats_rm(docker_node, test_label):
    n, c = docker_node
    [(key, value)] = test_label.items()
    res = tsctl("run", n.address, "-t", "d1", "--json", "-l", f"{key}={value}", "-e", "MSG=cli",
                "-p", "127.0.0.1::8080", IMAGE, *httpd_command())
    assert res.returncode == 0, res.stderr
    [result] = json.loads(res.stdout)
    assert result["node"] == "d1" and result["ok"]
    [made] = result["result"]

    res = tsctl("ps", n.address, "--group", "web", "-f", f"label={key}={value}")
    assert res.returncode == 0, res.stderr
    assert "NODE" in res.stdout and made["name"] in res.stdout and "d1" in res.stdout
    assert "127.0.0.1:" in res.stdout and "->8080/tcp" in res.stdout
    [row] = ok(c, "ps", {"filters": {"id": made["full_id"]}})
    wait_until(lambda: http_get(host_port(row)) == "cli\n", 15, "httpd started by the CLI")

    res = tsctl("exec", n.address, "-t", "d1", made["name"], "sh", "-c", "echo hi; exit 4")
    assert res.returncode == 4 and res.stdout == "hi\n"
    res = tsctl("logs", n.address, "--tag", "eu", made["name"], "-f", "--duration", "1")
    assert res.returncode == 0, res.stderr  # httpd -f prints nothing: labelled, empty
    res = tsctl("stats", n.address, "-t", "d1", "--json")
    assert res.returncode == 0, res.stderr
    assert any(s["name"] == made["name"] for r in json.loads(res.stdout)
               for s in r["result"])
    res = tsctl("info", n.address, "-t", "d1")
    assert res.returncode == 0 and "followed" in res.stdout and "unix://" in res.stdout
    res = tsctl("images", n.address, "-t", "d1")
    assert res.returncode == 0 and "treescale-busybox:test" in res.stdout
    res = tsctl("rm", n.address, "-t", "d1", "-f", made["name"])
    assert res.returncode == 0 and f"d1\t{made['name']}\tremoved" in res.stdout


def test_cli_errors_are_one_line(docker_node):
    n, _ = docker_node
    for args, words in ((("inspect", "-t", "d1", "nope"), "no such container 'nope'"),
                        (("run", "-t", "d1", "foo:1"), "image 'foo:1' not found"),
                        (("ps",), "exactly one of -t NODE"),
                        (("ps", "-t", "ghost", "--timeout", "1"), "no answer from docker")):
        res = tsctl(args[0], n.address, *args[1:])
        assert res.returncode != 0
        assert words in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    res = tsctl("pull", n.address, "-t", "d1", "127.0.0.1:1/x:1")
    assert res.returncode == 1 and "cannot pull" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
