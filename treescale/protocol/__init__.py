"""TreeScale wire protocol: ZeroMQ multipart frames <-> typed messages. Pure.

This package's face: ``from treescale import protocol as P`` reaches every public name
as ``P.X``; the concepts live in their own modules:

    kinds     kind numbers, the protocol version, the numbers kept free
    codec     msgpack and frame buffers, ProtocolError and its ERROR codes, field checks
    batch     the columnar event batch (meta, body, large frames), LARGE_PAYLOAD, modes
    messages  a client's session: hello ... bye, PUB/DELIVER, request/reply (kinds 1-12)
    links     node to node: link, linked, redirect, interest, stats, forward, resync
    durable   durable delivery: publish and confirm, custody, durables, acks, probes

Every message starts with a *header frame*: a msgpack array whose first item is the
message kind. PUB, DELIVER and FORWARD add a batch (meta, body, large...); REQUEST and
REPLY add one payload frame. A node never decodes a payload and, when a whole batch
goes to the same place, forwards its frames untouched. See docs/PROTOCOL.md.

Owns here: ``decode`` (any message, by its kind) and the aliases kept while callers
move to the public names. Must not touch (nor may any module of this package): zmq,
sockets, clocks, threads, asyncio. The broker and the clients call these functions on
the frames they received and hand the frames these functions return to their sockets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from treescale.protocol import durable, links, messages
from treescale.protocol.batch import (
    LARGE_PAYLOAD,
    MAX_NAMES,
    MODE_ALL,
    MODE_ONE,
    MODES,
    NO_EXTRA,
    BatchView,
    decode_events,
    encode_columns,
    encode_events,
    encode_named,
    encode_single,
    split_by_names,
)
from treescale.protocol.codec import (
    BadAddress,
    BadCount,
    EncodingError,
    FieldError,
    FrameCountError,
    OutOfRange,
    PayloadTooLarge,
    ProtocolError,
    TooManyNames,
    UnknownKind,
    VersionMismatch,
    as_buffer,
    decode_header,
    loads,
    packb,
)
from treescale.protocol.durable import (
    MAX_DURABLE_BATCH,
    MAX_ID,
    CustodyAck,
    CustodyForward,
    DurableAck,
    DurableConfirm,
    DurableControl,
    DurableControlReply,
    DurableDeliver,
    DurableEvent,
    DurablePublish,
    Probe,
    ProbeAnswer,
    encode_dack,
    encode_dconfirm,
    encode_dctl,
    encode_dctlr,
    encode_ddeliver,
    encode_dfack,
    encode_dforward,
    encode_dpub,
    encode_probe,
    encode_probed,
)
from treescale.protocol.kinds import (
    BYE,
    DACK,
    DCONFIRM,
    DCTL,
    DCTLR,
    DDELIVER,
    DELIVER,
    DFACK,
    DFORWARD,
    DPROBE,
    DPROBED,
    DPUB,
    ERROR,
    FORWARD,
    HELLO,
    INTEREST,
    KIND_NAMES,
    LINK,
    LINKED,
    PING,
    PLACEMENT,
    PONG,
    PROTOCOL_VERSION,
    PUB,
    READY,
    REDIRECT,
    REPLY,
    REQUEST,
    RESERVED_KINDS,
    RESYNC,
    SUB,
    UNSUB,
)
from treescale.protocol.links import (
    MAX_DEPTH,
    Interest,
    Link,
    Linked,
    PlacementInfo,
    Redirect,
    Resync,
    encode_forward_header,
    encode_interest,
    encode_link,
    encode_linked,
    encode_placement,
    encode_redirect,
    encode_resync,
)
from treescale.protocol.messages import (
    PUB_HEADER,
    Batch,
    Bye,
    Error,
    Hello,
    Introduction,
    Ping,
    Pong,
    Ready,
    Reply,
    Request,
    Subscribe,
    SubscriptionChange,
    Unsubscribe,
    encode_bye,
    encode_deliver,
    encode_deliver_header,
    encode_error,
    encode_hello,
    encode_ping,
    encode_pong,
    encode_pub,
    encode_ready,
    encode_reply,
    encode_request,
    encode_sub,
    encode_unsub,
)

# Every kind a peer may send, by number.
DECODERS = {**messages.DECODERS, **links.DECODERS, **durable.DECODERS}


def decode(frames: Sequence, max_payload: int = 64 * 1024 * 1024) -> Any:
    """Decode one message (frames after any routing id) into a typed message, or
    raise the ProtocolError whose ``code``/``ref`` go back to the sender."""
    if not frames:
        raise FrameCountError("empty message")
    header = decode_header(frames[0])
    kind = header[0]
    decoder = DECODERS.get(kind)
    if decoder is None:
        raise UnknownKind(f"unknown message kind {kind}")
    return decoder(header, frames, max_payload)


__all__ = [
    # kinds
    "PROTOCOL_VERSION", "HELLO", "READY", "SUB", "UNSUB", "PUB", "DELIVER", "REQUEST",
    "REPLY", "ERROR", "PING", "PONG", "BYE", "LINK", "LINKED", "REDIRECT", "INTEREST",
    "PLACEMENT", "FORWARD", "RESYNC", "KIND_NAMES", "RESERVED_KINDS",
    # codec
    "ProtocolError", "FrameCountError", "EncodingError", "UnknownKind",
    "VersionMismatch", "FieldError", "PayloadTooLarge", "OutOfRange", "BadCount",
    "BadAddress", "TooManyNames", "packb", "loads", "as_buffer", "decode_header",
    # batch
    "LARGE_PAYLOAD", "MAX_NAMES", "MODE_ALL", "MODE_ONE", "MODES", "NO_EXTRA",
    "BatchView", "encode_events", "encode_columns", "encode_named", "encode_single",
    "decode_events",
    "split_by_names",
    # messages
    "Introduction", "Hello", "Ready", "SubscriptionChange", "Subscribe", "Unsubscribe",
    "Batch", "Request", "Reply", "Error", "Ping", "Pong", "Bye", "PUB_HEADER",
    "encode_hello", "encode_ready", "encode_sub",
    "encode_unsub", "encode_error", "encode_ping", "encode_pong", "encode_bye",
    "encode_pub", "encode_deliver_header", "encode_deliver", "encode_request",
    "encode_reply",
    # links
    "MAX_DEPTH", "Link", "Linked", "Redirect", "PlacementInfo", "Interest", "Resync", "encode_link",
    "encode_linked", "encode_redirect", "encode_placement", "encode_interest",
    "encode_resync", "encode_forward_header",
    # durable delivery
    "DPUB", "DCONFIRM", "DFORWARD", "DFACK", "DCTL", "DCTLR", "DDELIVER", "DACK",
    "DPROBE", "DPROBED", "MAX_ID", "MAX_DURABLE_BATCH", "DurableEvent",
    "DurablePublish", "DurableConfirm", "CustodyForward", "CustodyAck", "DurableControl",
    "DurableControlReply", "DurableDeliver", "DurableAck", "Probe", "ProbeAnswer",
    "encode_dpub", "encode_dconfirm", "encode_dforward", "encode_dfack", "encode_dctl",
    "encode_dctlr", "encode_ddeliver", "encode_dack", "encode_probe", "encode_probed",
    # this face
    "DECODERS", "decode",
]
