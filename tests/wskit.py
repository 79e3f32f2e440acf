"""A raw WebSocket peer of a node's gateway, for tests: the protocol by hand, framed as
docs/PROTOCOL.md ("WebSocket") says, so a test can send what no client library would."""

from __future__ import annotations

import struct
import time

import msgpack
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from treescale.web import framing

SUBPROTOCOL = "treescale.v1"


def unpack(frame: bytes | memoryview) -> object:
    return msgpack.unpackb(bytes(frame), strict_map_key=False)


class WsPeer:
    """One WebSocket session, driven message by message."""

    def __init__(self, url: str, **kw) -> None:
        kw.setdefault("subprotocols", [SUBPROTOCOL])
        kw.setdefault("open_timeout", 10)
        self.ws: ClientConnection = connect(url, legacy=True, **kw)
        self.seen: list[tuple[list, list[bytes]]] = []  # what arrived while waiting

    def __enter__(self) -> WsPeer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.ws.close()

    def send(self, frames: list[bytes]) -> None:
        self.ws.send(framing.encode(frames))

    def receive(self, timeout: float = 5.0) -> tuple[list, list[bytes]]:
        """The next message: (its header, the frames after it)."""
        data = self.ws.recv(timeout)
        assert isinstance(data, bytes), f"a text message from the gateway: {data!r}"
        header, *rest = framing.decode(data)
        return unpack(header), [bytes(f) for f in rest]

    def hello(self, name: str = "ws", token: str | None = None, subs=(),
              groups=(), timeout: float = 5.0) -> list:
        """Say hello; the ready header, or the first error's header."""
        self.send([msgpack.packb([1, 1, token, name, list(groups), [], [],
                                  [[p, None] for p in subs], {}])])
        while True:
            header, _ = self.receive(timeout)
            if header[0] in (2, 9) and not (header[0] == 9 and header[1] == "bad_pattern"):
                return header

    def publish(self, name: str, payload: bytes, extras: dict | None = None) -> None:
        meta = msgpack.packb([[name], None, struct.pack("<I", len(payload)), [],
                              extras])
        self.send([msgpack.packb([5]), meta, payload])

    def barrier(self, token: int = 1, timeout: float = 5.0) -> list:
        """Ping and wait for its pong; the messages that arrived meanwhile."""
        self.send([msgpack.packb([10, token])])
        before = []
        while True:
            header, frames = self.receive(timeout)
            if header == [11, token]:
                return before
            before.append((header, frames))

    def until(self, kind: int, timeout: float = 5.0) -> tuple[list, list[bytes]]:
        """The next message of ``kind``, skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            header, frames = self.receive(max(0.01, deadline - time.monotonic()))
            if header[0] == kind:
                return header, frames

    def closed(self, timeout: float = 5.0) -> tuple[int | None, str, list]:
        """Wait for the gateway to close the session: (code, reason, what came before)."""
        before = []
        try:
            while True:
                before.append(self.receive(timeout))
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            return (rcvd.code if rcvd else None), (rcvd.reason if rcvd else ""), before


def opens(url: str, timeout: float = 1.0) -> bool:
    """Whether a WebSocket session to ``url`` opens now (then closed again)."""
    from websockets.exceptions import InvalidStatus

    try:
        WsPeer(url, open_timeout=timeout).close()
        return True
    except (OSError, InvalidStatus):
        return False


def events(frames: list[bytes]) -> list[tuple[str, bytes]]:
    """(name, payload) of a deliver's events (no large payloads in these tests)."""
    meta, body, *_ = frames
    names, index, sizes, large, extras = unpack(meta)
    n = len(sizes) // 4
    sizes = struct.unpack(f"<{n}I", sizes)
    index = struct.unpack(f"<{n}H", index) if index is not None else [0] * n
    out, offset = [], 0
    for i in range(n):
        out.append((names[index[i]], body[offset:offset + sizes[i]]))
        offset += sizes[i]
    return out
