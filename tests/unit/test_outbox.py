"""The client's outbox packing: order kept, batches cut by count and bytes, extras kept."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from treescale import client_io as C
from treescale import protocol as P
from treescale.client_core import Extended, decode_batch
from treescale.client_io import COMMAND, Outbox, pack_outbox

names = st.sampled_from(["a", "a.b", "c.d.e", "x"])
sizes = st.one_of(st.integers(0, 300), st.sampled_from([P.LARGE_PAYLOAD, 70_000]))
event = st.tuples(names, sizes, st.one_of(st.none(), st.just(("group:g", 1, None,
                                                               {"h": "1"}))))
item = st.one_of(event, event, event, st.integers(0, 99).map(lambda n: ("cmd", n)))


def replay(messages: list) -> list:
    """Decode packed messages back into (name, payload, extra) / ("cmd", n) items."""
    out = []
    for msg in messages:
        header = P.decode_header(msg[0])
        if header[0] == P.PUB:
            # PUB and DELIVER share the batch layout: read it as a delivery
            frames = [P.encode_deliver_header([["me", 1 << 30]]), *msg[1:]]
            for ev in decode_batch([f if isinstance(f, bytes) else bytes(f.buffer)
                                    for f in frames]):
                extra = None
                if ev.target is not None:
                    extra = (ev.target, 1, None, dict(ev.headers))
                out.append((ev.name, bytes(ev.data), extra))
        else:
            out.append(("cmd", P.decode(msg).token))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(item, max_size=60), st.integers(1, 7), st.integers(100, 5000))
def test_pack_outbox_keeps_order_and_content(items, batch_events, batch_bytes):
    old = C.BATCH_EVENTS, C.BATCH_BYTES
    C.BATCH_EVENTS, C.BATCH_BYTES = batch_events, batch_bytes
    try:
        box = Outbox()
        expected = []
        for i, it in enumerate(items):
            if it[0] == "cmd":
                box.add(COMMAND, P.encode_ping(it[1]))
                expected.append(it)
                continue
            name, size, extra = it
            data = bytes([i % 256]) * size
            box.add(Extended(name, extra) if extra else name, data)
            expected.append((name, data, extra))
        messages = list(pack_outbox(*box.take()))
        assert len(box) == 0
        assert replay(messages) == expected
        for msg in messages:
            if P.decode_header(msg[0])[0] == P.PUB:
                view = P.decode_events(msg[1], msg[2], msg[3:], 1 << 30)
                assert view.n <= batch_events or view.n == 1
    finally:
        C.BATCH_EVENTS, C.BATCH_BYTES = old


def test_large_payloads_leave_as_borrowed_frames():
    box = Outbox()
    big = b"z" * (P.LARGE_PAYLOAD + 1)
    box.add("blob", big)
    (msg,) = pack_outbox(*box.take())
    assert len(msg) == 4 and bytes(msg[3].buffer) == big
