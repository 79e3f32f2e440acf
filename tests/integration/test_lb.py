"""The lb service on a real node: the userspace proxy backend on loopback, following
containers by their lifecycle events, state across a restart, the CLI, IPVS.

Real servers are small TCP/UDP servers started by the test on 127.0.0.x; each
answers with its own id, so a client sees which one the balancer chose. Every load
loop is a fixed number of sequential connections.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator

import msgpack
import pytest

from tests import dockerkit
from tests.conftest import ROOT, free_port, secure, wait_until
from treescale.services.rpc import call

IO_TIMEOUT = 5.0


class _Tcp(socketserver.BaseRequestHandler):
    """Say who we are, then hold the connection until the client closes it."""

    def handle(self) -> None:
        self.request.sendall(self.server.ident)
        try:
            self.request.recv(1)
        except OSError:
            pass


class _Udp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request[1].sendto(self.server.ident, self.client_address)


class Servers:
    """Real servers for a test, each on (host, port) answering its id."""

    def __init__(self) -> None:
        self.servers: list[socketserver.BaseServer] = []

    def start(self, ident: str, host: str = "127.0.0.1", port: int = 0,
              udp: bool = False) -> str:
        cls = socketserver.ThreadingUDPServer if udp else socketserver.ThreadingTCPServer
        cls.allow_reuse_address = True
        server = cls((host, port), _Udp if udp else _Tcp)
        server.daemon_threads = True
        server.ident = ident.encode()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers.append(server)
        return "{}:{}".format(*server.server_address)

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.close()


def lb_ready(client, node: str = "n1") -> None:
    """The node answers before its services subscribe: wait for the lb service."""
    def answers() -> bool:
        try:
            return call(client, "lb", "ls", {}, node=node, timeout=0.5)[0].ok
        except TimeoutError:
            return False
    wait_until(answers, 30, "the node's lb service")


@pytest.fixture
def lb_node(node_factory, clients):
    n = node_factory("n1", secure(None, "lb"))
    c = clients(n.address, name="lb-test")
    lb_ready(c)
    return n, c


def lb(client, op: str, node: str = "n1", **args) -> dict:
    [r] = call(client, "lb", op, args, node=node, timeout=10)
    assert r.ok, r.error
    return r.result


def lb_error(client, op: str, **args) -> str:
    [r] = call(client, "lb", op, args, node="n1", timeout=10)
    assert not r.ok, f"{op} {args} should have been refused"
    return r.error


def hello(port: int, source: str | None = None, host: str = "127.0.0.1") -> str:
    """One short connection through the balancer: the id of the server that answered."""
    with socket.create_connection((host, port), IO_TIMEOUT,
                                  source_address=(source, 0) if source else None) as s:
        return s.recv(64).decode()


def spread(port: int, n: int, **kw) -> Counter:
    return Counter(hello(port, **kw) for _ in range(n))


def proxy_vip(client, reals: list[str], scheduler: str = "rr", proto: str = "tcp") -> int:
    port = free_port()
    result = lb(client, "add", vip=f"127.0.0.1:{port}", proto=proto, scheduler=scheduler,
                backend="proxy", reals=reals)
    assert result["backend"] == "proxy" and result["why"] == "proxy (asked for)"
    return port


def test_rr_spreads_exactly_evenly_and_a_removed_server_leaves_rotation(lb_node, servers):
    _, c = lb_node
    reals = [servers.start(f"b{i}") for i in range(3)]
    port = proxy_vip(c, reals)
    assert spread(port, 30) == {"b0": 10, "b1": 10, "b2": 10}
    shown = lb(c, "real_rm", vip=f"127.0.0.1:{port}", reals=[reals[1]])
    assert {f"{r['address']}:{r['port']}" for r in shown["reals"]} == {reals[0], reals[2]}
    assert spread(port, 20) == {"b0": 10, "b2": 10}
    lb(c, "real_add", vip=f"127.0.0.1:{port}", reals=[reals[1]])
    assert spread(port, 30) == {"b0": 10, "b1": 10, "b2": 10}


def test_wrr_spreads_in_proportion_to_the_weights(lb_node, servers):
    _, c = lb_node
    reals = [servers.start(f"w{w}") + f"@{w}" for w in (1, 2, 3)]
    port = proxy_vip(c, reals, "wrr")
    assert spread(port, 60) == {"w1": 10, "w2": 20, "w3": 30}


def test_sh_sends_each_client_address_to_one_server(lb_node, servers):
    _, c = lb_node
    port = proxy_vip(c, [servers.start(f"s{i}") for i in range(3)], "sh")
    chosen = {}
    for i in range(1, 9):
        source = f"127.0.0.{i}"
        seen = spread(port, 4, source=source)
        assert len(seen) == 1, f"client {source} reached {dict(seen)}"
        chosen[source] = next(iter(seen))
    assert len(set(chosen.values())) > 1, f"every client hashed to one server: {chosen}"


def test_lc_prefers_the_idle_servers_while_another_holds_connections(lb_node, servers):
    _, c = lb_node
    port = proxy_vip(c, [servers.start(f"l{i}") for i in range(3)], "lc")
    vip = f"127.0.0.1:{port}"
    held = []
    try:
        for _ in range(4):  # 3 idle servers, then a tie: one of them holds two
            s = socket.create_connection(("127.0.0.1", port), IO_TIMEOUT)
            held.append((s, s.recv(64).decode()))
        counts = Counter(ident for _, ident in held)
        assert sorted(counts.values()) == [1, 1, 2]
        busy = counts.most_common(1)[0][0]
        for s, ident in held:
            if ident != busy:
                s.close()
        wait_until(lambda: sorted(lb(c, "show", vip=vip)["active"].values()) == [0, 0, 2],
                   10, "the closed connections to be counted out")
        short = spread(port, 12)
        assert busy not in short and sum(short.values()) == 12, short
    finally:
        for s, _ in held:
            s.close()


def test_udp_rr_spreads_sessions_and_follows_removal(lb_node, servers):
    _, c = lb_node
    reals = [servers.start(f"u{i}", udp=True) for i in range(3)]
    port = proxy_vip(c, reals, proto="udp")

    def ask() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a new client each
            s.settimeout(IO_TIMEOUT)
            s.sendto(b"?", ("127.0.0.1", port))
            return s.recv(64).decode()

    assert Counter(ask() for _ in range(9)) == {"u0": 3, "u1": 3, "u2": 3}
    lb(c, "real_rm", vip=f"udp/127.0.0.1:{port}", reals=[reals[0]])
    assert Counter(ask() for _ in range(6)) == {"u1": 3, "u2": 3}


def publish_container(client, action: str, cid: str, ip: str, labels: dict) -> None:
    """A lifecycle event the way the Docker service publishes it (a real bus event)."""
    client.publish(f"$sys.docker.n1.{action}", msgpack.packb({
        "node": "n1", "action": action, "id": cid, "name": f"web-{cid}",
        "image": "web:1", "labels": labels, "ips": {"bridge": ip}, "ports": {}}))
    client.flush()


def test_followed_containers_join_on_start_and_leave_on_die_within_a_second(
        lb_node, servers):
    _, c = lb_node
    target = free_port()
    web1 = servers.start("web1", "127.0.0.2", target)
    web2 = servers.start("web2", "127.0.0.3", target)
    port = free_port()
    vip = f"127.0.0.1:{port}"
    added = lb(c, "add", vip=vip, backend="proxy", follow_label="app=web",
               target_port=target)
    assert added["reals"] == [] and added["follow_text"] == f"label app=web -> port {target}"

    def reals() -> list[str]:
        return [f"{r['address']}:{r['port']}" for r in lb(c, "show", vip=vip)["reals"]]

    publish_container(c, "start", "c1", "127.0.0.2", {"app": "web"})
    publish_container(c, "start", "c2", "127.0.0.3", {"app": "web"})
    publish_container(c, "start", "c3", "127.0.0.4", {"app": "db"})  # not followed
    wait_until(lambda: set(reals()) == {web1, web2}, 1.0, "both web containers to join")
    assert spread(port, 4) == {"web1": 2, "web2": 2}
    publish_container(c, "die", "c1", "127.0.0.2", {"app": "web"})
    wait_until(lambda: reals() == [web2], 1.0, "the dead container to leave")
    assert spread(port, 3) == {"web2": 3}


def test_state_survives_a_node_restart(lb_node, servers, clients):
    n, c = lb_node
    reals = [servers.start(f"r{i}") for i in range(2)]
    port = proxy_vip(c, reals, "wrr")
    lb(c, "add", vip="127.0.0.1:9", proto="udp", backend="proxy", follow_image="web:1",
       target_port=80)
    c.close()
    assert n.stop() == 0
    n.start()  # the same database file
    c2 = clients(n.address)
    lb_ready(c2)
    listed = {s["key"]: s for s in lb(c2, "ls")["services"]}
    assert set(listed) == {f"tcp/127.0.0.1:{port}", "udp/127.0.0.1:9"}
    assert listed["udp/127.0.0.1:9"]["follow"] == {"image": "web:1", "target_port": 80}
    assert listed[f"tcp/127.0.0.1:{port}"]["error"] is None
    assert spread(port, 4) == {"r0": 2, "r1": 2}  # re-applied: the proxy listens again


def test_bad_requests_get_a_clear_refusal_and_the_service_keeps_serving(lb_node):
    _, c = lb_node
    assert "is not IP:PORT" in lb_error(c, "add", vip="10.0.0.1")
    assert "weight must be" in lb_error(c, "add", vip="127.0.0.1:9", reals=["1.2.3.4:5@0"])
    assert "needs a target port" in lb_error(c, "add", vip="127.0.0.1:9",
                                             follow_label="app=web")
    assert "no virtual service tcp/127.0.0.1:9" in lb_error(c, "show", vip="127.0.0.1:9")
    assert "missing argument 'vip'" in lb_error(c, "rm")
    assert "reals must be a list" in lb_error(c, "add", vip="127.0.0.1:9", reals="1.2.3.4:5")
    assert "nft cannot do lc" in lb_error(c, "add", vip="127.0.0.1:9", backend="nft",
                                          scheduler="lc")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        assert "proxy cannot listen on tcp/127.0.0.1:" in lb_error(
            c, "add", vip=f"127.0.0.1:{port}", backend="proxy")
    finally:
        taken.close()
    assert lb(c, "ls")["services"] == []  # nothing half-made was kept


def tsctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsctl.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"})


def test_cli_adds_lists_shows_and_removes(lb_node, servers):
    n, c = lb_node
    reals = [servers.start(f"c{i}") for i in range(2)]
    port = free_port()
    vip = f"127.0.0.1:{port}"
    a = ("-a", n.address)
    added = tsctl("lb", "add", vip, "--backend", "proxy", "--scheduler", "wrr",
                  "--real", reals[0], "--real", reals[1] + "@3", *a)
    assert added.returncode == 0, added.stderr
    assert f"added tcp/{vip}: wrr over" in added.stdout and "backend proxy" in added.stdout
    assert spread(port, 4) == {"c0": 1, "c1": 3}
    with socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as held:
        held.recv(64)
        shown = json.loads(tsctl("lb", "show", vip, "-t", "n1", "--json", *a).stdout)
        assert shown["ok"] and sum(shown["result"]["active"].values()) == 1
        table = tsctl("lb", "show", vip, *a).stdout
        assert reals[1] in table and "active" in table
    listed = tsctl("lb", "ls", "--json", *a)
    [line] = listed.stdout.splitlines()
    assert json.loads(line)["result"]["services"][0]["key"] == f"tcp/{vip}"
    assert f"tcp/{vip}" in tsctl("lb", "ls", *a).stdout
    assert tsctl("lb", "rm", vip, *a).returncode == 0
    again = tsctl("lb", "rm", vip, *a)
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert f"no virtual service tcp/{vip}" in again.stderr and "Traceback" not in again.stderr
    bad = tsctl("lb", "add", "nonsense", *a)
    assert bad.returncode == 1 and "is not IP:PORT" in bad.stderr


def test_ipvs_backend_or_a_clear_reason_why_not(lb_node, servers):
    """Where the kernel has IPVS the service drives it; where not, it says so."""
    from treescale.lb.ipvs import probe

    _, c = lb_node
    reason = probe()
    if reason is not None:
        assert reason == ("IPVS unavailable: this kernel has no ip_vs module "
                          "(netlink family IPVS not found)")
        assert lb_error(c, "add", vip="127.0.0.1:9", backend="ipvs") == f"lb on node n1: {reason}"
        assert reason in lb(c, "ls")["unavailable"]["ipvs"]
        pytest.skip("IPVS tests need the kernel's ip_vs module (netlink family IPVS "
                    "not found on this kernel); the refusal was checked")
    from pyroute2 import IPVS

    real = servers.start("v0")
    vip = f"127.0.0.1:{free_port()}"
    result = lb(c, "add", vip=vip, backend="ipvs", reals=[real + "@2"])
    try:
        assert result["backend"] == "ipvs"
        ipvs = IPVS()
        try:
            assert len(list(ipvs.service("dump"))) >= 1
        finally:
            ipvs.close()
        assert lb(c, "show", vip=vip)["active"] == {real: 0}
    finally:
        lb(c, "rm", vip=vip)


# The Docker kit's fixtures (a real dockerd, the busybox test image, cleanup by label).
docker_client, test_label, docker_node = (dockerkit.docker_client, dockerkit.test_label,
                                          dockerkit.docker_node)


def test_follows_real_containers_end_to_end(docker_node, test_label):
    """busybox httpd containers run by the docker service join and leave a proxy VIP;
    the first one ran before the VIP existed (found by the start-up sync)."""
    _, c = docker_node
    lb_ready(c, "d1")
    [(key, value)] = test_label.items()

    def httpd(msg: str) -> dict:
        [r] = call(c, "docker", "run", {"image": dockerkit.IMAGE, "labels": test_label,
                                        "command": dockerkit.httpd_command(),
                                        "env": {"MSG": msg}}, node="d1", timeout=60)
        assert r.ok, r.error
        return r.result[0]

    first = httpd("one")
    vip = f"127.0.0.1:{free_port()}"
    port = int(vip.rpartition(":")[2])
    lb(c, "add", node="d1", vip=vip, backend="proxy", follow_label=f"{key}={value}",
       target_port=8080)

    def followed() -> list[str]:
        return [r["container"] for r in lb(c, "show", node="d1", vip=vip)["reals"]]

    wait_until(lambda: followed() == [first["full_id"]], 15, "the running container")
    wait_until(lambda: dockerkit.http_get(port) == "one\n", 15, "httpd through the VIP")
    second = httpd("two")
    wait_until(lambda: len(followed()) == 2, 15, "the new container to join")
    wait_until(lambda: {dockerkit.http_get(port) for _ in range(2)} == {"one\n", "two\n"},
               15, "both containers answering through the VIP")
    [r] = call(c, "docker", "stop", {"containers": [first["name"]], "timeout": 1},
               node="d1", timeout=60)
    assert r.ok, r.error
    wait_until(lambda: followed() == [second["full_id"]], 5, "the stopped one to leave")
    assert {dockerkit.http_get(port) for _ in range(3)} == {"two\n"}


def test_a_service_that_cannot_be_restored_is_reported_and_recovers(lb_node, servers,
                                                                     clients):
    n, c = lb_node
    reals = [servers.start("x0"), servers.start("x1")]
    port = proxy_vip(c, reals[:1])
    vip = f"127.0.0.1:{port}"
    c.close()
    assert n.stop() == 0
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port))  # the VIP's port is taken while the node is down
    squatter.listen()
    try:
        n.start()
        c2 = clients(n.address)
        lb_ready(c2)
        shown = lb(c2, "show", vip=vip)
        assert "proxy cannot listen on" in shown["error"] and not shown["installed"]
    finally:
        squatter.close()
    lb(c2, "real_add", vip=vip, reals=[reals[1]])  # a change applies it again
    shown = lb(c2, "show", vip=vip)
    assert shown["error"] is None and shown["installed"]
    assert spread(port, 2) == {"x0": 1, "x1": 1}
