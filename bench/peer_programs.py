"""The peers' broker programs on this machine (`make bench` on a fresh one).

Owns: finding each peer's ``program`` (Debian puts nats-server and mosquitto in
/usr/sbin, which a non-root PATH may lack), installing the missing ones with apt-get
when asked and running as root, and otherwise naming, one line per peer, the Debian
package that would install it; the benchmark then runs the systems it has. A system
without a ``program`` attribute (raw ZeroMQ, TreeScale) needs nothing installed.

Packages are installed, never started: Debian may start a package's own service (where
policy-rc.d allows it), but the benchmark starts its brokers on free loopback ports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

#: Where Debian installs daemons, searched after $PATH.
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
APT_TIMEOUT_S = 900


def find_program(program: str) -> str | None:
    """The program's path from $PATH or the sbin directories; None if absent."""
    return shutil.which(program) or shutil.which(program, path=os.pathsep.join(SBIN_DIRS))


def put_sbin_on_path() -> None:
    """Let this process and the brokers it spawns find programs in the sbin directories."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([*path, *(d for d in SBIN_DIRS if d not in path)])


def missing_programs(systems: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """system name -> (program, Debian package) for each system whose program is absent."""
    return {name: (s.program, s.debian_package) for name, s in systems.items()
            if getattr(s, "program", None) and find_program(s.program) is None}


def apt_install(packages: list[str]) -> str | None:
    """Install ``packages`` with apt-get; None on success, else why not (one line)."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env,
                                  timeout=APT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"{' '.join(argv[:2])} took more than {APT_TIMEOUT_S}s"
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"{' '.join(argv[:2])} failed: {tail[0]}"
    return None


def runnable_systems(systems: Mapping[str, Any], install: bool,
                     say: Callable[[str], object] = print) -> dict[str, Any]:
    """``systems`` less those whose program is missing. With ``install`` (and root), the
    missing packages are apt-get installed first; every peer still missing gets one
    line naming its Debian package."""
    put_sbin_on_path()
    missing = missing_programs(systems)
    if missing and install:
        packages = sorted({pkg for _, pkg in missing.values()})
        if os.geteuid() == 0:
            say(f"installing {', '.join(packages)} with apt-get")
        why_not = apt_install(packages)
        if why_not is not None and why_not != "not root":
            say(f"could not install {', '.join(packages)}: {why_not}")
        missing = missing_programs(systems)
    for name, (program, package) in missing.items():
        say(f"{name}: {program} is not installed (Debian package {package}: "
            f"apt-get install {package}); benchmarking without it")
    return {name: s for name, s in systems.items() if name not in missing}
