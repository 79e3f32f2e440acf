"""The image service for real: three Docker machines (tests.enginekit), a node on each,
chained A <- B <- C; images move between the engines over the bus, no registry."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from tests.conftest import secure, wait_until
from tests.dockerkit import IMAGE, docker_client  # noqa: F401 - fixture
from tests.enginekit import three_machines  # noqa: F401 - fixture
from treescale import protocol as P
from treescale import subjects
from treescale.services.images import fetch_image
from treescale.services.rpc import ServiceError, call


def _answers(client, node: str) -> bool:
    try:
        [r] = call(client, "image", "has", {"image": "sha256:" + "0" * 64}, node=node,
                   timeout=1)
    except TimeoutError:
        return False
    return not r.ok and "not found" in r.error


def _drop_image(machine) -> None:
    for ref in (IMAGE,):
        try:
            machine.client().images.remove(ref, force=True)
        except Exception:  # not there
            pass


@pytest.fixture
def chain(three_machines, node_factory, clients):  # noqa: F811
    """Nodes A <- B <- C, each driving its machine's engine; the image only in A."""
    a, b, c = three_machines
    for m in (b, c):
        _drop_image(m)
    nodes = {}
    parent = None
    for m in three_machines:
        cfg = {"docker_host": m.docker_host}
        if parent is not None:
            cfg["parent"] = parent.address
        nodes[m.name] = parent = node_factory(m.name, secure(cfg, "docker", "image"))
    client = clients(nodes["C"].address, name="image-test")
    for name in nodes:
        wait_until(lambda n=name: _answers(client, n), 30, f"node {name}'s image service")
    return nodes, client, three_machines


def _cache(node) -> Path:
    return Path(str(node.db_path) + ".images")


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def ok(client, node: str, op: str, args: dict, timeout: float = 60) -> dict:
    [r] = call(client, "image", op, args, node=node, timeout=timeout)
    assert r.ok, r.error
    return r.result


def error(client, node: str, op: str, args: dict) -> str:
    [r] = call(client, "image", op, args, node=node, timeout=30)
    assert not r.ok, r.result
    assert "\n" not in r.error and "Traceback" not in r.error
    return r.error


def test_c_fetches_from_a_two_hops_then_runs_it(chain):
    nodes, client, (a, b, c) = chain
    seen: list = []
    client.subscribe(subjects.image_events("C"),
                     handler=lambda ev: seen.append((ev.name, P.loads(ev.data))))
    a_id = a.client().images.get(IMAGE).id
    assert ok(client, "A", "has", {"image": IMAGE})["id"] == a_id
    assert "not found on node C" in error(client, "C", "has", {"image": IMAGE})

    progress: list[tuple[int, int]] = []
    result = fetch_image(client, "C", IMAGE, "A", on_progress=lambda n, t:
                         progress.append((n, t)), timeout=120)
    assert result["id"] == a_id and result["already"] is False and result["source"] == "A"
    offered = ok(client, "A", "offer", {"image": IMAGE})  # the cached tar, reused
    assert result["bytes"] == offered["size"] > 0
    assert progress and progress[-1] == (offered["size"], offered["size"])
    # The digest C checked: its kept tar is byte for byte A's offered tar.
    kept = _cache(nodes["C"]) / f"{a_id.split(':')[1]}.tar"
    assert _sha(kept) == offered["digest"] == _sha(_cache(nodes["A"]) / kept.name)
    # The image now runs in C's engine (tags survived the save).
    assert c.client().images.get(IMAGE).id == a_id
    out = c.client().containers.run(IMAGE, ["echo", "on C"], remove=True)
    assert out == b"on C\n"

    wait_until(lambda: {n.rsplit(".", 1)[1] for n, _ in seen} >= {"fetch", "progress",
                                                                   "loaded"},
               10, "C's image events")
    events = dict(seen)
    assert events[subjects.image_event("C", "fetch")]["id"] == a_id
    assert events[subjects.image_event("C", "fetch")]["source"] == "A"
    assert events[subjects.image_event("C", "loaded")]["bytes"] == offered["size"]
    ticks = [d for n, d in seen if n == subjects.image_event("C", "progress")]
    assert ticks[-1]["bytes"] == ticks[-1]["total"] == offered["size"]
    assert len(ticks) <= 4 * result["seconds"] + 2  # a few a second, not one a chunk

    again = fetch_image(client, "C", IMAGE, "A", timeout=60)
    assert again["already"] is True and again["id"] == a_id and again["bytes"] == 0

    # C serves what it received: B fetches from C (one hop down), C's offer reuses it.
    assert ok(client, "C", "offer", {"image": IMAGE})["digest"] == offered["digest"]
    from_c = fetch_image(client, "B", IMAGE, "C", timeout=120)
    assert from_c["id"] == a_id and b.client().images.get(IMAGE).id == a_id


