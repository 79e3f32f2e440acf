"""Bad input from a raw socket: the sender gets an error naming the problem, the node
keeps serving everyone else."""

from __future__ import annotations

import struct

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treescale import protocol as P

HELLO = msgpack.packb([1, 1, None, "raw", [], [], [], [], {}])


class Raw:
    """A bare DEALER speaking frames by hand, as a buggy or hostile client would."""

    def __init__(self, address: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def recv(self, timeout: float = 5.0) -> list:
        assert self.sock.poll(int(timeout * 1000)), "no answer from the node"
        header, *rest = self.sock.recv_multipart()
        return msgpack.unpackb(header)

    def hello(self) -> None:
        self.send(HELLO)
        assert self.recv()[0] == P.READY

    def error(self, *frames: bytes) -> tuple[str, str]:
        self.send(*frames)
        msg = self.recv()
        assert msg[0] == P.ERROR, f"expected an error, got {msg}"
        return msg[1], msg[2]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(node):
    r = Raw(node.address)
    yield r
    r.close()


@pytest.fixture
def witness(node, clients):
    """A healthy subscriber that must keep receiving whatever the bad client does."""
    sub = clients(node.address, name="witness")
    sub.subscribe("alive")
    pub = clients(node.address, name="witness-pub")
    counter = iter(range(1_000_000))

    def still_served() -> None:
        token = str(next(counter)).encode()
        pub.publish("alive", token)
        ev = sub.next_event(5)
        assert ev is not None and bytes(ev.data) == token, "node stopped serving"

    return still_served


def batch(names: list[str], payloads: list[bytes]) -> list[bytes]:
    meta = msgpack.packb([names, None, struct.pack(f"<{len(payloads)}I",
                                                   *map(len, payloads)), [], None])
    return [msgpack.packb([P.PUB]), meta, b"".join(payloads)]


@pytest.mark.parametrize("frames,code,words", [
    ([b"\xc1garbage"], "bad_encoding", "not valid msgpack"),
    ([msgpack.packb({"a": 1})], "bad_encoding", "non-empty msgpack array"),
    ([msgpack.packb([])], "bad_encoding", "non-empty msgpack array"),
    ([msgpack.packb(["pub"])], "bad_encoding", "message kind"),
    ([msgpack.packb([99])], "unknown_kind", "unknown message kind 99"),
    ([msgpack.packb([1, 7, None, "x", [], [], [], [], {}])], "version",
     "protocol version 7 is not supported"),
    ([msgpack.packb([1, 1, 42, "x", [], [], [], [], {}])], "bad_field",
     "token must be a string"),
    ([msgpack.packb([1, 1, None, "x", "notalist", [], [], [], {}])], "bad_field",
     "groups must be a list of strings"),
    ([HELLO, b"extra"], "bad_frame_count", "hello takes 1 frame(s), got 2"),
])
def test_malformed_messages_before_hello(raw, witness, frames, code, words):
    got_code, message = raw.error(*frames)
    assert got_code == code and words in message
    witness()


def test_messages_before_ready_are_refused(raw, witness):
    code, message = raw.error(*batch(["x"], [b"1"]))
    assert code == "not_ready" and "send hello first" in message
    code, message = raw.error(msgpack.packb([P.SUB, "x", None]))
    assert code == "not_ready"
    witness()


@pytest.mark.parametrize("frames,code,words", [
    ([msgpack.packb([P.PUB]), b"\x93"], "bad_frame_count", "got 2"),
    ([msgpack.packb([P.PUB]), b"\xc1", b""], "bad_encoding", "meta frame is not valid"),
    ([msgpack.packb([P.PUB]), msgpack.packb([["a"], None, b"\x01\x00\x00\x00", [], None]),
      b"toolong"], "bad_field", "body holds 7 bytes but the meta declares 1"),
    ([msgpack.packb([P.PUB]), msgpack.packb([["a"], None, b"\x01\x00\x00", [], None]),
      b"x"], "bad_field", "uint32"),
    ([msgpack.packb([P.PUB]), msgpack.packb([["a", "b"], None, b"\x01\x00\x00\x00", [],
                                             None]), b"x"], "bad_field", "index is required"),
    ([msgpack.packb([P.PUB]), msgpack.packb([["a"], b"\x05\x00", b"\x01\x00\x00\x00", [],
                                             None]), b"x"], "bad_field", "past the names"),
    ([msgpack.packb([P.PUB]), msgpack.packb([["a"], None, b"\x01\x00\x00\x00", [0], None]),
      b""], "bad_frame_count", "declares 1 large payload frame(s), got 0"),
    ([msgpack.packb([P.PUB]), msgpack.packb([["a"], None, b"\x01\x00\x00\x00", [],
                                             {0: ["t", 5, None, None]}]), b"x"],
     "bad_field", "mode must be 0 (all) or 1 (one)"),
    ([msgpack.packb([P.PUB]), msgpack.packb([["a"], None, b"\x01\x00\x00\x00", [],
                                             {0: ["planet:mars", 0, None, None]}]), b"x"],
     "bad_target", "'planet:mars' must be node:NAME"),
    ([msgpack.packb([P.SUB, 5, None])], "bad_field", "pattern must be a string"),
    ([msgpack.packb([P.SUB, "a.>.b", None])], "bad_pattern", "'>' must be the last token"),
    ([msgpack.packb([P.SUB, "a..b", None])], "bad_pattern", "empty token"),
    ([msgpack.packb([P.SUB, "$inbox.n1.x.*", None])], "bad_pattern", "inboxes are private"),
    ([msgpack.packb([P.READY, "n", "c", {}])], "unexpected", "may not send ready"),
    ([msgpack.packb([P.REQUEST, 1, "svc", None, 0, None])], "bad_frame_count",
     "request takes 2 frame(s), got 1"),
    ([msgpack.packb([P.REQUEST, 1, "svc", "nowhere", 0, None]), b""], "bad_target",
     "must be node:NAME"),
    (batch(["a.*"], [b"x"]), "bad_pattern", "must not contain wildcards"),
    (batch(["a..b"], [b"x"]), "bad_pattern", "empty token"),
])
def test_malformed_messages_after_ready(raw, witness, frames, code, words):
    raw.hello()
    got_code, message = raw.error(*frames)
    assert got_code == code, message
    assert words in message
    witness()


def test_oversized_payload_is_refused_with_the_limit(node_factory, clients):
    small = node_factory("small", {"max_payload": 100_000})
    r = Raw(small.address)
    try:
        r.hello()
        code, message = r.error(*batch(["big"], [b"x" * 60_000, b"y" * 50_000])[:1],
                                msgpack.packb([["big"], None, struct.pack("<I", 200_000),
                                               [0], None]), b"", b"z" * 200_000)
        assert code == "too_large"
        assert "200000 bytes for 'big' exceeds the limit of 100000 bytes" in message
    finally:
        r.close()
    # the Python client refuses locally once it knows the node's limit
    c = clients(small.address)
    with pytest.raises(ValueError, match="exceeds the node's limit of 100000 bytes"):
        c.publish("big", b"x" * 200_000)
    with pytest.raises(ValueError, match="exceeds the node's limit"):
        c.request("big", b"x" * 200_000)


def test_ping_before_hello_is_answered(raw):
    raw.send(msgpack.packb([P.PING, 3]))
    assert raw.recv() == [P.PONG, 3]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.builds(lambda k, rest: msgpack.packb([k, *rest]),
                  st.integers(0, 15),
                  st.lists(st.one_of(st.none(), st.integers(-2**63, 2**64 - 1), st.text(max_size=8),
                                     st.binary(max_size=8),
                                     st.lists(st.text(max_size=4), max_size=3)),
                           max_size=8)),
    ),
    min_size=0, max_size=6))
def test_fuzz_live_node_survives_random_frames(node, witness, frames):
    r = Raw(node.address)
    try:
        r.send(HELLO)
        r.recv()
        if frames:
            r.send(*frames)
    finally:
        r.close()
    witness()
