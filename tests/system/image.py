"""The systemd test image, treescale-systemd:test: a Debian rootfs made by debootstrap from
Debian's packages, with systemd as /sbin/init and sshd, imported into the local Docker
engine (no registry is reachable, so nothing is pulled).

Owns: the recipe (suite, packages, the few files written into the rootfs), its cache
and the image. Idempotent: the image carries the digest of its recipe as the label
LABEL; an image with the right label is reused as it is, else the rootfs tarball cached
under CACHE (keyed by the same digest) is imported, else debootstrap builds the rootfs
first (about a minute here). Runs of several sessions at once take turns (a lock file).

Each container makes its own SSH host keys at boot (none are in the image) and takes
root's authorized key from a bind mount (tests/system/systemdhost.py). Run it by hand
with ``python -m tests.system.image``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

IMAGE = "treescale-systemd:test"
LABEL = "treescale.systemd-image"
CACHE = Path("/var/cache/treescale-test")
SUITE = "bookworm"  # its python3 is 3.11, the oldest TreeScale supports
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-venv",
            "iproute2")
FALLBACK_MIRROR = "http://deb.debian.org/debian"

# Files written into the rootfs (path: content), after debootstrap.
FILES = {
    # host keys are made at boot, so every container has its own
    "etc/systemd/system/ssh.service.d/host-keys.conf":
        "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\n"
        "ExecStartPre=/usr/sbin/sshd -t\n",
    "etc/ssh/sshd_config.d/treescale-test.conf":
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n",
    # empty: systemd makes a machine id per container at boot
    "etc/machine-id": "",
}
# Units masked: timers that would reach the internet (apt) or touch disks that the
# container does not own, and the console login a container has no console for.
MASKED = ("apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
          "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer",
          "getty@tty1.service", "systemd-pstore.service")
# What debootstrap left that the image does not need.
REMOVED = ("etc/ssh/ssh_host_*", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*")
IMPORT_CHANGES = ("ENV container=docker", 'CMD ["/sbin/init"]')


class ImageError(RuntimeError):
    """The image cannot be made; the message says why and what to install."""


def recipe_key() -> str:
    """Digest of everything that decides the image's content."""
    recipe = {"suite": SUITE, "variant": "minbase", "packages": sorted(PACKAGES),
              "files": FILES, "masked": MASKED, "removed": REMOVED,
              "changes": IMPORT_CHANGES}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _sources() -> Iterator[tuple[str, list[str], list[str]]]:
    """(URI, suites, components) of every enabled `deb` source of this machine's apt."""
    apt = Path("/etc/apt")
    for f in sorted(apt.glob("sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text()):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and \
                    fields.get("Enabled", "yes").lower() != "no":
                for uri in fields.get("URIs", "").split():
                    yield uri, fields.get("Suites", "").split(), \
                        fields.get("Components", "").split()
    for f in [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]:
        if f.exists():
            for line in f.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    yield words[1], [words[2]], words[3:]


def mirror() -> str:
    """The Debian mirror this machine's apt uses for SUITE (reachable from here)."""
    for uri, suites, components in _sources():
        if SUITE in suites and "main" in components and uri.startswith("http"):
            return uri.rstrip("/")
    return FALLBACK_MIRROR


def _run(cmd: list[str], what: str, timeout: float, **kw: object) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise ImageError(f"{what} failed (exit status {proc.returncode}):\n" + "\n".join(tail))


def image_key() -> str | None:
    """The recipe digest the present image was made from (None: no image)."""
    proc = subprocess.run(["docker", "image", "inspect", "-f",
                           f'{{{{index .Config.Labels "{LABEL}"}}}}', IMAGE],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def configure(rootfs: Path) -> None:
    """Make debootstrap's rootfs a test server: sshd for root by key, nothing else."""
    for pattern in REMOVED:
        for f in rootfs.glob(pattern):
            if not f.is_dir():
                f.unlink()
    for rel, text in FILES.items():
        path = rootfs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for unit in MASKED:
        link = rootfs / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    ssh = rootfs / "root" / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)  # the container mounts authorized_keys here


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first (a debootstrap that was killed
    leaves /proc, /sys and /dev/pts mounted in its rootfs)."""
    prefix = str(path.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # \040 is a space
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Remove a (partial) rootfs: unmount what is mounted in it first, so nothing of
    this machine's /proc or /sys is ever walked into."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
    left = _mounts_under(path)
    if left:
        raise ImageError(f"cannot unmount {', '.join(left)}; {path} left in place")
    shutil.rmtree(path, ignore_errors=True)


def build_rootfs(tarball: Path, log: Path) -> None:
    """debootstrap SUITE into a temporary directory, configure it, and pack it (as
    ``tarball``, written whole or not at all)."""
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap missing: apt-get install debootstrap (see .ci/run)")
    tmp = Path(tempfile.mkdtemp(prefix="rootfs-", dir=tarball.parent))
    try:
        rootfs = tmp / "rootfs"
        source = mirror()
        with open(log, "w") as out:
            try:
                proc = subprocess.run(
                    ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                     SUITE, str(rootfs), source], stdout=out, stderr=subprocess.STDOUT,
                    timeout=600)
            except subprocess.TimeoutExpired:
                raise ImageError(f"debootstrap {SUITE} from {source} took over 600s "
                                 f"(log {log})") from None
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-8:]
            raise ImageError(f"debootstrap {SUITE} from {source} failed (exit status "
                             f"{proc.returncode}; log {log}):\n" + "\n".join(tail))
        configure(rootfs)
        part = tarball.with_suffix(".part")
        _run(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(part),
              "."], "packing the rootfs", 600)
        part.rename(tarball)
    finally:
        remove_tree(tmp)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure_image(report: Callable[[str], None] = print) -> str:
    """IMAGE, made or reused as the module docstring says; ImageError if it cannot be."""
    key = recipe_key()
    CACHE.mkdir(parents=True, exist_ok=True)
    with _locked(CACHE / ".systemd-image.lock"):
        if image_key() == key:
            return IMAGE
        tarball = CACHE / f"systemd-rootfs-{SUITE}-{key}.tar"
        if not tarball.exists():
            for stale in CACHE.glob("rootfs-*"):  # what a killed build left
                remove_tree(stale)
            started = time.monotonic()
            build_rootfs(tarball, CACHE / "debootstrap.log")
            report(f"built the {SUITE} rootfs in {time.monotonic() - started:.0f}s: {tarball}")
            for old in CACHE.glob("systemd-rootfs-*.tar"):  # other recipes' tarballs
                if old != tarball:
                    old.unlink()
        started = time.monotonic()
        _run(["docker", "import", *(a for c in (*IMPORT_CHANGES, f"LABEL {LABEL}={key}")
                                    for a in ("-c", c)), str(tarball), IMAGE],
             f"docker import of {tarball}", 600)
        report(f"imported {IMAGE} in {time.monotonic() - started:.0f}s")
        subprocess.run(["docker", "image", "prune", "-f", "--filter",
                        f"label={LABEL}"], capture_output=True, timeout=120)
        return IMAGE


if __name__ == "__main__":
    try:
        print(ensure_image())
    except ImageError as exc:
        sys.exit(str(exc))
