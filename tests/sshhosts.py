"""Test hosts for `tsctl build`: network namespaces, each running its own real sshd.

Layout (all addresses assigned here, inside namespaces created here, removed afterwards):

    root namespace  10.213.K.254 ──veth──┐
                                         bridge (in a "switch" namespace of its own)
    host namespace  10.213.K.1 ──veth────┤
    host namespace  10.213.K.2 ──veth────┘ ...

Hosts talk to each other through the bridge, which lives in its own namespace so this
machine's firewall (Docker sets FORWARD to DROP) never sees their traffic; the root
namespace reaches every sshd directly. Namespaces share the filesystem, so each host gets
its own directory (install root, host key, sshd config and log) under one temp dir.
``UNREACHABLE`` addresses are in the subnet with nothing behind them.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import wait_until

SSHD = "/usr/sbin/sshd"
UNREACHABLE_HOST = 200  # 10.213.K.200: in the subnet, nobody there


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc


def wait_port(address: str, port: int, timeout: float, what: str,
              proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Until ``address:port`` accepts TCP connections (fails at once if the server died)."""

    def accepting() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}: "
                                 f"{log.read_text() if log else ''}")
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(accepting, timeout, f"{what} on {address}:{port}", interval=0.05)


@dataclass
class SshHost:
    """One test server: a namespace, its address, its own sshd and directories."""

    name: str
    netns: str
    address: str
    dir: Path
    sshd: subprocess.Popen | None = None

    @property
    def install_root(self) -> str:
        return str(self.dir / "opt" / "treescale")

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    def pids(self) -> list[int]:
        """Every process running inside this host's namespace."""
        out = sh("ip", "netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split()]


class SshHosts:
    """The fixture's value: hosts, the client key that logs into them (also held by an
    ssh-agent), cleanup."""

    def __init__(self, count: int) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.base = Path(tempfile.mkdtemp(prefix=f"tsb-{self.tag}-"))
        self.subnet = self._free_subnet()
        self.switch = f"tsbs{self.tag}"
        self.hosts: list[SshHost] = []
        self.count = count
        self.key_file = self.base / "id_ed25519"
        self.agent_sock = self.base / "agent.sock"
        self.agent: subprocess.Popen | None = None

    @staticmethod
    def _free_subnet() -> str:
        used = sh("ip", "-o", "addr").stdout
        for _ in range(50):
            k = random.randint(1, 250)
            if f"10.213.{k}." not in used:
                return f"10.213.{k}"
        raise RuntimeError("no free 10.213.K.0/24 subnet for test hosts")

    @property
    def unreachable(self) -> str:
        return f"{self.subnet}.{UNREACHABLE_HOST}"

    def start(self) -> SshHosts:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tsctl-build-test",
           "-f", str(self.key_file))
        self._start_agent()
        sh("ip", "netns", "add", self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        # the root namespace's own leg, so tests and tsctl reach every host
        self._plug(None, f"tsb{self.tag}r", f"{self.subnet}.254")
        for i in range(1, self.count + 1):
            host = SshHost(f"host{i}", f"tsbh{self.tag}{i}", f"{self.subnet}.{i}",
                           self.base / f"host{i}")
            self.hosts.append(host)
            host.dir.mkdir()
            sh("ip", "netns", "add", host.netns)
            sh("ip", "-n", host.netns, "link", "set", "lo", "up")
            self._plug(host.netns, f"tsb{self.tag}h{i}", host.address)
            self.start_sshd(host)
        return self

    def _start_agent(self) -> None:
        """An ssh-agent holding the client key, for targets that log in with the agent
        (pass ``agent_env`` to the process that connects)."""
        self.agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(self.agent_sock)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.agent_sock.exists() or self.agent.poll() is not None, 10,
                   "ssh-agent's socket")
        proc = subprocess.run(["ssh-add", "-q", str(self.key_file)], capture_output=True,
                              text=True, timeout=20, env={**os.environ, **self.agent_env})
        if proc.returncode != 0:
            raise AssertionError(f"ssh-add failed: {proc.stderr.strip()}")

    @property
    def agent_env(self) -> dict[str, str]:
        return {"SSH_AUTH_SOCK": str(self.agent_sock)}

    def _plug(self, netns: str | None, dev: str, address: str) -> None:
        """A veth pair: ``dev`` in ``netns`` (None: root) with ``address``, its peer on
        the bridge."""
        peer = dev[:-1] + "p" + dev[-1]
        sh("ip", "link", "add", dev, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", peer, "netns", self.switch)
        sh("ip", "-n", self.switch, "link", "set", peer, "master", "br0", "up")
        ns = ["-n", netns] if netns else []
        if netns:
            sh("ip", "link", "set", dev, "netns", netns)
        sh("ip", *ns, "addr", "add", f"{address}/24", "dev", dev)
        sh("ip", *ns, "link", "set", dev, "up")

    def new_host_key(self, host: SshHost) -> None:
        for f in (host.host_key, host.host_key.with_suffix(".pub")):
            f.unlink(missing_ok=True)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host.host_key))

    def start_sshd(self, host: SshHost) -> None:
        if not host.host_key.exists():
            self.new_host_key(host)
        keys = host.dir / "authorized_keys"
        keys.write_text(self.key_file.with_suffix(".pub").read_text())
        config = host.dir / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {host.address}", "Port 22", f"HostKey {host.host_key}",
            f"PidFile {host.dir / 'sshd.pid'}", f"AuthorizedKeysFile {keys}",
            "PermitRootLogin yes", "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "Subsystem sftp internal-sftp", "LogLevel INFO", ""]))
        log = host.dir / "sshd.log"
        with open(log, "ab") as out:
            host.sshd = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, SSHD, "-D", "-e", "-f", str(config)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_port(host.address, 22, 20, f"sshd of {host.name}", host.sshd, log)

    def close(self) -> None:
        """Kill everything in the namespaces (sshd, sessions, nodes), delete them."""
        for host in self.hosts:
            for pid in host.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if host.sshd is not None:
                host.sshd.kill()
                host.sshd.wait()
        if self.agent is not None:
            self.agent.kill()
            self.agent.wait()
        for host in self.hosts:
            try:
                wait_until(lambda host=host: not host.pids(), 10,
                           f"the processes of {host.name} to exit", interval=0.05)
            except AssertionError:
                pass  # a process stuck in the kernel: remove the rest regardless
            sh("ip", "netns", "del", host.netns, check=False)
        sh("ip", "netns", "del", self.switch, check=False)
        sh("ip", "link", "del", f"tsb{self.tag}r", check=False)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def ssh_hosts() -> Iterator[SshHosts]:
    """Five sshd test hosts (root logs in with ``.key_file``); removed afterwards."""
    if os.geteuid() != 0:
        pytest.fail("the sshd test hosts need root (network namespaces)")
    if not Path(SSHD).exists():
        pytest.fail(f"{SSHD} missing: install openssh-server (see .ci/run)")
    hosts = SshHosts(5)
    try:
        yield hosts.start()
    finally:
        hosts.close()
