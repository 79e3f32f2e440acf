"""`make bench` on a machine without some peer: each broker peer names its program and
Debian package; a missing one is left out with one line naming the package."""

from __future__ import annotations

import os
from dataclasses import dataclass

from bench.peer_programs import find_program, runnable_systems
from bench.peers import REGISTRY


@dataclass
class Peer:
    name: str
    program: str
    debian_package: str


@dataclass
class Brokerless:
    name: str


def test_every_broker_peer_names_its_program_and_debian_package():
    assert {n: (s.program, s.debian_package) for n, s in REGISTRY.items()
            if hasattr(s, "program")} == {"redis": ("redis-server", "redis-server"),
                                          "nats": ("nats-server", "nats-server"),
                                          "mqtt": ("mosquitto", "mosquitto")}
    assert not hasattr(REGISTRY["zmq"], "program")  # raw ZeroMQ needs no broker


def test_a_missing_peer_is_named_once_and_left_out(monkeypatch):
    monkeypatch.setenv("PATH", os.environ["PATH"])  # runnable_systems may extend it
    assert find_program("sh") is not None
    systems = {"gone": Peer("gone", "treescale-no-such-broker", "treescale-no-such-pkg"),
               "present": Peer("present", "sh", "dash"), "zmq": Brokerless("zmq")}
    said: list[str] = []
    runnable = runnable_systems(systems, install=False, say=said.append)
    assert list(runnable) == ["present", "zmq"]
    assert said == ["gone: treescale-no-such-broker is not installed (Debian package "
                    "treescale-no-such-pkg: apt-get install treescale-no-such-pkg); "
                    "benchmarking without it"]