def test_an_unknown_image_fails_in_one_line_and_leaves_nothing(chain):
    nodes, client, (a, b, c) = chain
    failed: list = []
    client.subscribe(subjects.image_event("C", "failed"),
                     handler=lambda ev: failed.append(P.loads(ev.data)))
    with pytest.raises(ServiceError) as caught:
        fetch_image(client, "C", "no-such-image:0", "A", timeout=60)
    line = str(caught.value)
    assert "no-such-image:0" in line and "node A" in line and "\n" not in line
    wait_until(lambda: failed, 10, "C's failed event")
    assert failed[0]["error"] == line and failed[0]["source"] == "A"
    assert not list(_cache(nodes["C"]).glob(".partial-*"))
    assert not list(_cache(nodes["C"]).glob("*.tar"))
    # The legitimate fetch still works.
    assert fetch_image(client, "C", IMAGE, "A", timeout=120)["already"] is False


def test_a_corrupted_tar_is_refused_and_nothing_loaded(chain):
    nodes, client, (a, b, c) = chain
    offered = ok(client, "A", "offer", {"image": IMAGE})
    tar = _cache(nodes["A"]) / f"{offered['id'].split(':')[1]}.tar"
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in A's cache
    tar.write_bytes(bytes(data))
    with pytest.raises(ServiceError, match="digest mismatch.*nothing loaded"):
        fetch_image(client, "C", IMAGE, "A", timeout=120)
    assert "not found on node C" in error(client, "C", "has", {"image": IMAGE})
    assert not list(_cache(nodes["C"]).glob(".partial-*"))
    assert not list(_cache(nodes["C"]).glob("*.tar"))
    tar.unlink()  # A saves afresh on the next offer: the legitimate fetch works
    assert fetch_image(client, "C", IMAGE, "A", timeout=120)["id"] == offered["id"]


def test_bad_arguments_are_refused_in_one_line(chain):
    nodes, client, (a, b, c) = chain
    offered = ok(client, "A", "offer", {"image": IMAGE})
    image_id = offered["id"]
    cases = [
        ("has", {}, "image must be a non-empty string"),
        ("has", {"image": 5}, "image must be a non-empty string"),
        ("read", {"id": image_id, "offset": -1}, "offset must be a non-negative"),
        ("read", {"id": image_id, "offset": "0"}, "offset must be a non-negative"),
        ("read", {"id": image_id, "offset": offered["size"]}, "past the end"),
        ("read", {"id": "../../etc/passwd", "offset": 0}, "full image id"),
        ("read", {"id": "sha256:" + "1" * 64, "offset": 0}, "not offered on node A"),
        ("read", {"id": image_id, "offset": 0, "length": True}, "length must be"),
        ("fetch", {"image": IMAGE}, "source must name the node"),
        ("offer", {"image": "Not A Reference!"}, "not found on node A"),
        ("nope", {}, "unknown image operation"),
    ]
    for op, args, expected in cases:
        assert expected in error(client, "A", op, args), (op, args)
    # A read is capped at 1 MiB and answers raw bytes of the tar.
    tar = _cache(nodes["A"]) / f"{image_id.split(':')[1]}.tar"
    got = ok(client, "A", "read", {"id": image_id, "offset": 10, "length": 1 << 30})
    assert got == tar.read_bytes()[10:10 + (1 << 20)]


def test_concurrent_fetches_share_one_transfer(chain):
    nodes, client, (a, b, c) = chain
    seen: list = []
    client.subscribe(subjects.image_event("C", "fetch"), handler=lambda ev: seen.append(1))
    results: list = []

    def one() -> None:
        results.append(fetch_image(client, "C", IMAGE, "A", timeout=120))

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert len(results) == 3 and len({r["id"] for r in results}) == 1
    assert sum(not r["already"] for r in results) >= 1
    wait_until(lambda: seen, 10, "the fetch event")
    assert len(seen) == 1  # one transfer, however many callers
