"""Durable delivery on the wire: kinds 25 and 28-36 as typed values, their encoders
and their decoders. Pure.

Owns: DPUB (a client's durable publishes) and DCONFIRM (the node's confirms), DFORWARD
and DFACK (custody from hop to hop), DCTL and DCTLR (durable subscriptions: create,
resume, leave, list, inspect, remove, replay), DDELIVER and DACK (a durable's events
to its client and their acks and naks), DPROBE and DPROBED (the wave that tells a new
durable's node that every live node has its interest). Each durable event's payload
travels in a frame of its own after the header, never inside it: a node stores and
forwards it without re-encoding.

Must not touch: storage, clocks, sockets. What a node does with these messages is
``treescale/brokers/custody.py``'s and ``durables.py``'s; docs/DELIVERY.md states the
guarantee they give.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from treescale.protocol.codec import (
    I63,
    BadCount,
    FieldError,
    FrameCountError,
    PayloadTooLarge,
    as_buffer,
    bounded,
    fields,
    mapping,
    packb,
    text,
)
from treescale.protocol.kinds import (
    DACK,
    DCONFIRM,
    DCTL,
    DCTLR,
    DDELIVER,
    DFACK,
    DFORWARD,
    DPROBE,
    DPROBED,
    DPUB,
    KIND_NAMES,
)

MAX_ID = 256  # characters in an event id (the dedup key)
MAX_DURABLE_BATCH = 10_000  # events in one DPUB, DFORWARD or DDELIVER
OPS = ("subscribe", "unsubscribe", "ls", "info", "rm", "replay")


@dataclass(slots=True)
class DurableEvent:
    """One durable event as it travels: ``seq`` is the sender's number for it (the
    client's for DPUB, the sending node's log position for DFORWARD and DDELIVER)."""

    seq: int
    id: str
    name: str
    payload: Any
    headers: dict | None = None
    time: float = 0.0  # when the first node stored it (its clock)
    publisher: str = ""
    deliveries: int = 0  # DDELIVER: how many times this durable has sent it before


@dataclass(slots=True)
class DurablePublish:  # DPUB
    events: list[DurableEvent]


@dataclass(slots=True)
class DurableConfirm:  # DCONFIRM
    confirmed: list[int]
    refused: list[tuple[int, str, str]]  # (seq, code, message)


@dataclass(slots=True)
class CustodyForward:  # DFORWARD
    events: list[DurableEvent]


@dataclass(slots=True)
class CustodyAck:  # DFACK
    seqs: list[int]


@dataclass(slots=True)
class DurableControl:  # DCTL
    req_id: int
    op: str
    args: dict


@dataclass(slots=True)
class DurableControlReply:  # DCTLR
    req_id: int
    ok: bool
    result: Any  # a map when ok, else [code, message]


@dataclass(slots=True)
class DurableDeliver:  # DDELIVER
    durable: str
    events: list[DurableEvent]


@dataclass(slots=True)
class DurableAck:  # DACK
    durable: str
    acks: list[int]
    naks: list[tuple[int, float]]  # (seq, delay in seconds)


@dataclass(slots=True)
class Probe:  # DPROBE
    token: int
    origin: str


@dataclass(slots=True)
class ProbeAnswer:  # DPROBED
    token: int
    nodes: int  # how many nodes of the sender's side hold the interest now


# ----------------------------------------------------------------------- encoding


def _payloads(events: Sequence[DurableEvent]) -> list:
    return [e.payload for e in events]


def encode_dpub(events: Sequence[DurableEvent]) -> list:
    rows = [[e.seq, e.id, e.name, e.headers] for e in events]
    return [packb([DPUB, rows]), *_payloads(events)]


def encode_dconfirm(confirmed: Sequence[int],
                    refused: Sequence[tuple[int, str, str]] = ()) -> list:
    return [packb([DCONFIRM, list(confirmed), [list(r) for r in refused]])]


def encode_dforward(events: Sequence[DurableEvent]) -> list:
    rows = [[e.seq, e.id, e.name, e.headers, e.time, e.publisher] for e in events]
    return [packb([DFORWARD, rows]), *_payloads(events)]


def encode_dfack(seqs: Sequence[int]) -> list:
    return [packb([DFACK, list(seqs)])]


def encode_dctl(req_id: int, op: str, args: dict | None = None) -> list:
    return [packb([DCTL, req_id, op, args or {}])]


def encode_dctlr(req_id: int, ok: bool, result: Any) -> list:
    return [packb([DCTLR, req_id, ok, result])]


def encode_ddeliver(durable: str, events: Sequence[DurableEvent]) -> list:
    rows = [[e.seq, e.id, e.name, e.headers, e.time, e.publisher, e.deliveries]
            for e in events]
    return [packb([DDELIVER, durable, rows]), *_payloads(events)]


def encode_dack(durable: str, acks: Sequence[int] = (),
                naks: Sequence[tuple[int, float]] = ()) -> list:
    return [packb([DACK, durable, list(acks), [list(n) for n in naks]])]


def encode_probe(token: int, origin: str) -> list:
    return [packb([DPROBE, token, origin])]


def encode_probed(token: int, nodes: int) -> list:
    return [packb([DPROBED, token, nodes])]


# ----------------------------------------------------------------------- decoding


def _rows(value: Any, frames: Sequence, kind: int, width: int) -> list:
    """The event rows of a header: a list of lists of ``width``, one payload frame
    after the header for each."""
    what = KIND_NAMES[kind]
    if not isinstance(value, list):
        raise FieldError(f"{what} events must be a list")
    if len(value) > MAX_DURABLE_BATCH:
        raise BadCount(f"{what} carries at most {MAX_DURABLE_BATCH} events, "
                       f"got {len(value)}")
    if len(frames) != len(value) + 1:
        raise FrameCountError(f"{what} takes a header and one payload frame per event "
                              f"({len(value)}), got {len(frames)} frame(s)")
    for row in value:
        if not isinstance(row, list) or len(row) != width:
            raise FieldError(f"{what} events must be lists of {width} fields")
    return value


def _event(row: list, payload: Any, max_payload: int, kind: int) -> DurableEvent:
    seq, eid, name = row[0], row[1], row[2]
    seq = bounded(seq, "event seq", 0, I63)
    eid = text(eid, "event id")
    if not eid or len(eid) > MAX_ID:
        raise FieldError(f"event id must hold 1..{MAX_ID} characters")
    name = text(name, "event name")
    headers = mapping(row[3], "event headers")
    size = len(as_buffer(payload))
    if size > max_payload:
        raise PayloadTooLarge(f"payload of {size} bytes for {name!r} exceeds the limit "
                              f"of {max_payload} bytes", ref=name)
    ev = DurableEvent(seq, eid, name, payload, headers)
    if kind != DPUB:
        t = row[4]
        if not isinstance(t, int | float) or isinstance(t, bool) or not 0 <= t < 1e11:
            raise FieldError("event time must be seconds since the epoch")
        ev.time = float(t)
        ev.publisher = text(row[5], "event publisher") or ""
    if kind == DDELIVER:
        ev.deliveries = bounded(row[6], "deliveries", 0, I63)
    return ev


def _events(rows: list, frames: Sequence, max_payload: int, kind: int) -> list:
    return [_event(row, frames[i + 1], max_payload, kind) for i, row in enumerate(rows)]


def _items(value: Any, what: str) -> list:
    """A list field (nil is empty) of at most MAX_DURABLE_BATCH items."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise FieldError(f"{what} must be a list, got {type(value).__name__}")
    if len(value) > MAX_DURABLE_BATCH:
        raise BadCount(f"{what} holds at most {MAX_DURABLE_BATCH} items, got {len(value)}")
    return value


