"""The socket side both clients share: socket options, the outbox and its packing.

Owns: how a client's DEALER socket is set up (CURVE included: ``ClientCurve``), where
its token comes from when none is given (``$TREESCALE_TOKEN``), the ``Outbox`` (what the
application
handed over and the socket has not sent yet, in call order) and ``pack_outbox``
(turning it into PUB batches and control messages, large payloads as zero-copy
frames), and ``pack_many``: the PUB batches of ``publish_many``, encoded straight from
the caller's columns.

Must not touch: what the node's messages mean (treescale.client_core decides that),
or the thread / event loop of one client (treescale.client, treescale.aio).
"""

from __future__ import annotations

import os
import threading
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate, repeat
from typing import Any

import zmq

from treescale import protocol as P
from treescale.client_core import PAYLOAD_TYPES, ClientCore, Extended
from treescale.keys import Keypair, public_key_of

BATCH_EVENTS = 4096
BATCH_BYTES = 1 << 20
MAX_QUEUED = 200_000  # events waiting in the client before publish() blocks
MONITOR_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                  | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
SERVER_KEY_ENV = "TREESCALE_SERVER_KEY"
KEY_REFUSED = ("the node refused this client's CURVE key (revoked, or not authorized "
               "where client_keys = \"authorized\")")
# What a payload may be: the core's types plus a received frame, passed on as is.
PAYLOADS: tuple[type, ...] = (*PAYLOAD_TYPES, zmq.Frame)
COMMAND = object()  # outbox name slot of a control message (its frames in the data slot)
ENCODED = object()  # outbox name slot of a PUB batch publish_many encoded already
BYE = P.encode_bye()[0]


def token_or_env(token: str | None) -> str | None:
    """``token``, else ``$TREESCALE_TOKEN`` (so that no secret need be in code or on a
    command line); an empty string means: no token, whatever the environment says."""
    if token is None:
        return os.environ.get("TREESCALE_TOKEN") or None
    return token


@dataclass(frozen=True)
class ClientCurve:
    """How a client's connections are encrypted: the node's public key and the
    client's keypair (ephemeral unless the caller gave one), all z85."""

    server_key: str
    keypair: Keypair

    @classmethod
    def of(cls, server_key: str | bytes | None,
           keypair: Keypair | tuple | None = None) -> ClientCurve | None:
        """``server_key`` (z85 or a key file; None: ``$TREESCALE_SERVER_KEY``; "" or
        neither: a plain connection) with ``keypair`` ((public, secret) or a Keypair)."""
        if isinstance(server_key, bytes):
            server_key = server_key.decode()
        if server_key is None:
            server_key = os.environ.get(SERVER_KEY_ENV)
        if not server_key:
            if keypair is not None:
                raise ValueError("a client keypair needs the node's key too (server_key "
                                 f"or ${SERVER_KEY_ENV})")
            return None
        if keypair is None:
            pair = Keypair.generate()
        elif isinstance(keypair, Keypair):
            pair = keypair
        else:
            public, secret = (k.decode() if isinstance(k, bytes) else k for k in keypair)
            pair = Keypair(public, secret)
        pair.as_bytes()  # a secret is needed
        return cls(public_key_of(server_key), pair)

    def apply(self, sock: zmq.Socket) -> None:
        public, secret = self.keypair.as_bytes()
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_serverkey = self.server_key.encode()


def configure_socket(sock: zmq.Socket, core: ClientCore,
                     curve: ClientCurve | None = None) -> None:
    if curve is not None:
        curve.apply(sock)
    sock.setsockopt(zmq.ROUTING_ID, core.routing_id)
    sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue into a dead connection
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.setsockopt(zmq.RCVHWM, 1000)


class Outbox:
    """What the application handed over and the socket has not sent yet, in call
    order, as two columns (names, data) so that packing a batch is C work.

    ``publish`` may run on any thread; ``take`` swaps the columns out under the lock.
    """

    __slots__ = ("lock", "names", "datas", "encoded")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: list = []
        self.datas: list = []
        self.encoded = 0  # events inside ENCODED batches: they count for MAX_QUEUED

    def __len__(self) -> int:
        """Events (and control messages) waiting: what back-pressure bounds."""
        return len(self.names) + self.encoded

    def add(self, name: Any, data: Any) -> None:
        with self.lock:
            self.names.append(name)
            self.datas.append(data)

    def add_encoded(self, message: list, count: int) -> None:
        """A PUB batch of ``count`` events, encoded already (``pack_many``)."""
        with self.lock:
            self.names.append(ENCODED)
            self.datas.append(message)
            self.encoded += count

    def take(self) -> tuple[list, list]:
        with self.lock:
            names, datas = self.names, self.datas
            self.names, self.datas = [], []
            self.encoded = 0
        return names, datas

    def has_events(self) -> bool:
        return any(n is not COMMAND for n in self.names)


