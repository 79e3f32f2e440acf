"""Service calls over the bus (treescale.services.rpc) against a real node process."""

from __future__ import annotations

import threading

import pytest

from tests.conftest import secure
from treescale.config import NodeConfig
from treescale.services import ServiceContext
from treescale.services.rpc import ServiceEndpoint, ServiceError, call


def _echo(args: dict, emit) -> dict:
    if args.get("fail"):
        raise ServiceError("asked to fail")
    if args.get("crash"):
        raise KeyError("boom")
    for i in range(args.get("chunks", 0)):
        emit("log", f"line {i}")
    if args.get("threads"):  # like exec: output from reader threads, then the result
        workers = [threading.Thread(target=lambda n=n: [emit(f"t{n}", i) for i in range(20)])
                   for n in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    return {"echo": args["text"], "requester": args["_requester"]}


@pytest.fixture
def echo_service(node):
    """An echo service attached to the node as an ordinary client (named as the node)."""
    ctx = ServiceContext(node.address, "n1", NodeConfig(name="n1"), secret="not-the-node's")
    svc = ServiceEndpoint(ctx, "echo", {"echo": _echo})
    yield svc
    svc.close()
    ctx.close()


def test_call_returns_the_result_and_streams_in_order(node, clients, echo_service):
    c = clients(node.address, name="caller")
    seen = []
    [r] = call(c, "echo", "echo", {"text": "hi", "chunks": 3}, node="n1", timeout=5,
               on_stream=lambda n, s, d: seen.append((n, s, d)))
    assert r.ok and r.node == "n1" and r.result["echo"] == "hi"
    assert r.result["requester"]  # the service learns who asked
    assert seen == [("n1", "log", f"line {i}") for i in range(3)]


def test_stream_messages_from_other_threads_come_before_the_result(node, clients,
                                                                  echo_service):
    seen = []
    [r] = call(clients(node.address), "echo", "echo", {"text": "t", "threads": True},
               node="n1", timeout=5, on_stream=lambda n, s, d: seen.append((s, d)))
    assert r.ok and len(r.streams) == 40 and seen == r.streams
    for stream in ("t0", "t1"):
        assert [d for s, d in seen if s == stream] == list(range(20))


def test_refusals_unknown_ops_and_crashes_come_back_as_errors(node, clients, echo_service):
    c = clients(node.address)
    [r] = call(c, "echo", "echo", {"fail": True}, node="n1", timeout=5)
    assert not r.ok and r.error == "asked to fail"
    [r] = call(c, "echo", "nope", {}, node="n1", timeout=5)
    assert not r.ok and "unknown echo operation 'nope'" in r.error
    [r] = call(c, "echo", "echo", {"crash": True}, node="n1", timeout=5)
    assert not r.ok and "KeyError" in r.error and "n1" in r.error
    [r] = call(c, "echo", "echo", {"text": "still serving"}, node="n1", timeout=5)
    assert r.ok


def test_a_missing_node_times_out_with_a_clear_message(node, clients, echo_service):
    c = clients(node.address)
    with pytest.raises(TimeoutError, match="no answer from echo on node 'ghost'"):
        call(c, "echo", "echo", {"text": "x"}, node="ghost", timeout=0.5)


def test_service_subjects_need_the_service_permission(node_factory, clients):
    n = node_factory("n1", {"tokens": {"admin": ["*"], "viewer": ["pub", "sub"],
                                       "op": ["pub", "sub", "echo"]}})
    ctx = ServiceContext(n.address, "n1", NodeConfig(name="n1"), secret="x")
    svc = ServiceEndpoint(ctx, "echo", {"echo": _echo},
                          client=clients(n.address, token="admin"))
    try:
        viewer = clients(n.address, token="viewer", on_error=lambda e: None)
        with pytest.raises(Exception, match="does not allow echo"):
            call(viewer, "echo", "echo", {"text": "x"}, node="n1", timeout=2)
        [r] = call(clients(n.address, token="op"), "echo", "echo", {"text": "y"},
                   node="n1", timeout=5)
        assert r.ok and r.result["echo"] == "y"
    finally:
        svc._pool.shutdown(wait=False)


def test_sys_events_are_reserved_for_nodes_services_and_sys_tokens(node_factory, clients):
    """A forged $sys.docker… start event could add a real server to a load balancer:
    with auth on, only tokens with `sys` (or `*`) may publish under $sys."""
    n = node_factory("n1", {"tokens": {"viewer": ["pub", "sub"], "ops": ["pub", "sub", "sys"]}})
    watcher = clients(n.address, token="ops")
    watcher.subscribe("$sys.audit.forged")
    errors: list = []
    viewer = clients(n.address, token="viewer", on_error=errors.append)
    viewer.publish("$sys.audit.forged", b"forged")
    viewer.publish("plain.event", b"fine")
    viewer.flush()
    assert any("does not allow sys" in str(e) for e in errors), errors
    clients(n.address, token="ops").publish("$sys.audit.forged", b"real")
    ev = watcher.next_event(5)
    assert ev is not None and bytes(ev.data) == b"real"
    assert watcher.next_event(0.3) is None  # the forged one never arrived


def test_a_node_runs_only_the_services_its_config_names(node_factory, clients):
    full = node_factory("n1", secure(None, "handlers", "exec"))
    lean = node_factory("n2", secure({"services": ["exec"]}, "handlers", "exec"))
    [r] = call(clients(full.address), "handlers", "ls", node="n1", timeout=10)
    assert r.ok
    with pytest.raises(TimeoutError, match="no answer from handlers on node 'n2'"):
        call(clients(lean.address), "handlers", "ls", node="n2", timeout=1.5)
