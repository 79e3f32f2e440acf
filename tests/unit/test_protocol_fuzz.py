"""A quick fuzz of the pure decoders: whatever the frames, ``decode`` returns a message
or raises a ProtocolError (never anything else), and what it returns is something a
node can store, add one to and send back without an exception of its own."""

from __future__ import annotations

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treescale import protocol as P

KINDS = sorted(P.DECODERS) + [0, 25, 99]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                    st.floats(allow_nan=False), st.text(max_size=12),
                    st.binary(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20)
# Numbers where the decoders draw their lines.
edges = st.sampled_from([0, 1, -1, 65535, 65536, 2**63 - 1, 2**63, 2**64 - 1,
                         30_000_000])


def header_of(kind: int, fields: list) -> bytes:
    return msgpack.packb([kind, *fields], use_bin_type=True)


headers = st.builds(header_of, st.sampled_from(KINDS),
                    st.lists(st.one_of(values, edges), max_size=9))


def valid_messages() -> list[list]:
    meta, body, large = P.encode_events([("a", b"1", None, 0, None, None),
                                         ("b", b"22", "node:x", 1, "r", {"h": 1})])
    return [
        P.encode_hello("c", "t", ["g"], subs=[("a.>", None)]),
        P.encode_sub("a.*"), P.encode_unsub("a.*", "q"), P.encode_ping(3),
        P.encode_pong(4), P.encode_bye(), P.encode_error("bad_field", "m", 1),
        P.encode_request(5, "svc", b"x"), P.encode_reply("$inbox.n.c.1", b"y"),
        P.encode_link("child", "t", address="tcp://127.0.0.1:9"),
        P.encode_linked("p", [("gp", "tcp://h:1")], [("s", "")]),
        P.encode_redirect("p", "tcp://h:2"), P.encode_placement({"open_depth": 2}),
        P.encode_interest(7, [(True, "a.>", None)]), P.encode_resync(3),
        [P.PUB_HEADER, meta, body, *large],
        [P.encode_forward_header([["w", 2]]), meta, body, *large],
        [P.encode_deliver_header([["w", 1], ["v", 1]]), meta, body, *large],
    ]


VALID = valid_messages()


def decodes_or_refuses(frames: list) -> object:
    try:
        msg = P.decode(frames, max_payload=1 << 16)
    except P.ProtocolError as exc:
        assert exc.code and isinstance(exc.code, str)
        return None
    check_usable(msg)
    return msg


def check_usable(msg: object) -> None:
    """What the node does with numbers it took in must not raise."""
    if isinstance(msg, P.Ping | P.Pong):
        P.encode_pong(msg.token)
    elif isinstance(msg, P.PlacementInfo):
        for key in ("open_depth", "tree_open"):
            if msg.info.get(key) is not None:
                P.encode_placement({key: min(P.MAX_DEPTH, msg.info[key] + 1)})
    elif isinstance(msg, P.Interest | P.Resync):
        P.encode_resync(msg.seq + 1)
    elif isinstance(msg, P.Batch):
        assert len(msg.meta.names) <= P.MAX_NAMES
        if msg.kind != P.PUB:
            assert sum(count for _, count in msg.sources) == msg.meta.n
            P.encode_forward_header(msg.sources)
    elif isinstance(msg, P.Request):
        P.encode_error("x", "y", msg.req_id)


FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.lists(st.one_of(headers, st.binary(max_size=40)), min_size=1, max_size=5))
def test_random_frames_decode_or_are_refused(frames):
    decodes_or_refuses(frames)


@FAST
@given(st.sampled_from(range(len(VALID))), st.data())
def test_mutated_valid_messages_decode_or_are_refused(which, data):
    frames = [bytes(P.as_buffer(f)) for f in VALID[which]]
    i = data.draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[i])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "grow", "swap"]))
        if op == "flip" and frame:
            pos = data.draw(st.integers(0, len(frame) - 1))
            frame[pos] = data.draw(st.integers(0, 255))
        elif op == "cut" and frame:
            frame = frame[:data.draw(st.integers(0, len(frame) - 1))]
        elif op == "grow":
            frame += data.draw(st.binary(min_size=1, max_size=8))
        else:
            frame = bytearray(data.draw(headers))
    frames[i] = bytes(frame)
    decodes_or_refuses(frames)


@FAST
@given(st.sampled_from([P.FORWARD, P.DELIVER]),
       st.lists(st.tuples(st.text(max_size=3), st.one_of(edges, st.integers(-3, 5))),
                max_size=4))
def test_forged_source_runs_never_pass_unless_they_add_up(kind, runs):
    meta, body, _ = P.encode_events([("a", b"1", None, 0, None, None)])
    header = msgpack.packb([kind, [list(r) for r in runs]])
    msg = decodes_or_refuses([header, meta, body])
    total = sum(c for _, c in runs)
    assert (msg is not None) == (total == 1 and all(c >= 1 for _, c in runs))


@FAST
@given(st.one_of(st.text(max_size=40), st.sampled_from([
    "tcp://h:0", "tcp://h:65536", "tcp://h:1", "tcp://:1", "ipc:///tmp/x", "tcp://h",
    "tcp://h:١٢", "tcp://h:" + "9" * 5000, "tcp://[::1]:80", "inproc://x"])))
def test_only_tcp_addresses_with_a_port_pass(address):
    msg = decodes_or_refuses(P.encode_redirect("p", address))
    if msg is not None:
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        assert address.startswith("tcp://") and host and 0 < int(port) < 65536
