"""The distribution `python -m build` makes: an sdist, the wheel built from that sdist,
and the wheel installed into a clean venv, where its scripts run and a node started from
it carries a pub/sub round trip on loopback.

The build runs on a copy of the source tree (without .venv, caches or build output), so
the checkout gets no build/ or egg-info of its own. Dependencies come from the package
index pip is configured with. Slow: one build and one venv install for the module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, ping, wait_until
from treescale import __version__
from treescale.protocol import PROTOCOL_VERSION

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build",
                                    "dist", ".pytest_cache", ".ruff_cache", ".hypothesis",
                                    "*.db", "*.db-lock", "results", "bench-results.json")


@dataclass
class Installed:
    wheel: Path
    sdist: Path
    venv: Path
    env: dict[str, str]  # no PYTHONPATH: only what the wheel installed is importable
    cwd: Path            # not the source tree

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.venv / "bin" / argv[0]), *argv[1:]], cwd=self.cwd,
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def popen(self, *argv: str, **kw) -> subprocess.Popen:
        return subprocess.Popen([str(self.venv / "bin" / argv[0]), *argv[1:]], cwd=self.cwd,
                                env=self.env, **kw)


def only(paths: Iterator[Path]) -> Path:
    found = list(paths)
    assert len(found) == 1, found
    return found[0]


def checked(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{what} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    pytest.importorskip("build", reason="`build` is in the test extras: make install")
    base = tmp_path_factory.mktemp("package")
    src, dist, venv = base / "src", base / "dist", base / "venv"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env |= {"TREE_DB_PATH": str(base / "tree.db"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    # sdist first, then the wheel from the unpacked sdist: the sdist must be complete
    checked(subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(src)],
                           capture_output=True, text=True, timeout=240, env=env),
            "python -m build")
    wheel, sdist = only(dist.glob("treescale-*.whl")), only(dist.glob("treescale-*.tar.gz"))
    checked(subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True,
                           text=True, timeout=60, env=env), "python -m venv")
    checked(subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                            "--prefer-binary", str(wheel)], capture_output=True, text=True,
                           timeout=240, env=env, cwd=base), "pip install of the wheel")
    return Installed(wheel, sdist, venv, env, base)


def test_wheel_and_sdist_hold_both_packages_and_both_scripts(installed):
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"treescale", "tsctl",
                                                f"treescale-{__version__}.dist-info"}
    assert {"treescale/protocol/batch.py", "treescale/provision/onserver.py",
            "tsctl/main.py"} <= set(names)
    entry_points = zipfile.ZipFile(installed.wheel).read(
        f"treescale-{__version__}.dist-info/entry_points.txt").decode()
    assert "tsctl = tsctl.main:cli" in entry_points
    assert "treescale = tsctl.main:cli" in entry_points
    with tarfile.open(installed.sdist) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    assert {"pyproject.toml", "README.md", "cli/tsctl/main.py",
            "treescale/protocol/batch.py"} <= members


def test_installed_scripts_run_from_the_venv_and_say_their_versions(installed):
    where = checked(installed.run("python", "-c", "import json, treescale, tsctl, zmq; "
                                  "print(json.dumps([treescale.__file__, tsctl.__file__, "
                                  "zmq.__version__, zmq.zmq_version()]))"), "import")
    treescale_file, tsctl_file, pyzmq, libzmq = json.loads(where.stdout)
    for f in (treescale_file, tsctl_file):
        assert Path(f).is_relative_to(installed.venv), f  # not the source tree
    for script in ("tsctl", "treescale"):
        r = checked(installed.run(script, "--version"), f"{script} --version")
        assert r.stdout.startswith(f"{script} {__version__} (protocol {PROTOCOL_VERSION}, "
                                   f"pyzmq {pyzmq}, libzmq {libzmq}, Python "), r.stdout


def test_a_node_from_the_wheel_carries_pub_sub(installed):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(installed.cwd / "node.log", "wb")
    procs: list[subprocess.Popen] = []
    try:
        node = installed.popen("tsctl", "node", "start", "--name", "wheel", "--port",
                               str(port), stdout=log, stderr=subprocess.STDOUT)
        procs.append(node)

        def up() -> bool:
            assert node.poll() is None, (installed.cwd / "node.log").read_text()
            return ping(address)

        wait_until(up, 20, "the node installed from the wheel")
        sub = installed.popen("tsctl", "sub", "wheel.>", "--count", "1", "--json", "-a",
                              address, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
        procs.append(sub)
        subscribed = threading.Event()

        def watch() -> None:
            for line in sub.stderr:
                if line.startswith("subscribed to wheel.> on node wheel"):
                    subscribed.set()

        threading.Thread(target=watch, daemon=True).start()
        assert subscribed.wait(20), "tsctl sub never said it subscribed"
        deadline = time.monotonic() + 20
        while sub.poll() is None:  # interest may reach the node just after the line
            assert time.monotonic() < deadline, "the event never reached tsctl sub"
            checked(installed.run("tsctl", "pub", "wheel.check", "from the wheel", "-a",
                                  address), "tsctl pub")
            try:
                sub.wait(2)
            except subprocess.TimeoutExpired:
                pass
        assert sub.returncode == 0
        event = json.loads(sub.stdout.readline())
        assert (event["name"], event["data"], event["source"]) == \
            ("wheel.check", "from the wheel", "tsctl")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        log.close()
    assert node.returncode == 0, (installed.cwd / "node.log").read_text()
