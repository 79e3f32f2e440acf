"""Servers with systemd as PID 1 for `tsctl build`: containers of the systemd test image
(tests/system/image.py) on the local engine's default bridge, each with its own sshd
that root logs into with a throwaway key (bind-mounted as root's authorized_keys).
Their addresses are assigned by our own engine, so tests may talk to them.

How systemd runs in them, and why not ``--privileged``: this machine's root lacks
CAP_SYS_RESOURCE in its bounding set, and Docker's --privileged asks for every
capability (``runc create failed: unable to start container process: unable to apply
caps: operation not permitted``). So the container gets every capability root has here
(``cap_add ALL`` minus those missing from our bounding set), no seccomp or AppArmor
profile, this machine's cgroup namespace and a writable /sys/fs/cgroup (systemd makes a
cgroup per unit), tmpfs on /run, /run/lock and /tmp, and SIGRTMIN+3 to stop (systemd's
"halt"). Containers carry tests.dockerkit's label and are removed by ``close``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.dockerkit import LABEL, remove_labelled
from tests.sshhosts import wait_port
from tests.system.image import IMAGE, ImageError, ensure_image

# Linux capabilities by number (include/uapi/linux/capability.h), as Docker names them.
CAPABILITIES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP "
    "LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER "
    "SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE "
    "SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP "
    "MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF "
    "CHECKPOINT_RESTORE").split()


def missing_capabilities() -> list[str]:
    """The capabilities Docker knows that this process's bounding set lacks."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            bounding = int(line.split()[1], 16)
            return [name for bit, name in enumerate(CAPABILITIES) if not bounding >> bit & 1]
    return []


def run_options() -> dict[str, Any]:
    """docker-py ``containers.run`` options for systemd as PID 1 (see the docstring)."""
    return {"cap_add": ["ALL"], "cap_drop": missing_capabilities(),
            "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
            "cgroupns": "host",
            "tmpfs": {"/run": "", "/run/lock": "", "/tmp": ""},
            "stop_signal": "SIGRTMIN+3"}


@dataclass
class SystemdHost:
    """One server: a running container, its address on the bridge, commands in it."""

    name: str
    container: Any

    @property
    def address(self) -> str:
        self.container.reload()
        return self.container.attrs["NetworkSettings"]["IPAddress"]

    def run(self, *cmd: str) -> tuple[int, str]:
        """``cmd`` inside the container (docker exec): (exit status, output)."""
        code, out = self.container.exec_run(list(cmd))
        return code, out.decode(errors="replace")

    def check(self, *cmd: str) -> str:
        code, out = self.run(*cmd)
        if code != 0:
            raise AssertionError(f"{' '.join(cmd)} on {self.name}: exit {code}: {out}")
        return out

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show`` properties of ``unit``."""
        out = self.check("systemctl", "show", unit, *(f"--property={p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def system_state(self) -> str:
        """What ``systemctl is-system-running`` says (starting, running, degraded...)."""
        self.container.reload()
        if self.container.status != "running":
            logs = self.container.logs(tail=30).decode(errors="replace")
            raise AssertionError(f"container {self.name} is {self.container.status}:\n{logs}")
        return self.run("systemctl", "is-system-running")[1].strip()

    def host_key(self) -> str:
        """The ed25519 host key sshd offers: 'ssh-ed25519 AAAA...'."""
        pub = self.check("cat", "/etc/ssh/ssh_host_ed25519_key.pub")
        return " ".join(pub.split()[:2])

    def node_pids(self) -> list[int]:
        """Every process in the container running a TreeScale node."""
        # the pattern does not match itself: this shell's and grep's cmdline hold it too
        out = self.run("sh", "-c", "grep -ls 'tsctl[.]main' /proc/[0-9]*/cmdline")[1]
        return sorted(int(p.split("/")[2]) for p in out.split())


class SystemdHosts:
    """The fixture's value: the servers, the client key root logs in with, cleanup."""

    def __init__(self, client: Any, count: int) -> None:
        self.client = client
        self.count = count
        self.label = f"systemd-{uuid.uuid4().hex[:10]}"
        self.base = Path(tempfile.mkdtemp(prefix="tss-"))
        self.key_file = self.base / "id_ed25519"
        self.hosts: list[SystemdHost] = []

    def start(self, boot_timeout: float = 90.0) -> SystemdHosts:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                        "tsctl-systemd-test", "-f", str(self.key_file)], check=True,
                       capture_output=True, timeout=30)
        authorized = str(self.key_file.with_suffix(".pub"))
        for i in range(1, self.count + 1):
            name = f"tss-{self.label}-{i}"
            container = self.client.containers.run(
                IMAGE, detach=True, name=name, hostname=f"sd{i}",
                labels={LABEL: self.label},
                volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                         authorized: {"bind": "/root/.ssh/authorized_keys", "mode": "ro"}},
                **run_options())
            self.hosts.append(SystemdHost(name, container))
        for host in self.hosts:  # they boot at once; wait for each
            states: list[str] = []

            def booted(host: SystemdHost = host, states: list[str] = states) -> bool:
                states.append(host.system_state())
                return states[-1] in ("running", "degraded")

            try:
                wait_until(booted, boot_timeout, f"systemd in {host.name} to finish booting",
                           interval=0.2)
            except AssertionError as exc:
                raise AssertionError(f"{exc} (it says {states[-1] if states else 'nothing'})"
                                     ) from None
            if states[-1] == "degraded":
                failed = host.run("systemctl", "--failed", "--no-legend")[1]
                raise AssertionError(f"{host.name} booted degraded: {failed}")
            wait_port(host.address, 22, 30, f"sshd of {host.name}")
        return self

    def close(self) -> None:
        remove_labelled(self.client, self.label)
        shutil.rmtree(self.base, ignore_errors=True)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="module")
def systemd_hosts(docker_client: Any) -> Iterator[SystemdHosts]:
    """Two systemd servers (root logs in with ``.key_file``); removed afterwards, also
    when the run is terminated (SIGTERM becomes an interrupt pytest tears down after)."""
    try:
        ensure_image()
    except ImageError as exc:
        pytest.fail(str(exc), pytrace=False)
    hosts = SystemdHosts(docker_client, 2)
    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        yield hosts.start()
    finally:
        hosts.close()
        signal.signal(signal.SIGTERM, previous)
