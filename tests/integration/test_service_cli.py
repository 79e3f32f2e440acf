"""`tsctl service` against a real node running the docker, service and lb services on
the machine's own engine: add and wait, ls, a request through svc.NAME, scale, logs,
rm, and the errors an operator meets (unknown image, unplaceable, a name taken).

Every service a test adds has a name of its own run; its containers (labelled
treescale.service=NAME by the node's replica agent) are removed at teardown, pass or
fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from tests import dockerkit
from tests.conftest import ADMIN, ROOT, secure, wait_until
from tests.dockerkit import IMAGE, docker_service_answers, httpd_command

docker_client = dockerkit.docker_client
SERVICE_LABEL = "treescale.service"


def tsctl(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    """`tsctl service ARGS...` (the node's address among them), wide tables."""
    return subprocess.run([sys.executable, "-m", "tsctl.main", "service", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def containers_of(docker_client: Any, name: str) -> list:
    return docker_client.containers.list(all=True,
                                         filters={"label": f"{SERVICE_LABEL}={name}"})


@pytest.fixture
def names(docker_client) -> Iterator[Any]:
    """``names("web")``: a service name of this run; its containers go at teardown."""
    made: list[str] = []

    def make(base: str) -> str:
        made.append(f"{base}-{dockerkit.RUN_ID}"[:48])
        return made[-1]

    yield make
    for name in made:
        for c in containers_of(docker_client, name):
            try:
                c.remove(force=True)
            except Exception:  # already gone
                pass


@pytest.fixture
def service_node(node_factory, clients, docker_client) -> Any:
    """Node s1 (group web) with docker, service and lb; returns (node, client) once
    its scheduler holds the lease (until then every op says no node schedules yet)."""
    n = node_factory("s1", secure({"groups": ["web"]}, "docker", "service", "lb"))
    c = clients(n.address, name="service-test")
    wait_until(lambda: docker_service_answers(c, "s1"), 30, "s1's docker service")
    wait_until(lambda: tsctl("ls", "-a", n.address, timeout=30).returncode == 0, 30,
               "s1 to schedule services")
    return n, c


def ls_json(address: str) -> dict:
    r = tsctl("ls", "--json", "-a", address)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    """A failure is one line on stderr, no traceback."""
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[-1]


def test_add_request_scale_logs_rm(service_node, names, docker_client):
    n, c = service_node
    name = names("web")
    r = tsctl("add", name, "--image", IMAGE, "--replicas", "2", "--port", "8080",
              "--env", "MSG=hello from a replica", "-a", n.address, "--", *httpd_command())
    assert r.returncode == 0, r.stderr
    assert f"service {name} added: 2/2 ready" in r.stdout

    [s] = ls_json(n.address)["services"]
    assert (s["name"], s["desired"], s["ready"]) == (name, 2, 2)
    assert len(s["replicas"]) == 2 and all(x["ready"] for x in s["replicas"])
    table = tsctl("ls", "-a", n.address)
    assert table.returncode == 0 and name in table.stdout and "2/2" in table.stdout
    assert "scheduler s1" in table.stdout

    reply = c.request(f"svc.{name}", b"GET / HTTP/1.0\r\n\r\n", timeout=10)
    assert b"hello from a replica" in bytes(reply.data)

    r = tsctl("scale", name, "1", "--json", "-a", n.address)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["desired"], s["ready"], len(s["replicas"])) == (1, 1, 1)
    assert ls_json(n.address)["services"][0]["ready"] == 1

    info = tsctl("info", name, "-a", n.address)
    assert info.returncode == 0 and "MSG=hello from a replica" in info.stdout
    r = tsctl("logs", name, "-a", n.address)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"== s1 {s['replicas'][0]['cid'][:12]} ==")

    r = tsctl("rm", name, "-a", n.address)
    assert r.returncode == 0 and f"removed service {name}" in r.stdout
    wait_until(lambda: not containers_of(docker_client, name), 30,
               f"{name}'s containers to go")
    assert ls_json(n.address)["services"] == []
    one_error_line(tsctl("info", name, "-a", n.address))


def test_operator_errors_are_one_line_and_create_nothing(service_node, names):
    n, _ = service_node
    ghost = names("ghost")
    line = one_error_line(tsctl("add", ghost, "--image", "treescale-nope:absent",
                                "-a", n.address))
    assert "treescale-nope:absent" in line
    line = one_error_line(tsctl("add", names("nowhere"), "--image", IMAGE, "--group",
                                "nobody", "-a", n.address))
    assert "cannot be placed" in line
    assert ls_json(n.address)["services"] == []

    # The legitimate add still works, and a second one of the same name is refused.
    taken = names("taken")
    r = tsctl("add", taken, "--image", IMAGE, "--no-wait", "-a", n.address, "--",
              "sleep", "300")
    assert r.returncode == 0, r.stderr
    line = one_error_line(tsctl("add", taken, "--image", IMAGE, "--no-wait",
                                "-a", n.address, "--", "sleep", "300"))
    assert "exists already" in line
    assert [s["name"] for s in ls_json(n.address)["services"]] == [taken]
    assert tsctl("rm", taken, "-a", n.address).returncode == 0


def test_the_wait_view_draws_image_transfers_and_does_without_sys(node_factory, clients):
    """`add --wait` follows $sys.image.<node>.progress into a bar per transfer; a
    token without `sys` may not subscribe there: the view goes on without bars."""
    from tsctl.service_cmd import Watch

    from treescale import subjects

    n = node_factory("s1", secure({"tokens": {ADMIN: ["*"],
                                              "ops": ["pub", "sub", "service"]}}))
    publisher = clients(n.address, name="images")
    body = {"node": "s1", "image": IMAGE, "bytes": 300, "total": 1200}

    def progress() -> None:
        publisher.publish(subjects.image_event("s1", "progress"), msgpack.packb(body))
        publisher.flush()

    admin = clients(n.address, token=ADMIN)
    seeing = Watch(admin, "web", as_json=False, wait=True)
    seeing.enabled = True  # as at a terminal (the live display itself is not started)
    with seeing:
        progress()
        wait_until(lambda: seeing.transfers, 10, "the progress event")
        [task] = seeing.progress.tasks
        assert (task.completed, task.total) == (300, 1200)
        assert task.description == f"{IMAGE} to s1"

    ops = clients(n.address, token="ops", on_error=lambda e: None)
    blind = Watch(ops, "web", as_json=False, wait=True)
    blind.enabled = True
    with blind:
        progress()
        ops.subscribe("probe.after")  # the same connection: events come in order
        publisher.publish("probe.after", b"x")
        assert ops.next_event(5) is not None
        assert not blind.transfers and not blind.progress.tasks
        assert any("sys" in str(e) for e in ops.errors), list(ops.errors)