def pack_outbox(names: list, datas: list) -> Iterator[list]:
    """Messages for what ``Outbox.take`` returned, in order: runs of events become PUB
    batches (at most BATCH_EVENTS events / about BATCH_BYTES bytes each)."""
    if set(map(type, names)) == {str}:
        yield from _pack_run(names, datas, None)
        return
    start = 0
    for i, name in enumerate(names):
        if name is COMMAND or name is ENCODED:
            if i > start:
                yield from _pack_mixed(names[start:i], datas[start:i])
            yield datas[i]
            start = i + 1
    if start < len(names):
        yield from _pack_mixed(names[start:], datas[start:])


def pack_many(core: ClientCore, names: str | Iterable[str], payloads: Iterable,
              target: str | None = None, mode: str | int = "all",
              headers: dict | None = None) -> Iterator[tuple[list, int]]:
    """(PUB message, its event count) for events given as columns: one name for every
    payload (or one name per payload) and the payloads. Checked as ``publish`` checks
    (payload types, the node's max_payload, target and mode), then encoded straight
    into batches cut like the outbox's: per event only C loops (sizes, the body's join).
    """
    if isinstance(payloads, (str, *PAYLOADS)):
        raise TypeError("payloads: a list of payloads, not one payload")
    datas = payloads if payloads.__class__ is list else list(payloads)
    if set(map(type, datas)) - {bytes}:
        datas = list(map(core.payload, datas))  # str encoded, other types refused
    n = len(datas)
    one = names if isinstance(names, str) else None
    if one is None:
        names = names if names.__class__ is list else list(names)
        if len(names) != n:
            raise ValueError(f"{len(names)} names for {n} payloads")
        if set(map(type, names)) - {str}:
            raise TypeError("event names must be strings")
    extra = core.extra(target, mode, headers)
    if not n:
        return
    sizes = array("I", map(len, datas))
    top = max(sizes)
    if top >= P.LARGE_PAYLOAD:
        core.check_size(datas[sizes.index(top)])
    if n <= BATCH_EVENTS and (n * top <= BATCH_BYTES or sum(sizes) <= BATCH_BYTES):
        cuts = [0, n]
    else:
        cuts = _cut_points(sizes)
    whole = len(cuts) == 2
    for a, b in zip(cuts, cuts[1:], strict=False):
        part = datas if whole else datas[a:b]
        extras = None if extra is None else dict(zip(range(b - a), repeat(extra)))
        if one is not None:
            meta, body, large = P.encode_named(one, part, extras,
                                               sizes if whole else sizes[a:b],
                                               top if whole else None)
        else:
            meta, body, large = P.encode_columns(names[a:b], part, extras, sizes[a:b])
        yield [P.PUB_HEADER, meta, body, *map(_zero_copy, large)], b - a


def _pack_mixed(names: list, datas: list) -> Iterator[list]:
    extras = {}
    plain = list(names)
    for i, name in enumerate(names):
        if name.__class__ is Extended:
            plain[i] = name.name
            extras[i] = name.extra
    if not extras:
        yield from _pack_run(plain, datas, None)
        return
    # batches with extras are cut at BATCH_EVENTS only (positions index the batch)
    for a in range(0, len(plain), BATCH_EVENTS):
        b = a + BATCH_EVENTS
        sub = {i - a: ex for i, ex in extras.items() if a <= i < b} or None
        meta, body, large = P.encode_columns(plain[a:b], datas[a:b], sub)
        yield [P.PUB_HEADER, meta, body, *map(_zero_copy, large)]


def _pack_run(names: list, datas: list, extras: dict | None) -> Iterator[list]:
    sizes = array("I", map(len, datas))
    n = len(datas)
    if n <= BATCH_EVENTS and sum(sizes) <= BATCH_BYTES:
        meta, body, large = P.encode_columns(names, datas, extras, sizes)
        yield [P.PUB_HEADER, meta, body, *map(_zero_copy, large)]
        return
    cuts = _cut_points(sizes)
    for a, b in zip(cuts, cuts[1:], strict=False):
        meta, body, large = P.encode_columns(names[a:b], datas[a:b], None, sizes[a:b])
        yield [P.PUB_HEADER, meta, body, *map(_zero_copy, large)]


def _zero_copy(payload: Any) -> Any:
    """Large payloads leave as frames that borrow the caller's buffer (no memcpy);
    small frames are cheaper to copy, so messages are sent with copy=True."""
    return zmq.Frame(payload, copy=False)


def _cut_points(sizes: array) -> list[int]:
    """Batch boundaries: every BATCH_EVENTS events or BATCH_BYTES bytes."""
    total = list(accumulate(sizes, initial=0))
    cuts = [0]
    while cuts[-1] < len(sizes):
        a = cuts[-1]
        by_bytes = bisect_right(total, total[a] + BATCH_BYTES, lo=a + 1) - 1
        cuts.append(max(a + 1, min(a + BATCH_EVENTS, by_bytes, len(sizes))))
    return cuts
