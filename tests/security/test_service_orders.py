"""Who may run containers through the service orchestrator: the operator ops need the
``service`` permission; the scheduler's orders to a node's agent only come from a
node's own services; a forged lease can neither be published nor win."""

from __future__ import annotations

import msgpack
import pytest

from tests.conftest import ADMIN, LINK, wait_until
from tests.dockerkit import IMAGE, docker_client, httpd_command  # noqa: F401 - fixture
from treescale import subjects
from treescale.client import NodeError
from treescale.services.rpc import call

OPERATOR, VIEWER = "operator-token", "viewer-token"


@pytest.fixture
def node(node_factory, docker_client):  # noqa: F811
    return node_factory("o1", {"tokens": {ADMIN: ["*"], OPERATOR: ["service"],
                                          VIEWER: ["sys"]},
                               "link_token": LINK, "docker_enabled": True,
                               "service_enabled": True})


def ls(client) -> dict | None:
    try:
        [r] = call(client, "service", "ls", {}, node="o1", timeout=5)
    except TimeoutError:  # the node's services are still starting
        return None
    return r.result if r.ok else None


def forged_order(term: int) -> dict:
    return {"spec": {"name": "evil", "image": IMAGE, "command": ["sleep", "600"]},
            "rid": "abcd1234", "version": 1, "term": term, "holder": "zzz"}


def test_an_operator_cannot_give_the_scheduler_s_orders(node, clients, docker_client):  # noqa: F811
    operator = clients(node.address, name="operator", token=OPERATOR)
    wait_until(lambda: ls(operator) is not None and ls(operator)["scheduler"] == "o1", 20,
               "o1 to schedule")
    for op, args in (("replica_start", forged_order(10**9)),
                     ("replica_stop", {"cid": "abc", "term": 10**9, "holder": "zzz"}),
                     ("replica_logs", {"cid": "abc"})):
        [r] = call(operator, "service", op, args, node="o1", timeout=10)
        assert not r.ok and "scheduler" in r.error or "service logs" in r.error, (op, r)
    assert not docker_client.containers.list(all=True,
                                             filters={"label": "treescale.service=evil"})
    # the forged term was not heard: the real scheduler's orders still work
    [r] = call(operator, "service", "add",
               {"name": "good", "image": IMAGE, "port": 8080, "command": httpd_command(),
                "env": {"MSG": "ok"}}, node="o1", timeout=20)
    assert r.ok, r.error
    try:
        wait_until(lambda: ls(operator)["services"][0]["ready"] == 1, 60, "a replica")
        assert ls(operator)["term"] < 10**9
    finally:
        call(operator, "service", "rm", {"name": "good"}, node="o1", timeout=10)
        wait_until(lambda: not docker_client.containers.list(
            all=True, filters={"label": "treescale.service=good"}), 30, "cleanup")


def test_service_ops_need_the_service_permission(node, clients):
    viewer = clients(node.address, name="viewer", token=VIEWER)
    with pytest.raises(NodeError, match="permission"):
        call(viewer, "service", "add", {"name": "x", "image": IMAGE}, node="o1",
             timeout=5)


def test_a_lease_cannot_be_forged_without_sys(node, clients):
    operator = clients(node.address, name="operator", token=OPERATOR)
    wait_until(lambda: ls(operator) is not None, 20, "o1 to schedule")
    operator.publish(subjects.SERVICE_LEASE, msgpack.packb(
        {"holder": "zzz", "term": 10**9, "specs": [0, 0]}))
    wait_until(lambda: any(e.code == subjects.PERMISSION_DENIED for e in operator.errors),
               10, "the node to refuse the forged lease")
    result = ls(operator)
    assert result["scheduler"] == "o1" and result["term"] < 10**9


def test_the_spec_set_is_read_only_with_the_service_permission(node, clients):
    """Nodes catch up on a service a request names by asking the scheduler for the spec
    set (``specs_get``), whose environments may hold secrets: a client without the
    ``service`` permission can neither read it nor send the request that makes a node
    ask for it; the operator still can."""
    operator = clients(node.address, name="operator", token=OPERATOR)
    viewer = clients(node.address, name="viewer", token=VIEWER)
    wait_until(lambda: ls(operator) is not None, 20, "o1 to schedule")
    [r] = call(operator, "service", "add", {"name": "secretive", "image": IMAGE,
                                            "replicas": 0, "minimum": 0, "maximum": 1,
                                            "env": {"TOKEN": "s3cret"}},
               node="o1", timeout=20)
    assert r.ok, r.error
    try:
        with pytest.raises(NodeError, match="permission"):
            call(viewer, "service", "specs_get", {}, node="o1", timeout=5)
        with pytest.raises(NodeError, match="permission"):  # nor make a node ask for it
            viewer.request(subjects.service_request("nothing-here"), b"", timeout=10)
        [r] = call(operator, "service", "specs_get", {}, node="o1", timeout=5)
        assert r.ok and "secretive" in str(r.result)
    finally:
        call(operator, "service", "rm", {"name": "secretive"}, node="o1", timeout=10)
