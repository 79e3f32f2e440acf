"""Node-to-node links: the message kinds 20-27 as typed values, their encoders and
their decoders. Pure.

Owns: LINK, LINKED, REDIRECT, INTEREST, PLACEMENT, FORWARD and RESYNC: how a child asks
its parent for a place in the tree, how the parent tells it where to re-attach,
interest updates numbered per link, and the FORWARD header (its batch is the one
``batch`` owns, decoded like a DELIVER). ``DECODERS`` maps each kind to its decoder.

Must not touch: sockets, clocks, the tree rules (who may link where: ``tree`` and
the node decide), interest bookkeeping (``interest``). Kinds 25 and 28-39 are kept
for acks and credits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from treescale.protocol import codec
from treescale.protocol.kinds import (
    FORWARD,
    INTEREST,
    LINK,
    LINKED,
    PLACEMENT,
    PROTOCOL_VERSION,
    REDIRECT,
    RESYNC,
)
from treescale.protocol.messages import Decoder, Introduction, decode_batch

# The deepest open slot a PLACEMENT may report: far beyond any real tree, small
# enough that a node adding one to it still sends a valid number.
MAX_DEPTH = 65535
PLACEMENT_KEYS = ("open_depth", "tree_open")
PING_MS = (10, 1000)  # the ping interval a LINK may announce (config: link_ping_interval)

# ----------------------------------------------------------------------- messages


@dataclass(slots=True)
class Link(Introduction):
    """A child node introducing itself to its parent."""

    address: str = ""  # where the child listens: its siblings may need to reach it
    join: bool = False  # True: place me where the tree stays balanced (auto-join)
    ping: int | None = None  # ms: the child speaks at least this often (None: older)


@dataclass(slots=True)
class Linked:
    """The parent's answer: its name and its own ancestors, nearest first, as
    ``[name, address]`` pairs (where to re-attach if it dies)."""

    node: str
    ancestors: list = field(default_factory=list)
    siblings: list = field(default_factory=list)  # the parent's children, [name, addr]


@dataclass(slots=True)
class Redirect:
    """A full node sends a joiner toward the shallowest open slot below it; ``key``
    is the target's CURVE public key (z85) when the fabric runs CURVE."""

    node: str
    address: str
    key: str | None = None


@dataclass(slots=True)
class PlacementInfo:
    """A child's periodic word to its parent about its subtree (``open_depth``: how
    far below the child the nearest node with room for another child is), or the
    parent's to its children (``tree_open``: how deep the tree's shallowest open slot
    is)."""

    info: dict


@dataclass(slots=True)
class Interest:
    """Interest changes on a link: ``ops`` are ``(add, pattern, queue)``; ``seq``
    numbers them per link and direction so a gap is noticed."""

    seq: int
    ops: list
    full: bool = False  # a snapshot: ops are all adds and replace what came before


@dataclass(slots=True)
class Resync:
    """The receiver saw a gap after ``seq``: it asks for a full interest snapshot."""

    seq: int


# ----------------------------------------------------------------------- encoding


def encode_link(name: str, token: str | None = None, groups: Sequence[str] = (),
                tags: Sequence[str] = (), address: str = "", join: bool = False,
                version: int = PROTOCOL_VERSION, ping: int | None = None) -> list[bytes]:
    """``ping``: how often (ms) the child promises to speak; its parent drops it after
    that many missed (healing.Liveness)."""
    return [codec.packb([LINK, version, token, name, list(groups), list(tags), address,
                   bool(join), ping])]


def encode_linked(node: str, ancestors: Sequence[tuple[str, str]] = (),
                  siblings: Sequence[tuple[str, str]] = ()) -> list[bytes]:
    """Sent when a child links, and again to every child when the children change."""
    return [codec.packb([LINKED, node, [list(a) for a in ancestors],
                   [list(s) for s in siblings]])]


def encode_redirect(node: str, address: str, key: str | None = None) -> list[bytes]:
    header = [REDIRECT, node, address]
    return [codec.packb(header if key is None else [*header, key])]


def encode_placement(info: dict) -> list[bytes]:
    return [codec.packb([PLACEMENT, info])]