def _seqs(value: Any, what: str) -> list[int]:
    if not isinstance(value, list):
        raise FieldError(f"{what} must be a list of numbers")
    if len(value) > MAX_DURABLE_BATCH:
        raise BadCount(f"{what} holds at most {MAX_DURABLE_BATCH} numbers")
    return [bounded(v, what, 0, I63) for v in value]


def _one_frame(frames: Sequence, kind: int) -> None:
    if len(frames) != 1:
        raise FrameCountError(f"{KIND_NAMES[kind]} takes 1 frame(s), got {len(frames)}")


def _decode_dpub(header: list, frames: Sequence, max_payload: int) -> DurablePublish:
    (rows,) = fields(header, 1)
    return DurablePublish(_events(_rows(rows, frames, DPUB, 4), frames, max_payload,
                                  DPUB))


def _decode_dconfirm(header: list, frames: Sequence, max_payload: int) -> DurableConfirm:
    _one_frame(frames, DCONFIRM)
    confirmed, refused = fields(header, 2)
    out = []
    for r in _items(refused, "dconfirm refusals"):
        if not isinstance(r, list) or len(r) != 3:
            raise FieldError("dconfirm refusals must be [seq, code, message]")
        out.append((bounded(r[0], "seq", 0, I63), text(r[1], "code"),
                    text(r[2], "message")))
    return DurableConfirm(_seqs(confirmed or [], "confirmed seqs"), out)


