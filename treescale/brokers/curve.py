"""The node's CURVE side: its ROUTER as a CURVE server, the ZAP handler on the node's
loop, the key each connection proved, and revocation.

A node with ``keys_dir`` encrypts every connection. ZeroMQ asks the ZAP handler here
about each new one (the client's public key): a revoked key is refused, a key in
``authorized/`` is accepted, any other key is accepted as a client unless
``client_keys = "authorized"``. A LINK is then accepted only from a connection whose
key is the authorized key of the node it names (``admit``). The view of the files is
live (treescale.keys.Trust): a revoke refuses the next connection at once, and the
sweep, once a second, ends the sessions of keys no longer trusted.

Owns: the ZAP socket and its answers, the CURVE options of the node's sockets (server
and, for the parent link, client), the per-connection key, what a redirect's key must
be for us to follow it.

Must not touch: the key files themselves (treescale.keys), tokens (the auth hook),
the healing of the parent link (parent.py asks ``parent_key_for``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import zmq
from zmq.utils import z85

from treescale import subjects
from treescale.brokers.gate import Refusal
from treescale.config import ConfigError
from treescale.keys import KeysError, Trust, check_key

if TYPE_CHECKING:
    from treescale.brokers.node import Node
    from treescale.brokers.sessions import Session

log = logging.getLogger("treescale.node")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"treescale"
_OK, _DENIED = b"200", b"400"


class Curve:
    """The CURVE state of one node (a node without ``keys_dir`` has none)."""

    def __init__(self, node: Node) -> None:
        config = node.config
        self.node = node
        self.trust = Trust(config.keys_dir, node.name)
        self.restrict_clients = config.client_keys == "authorized"
        self.generation = 0  # bumped when the files changed: the sweep acts on it
        self._swept = 0
        self.zap = node.ctx.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        try:
            self.zap.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self.zap.close(0)
            raise KeysError(f"cannot serve CURVE: the ZeroMQ context already has a ZAP "
                            f"handler ({exc})") from None

    @classmethod
    def for_node(cls, node: Node) -> Curve | None:
        return cls(node) if node.config.keys_dir else None

    def close(self) -> None:
        self.zap.close(0)

    # -- socket options -----------------------------------------------------------------

    def serve(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (before it binds) a CURVE server with the node's keypair."""
        public, secret = self.trust.own.as_bytes()
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN

    def dial_as_client(self, sock: zmq.Socket, server_key: str) -> None:
        """Make ``sock``'s next connect a CURVE client of ``server_key`` (our keypair)."""
        public, secret = self.trust.own.as_bytes()
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_serverkey = server_key.encode()

    def parent_key(self) -> str:
        """The configured parent's key: ``parent_key`` (z85, or a name whose authorized
        file holds it); ConfigError if there is none to use."""
        value = self.node.config.parent_key
        if not value:
            raise ConfigError(f"node {self.node.name}: keys_dir is set but parent_key is "
                              "not: give the parent's public key (z85) or its name in "
                              f"{self.trust.dir}/authorized/")
        try:
            return check_key(value, "parent_key")
        except KeysError:
            key = self.trust.key_of(value)
        if key is None:
            raise ConfigError(f"node {self.node.name}: parent_key {value!r} is neither a "
                              f"CURVE key nor a name in {self.trust.dir}/authorized/ "
                              "(or it is revoked)")
        return key

    def parent_key_for(self, name: str, offered: str | None = None) -> str | None:
        """The key to dial node ``name`` with: ``offered`` (a redirect's) if it is
        trusted, else its authorized key; None if neither (we must not dial it)."""
        self._refresh()
        if offered is not None:
            return offered if self.trust.is_authorized(offered) else None
        return self.trust.key_of(name)

    def may_follow(self, key: str | None) -> bool:
        """A redirect's target key is trusted: in authorized/, not revoked."""
        self._refresh()
        return self.trust.is_authorized(key)

    # -- ZAP ----------------------------------------------------------------------------

    def on_zap(self) -> None:
        """Answer every pending ZAP request (one per new connection)."""
        for _ in range(100):
            try:
                request = self.zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            version, request_id = request[0], request[1] if len(request) > 1 else b""
            status, text, user = self._decide(request)
            self.zap.send_multipart([version, request_id, status, text, user, b""])

    def _decide(self, request: list[bytes]) -> tuple[bytes, bytes, bytes]:
        if len(request) < 7 or request[5] != b"CURVE" or len(request[6]) != 32:
            return _DENIED, b"CURVE only", b""
        key = z85.encode(request[6]).decode()
        self._refresh()
        if self.trust.is_revoked(key):
            log.warning("node %s refused a connection from %s: key %s is revoked",
                        self.node.name, request[3].decode(errors="replace"), key)
            return _DENIED, b"key revoked", b""
        if self.restrict_clients and not self.trust.is_authorized(key):
            log.warning("node %s refused a connection from %s: key %s is not authorized",
                        self.node.name, request[3].decode(errors="replace"), key)
            return _DENIED, b"key not authorized", b""
        return _OK, b"OK", key.encode()

    def _refresh(self) -> None:
        try:
            if self.trust.refresh():
                self.generation += 1
        except KeysError as exc:  # keep the last good view; say so
            log.error("node %s: %s (keeping the keys read before)", self.node.name, exc)

    # -- sessions -----------------------------------------------------------------------

    @staticmethod
    def key_of(frame: zmq.Frame) -> str | None:
        """The CURVE key the connection of ``frame`` proved (ZAP's User-Id)."""
        try:
            return frame.get("User-Id") or None
        except (zmq.ZMQError, AttributeError):
            return None

    def admit(self, session: Session, is_link: bool) -> Refusal | None:
        """Whether a hello or a link on a connection with ``session.curve_key`` may go
        on; a link with an authorized node key needs nothing else."""
        key, name = session.curve_key, session.name
        if self.trust.is_revoked(key):
            return Refusal(subjects.BAD_KEY, f"key {key} is revoked")
        if is_link and not self.trust.authorizes(key, name):
            return Refusal(subjects.BAD_KEY, f"link refused: key {key} is not the "
                           f"authorized key of node {name}")
        return None

    def _may_keep(self, session: Session) -> bool:
        key = session.curve_key
        if session.is_service:
            return True
        if session.is_link:
            return self.trust.authorizes(key, session.name)
        if self.restrict_clients:
            return self.trust.is_authorized(key)
        return not self.trust.is_revoked(key)

    def sweep(self) -> None:
        """Once a second: when the files changed, end the sessions of keys no longer
        trusted (revoked, or a link whose authorized file is gone)."""
        self._refresh()
        if self._swept == self.generation:
            return
        self._swept = self.generation
        node = self.node
        for rid, session in list(node.sessions.items()):
            if not self._may_keep(session):
                log.warning("node %s drops %s: key %s is no longer trusted", node.name,
                            session.name, session.curve_key)
                node.send_error(rid, subjects.BAD_KEY,
                                f"key {session.curve_key} is no longer trusted")
                node.drop_session(rid, "revoked")
