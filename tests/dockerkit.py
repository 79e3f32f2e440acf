"""Docker for tests: a real engine (started by .ci/start-docker.sh when absent), the
busybox test image, a node whose docker service answers, and cleanup of every
container a test made (by the label treescale.test=<run id>), pass or fail.

A test module uses the fixtures by binding them as its own attributes.
"""

from __future__ import annotations

import subprocess
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, secure, wait_until

IMAGE = "treescale-busybox:test"
LABEL = "treescale.test"
RUN_ID = uuid.uuid4().hex[:10]
START_SCRIPT = ROOT / ".ci" / "start-docker.sh"


def _engine_ready() -> tuple[Any, str | None]:
    """(client, None) when the engine answers and has the test image, else (None, why)."""
    import docker

    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        return None, f"Docker engine not reachable: {exc}"
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        client.close()
        return None, f"test image {IMAGE} missing"
    return client, None


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A docker SDK client of the local engine; starts the engine if it is down."""
    client, why = _engine_ready()
    if client is None:
        run = subprocess.run(["bash", str(START_SCRIPT)], capture_output=True, text=True,
                             timeout=180)
        client, why_again = _engine_ready()
        if client is None:
            pytest.fail(f"{why}; {START_SCRIPT.name} did not fix it ({why_again}):\n"
                        f"{run.stdout}{run.stderr}", pytrace=False)
    yield client
    client.close()


@pytest.fixture
def test_label(docker_client, request) -> Iterator[dict[str, str]]:
    """Labels for this test's containers; they are all removed at teardown."""
    value = f"{RUN_ID}-{request.node.name}"[:120]
    yield {LABEL: value}
    remove_labelled(docker_client, value)


def remove_labelled(client: Any, value: str) -> None:
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}={value}"}):
        try:
            c.remove(force=True)
        except Exception:  # already gone
            pass


def docker_service_answers(client: Any, node: str) -> bool:
    """The node's docker service answers and follows the engine's events."""
    from treescale.services.rpc import call

    try:
        [r] = call(client, "docker", "info", {}, node=node, timeout=1)
    except TimeoutError:
        return False
    return r.ok and r.result["events"]


def services_answering(client: Any, nodes: Iterable[str]) -> set[str]:
    """The nodes whose service orchestrator answers (an image_check round trip)."""
    from treescale.services.rpc import call

    found = set()
    for node in nodes:
        try:
            [r] = call(client, "service", "image_check", {"image": IMAGE}, node=node,
                       timeout=2)
        except TimeoutError:
            continue
        if r.ok:
            found.add(node)
    return found


@pytest.fixture
def docker_node(node_factory, clients, docker_client) -> Any:
    """A node (name d1, group web, tag eu) with stats each 0.5 s; its docker service
    answers and follows the engine. Returns (node process, client attached to it)."""
    n = node_factory("d1", secure({"groups": ["web"], "tags": ["eu"],
                                   "docker_stats_interval": 0.5}, "docker", "lb"))
    c = clients(n.address, name="docker-test")
    wait_until(lambda: docker_service_answers(c, "d1"), 30, "d1's docker service")
    return n, c


def http_get(port: int, path: str = "/") -> str | None:
    """The body served on 127.0.0.1:port, or None if nothing answers (yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


def host_port(summary_or_inspect: dict, port: str = "8080/tcp") -> int:
    """The 127.0.0.1 host port the engine bound for a container port."""
    if "ports" in summary_or_inspect and isinstance(summary_or_inspect["ports"], list):
        for p in summary_or_inspect["ports"]:  # ps row: "127.0.0.1:32768->8080/tcp"
            bound, _, inner = p.partition("->")
            if inner == port:
                return int(bound.rsplit(":", 1)[1])
        raise AssertionError(f"{port} not published: {summary_or_inspect['ports']}")
    bindings = summary_or_inspect["NetworkSettings"]["Ports"][port]
    return int(bindings[0]["HostPort"])


def httpd_command(text_env: str = "MSG") -> list[str]:
    """busybox httpd on 8080 serving $MSG as its index page."""
    return ["sh", "-c", f"mkdir -p /w && echo \"${text_env}\" > /w/index.html && "
                        "exec httpd -f -p 8080 -h /w"]


class LoopbackRegistry:
    """A read-only Docker registry (HTTP API v2) on 127.0.0.1 serving one tiny image,
    so `pull` is tested for real without leaving the machine (the engine treats
    127.0.0.0/8 registries as insecure, i.e. plain HTTP, by default)."""

    MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"

    def __init__(self, name: str = "tiny", tag: str = "1") -> None:
        import gzip
        import hashlib
        import http.server
        import io
        import json
        import tarfile
        import threading

        def digest(data: bytes) -> str:
            return "sha256:" + hashlib.sha256(data).hexdigest()

        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            body = b"pulled over the loopback registry\n"
            info = tarfile.TarInfo("hello.txt")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        layer = gzip.compress(raw.getvalue(), mtime=0)
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "config": {"Cmd": ["/hello.txt"]},
                             "rootfs": {"type": "layers",
                                        "diff_ids": [digest(raw.getvalue())]}}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": self.MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "size": len(config), "digest": digest(config)},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "size": len(layer), "digest": digest(layer)}]}).encode()
        blobs = {digest(config): config, digest(layer): layer}
        paths = {f"/v2/{name}/manifests/{tag}": (manifest, self.MANIFEST_TYPE),
                 f"/v2/{name}/manifests/{digest(manifest)}": (manifest, self.MANIFEST_TYPE),
                 "/v2/": (b"{}", "application/json")}
        paths.update({f"/v2/{name}/blobs/{d}": (b, "application/octet-stream")
                      for d, b in blobs.items()})
        self.requests: list[str] = []
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, with_body: bool) -> None:
                registry.requests.append(f"{self.command} {self.path}")
                found = paths.get(self.path)
                self.send_response(200 if found else 404)
                data, kind = found or (b'{"errors": [{"code": "NAME_UNKNOWN"}]}',
                                       "application/json")
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                if found:
                    self.send_header("Docker-Content-Digest", digest(data))
                self.end_headers()
                if with_body:
                    self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                self._answer(True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(False)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.image = f"127.0.0.1:{self.server.server_address[1]}/{name}:{tag}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def loopback_registry(docker_client) -> Iterator[LoopbackRegistry]:
    """The registry; its image is removed from the engine at teardown."""
    registry = LoopbackRegistry(name=f"tiny-{RUN_ID}")
    try:
        yield registry
    finally:
        registry.close()
        try:
            docker_client.images.remove(registry.image, force=True)
        except Exception:  # never pulled, or already removed by the test
            pass