def _decode_dforward(header: list, frames: Sequence, max_payload: int) -> CustodyForward:
    (rows,) = fields(header, 1)
    return CustodyForward(_events(_rows(rows, frames, DFORWARD, 6), frames, max_payload,
                                  DFORWARD))


def _decode_dfack(header: list, frames: Sequence, max_payload: int) -> CustodyAck:
    _one_frame(frames, DFACK)
    (seqs,) = fields(header, 1)
    return CustodyAck(_seqs(seqs, "custody acks"))


def _decode_dctl(header: list, frames: Sequence, max_payload: int) -> DurableControl:
    _one_frame(frames, DCTL)
    req_id, op, args = fields(header, 3)
    op = text(op, "durable op")
    if op not in OPS:
        raise FieldError(f"durable op must be one of {', '.join(OPS)}, got {op[:40]!r}")
    return DurableControl(bounded(req_id, "request id", 0, I63), op,
                          mapping(args, "durable args") or {})


def _decode_dctlr(header: list, frames: Sequence, max_payload: int
                  ) -> DurableControlReply:
    _one_frame(frames, DCTLR)
    req_id, ok, result = fields(header, 3)
    if not isinstance(ok, bool):
        raise FieldError("dctlr ok must be true or false")
    return DurableControlReply(bounded(req_id, "request id", 0, I63), ok, result)


def _decode_ddeliver(header: list, frames: Sequence, max_payload: int) -> DurableDeliver:
    durable, rows = fields(header, 2)
    return DurableDeliver(text(durable, "durable"),
                          _events(_rows(rows, frames, DDELIVER, 7), frames, max_payload,
                                  DDELIVER))


def _decode_dack(header: list, frames: Sequence, max_payload: int) -> DurableAck:
    _one_frame(frames, DACK)
    durable, acks, naks = fields(header, 3)
    out = []
    for n in _items(naks, "dack naks"):
        if not isinstance(n, list) or len(n) != 2 or not isinstance(n[1], int | float) \
                or isinstance(n[1], bool) or not 0 <= n[1] <= 86400:
            raise FieldError("dack naks must be [seq, delay of 0..86400 seconds]")
        out.append((bounded(n[0], "seq", 0, I63), float(n[1])))
    return DurableAck(text(durable, "durable"), _seqs(acks or [], "acks"), out)


def _decode_probe(header: list, frames: Sequence, max_payload: int) -> Probe:
    _one_frame(frames, DPROBE)
    token, origin = fields(header, 2)
    return Probe(bounded(token, "probe token", 0, I63), text(origin, "probe origin"))


def _decode_probed(header: list, frames: Sequence, max_payload: int) -> ProbeAnswer:
    _one_frame(frames, DPROBED)
    token, nodes = fields(header, 2)
    return ProbeAnswer(bounded(token, "probe token", 0, I63),
                       bounded(nodes, "probe nodes", 0, I63))


DECODERS = {
    DPUB: _decode_dpub,
    DCONFIRM: _decode_dconfirm,
    DFORWARD: _decode_dforward,
    DFACK: _decode_dfack,
    DCTL: _decode_dctl,
    DCTLR: _decode_dctlr,
    DDELIVER: _decode_ddeliver,
    DACK: _decode_dack,
    DPROBE: _decode_probe,
    DPROBED: _decode_probed,
}
