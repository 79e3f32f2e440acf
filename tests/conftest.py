"""Shared fixtures: real nodes in separate processes, on free loopback ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from treescale.local import answers_ping, free_port

ROOT = Path(__file__).resolve().parent.parent


ping = answers_ping  # a node answers at this address (shared with `tsctl up`)

# Nodes are closed by default: a service that runs commands needs its flag and client
# auth. Tests that use one configure the node with ``secure(...)``; every client and
# tsctl of a test presents ADMIN unless told otherwise ($TREESCALE_TOKEN, set below).
ADMIN = "admin-secret"
LINK = "link-secret"  # the tests' link token: children present it to their parents


def secure(config: dict | None = None, *services: str) -> dict:
    """``config`` with client auth (ADMIN may do anything), the tests' link token and
    ``services`` turned on (``secure({"groups": ["web"]}, "exec")``); keys of
    ``config`` win (its own tokens, say)."""
    return {"tokens": {ADMIN: ["*"]}, "link_token": LINK,
            **{f"{s}_enabled": True for s in services}, **(config or {})}


def wait_until(predicate, timeout: float = 10.0, what: str = "condition",
               interval: float = 0.02) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class NodeProcess:
    """A node started as `python -m tsctl.main node start` in its own process."""

    def __init__(self, tmp: Path, name: str = "n1", config: dict | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.name = name
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.config = config
        self.args = args
        self.log_path = tmp / f"node-{name}-{self.port}.log"
        # Each node its own database; a restarted node (same object) finds it again.
        self.db_path = tmp / f"node-{name}-{self.port}.db"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = tmp / f"node-{name}-{self.port}.json"
            self.config_path.write_text(json.dumps({"node": {"name": name, **config}}))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> NodeProcess:
        return self.launch().wait_ready(timeout)

    def launch(self) -> NodeProcess:
        """Start the process without waiting for it (see start_all)."""
        cmd = [sys.executable, "-m", "tsctl.main", "node", "start", "--name", self.name,
               "--port", str(self.port), *self.args]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                    "TREE_DB_PATH": str(self.db_path)})
        log.close()
        return self

    def wait_ready(self, timeout: float = 15.0) -> NodeProcess:
        deadline = time.monotonic() + timeout
        keys_dir = (self.config or {}).get("keys_dir")  # CURVE: ask with its own key
        while not ping(self.address, keys_dir=keys_dir):
            if self.proc.poll() is not None:
                raise AssertionError(f"node {self.name} exited with {self.proc.returncode}:"
                                     f"\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"node {self.name} not answering:\n{self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"node {self.name} ignored signal {sig}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(autouse=True)
def own_database(tmp_path, monkeypatch) -> None:
    """Every node a test starts without a database of its own (plain subprocesses,
    `tsctl` commands) writes into this test's directory, never /etc/treescale: no
    handler or load-balancer state leaks from one test (or run) into another."""
    monkeypatch.setenv("TREE_DB_PATH", str(tmp_path / "default-tree.db"))


@pytest.fixture(autouse=True)
def admin_token(monkeypatch) -> str:
    """Every Client and tsctl of a test presents ADMIN unless given a token (a node
    without auth ignores it)."""
    monkeypatch.setenv("TREESCALE_TOKEN", ADMIN)
    return ADMIN


def start_all(nodes: list[NodeProcess], timeout: float = 60.0) -> None:
    """Start every node at once (children retry until their parent listens), then
    wait until all answer: a 20-node tree starts in the time of a few nodes."""
    for n in nodes:
        n.launch()
    for n in nodes:
        n.wait_ready(timeout)


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator:
    """Start nodes on demand; every one is killed at teardown, pass or fail."""
    started: list[NodeProcess] = []

    def make(name: str = "n1", config: dict | None = None,
             args: tuple[str, ...] = ()) -> NodeProcess:
        n = NodeProcess(tmp_path, name, config, args).start()
        started.append(n)
        return n

    yield make
    for n in started:
        n.kill()


@pytest.fixture
def node(node_factory) -> NodeProcess:
    return node_factory("n1", {"groups": ["backend"], "tags": ["eu"]})


@pytest.fixture
def clients() -> Iterator:
    """Make Clients that are closed at teardown."""
    from treescale import Client

    made: list = []

    def make(address: str, **kw) -> Client:
        c = Client(address, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close(timeout=2)
