"""The probe wave: how a node learns that the interest it just sent out has reached
every live node.

Owns: DPROBE and DPROBED. A node starts a wave after flushing its interest: the probe
goes on every link behind that interest (links are FIFO, so a node that sees the
probe has applied the interest), each node passes it on to its other links after its
own interest flush and answers with the number of nodes on its side once they all
answered. A link that goes down counts as answered; after ``PROBE_TIMEOUT`` a node
answers with what it has. ``subscribe(durable=...)`` answers its client from here.

Must not touch: interest (exchange.py), custody (custody.py).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from treescale import protocol as P

if TYPE_CHECKING:
    from treescale.brokers.links import Link
    from treescale.brokers.node import Node

PROBE_TIMEOUT = 10.0


@dataclass(slots=True)
class ProbeWave:
    """One probe we wait on: answered upstream (``up``) or to a subscriber."""

    waiting: set
    started: float
    up: bytes | None = None  # the link it came from
    done: Callable[[int], None] | None = None  # ours: called with the node count
    nodes: int = 1


class ProbeWaves:
    """The waves this node waits on, by token."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.waves: dict[int, ProbeWave] = {}

    def start(self, done: Callable[[int], None]) -> None:
        """Tell ``done(nodes)`` once every live node has the interest queued so far:
        the interest goes out first on each link, the probe after it (links are FIFO),
        and each node answers once the nodes beyond it have."""
        token = secrets.randbits(62)
        self.node.exchange.flush()
        members = {link.member for link in self.node.links}
        self.waves[token] = ProbeWave(set(members), time.monotonic(), done=done)
        for member in members:
            if not self.node.links.send(member, P.encode_probe(token, self.node.name)):
                self.waves[token].waiting.discard(member)
        self._done(token)

    def on_probe(self, link: Link, msg: P.Probe) -> None:
        if self.node.exchange.pending:
            self.node.exchange.flush()
        members = {lk.member for lk in self.node.links if lk.member != link.member}
        self.waves[msg.token] = ProbeWave(set(members), time.monotonic(), up=link.member)
        for member in members:
            if not self.node.links.send(member, P.encode_probe(msg.token, msg.origin)):
                self.waves[msg.token].waiting.discard(member)
        self._done(msg.token)

    def on_probed(self, link: Link, msg: P.ProbeAnswer) -> None:
        wave = self.waves.get(msg.token)
        if wave is None or link.member not in wave.waiting:
            return
        wave.waiting.discard(link.member)
        wave.nodes += msg.nodes
        self._done(msg.token)

    def _done(self, token: int) -> None:
        wave = self.waves.get(token)
        if wave is None or wave.waiting:
            return
        del self.waves[token]
        if wave.up is not None:
            self.node.links.send(wave.up, P.encode_probed(token, wave.nodes))
        elif wave.done is not None:
            wave.done(wave.nodes)

    def link_down(self, link: Link) -> None:
        for token, wave in list(self.waves.items()):
            if link.member in wave.waiting:
                wave.waiting.discard(link.member)
                self._done(token)

    def housekeeping(self, now: float) -> None:
        for token, wave in list(self.waves.items()):
            if now - wave.started > PROBE_TIMEOUT:
                wave.waiting.clear()
                self._done(token)
