"""A wheelhouse of TreeScale and every dependency, built once and cached.

Servers may have no internet, so `tsctl build` carries everything over SFTP and installs
with `pip --no-index`. Building takes seconds to minutes, so the result is cached under
~/.cache/treescale/wheelhouse: dependency wheels keyed by the dependency set and the
target Python (they rarely change), the TreeScale wheel keyed by its version and a digest
of its source (it changes with every edit during development).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
    "treescale" / "wheelhouse"
DONE = ".complete"
# What a TreeScale wheel is built from (relative to the source root).
SOURCE_PARTS = ("pyproject.toml", "README.md", "treescale", "cli/tsctl")


class WheelhouseError(RuntimeError):
    """The wheelhouse cannot be built (message says why and what to do)."""


@dataclass(frozen=True)
class Wheelhouse:
    """Wheel files ready to copy; ``digest`` changes whenever any of them does."""

    files: tuple[Path, ...]
    digest: str

    @classmethod
    def of(cls, files: list[Path]) -> Wheelhouse:
        """The wheelhouse of ``files``; its digest covers names and contents only (not
        where they are kept)."""
        h = hashlib.sha256()
        for f in sorted(files, key=lambda f: f.name):
            h.update(f.name.encode() + b"\0")
            h.update(hashlib.sha256(f.read_bytes()).digest())
        return cls(tuple(sorted(files, key=lambda f: f.name)), h.hexdigest())

    @property
    def size(self) -> int:
        return sum(f.stat().st_size for f in self.files)


@dataclass(frozen=True)
class PyTarget:
    """What decides which binary wheels a server can install: its Python version, CPU
    and C library (glibc version; None if it has another libc)."""

    version: tuple[int, int]
    machine: str
    glibc: tuple[int, int] | None

    @property
    def tag(self) -> str:
        libc = f"glibc{self.glibc[0]}.{self.glibc[1]}" if self.glibc else "other-libc"
        return f"cp{self.version[0]}{self.version[1]}-{self.machine}-{libc}"

    def platforms(self) -> list[str]:
        """pip --platform values this server accepts (manylinux up to its glibc)."""
        if self.glibc is None or self.glibc[0] != 2:
            raise WheelhouseError(f"the server's C library is not glibc ({self.tag}): only "
                                  "glibc (manylinux) servers are supported")
        m = self.machine
        tags = [f"manylinux_2_{minor}_{m}" for minor in range(self.glibc[1], 4, -1)]
        aliases = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        return tags + [f"{alias}_{m}" for minor, alias in aliases.items()
                       if self.glibc[1] >= minor]


def glibc_version(text: str) -> tuple[int, int] | None:
    """``platform.libc_ver()``'s version ('2.36') as (2, 36); None if not glibc."""
    try:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def local_target() -> PyTarget:
    lib, ver = platform.libc_ver()
    return PyTarget(sys.version_info[:2], platform.machine(),
                    glibc_version(ver) if lib == "glibc" else None)


def source_root() -> Path | None:
    """The TreeScale source checkout this code runs from, if it is one."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "treescale"' in pyproject.read_text():
        return root
    return None


def _source_files(root: Path) -> list[Path]:
    files = []
    for part in SOURCE_PARTS:
        p = root / part
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__"
                            not in f.parts and f.suffix in (".py", ".toml", ".md", ".typed"))
    return files


def _hash_files(files: list[Path], base: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(base)).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def dependencies() -> list[str]:
    """TreeScale's runtime requirements (no extras), as installed here."""
    reqs = metadata.requires("treescale") or []
    return sorted(r for r in reqs if "extra ==" not in r)


class WheelhouseCache:
    """Builds wheelhouses on demand, once per kind of server, safely from many threads."""

    def __init__(self, cache: Path = DEFAULT_CACHE, source: Path | None = None) -> None:
        self.cache = Path(cache)
        self.source = source if source is not None else source_root()
        self._lock = threading.Lock()
        self._made: dict[PyTarget, Wheelhouse] = {}

    def get(self, target: PyTarget) -> Wheelhouse:
        """The wheelhouse for servers like ``target``."""
        with self._lock:
            if target not in self._made:
                deps = self._deps(target)
                own = self._own_wheel()
                self._made[target] = Wheelhouse.of([*deps, own])
            return self._made[target]

    def _deps(self, target: PyTarget) -> list[Path]:
        # pip too: the server runs it from its wheel, so venvs need no pip of their own
        wanted = [*dependencies(), "pip"]
        key = hashlib.sha256("\n".join([target.tag, *wanted]).encode()).hexdigest()[:16]
        where = self.cache / f"deps-{target.tag}-{key}"
        if not (where / DONE).exists():
            here = local_target()
            if (target.version, target.machine) == (here.version, here.machine) and \
                    here.glibc and target.glibc and target.glibc >= here.glibc:
                # wheels that install here install there: let pip build or fetch them
                self._pip(where, ["wheel", "--wheel-dir"], wanted, "dependency wheels")
            else:  # another Python or an older glibc: fetch binary wheels made for it
                version = f"{target.version[0]}.{target.version[1]}"
                plat = [a for p in target.platforms() for a in ("--platform", p)]
                self._pip(where, ["download", "--only-binary=:all:", "--python-version",
                                  version, "--implementation", "cp", *plat, "--dest"],
                          wanted, f"dependency wheels for {target.tag}")
        return sorted(where.glob("*.whl"))

    def _own_wheel(self) -> Path:
        version = metadata.version("treescale")
        if self.source is None:
            found = sorted(self.cache.glob(f"treescale-{version}-*/treescale-*.whl"))
            if found:
                return found[-1]
            raise WheelhouseError("TreeScale is not running from a source checkout, so its "
                                  f"wheel cannot be built; put one under {self.cache}")
        files = _source_files(self.source)
        key = _hash_files(files, self.source)[:16]
        target = self.cache / f"treescale-{version}-{key}"
        if not (target / DONE).exists():
            with tempfile.TemporaryDirectory(prefix="treescale-src-") as tmp:
                # a copy, so the build leaves no build/ or egg-info in the checkout
                for f in files:
                    dest = Path(tmp) / f.relative_to(self.source)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, dest)
                self._pip(target, ["wheel", "--wheel-dir"], ["--no-deps", tmp],
                          "the TreeScale wheel")
            self._prune("treescale-*", keep=3)
        wheels = sorted(target.glob("treescale-*.whl"))
        if not wheels:
            raise WheelhouseError(f"pip built no TreeScale wheel in {target}")
        return wheels[0]

    def _prune(self, pattern: str, keep: int) -> None:
        """Drop all but the ``keep`` newest cache entries matching ``pattern`` (one
        TreeScale wheel per source edit would otherwise pile up)."""
        entries = sorted(self.cache.glob(pattern), key=lambda p: p.stat().st_mtime)
        for old in entries[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def _pip(self, target: Path, command: list[str], args: list[str], what: str) -> None:
        """``pip wheel``/``pip download`` into a fresh directory, then move it into place
        (``command`` ends with the option that takes the directory)."""
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=self.cache))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check",
                 *command, str(tmp), *args],
                capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise WheelhouseError(f"pip {command[0]} failed getting {what}: "
                                      + " | ".join(tail))
            (tmp / DONE).touch()
            shutil.rmtree(target, ignore_errors=True)
            try:
                tmp.rename(target)
            except OSError:
                if not (target / DONE).exists():  # else another build finished it first
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
