"""Services that keep themselves running, for real: three Docker machines (a dockerd
each, in its own network namespace: tests.enginekit), a node per machine driving its
own engine, the test image only in A's engine. A is the root; B and C its children."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from tests.conftest import free_port, secure, wait_until
from tests.dockerkit import (  # noqa: F401 - docker_client: a fixture
    IMAGE,
    docker_client,
    httpd_command,
    services_answering,
)
from tests.enginekit import three_machines  # noqa: F401 - fixture
from treescale import protocol as P
from treescale import subjects
from treescale.services.rpc import call

HTTP_GET = b"GET / HTTP/1.0\r\n\r\n"


class Fabric:
    """Nodes A <- B, A <- C on machines A, B, C, and a client on each."""

    def __init__(self, machines, node_factory, clients, tmp_path) -> None:
        self.machines = {m.name: m for m in machines}
        self.node_factory, self.make_client = node_factory, clients
        self.nodes: dict = {}
        for m in machines:
            cfg = {"docker_host": m.docker_host, "service_address": m.ip,
                   "groups": ["web"] if m.name != "C" else ["batch"]}
            if m.name != "A":
                cfg["parent"] = self.nodes["A"].address
            self.nodes[m.name] = node_factory(m.name, secure(cfg, "docker", "image",
                                                             "service", "lb"))
        self.clients = {n: clients(node.address, name=f"svc-test-{n}")
                        for n, node in self.nodes.items()}
        wait_until(lambda: self.scheduler("A") == "A", 30, "A to schedule")
        wait_until(lambda: len(self.reporting("A")) == 3, 30, "every node to report")

    def call(self, op: str, args: dict | None = None, at: str = "A",
             timeout: float = 30) -> tuple[bool, object]:
        [r] = call(self.clients[at], "service", op, args or {}, node=at, timeout=timeout)
        return r.ok, r.result if r.ok else r.error

    def ok(self, op: str, args: dict | None = None, at: str = "A") -> dict:
        ok, result = self.call(op, args, at)
        assert ok, result
        return result

    def scheduler(self, at: str) -> str | None:
        try:
            ok, result = self.call("ls", at=at, timeout=2)
        except TimeoutError:
            return None
        return result["scheduler"] if ok else None

    def reporting(self, at: str) -> set[str]:
        return services_answering(self.clients[at], self.nodes)

    def service(self, name: str, at: str = "A") -> dict | None:
        try:
            ok, result = self.call("ls", at=at, timeout=3)
        except TimeoutError:
            return None
        if not ok:
            return None
        return next((s for s in result["services"] if s["name"] == name), None)

    def placed(self, name: str, at: str = "A") -> list[str]:
        """Nodes of the ready replicas, once the service has exactly its count."""
        s = self.service(name, at)
        if not s or len(s["replicas"]) != s["desired"]:
            return []
        return sorted(r["node"] for r in s["replicas"] if r["ready"])

    def containers(self, name: str, machines: str = "ABC") -> dict[str, int]:
        """Running replica containers of ``name`` in each machine's engine."""
        out = {}
        for m in machines:
            machine = self.machines[m]
            if not machine.engine_running:
                continue
            out[m] = len(machine.client().api.containers(
                filters={"label": f"treescale.service={name}"}))
        return out


@pytest.fixture
def fabric(three_machines, node_factory, clients, tmp_path):  # noqa: F811
    for m in three_machines:
        if not m.engine_running:
            m.start_engine()
        m.remove_containers()
    for m in three_machines[1:]:
        try:
            m.client().images.remove(IMAGE, force=True)
        except Exception:  # not there
            pass
    f = Fabric(three_machines, node_factory, clients, tmp_path)
    yield f
    if os.environ.get("TS_DEBUG"):
        print(f.call("ls", timeout=5) if f.nodes["A"].alive else "A down")
        for n, node in f.nodes.items():
            print(f"--- {n}\n" + "\n".join(node.log().splitlines()[-60:]))
    for m in three_machines:
        if m.engine_running:
            m.remove_containers()


def web(replicas: int = 3, **extra) -> dict:
    return {"name": "web", "image": IMAGE, "replicas": replicas, "port": 8080,
            "command": httpd_command(), "env": {"MSG": "served by a replica"}, **extra}


class Counting:
    """The most replica containers of a service running at once, sampled in a thread."""

    def __init__(self, fabric: Fabric, name: str) -> None:
        self.most, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fabric, name), daemon=True)
        self._thread.start()

    def _run(self, fabric: Fabric, name: str) -> None:
        while not self._stop.is_set():
            try:
                self.most = max(self.most, sum(fabric.containers(name).values()))
            except Exception:  # an engine stopping under us
                pass
            self._stop.wait(0.1)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.most


