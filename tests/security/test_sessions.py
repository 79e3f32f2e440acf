"""Sessions belong to connections: a routing id, a published client id or a dropped
connection gives no way into someone else's session. Each attack runs against real
node processes with exec on, asserts the command did not run, and that the victim
(or a fresh connection that says hello) still runs it."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest
import zmq

from tests.conftest import wait_until
from treescale import protocol as P
from treescale import subjects
from treescale.client import Client, NodeError
from treescale.services import rpc

ADMIN = "admin-secret"
CONFIG = {"tokens": {ADMIN: ["*"]}, "exec_enabled": True}


class Peer:
    """A bare DEALER with a routing id of its choosing, as an attacker would use."""

    def __init__(self, address: str, routing_id: bytes | None = None) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if routing_id is not None:
            self.sock.setsockopt(zmq.ROUTING_ID, routing_id)
        self.sock.connect(address)

    def send(self, frames: list) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout: float = 5.0) -> list | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return msgpack.unpackb(self.sock.recv_multipart()[0])

    def hello(self, token: str) -> list:
        self.send(P.encode_hello("peer", token, (), (), (), ()))
        return self.recv()

    def run(self, command: str, req_id: int = 1) -> None:
        body = msgpack.packb({"op": "run", "args": {"command": command}})
        self.send(P.encode_request(req_id, subjects.service("exec", self.node), body))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def exec_node(node_factory):
    n = node_factory("s1", CONFIG)
    wait_until(lambda: exec_answers(n), 30, "the exec service")
    return n


def exec_answers(n) -> bool:
    with Client(n.address, token=ADMIN, timeout=5) as c:
        try:
            return rpc.call(c, "exec", "run", {"command": "true"}, node=n.name,
                            timeout=2)[0].ok
        except (TimeoutError, rpc.ServiceError, NodeError):
            return False


def peer(n, routing_id: bytes | None = None) -> Peer:
    p = Peer(n.address, routing_id)
    p.node = n.name
    return p


def ran(path: Path) -> bool:
    return path.exists()


def test_a_routing_id_already_in_use_takes_nothing_over(exec_node, tmp_path):
    victim = peer(exec_node, os.urandom(16))
    assert victim.hello(ADMIN)[0] == P.READY
    rid = victim.sock.getsockopt(zmq.ROUTING_ID)
    thief = peer(exec_node, rid)  # the same routing id on a second connection
    try:
        thief.run(f"touch {tmp_path / 'stolen'}")
        # ZeroMQ ignores a second connection with a live id: no answer, no command.
        assert thief.recv(timeout=1.0) is None
        victim.run(f"touch {tmp_path / 'mine'}", req_id=2)
        wait_until(lambda: ran(tmp_path / "mine"), 10, "the victim's own command")
        assert not ran(tmp_path / "stolen")
    finally:
        thief.close()
        victim.close()


def test_a_routing_id_back_on_a_new_connection_must_say_hello(exec_node, tmp_path):
    rid = os.urandom(16)
    victim = peer(exec_node, rid)
    assert victim.hello(ADMIN)[0] == P.READY
    victim.close()  # the connection drops without a bye
    thief = peer(exec_node, rid)
    try:
        thief.run(f"touch {tmp_path / 'stolen'}")
        answer = thief.recv()
        assert answer is not None and answer[0] == P.ERROR
        assert answer[1] == subjects.NOT_READY
        assert not ran(tmp_path / "stolen")
        # The same id with a hello (a real reconnect) is a new session that works.
        assert thief.hello(ADMIN)[0] == P.READY
        thief.run(f"touch {tmp_path / 'after-hello'}", req_id=2)
        wait_until(lambda: ran(tmp_path / "after-hello"), 10, "the command after hello")
        assert not ran(tmp_path / "stolen")
    finally:
        thief.close()


def test_published_ids_are_not_routing_ids(exec_node, clients, tmp_path):
    watcher = clients(exec_node.address, token=ADMIN, name="watcher")
    watcher.subscribe(subjects.CLIENT_CONNECT)
    victim = peer(exec_node, os.urandom(16))
    assert victim.hello(ADMIN)[0] == P.READY
    ev = watcher.next_event(5)
    assert ev is not None and ev.name == subjects.CLIENT_CONNECT
    published = msgpack.unpackb(ev.data)["id"]
    victim_rid = victim.sock.getsockopt(zmq.ROUTING_ID)
    assert published.encode() not in victim_rid.hex().encode()
    for guess in (bytes.fromhex(published), published.encode()):
        thief = peer(exec_node, guess)
        try:
            thief.run(f"touch {tmp_path / 'stolen'}")
            answer = thief.recv()
            assert answer is not None and answer[1] == subjects.NOT_READY
        finally:
            thief.close()
    victim.run(f"touch {tmp_path / 'mine'}")
    wait_until(lambda: ran(tmp_path / "mine"), 10, "the victim's own command")
    assert not ran(tmp_path / "stolen")
    victim.close()


def test_a_child_nodes_link_cannot_be_claimed_by_its_name(node_factory, tmp_path):
    parent = node_factory("p1", {**CONFIG, "services": ["exec"]})
    wait_until(lambda: exec_answers(parent), 30, "the parent's exec service")
    child = node_factory("c1", {"parent": parent.address, "parent_token": ADMIN,
                                "services": []})
    wait_until(lambda: "c1" in children_of(parent), 30, "the child's link")
    thief = peer(parent, b"node:c1")  # what a child's routing id used to be
    try:
        thief.run(f"touch {tmp_path / 'stolen'}")
        answer = thief.recv()
        assert answer is not None and answer[1] == subjects.NOT_READY
        assert not ran(tmp_path / "stolen")
        assert "c1" in children_of(parent)  # the real link is untouched
    finally:
        thief.close()
    assert child.alive


def children_of(n) -> list[str]:
    with Client(n.address, token=ADMIN, timeout=5) as c:
        c.subscribe(subjects.NODE_STATS)
        for ev in c.events(timeout=5):  # every node's stats: keep this node's
            report = msgpack.unpackb(ev.data)
            if report["node"] == n.name:
                return report["children"]
        return []
