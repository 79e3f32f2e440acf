"""What a node process loads, which is what it holds in memory: without a Docker
engine the docker service answers without the Docker SDK, and no node ever loads
paramiko (the SDK's ssh:// transport) for a local engine, nor asyncio.

Each case runs a real node (treescale.brokers.node, as `tsctl node start` runs it) in a
fresh interpreter, serves a docker call through the bus, then reports the interpreter's
``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests import dockerkit
from tests.conftest import ADMIN, ROOT, secure
from treescale.local import free_port

docker_client = dockerkit.docker_client  # pytest finds the kit's fixture here

# The node runs in a thread of this probe; the docker service's watcher logs a warning
# on its first failed attempt (the event waited on); a call goes through the bus.
PROBE = """
import json, logging, sys, threading, time
from treescale.brokers.hosting import limit_malloc_arenas
from treescale.brokers.node import Node
from treescale.client import Client
from treescale.loader import load_node_config
from treescale.services.rpc import call

tried = threading.Event()
class Tried(logging.Handler):
    def emit(self, record):
        tried.set()
logging.getLogger("treescale.docker").addHandler(Tried(logging.WARNING))

cfg = load_node_config(sys.argv[1], None)
limit_malloc_arenas()
node = Node(cfg)
threading.Thread(target=node.run, daemon=True).start()
with Client(node.endpoint, token=sys.argv[2], timeout=30) as c:
    deadline = time.monotonic() + 30
    while True:  # the service subscribes once it has started: ask until it answers
        try:
            [r] = call(c, "docker", "ps", {}, node=cfg.name, timeout=1)
            break
        except TimeoutError:  # NoResponders too, at once: poll as wait_until does
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    watcher = tried.wait(30) if not r.ok else None
node.stop()
print(json.dumps({"ok": r.ok, "error": r.error, "watcher_tried": watcher,
                  "modules": {m: sys.modules[m] is not None for m in
                              ("docker", "requests", "paramiko", "cryptography",
                               "asyncio", "yaml", "rich") if m in sys.modules}}))
"""


def probe(tmp_path: Path, docker_host: str | None) -> dict:
    config = secure({"name": "imp", "port": free_port()}, "docker", "exec", "config",
                    "handlers")
    if docker_host is not None:
        config["docker_host"] = docker_host
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"node": config}))
    r = subprocess.run([sys.executable, "-c", PROBE, str(path), ADMIN], cwd=ROOT,
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])


def test_without_an_engine_a_node_never_loads_the_docker_sdk(tmp_path):
    url = f"unix://{tmp_path}/no-docker.sock"
    seen = probe(tmp_path, url)
    assert not seen["ok"] and seen["error"] == (
        f"Docker engine unreachable at {url} (node imp): No such file or directory")
    assert seen["watcher_tried"] is True
    assert seen["modules"] == {}, seen["modules"]


def test_with_an_engine_the_sdk_loads_but_never_paramiko(tmp_path, docker_client):
    seen = probe(tmp_path, None)  # the default engine, which docker_client found
    assert seen["ok"], seen["error"]
    assert seen["modules"] == {"docker": True, "requests": True, "paramiko": False}, \
        seen["modules"]