def encode_interest(seq: int, ops: Iterable[tuple[bool, str, str | None]],
                    full: bool = False) -> list[bytes]:
    header = [INTEREST, seq, [[1 if add else 0, p, q] for add, p, q in ops]]
    return [codec.packb(header + [True] if full else header)]


def encode_resync(seq: int) -> list[bytes]:
    return [codec.packb([RESYNC, seq])]


def encode_forward_header(sources: list) -> bytes:
    return codec.packb([FORWARD, sources])


# ----------------------------------------------------------------------- decoding


def _decode_link(header: list, frames: Sequence, max_payload: int) -> Link:
    codec.expect_frames(frames, LINK, 1)
    version, token, name, groups, tags, address, join, ping = codec.fields(header, 8)
    return Link(codec.check_version(version), codec.text(token, "token", optional=True),
                codec.text(name, "node name"), codec.texts(groups, "groups"),
                codec.texts(tags, "tags"),
                codec.address(address, "link address", optional=True), join is True,
                None if ping is None else codec.bounded(ping, "link ping", *PING_MS))


def _decode_linked(header: list, frames: Sequence, max_payload: int) -> Linked:
    codec.expect_frames(frames, LINKED, 1)
    node, ancestors, siblings = codec.fields(header, 3)
    return Linked(codec.text(node, "node"), _pairs(ancestors, "linked ancestors"),
                  _pairs(siblings, "linked siblings"))


def _pairs(value: Any, what: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(
            isinstance(a, list) and len(a) == 2 and all(isinstance(x, str) for x in a)
            for a in value):
        raise codec.FieldError(f"{what} must be a list of [name, address]")
    # An ancestor is dialled when the parent dies; a sibling's address may be "".
    return [(name, codec.address(addr, f"{what} address", optional=True))
            for name, addr in value]


def _decode_redirect(header: list, frames: Sequence, max_payload: int) -> Redirect:
    codec.expect_frames(frames, REDIRECT, 1)
    node, address, key = codec.fields(header, 3)
    return Redirect(codec.text(node, "node"), codec.address(address, "redirect address"),
                    codec.text(key, "key", optional=True))


def _decode_placement(header: list, frames: Sequence, max_payload: int) -> PlacementInfo:
    codec.expect_frames(frames, PLACEMENT, 1)
    (info,) = codec.fields(header, 1)
    info = codec.mapping(info, "placement") or {}
    for key in PLACEMENT_KEYS:
        if info.get(key) is not None:
            codec.bounded(info[key], f"placement {key}", 0, MAX_DEPTH)
    return PlacementInfo(info)


def _decode_interest(header: list, frames: Sequence, max_payload: int) -> Interest:
    codec.expect_frames(frames, INTEREST, 1)
    seq, ops, full = codec.fields(header, 3)
    if not isinstance(ops, list):
        raise codec.FieldError("interest ops must be a list of [add, pattern, queue]")
    out = []
    for op in ops:
        if not isinstance(op, list) or len(op) != 3 or op[0] not in (0, 1):
            raise codec.FieldError("interest ops must be a list of [add, pattern, queue]")
        out.append((bool(op[0]), codec.text(op[1], "pattern"),
                    codec.text(op[2], "queue", optional=True)))
    if full not in (None, True, False):
        raise codec.FieldError("interest snapshot flag must be true or false")
    if full and not all(add for add, _, _ in out):
        raise codec.FieldError("an interest snapshot holds only additions")
    return Interest(codec.bounded(seq, "interest sequence", 0, codec.I63), out,
                    bool(full))


def _decode_resync(header: list, frames: Sequence, max_payload: int) -> Resync:
    codec.expect_frames(frames, RESYNC, 1)
    (seq,) = codec.fields(header, 1)
    return Resync(codec.bounded(seq, "resync sequence", 0, codec.I63))


DECODERS: dict[int, Decoder] = {
    LINK: _decode_link,
    LINKED: _decode_linked,
    REDIRECT: _decode_redirect,
    INTEREST: _decode_interest,
    PLACEMENT: _decode_placement,
    FORWARD: decode_batch,
    RESYNC: _decode_resync,
}
