"""The nft backend for real: a node inside a network namespace loads DNAT rules into
that namespace's kernel, and connections to the VIP reach real servers in a second
namespace over a veth pair.

    namespace LB: node (lo 127.0.0.1:8888), VIP 10.77.0.1 on lo, veth 10.77.1.254/24
    namespace BE: real servers on 10.77.1.1, .2, .3 (port 8080, TCP and UDP)

The test drives the node with `tsctl lb` run inside LB (its loopback is private),
and connects from LB too, so the DNAT happens in LB's output hook and the replies
come back through LB's conntrack. Namespaces (and with them the nft table and the
veth pair) and processes are removed at teardown, pass or fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, secure, wait_until

VIP = "10.77.0.1"
REALS = ("10.77.1.1", "10.77.1.2", "10.77.1.3")
NODE = "tcp://127.0.0.1:8888"

SERVER = r"""
import socket, socketserver, sys, threading
class Tcp(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(self.server.server_address[0].encode())
class Udp(socketserver.BaseRequestHandler):
    def handle(self):
        self.request[1].sendto(self.server.server_address[0].encode(), self.client_address)
for host in sys.argv[1:]:
    for cls, handler in ((socketserver.ThreadingTCPServer, Tcp),
                         (socketserver.ThreadingUDPServer, Udp)):
        cls.allow_reuse_address = True
        s = cls((host, 8080), handler)
        s.daemon_threads = True
        threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()  # until the test closes our stdin (or dies)
"""

CLIENT = r"""
import json, socket, sys
host, port, proto, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
seen = []
for _ in range(count):
    if proto == "tcp":
        with socket.create_connection((host, port), 5) as s:
            seen.append(s.recv(64).decode())
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(b"?", (host, port))
            seen.append(s.recv(64).decode())
print(json.dumps(seen))
"""


def sh(*cmd: str) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return done


class Lab:
    """The two namespaces, the real servers and the node in LB."""

    def __init__(self, tmp: Path) -> None:
        tag = f"{os.getpid() % 100000}"
        self.lb, self.be = f"tslb{tag}", f"tsbe{tag}"
        self.tmp = tmp
        self.db = tmp / "lb-node.db"
        self.servers: subprocess.Popen | None = None
        self.node: subprocess.Popen | None = None

    def build(self) -> None:
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                raise AssertionError(f"the nft tests need `{tool}` (Debian packages "
                                     "iproute2, nftables; .ci/run installs them)")
        sh("ip", "netns", "add", self.lb)
        sh("ip", "netns", "add", self.be)
        sh("ip", "link", "add", "lbveth", "netns", self.lb, "type", "veth",
           "peer", "name", "beveth", "netns", self.be)
        sh("ip", "-n", self.lb, "link", "set", "lo", "up")
        sh("ip", "-n", self.lb, "addr", "add", f"{VIP}/32", "dev", "lo")
        sh("ip", "-n", self.lb, "addr", "add", "10.77.1.254/24", "dev", "lbveth")
        sh("ip", "-n", self.lb, "link", "set", "lbveth", "up")
        sh("ip", "-n", self.be, "link", "set", "lo", "up")
        for addr in REALS:
            sh("ip", "-n", self.be, "addr", "add", f"{addr}/24", "dev", "beveth")
        sh("ip", "-n", self.be, "link", "set", "beveth", "up")
        sh("ip", "-n", self.be, "route", "add", "default", "via", "10.77.1.254")
        self.servers = subprocess.Popen(
            ["ip", "netns", "exec", self.be, sys.executable, "-c", SERVER, *REALS],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        line = self.servers.stdout.readline()
        assert line.strip() == "ready", f"real servers did not start: {line}"
        self.start_node()

    def start_node(self) -> None:
        log = open(self.tmp / "lb-node.log", "ab")
        config = self.tmp / "lb-node.json"
        config.write_text(json.dumps({"node": secure(None, "lb")}))
        self.node = subprocess.Popen(
            ["ip", "netns", "exec", self.lb, sys.executable, "-m", "tsctl.main", "node",
             "start", "--name", "lbn", "--port", "8888", "--config", str(config)],
            cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TREE_DB_PATH": str(self.db), "PYTHONUNBUFFERED": "1"})
        log.close()

        def answers() -> bool:
            assert self.node.poll() is None, f"the node exited:\n{self.node_log()}"
            return self.tsctl("lb", "ls", "--timeout", "1").returncode == 0
        wait_until(answers, 60, "the node's lb service in the namespace", interval=0.2)

    def stop_node(self) -> None:
        if self.node is not None and self.node.poll() is None:
            self.node.terminate()
            try:
                self.node.wait(10)
            except subprocess.TimeoutExpired:
                self.node.kill()
                self.node.wait()

    def node_log(self) -> str:
        return (self.tmp / "lb-node.log").read_text(errors="replace")

    def tsctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.lb, sys.executable, "-m",
                               "tsctl.main", *args, "-a", NODE], cwd=ROOT,
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "COLUMNS": "200"})

    def lb_ok(self, *args: str) -> dict:
        done = self.tsctl("lb", *args, "--json")
        assert done.returncode == 0, done.stderr or done.stdout
        return json.loads(done.stdout)["result"]

    def spread(self, port: int, count: int, proto: str = "tcp") -> Counter:
        done = subprocess.run(["ip", "netns", "exec", self.lb, sys.executable, "-c",
                               CLIENT, VIP, str(port), proto, str(count)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return Counter(json.loads(done.stdout))

    def rules(self) -> dict[str, dict]:
        done = subprocess.run(["ip", "netns", "exec", self.lb, "nft", "-j", "list",
                               "table", "ip", "treescale_lb"],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            return {}
        return {item["rule"]["comment"]: item["rule"]
                for item in json.loads(done.stdout)["nftables"]
                if "rule" in item and item["rule"].get("comment")}

    def close(self) -> None:
        self.stop_node()
        if self.servers is not None:
            self.servers.kill()
            self.servers.wait()
        for ns in (self.lb, self.be):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


def reals(*hosts: str, weights: tuple[int, ...] = ()) -> list[str]:
    args = []
    for i, host in enumerate(hosts):
        args += ["--real", f"{host}:8080" + (f"@{weights[i]}" if weights else "")]
    return args


def test_nft_rr_spreads_evenly_and_a_removed_server_leaves_rotation(lab):
    added = lab.lb_ok("add", f"{VIP}:80", "--backend", "nft", *reals(*REALS))
    assert added["backend"] == "nft"
    rule = lab.rules()[f"tcp/{VIP}:80"]
    assert "numgen" in json.dumps(rule["expr"])
    assert lab.spread(80, 30) == {host: 10 for host in REALS}
    lab.lb_ok("real-rm", f"{VIP}:80", f"{REALS[1]}:8080")
    assert lab.spread(80, 20) == {REALS[0]: 10, REALS[2]: 10}


def test_nft_wrr_and_sh_and_udp(lab):
    lab.lb_ok("add", f"{VIP}:81", "--backend", "nft", "--scheduler", "wrr",
              *reals(REALS[0], REALS[1], weights=(1, 3)))
    assert lab.spread(81, 40) == {REALS[0]: 10, REALS[1]: 30}
    lab.lb_ok("add", f"{VIP}:82", "--backend", "nft", "--scheduler", "sh", *reals(*REALS))
    assert len(lab.spread(82, 12)) == 1  # one client address: always the same server
    lab.lb_ok("add", f"{VIP}:83", "--proto", "udp", "--backend", "nft", *reals(*REALS))
    assert lab.spread(83, 9, "udp") == {host: 3 for host in REALS}
    lab.lb_ok("rm", f"udp/{VIP}:83")
    assert set(lab.rules()) == {f"tcp/{VIP}:81", f"tcp/{VIP}:82"}
    lab.lb_ok("rm", f"{VIP}:81")
    lab.lb_ok("rm", f"{VIP}:82")
    tables = sh("ip", "netns", "exec", lab.lb, "nft", "list", "tables").stdout
    assert "treescale_lb" not in tables  # no service left: no NAT hooks left either


def test_auto_picks_nft_here_says_why_and_refuses_lc(lab):
    added = lab.lb_ok("add", f"{VIP}:84", *reals(*REALS))
    assert added["backend"] == "nft" and added["why"].startswith("auto: nft")
    assert "no ip_vs module" in added["why"]  # this kernel: IPVS skipped, and why
    refused = lab.tsctl("lb", "add", f"{VIP}:85", "--backend", "nft", "--scheduler", "lc")
    assert refused.returncode == 1 and "nft cannot do lc" in refused.stderr
    assert refused.stderr.count("\n") == 1
    listed = lab.tsctl("lb", "ls").stdout
    assert f"tcp/{VIP}:84" in listed and "nft (auto)" in listed
    assert "no ip_vs module" in listed  # why auto did not take ipvs


def test_nft_rules_come_back_when_the_node_restarts(lab):
    lab.lb_ok("add", f"{VIP}:86", "--backend", "nft", *reals(REALS[0], REALS[2]))
    lab.stop_node()
    sh("ip", "netns", "exec", lab.lb, "nft", "delete", "table", "ip", "treescale_lb")
    assert lab.rules() == {}
    lab.start_node()
    wait_until(lambda: f"tcp/{VIP}:86" in lab.rules(), 10, "the rules to be re-applied")
    shown = lab.lb_ok("show", f"{VIP}:86")
    assert shown["installed"] and shown["active"] is None  # nft counts no connections
    assert lab.spread(86, 4) == {REALS[0]: 2, REALS[2]: 2}


def test_nft_reals_set_replaces_the_map_and_an_empty_set_drops_the_rule(lab):
    added = lab.lb_ok("add", f"{VIP}:87", "--backend", "nft", "--owner", "service:web")
    assert added["reals"] == [] and added["owner"] == "service:web"
    assert f"tcp/{VIP}:87" not in lab.rules()  # no real server yet: no DNAT rule
    done = lab.lb_ok("reals-set", f"{VIP}:87", f"{REALS[0]}:8080", f"{REALS[2]}:8080")
    assert done["changed"]
    assert lab.spread(87, 4) == {REALS[0]: 2, REALS[2]: 2}
    lab.lb_ok("reals-set", f"{VIP}:87", f"{REALS[1]}:8080")
    assert lab.spread(87, 3) == {REALS[1]: 3}
    assert not lab.lb_ok("reals-set", f"{VIP}:87", f"{REALS[1]}:8080")["changed"]
    assert lab.lb_ok("reals-set", f"{VIP}:87")["reals"] == []
    assert f"tcp/{VIP}:87" not in lab.rules()
    shown = lab.lb_ok("show", f"{VIP}:87")
    assert shown["connections_total"] is None  # the kernel keeps no tally for us