def test_three_replicas_one_per_node_images_come_down_the_tree(fabric):
    events: list[tuple[str, dict]] = []
    fabric.clients["A"].subscribe(subjects.image_events(), handler=lambda ev: events.append(
        (ev.name, P.loads(ev.data))))
    added = fabric.ok("add", web())
    assert added["desired"] == 3
    wait_until(lambda: fabric.placed("web") == ["A", "B", "C"], 90,
               "a ready replica on each node")
    s = fabric.service("web")
    assert s["state"] == "running" and s["running"] == 3, (s, fabric.containers("web"))
    assert all(r["address"].startswith(fabric.machines[r["node"]].ip + ":")
               for r in s["replicas"])
    for m in "BC":  # B and C got the image through the tree: it is in their engines now
        fabric.machines[m].client().images.get(IMAGE)
    loaded = {body["node"] for name, body in events if name.endswith(".loaded")}
    assert loaded == {"B", "C"}, events
    answer = fabric.clients["C"].request(subjects.service_request("web"), HTTP_GET,
                                         timeout=10)
    assert b"served by a replica" in bytes(answer.data), (answer.data, answer.headers)
    assert fabric.containers("web") == {"A": 1, "B": 1, "C": 1}


def test_a_lost_node_replica_starts_elsewhere_then_the_count_is_exact_again(fabric):
    fabric.ok("add", web())
    wait_until(lambda: fabric.placed("web") == ["A", "B", "C"], 90, "3 replicas spread")
    counting = Counting(fabric, "web")
    b_node, b_machine = fabric.nodes["B"], fabric.machines["B"]
    lost_at = time.monotonic()
    b_node.kill()
    b_machine.stop_engine()
    wait_until(lambda: len(fabric.placed("web")) == 3 and
               "B" not in fabric.placed("web"), 15, "3 ready replicas without B")
    moved_in = time.monotonic() - lost_at
    assert sorted(fabric.placed("web")) in (["A", "A", "C"], ["A", "C", "C"])
    b_machine.start_engine()
    b_node.start()
    wait_until(lambda: fabric.placed("web") == ["A", "B", "C"] and
               sum(fabric.containers("web").values()) == 3, 90,
               "exactly 3 again, one per node")
    assert counting.stop() <= 4  # never more than one too many
    print(f"rescheduled after B was lost in {moved_in:.2f}s")


def test_the_scheduler_dies_another_takes_over_never_two_too_many(fabric):
    fabric.ok("add", web())
    wait_until(lambda: fabric.placed("web") == ["A", "B", "C"], 90, "3 replicas spread")
    counting = Counting(fabric, "web")
    fabric.nodes["A"].kill()  # its engine runs on: its replica is still there
    wait_until(lambda: fabric.scheduler("C") == "B", 30, "B (A's heir) to schedule")
    wait_until(lambda: sorted(fabric.placed("web", at="C")) in (["B", "B", "C"],
                                                                ["B", "C", "C"]),
               30, "A's replica replaced on B or C")
    fabric.nodes["A"].start()  # A adopts the replica it left running
    wait_until(lambda: fabric.scheduler("C") == "A", 30, "A to schedule again")
    wait_until(lambda: fabric.placed("web") == ["A", "B", "C"] and
               sum(fabric.containers("web").values()) == 3, 90, "exactly 3 again")
    assert counting.stop() <= 4


def test_a_restarted_node_adopts_its_replica(fabric):
    fabric.ok("add", web())
    wait_until(lambda: fabric.placed("web") == ["A", "B", "C"], 90, "3 replicas spread")
    before = {r["cid"] for r in fabric.service("web")["replicas"] if r["node"] == "C"}
    fabric.nodes["C"].kill()
    # while C is away the specs move on: it catches up when it returns
    fabric.ok("add", {**web(0, minimum=0), "name": "later"})
    fabric.nodes["C"].start()
    wait_until(lambda: fabric.placed("web") == ["A", "B", "C"] and
               sum(fabric.containers("web").values()) == 3, 60, "3 again")
    after = {r["cid"] for r in fabric.service("web")["replicas"] if r["node"] == "C"}
    assert after == before  # the same container, not a new one
    versions = {n: _specs_version(fabric, n) for n in "ABC"}
    wait_until(lambda: {_specs_version(fabric, n) for n in "ABC"} == {2}, 20,
               f"C to catch up on the specs ({versions})")


