"""Several real Docker "machines" on this host: one dockerd per network namespace.

Each ``Machine`` is a network namespace joined to the host by a veth pair (host side
10.231.<k>.1/24, namespace side 10.231.<k>.2/24, a /24 the host does not route yet)
with its own dockerd started by ``nsenter --net`` (never ``ip netns exec``: it remounts
/sys and dockerd then finds no devices cgroup). That engine gets its own docker0 inside
the namespace and its published ports are reachable from the host at ``Machine.ip``;
the host's engine and its docker0 are untouched.

Everything a run makes is named with ``PREFIX`` (namespaces, veths, the temp dir), so
``clean_leftovers`` can remove what an earlier crashed run left, and only that.

Owns: the machines' namespaces, veths, engines, their directories and teardown.
Must not touch: the host's engine (it only reads images from it), anything not named
with ``PREFIX``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

PREFIX = "tsek"  # treescale engine kit: every namespace, veth and temp dir we make
SUBNET = "10.231"
IMAGE = "treescale-busybox:test"
HOST_ENGINE = "unix:///var/run/docker.sock"


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


def _routed_thirds() -> set[int]:
    """The k of every 10.231.k.0/24 the host already routes or addresses."""
    out = sh("ip", "-4", "route", "show").stdout + sh("ip", "-4", "addr", "show").stdout
    taken = set()
    for word in out.split():
        if word.startswith(SUBNET + "."):
            parts = word.split("/")[0].split(".")
            if len(parts) == 4 and parts[2].isdigit():
                taken.add(int(parts[2]))
    return taken


def _dockerd_pids(marker: str) -> list[int]:
    """Pids of dockerd processes whose command line contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and Path(argv[0].decode(errors="replace")).name == "dockerd" and \
                any(marker.encode() in a for a in argv):
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours counts as gone
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _terminate(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
        if not _alive(pid):
            return


def _unmount_under(root: Path) -> None:
    """Lazily unmount every mount point under ``root`` (deepest first)."""
    prefix = str(root.resolve()) + "/"
    try:
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text()
                  .splitlines()]
    except OSError:
        return
    for point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        sh("umount", "-R", "-l", point, check=False)


def _owner_alive(pid_text: str) -> bool:
    return pid_text.isdigit() and _alive(int(pid_text))


def clean_leftovers() -> None:
    """Remove what an earlier crashed run of this kit left: its dockerds, mounts,
    namespaces and temp dirs (names starting with ``PREFIX``), but only a run whose
    process is gone: two runs at once (a benchmark beside the tests) leave each
    other alone. A namespace's veth goes with it."""
    tmp = Path(tempfile.gettempdir())
    for d in tmp.glob(f"{PREFIX}-*"):
        owner = (d / "owner").read_text().strip() if (d / "owner").exists() else ""
        if _owner_alive(owner):
            continue
        for pid in _dockerd_pids(f"{d}/"):
            _terminate(pid, 10.0)
        _unmount_under(d)
        shutil.rmtree(d, ignore_errors=True)
    for ns in sh("ip", "netns", "list", check=False).stdout.split("\n"):
        name = ns.split(" ")[0]
        parts = name.split("-")
        if name.startswith(PREFIX) and not (len(parts) > 1 and _owner_alive(parts[1])):
            sh("ip", "netns", "del", name, check=False)


def _own_links() -> list[str]:
    out = sh("ip", "-o", "link", "show", check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
             if line.count(":") >= 2]
    return [n for n in names if n.startswith(PREFIX)]


def own_leftovers() -> list[str]:
    """What this process's runs left (namespaces, dockerds): empty after teardown."""
    me = str(os.getpid())
    found = [f"netns {line.split(' ')[0]}" for line in
             sh("ip", "netns", "list", check=False).stdout.splitlines()
             if line.startswith(f"{PREFIX}-{me}-")]
    tmp = Path(tempfile.gettempdir())
    for d in tmp.glob(f"{PREFIX}-*"):
        owner = d / "owner"
        if owner.exists() and owner.read_text().strip() == me:
            found += [f"dockerd pid {pid}" for pid in _dockerd_pids(f"{d}/")]
            found.append(f"dir {d}")
    return found


