"""Helpers shared by the protocol tests: hypothesis settings and strategies, frame
builders, and the checks every decoded message must pass. No sockets."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st

from treescale import protocol as P
from treescale.protocol import MODE_ALL, BatchView, ProtocolError, decode, packb

# Deterministic and quick: a fixed seed per test, no example database, no deadline, and
# no "explain" phase (it re-runs a failing case many times and can take minutes).
FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fast(examples: int) -> settings:
    return settings(FAST, max_examples=examples)


MESSAGE_TYPES = (P.Hello, P.Ready, P.Subscribe, P.Unsubscribe, P.Batch, P.Request, P.Reply,
                 P.Error, P.Ping, P.Pong, P.Bye, P.Link, P.Linked, P.Redirect, P.Interest,
                 P.PlacementInfo, P.Resync, P.DurablePublish, P.DurableConfirm,
                 P.CustodyForward, P.CustodyAck, P.DurableControl, P.DurableControlReply,
                 P.DurableDeliver, P.DurableAck, P.Probe, P.ProbeAnswer)


def big(n: int, fill: int = 0x5A) -> bytes:
    """A payload of ``n`` bytes (cheap to build, unlike hypothesis binaries)."""
    return bytes([fill]) * n


def le32(*sizes: int) -> bytes:
    return struct.pack(f"<{len(sizes)}I", *sizes)


def le16(*idx: int) -> bytes:
    return struct.pack(f"<{len(idx)}H", *idx)


def unmeta(frame: bytes) -> list:
    """A meta frame as plain msgpack (extras has int keys)."""
    return msgpack.unpackb(frame, strict_map_key=False)


def pub(meta: list, body: bytes = b"", *large) -> list:
    """A PUB message with a hand-built meta (for malformed batches)."""
    return [packb([P.PUB]), packb(meta), body, *large]


def decoded_batch(frames: list, **kw) -> BatchView:
    batch = decode(frames, **kw)
    assert isinstance(batch, P.Batch)
    return batch.meta


def ev(name: str, data: bytes, target=None, mode=MODE_ALL, reply=None, headers=None) -> tuple:
    """An event tuple as encode_events takes it and BatchView.events returns it."""
    return (name, data, target, mode, reply, headers)


def expect(exc_type: type, frames: list, *fragments: str, max_payload: int = 1 << 26):
    """Decode must raise exactly ``exc_type`` whose message names every fragment."""
    with pytest.raises(ProtocolError) as info:
        decode(frames, max_payload=max_payload)
    err = info.value
    assert type(err) is exc_type, f"{type(err).__name__}: {err}"
    assert err.code == exc_type.code
    for frag in fragments:
        assert frag in str(err), f"{frag!r} not in {str(err)!r}"
    return err



SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(), st.text(max_size=8), st.binary(max_size=16))
OBJECTS = st.recursive(
    SCALARS,
    lambda kids: st.one_of(
        st.lists(kids, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(-3, 8)), kids,
                        max_size=4)),
    max_leaves=10)



def decode_or_protocol_error(frames: list, max_payload: int = 1 << 26):
    """Return the decoded message or None on ProtocolError; anything else propagates."""
    try:
        msg = decode(frames, max_payload=max_payload)
    except ProtocolError as exc:
        assert isinstance(exc.code, str) and str(exc)
        event(f"error {exc.code}")
        return None
    assert isinstance(msg, MESSAGE_TYPES)
    event(f"decoded {type(msg).__name__}")
    if isinstance(msg, P.Batch):
        check_view_consistent(msg.meta)
    return msg


def check_view_consistent(view: BatchView) -> None:
    """What decode accepted must be self-consistent: one name and one payload of the
    declared size per event."""
    payloads = view.payloads()
    assert len(payloads) == view.n
    assert [len(p) for p in payloads] == list(view.sizes)
    assert len(list(view.name_column())) == view.n
    assert len(view.events()) == view.n



def mutate(frames: list, i: int, obj, how: str) -> list:
    """``frames`` with one defect: a header field replaced by ``obj``, the header cut
    short or lengthened, a frame dropped or one added (``i`` picks where)."""
    header = msgpack.unpackb(frames[0])
    rest = list(frames[1:])
    if how == "replace":
        header[i % len(header)] = obj
    elif how == "truncate":
        header = header[:i % len(header) + 1]
    elif how == "append":
        header.append(obj)
    elif how == "drop-frame" and rest:
        del rest[i % len(rest)]
    else:
        rest.insert(i % (len(rest) + 1), packb(obj))
    return [packb(header), *rest]
