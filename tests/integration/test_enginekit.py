"""The engine kit gives real, separate Docker machines and leaves nothing behind."""

from __future__ import annotations

import urllib.request

import docker
import pytest

from tests.conftest import wait_until
from tests.dockerkit import IMAGE, docker_client  # noqa: F401 - fixture
from tests.enginekit import machines, own_leftovers

HTTPD = ["sh", "-c", "mkdir -p /w && echo hi > /w/index.html && exec httpd -f -p 8080 -h /w"]


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


def test_three_machines_serve_and_leave_nothing(docker_client):  # noqa: F811
    with machines(3, image_on=(0,)) as (a, b, c):
        assert len({a.ip, b.ip, c.ip}) == 3
        assert all(m.engine_running for m in (a, b, c))
        assert a.client().images.get(IMAGE)
        for m in (b, c):  # the image only where it was asked for
            with pytest.raises(docker.errors.ImageNotFound):
                m.client().images.get(IMAGE)
        box = a.client().containers.run(IMAGE, HTTPD, detach=True, ports={"8080/tcp": 8080})
        assert box.id not in {x.id for x in docker_client.containers.list(all=True)}
        wait_until(lambda: _get(f"http://{a.ip}:8080/") == "hi\n", 30,
                   f"httpd in machine A at {a.ip}:8080")
        assert _get(f"http://{b.ip}:8080/") is None  # B's engine publishes nothing
        a.stop_engine()
        assert not a.engine_running
    assert own_leftovers() == []
    out = docker_client.containers.run(IMAGE, ["echo", "host ok"], remove=True)
    assert out == b"host ok\n"