class Machine:
    """One namespace with its veth to the host and its own dockerd."""

    def __init__(self, name: str, k: int, root: Path, tag: str) -> None:
        self.name = name
        self.k = k
        self.netns = f"{PREFIX}-{tag}-{name}"
        self.host_veth = f"{PREFIX}{k}h"
        self.ns_veth = f"{PREFIX}{k}n"
        self.host_ip = f"{SUBNET}.{k}.1"
        self.ip = f"{SUBNET}.{k}.2"
        self.dir = root / name
        self.data_root = self.dir / "data"
        self.exec_root = self.dir / "exec"
        self.pidfile = self.dir / "docker.pid"
        self.socket = self.dir / "docker.sock"
        self.log_path = self.dir / "dockerd.log"
        self.docker_host = f"unix://{self.socket}"
        self._proc: subprocess.Popen | None = None
        self._client: Any = None

    def __repr__(self) -> str:
        return f"Machine({self.name}, {self.ip}, {self.docker_host})"

    # -------------------------------------------------------------- network

    def create_network(self) -> None:
        for d in (self.data_root, self.exec_root):
            d.mkdir(parents=True, exist_ok=True)
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.host_veth, "type", "veth", "peer", "name", self.ns_veth)
        sh("ip", "link", "set", self.ns_veth, "netns", self.netns)
        sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_veth)
        sh("ip", "link", "set", self.host_veth, "up")
        sh("ip", "-n", self.netns, "addr", "add", f"{self.ip}/24", "dev", self.ns_veth)
        sh("ip", "-n", self.netns, "link", "set", self.ns_veth, "up")
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")
        sh("ip", "-n", self.netns, "route", "add", "default", "via", self.host_ip)

    def delete_network(self) -> None:
        sh("ip", "netns", "del", self.netns, check=False)
        if self.host_veth in _own_links():
            sh("ip", "link", "del", self.host_veth, check=False)

    # --------------------------------------------------------------- engine

    @property
    def engine_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start_engine(self, timeout: float = 60.0) -> None:
        """Start dockerd in the namespace and wait until it answers."""
        if self.engine_running:
            return
        log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{self.netns}", "dockerd",
             "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
             "--pidfile", str(self.pidfile), "-H", self.docker_host,
             "--iptables=false", "--ip6tables=false", "--shutdown-timeout", "3"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise AssertionError(f"dockerd of machine {self.name} exited with "
                                     f"{self._proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists() and self._ping():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"dockerd of machine {self.name} not answering after "
                                     f"{timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def _ping(self) -> bool:
        import docker

        try:
            c = docker.DockerClient(base_url=self.docker_host, timeout=5)
            try:
                return bool(c.ping())
            finally:
                c.close()
        except Exception:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop_engine(self, timeout: float = 20.0) -> None:
        """SIGTERM the engine and wait (then SIGKILL); its containers die with it."""
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
            self._client = None
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        # nsenter execs dockerd (same pid); a dockerd still there is one we lost track of
        for pid in _dockerd_pids(str(self.data_root)):
            _terminate(pid, 5.0)
        self._proc = None

    def client(self) -> Any:
        """A docker SDK DockerClient of this machine's engine."""
        import docker

        if self._client is None:
            self._client = docker.DockerClient(base_url=self.docker_host, timeout=120)
        return self._client

    def load_image(self, name: str = IMAGE, timeout: float = 300) -> None:
        """Copy ``name`` from the host engine into this one (docker save | load)."""
        save = subprocess.Popen(["docker", "-H", HOST_ENGINE, "save", name],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        load = subprocess.run(["docker", "-H", self.docker_host, "load", "-q"],
                              stdin=save.stdout, capture_output=True, text=True,
                              timeout=timeout)
        save.stdout.close()
        save_err = save.stderr.read().decode(errors="replace")
        save.stderr.close()
        if save.wait(timeout) != 0 or load.returncode != 0:
            raise AssertionError(f"loading {name} into machine {self.name} failed: "
                                 f"{save_err}{load.stderr}")

    def remove_containers(self) -> None:
        if not self.engine_running:
            return
        try:
            for c in self.client().containers.list(all=True):
                try:
                    c.remove(force=True)
                except Exception:
                    pass
        except Exception:  # the engine is going away anyway
            pass

    def teardown(self) -> None:
        self.remove_containers()
        self.stop_engine()
        _unmount_under(self.dir)
        self.delete_network()


@contextmanager
def machines(count: int, image: str | None = IMAGE,
             image_on: Sequence[int] = (0,)) -> Iterator[list[Machine]]:
    """``count`` machines (A, B, C…) with running engines; ``image`` loaded into the
    engines of the machines at the indexes ``image_on``. Torn down on exit, even on
    failure."""
    clean_leftovers()
    tag = str(os.getpid())
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    (root / "owner").write_text(tag)
    taken = _routed_thirds()
    free = [k for k in range(10, 250) if k not in taken][:count]
    if len(free) < count:
        raise AssertionError(f"no {count} free /24 in {SUBNET}.0.0/16")
    made: list[Machine] = []
    try:
        for i, k in enumerate(free):
            m = Machine(chr(ord("A") + i), k, root, tag)
            made.append(m)
            m.create_network()
        for m in made:
            m.start_engine()
        if image:
            for i in image_on:
                made[i].load_image(image)
        yield made
    finally:
        for m in made:
            try:
                m.teardown()
            except Exception:
                pass
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def three_machines(docker_client) -> Iterator[list[Machine]]:
    """Machines A, B, C; the busybox test image only in A's engine. Bind it in a test
    module with tests.dockerkit's docker_client (which ensures the host engine and the
    image): ``from tests.enginekit import three_machines``."""
    with machines(3) as ms:
        yield ms
