"""What the `tsctl build` tests share, whatever their servers are (sshd in network
namespaces, tests/sshhosts.py; systemd containers, tests/system/systemdhost.py): the
wheelhouse built once per session, running `tsctl` as a process, reading its JSON
summary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="session")
def wheelhouse() -> Iterator[Path]:
    """TreeScale and its dependencies as wheels, built (or found in the cache) once."""
    from treescale.provision.wheelhouse import WheelhouseCache, local_target

    house = WheelhouseCache().get(local_target())
    # not under pytest's basetemp: concurrent pytest sessions prune old ones
    target = Path(tempfile.mkdtemp(prefix="tsb-wheelhouse-"))
    for f in house.files:
        shutil.copy(f, target / f.name)
    yield target
    shutil.rmtree(target, ignore_errors=True)


def run_tsctl(*args: str, env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """`tsctl ARGS` in a process of its own (wide enough that tables do not wrap)."""
    return subprocess.run([sys.executable, "-m", "tsctl.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def summary(proc: subprocess.CompletedProcess) -> dict[str, dict]:
    """`tsctl build/teardown --json`'s servers by name."""
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON summary; stderr:\n{proc.stderr}") from None
    return {s["name"]: s for s in data["servers"]}