def test_scale_changes_the_count_live_and_the_endpoint_follows(fabric):
    vip_port = free_port()
    fabric.ok("add", web(2, vip=f"127.0.0.1:{vip_port}", vip_node="A"))
    wait_until(lambda: len(fabric.placed("web")) == 2, 90, "2 replicas")
    wait_until(lambda: _http(vip_port) is not None, 20, "the endpoint to answer")
    assert "served by a replica" in _http(vip_port)
    fabric.ok("scale", {"name": "web", "replicas": 1})
    wait_until(lambda: sum(fabric.containers("web").values()) == 1, 30, "1 replica")
    wait_until(lambda: len(_reals(fabric, vip_port)) == 1, 20, "the endpoint's 1 real")
    assert "served by a replica" in _http(vip_port)
    fabric.ok("rm", {"name": "web"})
    wait_until(lambda: sum(fabric.containers("web").values()) == 0, 30, "none left")
    assert fabric.service("web") is None


def test_scale_from_zero_on_a_request_and_culled_when_idle(fabric):
    fabric.ok("add", {**web(0, minimum=0, maximum=2, idle=3), "name": "lazy"})
    assert sum(fabric.containers("lazy").values()) == 0
    answer = fabric.clients["B"].request(subjects.service_request("lazy"), HTTP_GET,
                                         timeout=60)
    assert b"served by a replica" in bytes(answer.data), answer.headers
    assert sum(fabric.containers("lazy").values()) == 1
    wait_until(lambda: sum(fabric.containers("lazy").values()) == 0, 30,
               "the idle replica culled")
    assert fabric.service("lazy")["desired"] == 0


def test_a_service_just_added_is_known_on_every_node_at_once(fabric):
    """The spec reaches the other nodes a moment after ``add`` answers; a request
    arriving at one of them in that moment asks the scheduler rather than saying
    "no service". (Held 0.5 s: what is checked is that the service is known.)"""
    for i in range(4):
        name = f"fresh{i}"
        fabric.ok("add", {**web(0, minimum=0, maximum=1, idle=60, hold=0.5), "name": name})
        for at in "BC":
            answer = fabric.clients[at].request(subjects.service_request(name), HTTP_GET,
                                                timeout=10)
            error = answer.headers.get("error", "")
            assert "no service" not in error, (at, error)
        fabric.ok("rm", {"name": name})
    answer = fabric.clients["B"].request(subjects.service_request("never-added"), HTTP_GET,
                                         timeout=10)
    assert answer.headers["error"] == "no service 'never-added' (tsctl service ls)"


def test_scale_from_zero_on_a_connection(fabric):
    vip_port = free_port()
    fabric.ok("add", {**web(0, minimum=0, maximum=1, vip=f"127.0.0.1:{vip_port}",
                            vip_node="A"), "name": "lazyweb"})
    assert _http(vip_port, timeout=60) is not None  # held until a replica is ready
    assert sum(fabric.containers("lazyweb").values()) == 1


def test_bad_input_one_clear_line_and_nothing_half_created(fabric):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        cases = {
            "unknown image": ({**web(1), "name": "ghost", "image": "nowhere:1"},
                              "is on no node"),
            "no node matches": ({**web(1), "name": "nomatch", "group": "nobody"},
                                "cannot be placed"),
            "port clash": ({**web(1), "name": "clash",
                            "vip": f"127.0.0.1:{taken.getsockname()[1]}",
                            "vip_node": "A"}, "endpoint"),
            "bad spec": ({"name": "Bad Name", "image": IMAGE}, "service name"),
        }
        for what, (args, words) in cases.items():
            ok, error = fabric.call("add", args)
            assert not ok and words in error and "\n" not in error, (what, error)
            assert fabric.service(args["name"].lower()) is None, what
        assert fabric.ok("ls")["services"] == []
        assert sum(fabric.containers("ghost").values()) == 0
        # and the legitimate operation still works
        fabric.ok("add", web(1))
        wait_until(lambda: len(fabric.placed("web")) == 1, 60, "a good service")
    finally:
        taken.close()


def _http(port: int, timeout: float = 3) -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(HTTP_GET)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace") or None
    except OSError:
        return None


def _reals(fabric: Fabric, port: int) -> list:
    [r] = call(fabric.clients["A"], "lb", "show", {"vip": f"127.0.0.1:{port}"},
               node="A", timeout=5)
    assert r.ok, r.error
    return r.result["reals"]


def _specs_version(fabric: Fabric, node: str) -> int:
    [r] = call(fabric.clients["A"], "service", "specs_get", {}, node=node, timeout=5)
    assert r.ok, r.error
    return r.result["version"]
