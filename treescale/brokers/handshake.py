"""The handshake: a HELLO (a client) or a LINK (a child node) becomes a ready session.

Owns: making the session of a new hello, asking the auth hook (on a worker thread
when the hook may block: a command or an HTTP call must never stall the loop), and
finishing: a refusal (``token_required``/``bad_token``, ``$sys.client.denied``), or
READY with the client's private inbox subscribed and its hello's subscriptions
applied, or handing a child to placement. The node's own services prove themselves
with a secret only this process knows. A LINK is admitted by the link credential
alone (``link_token``, compared in constant time), never by a client token; a node
with client auth but no link_token refuses every LINK, and only a node with no auth
at all (development on loopback) takes any.

Must not touch: what a ready session may send afterwards (gate.py), routing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from treescale import protocol as P
from treescale import subjects
from treescale.auth import ALL_PERMISSIONS, AuthHook, ClientIdentity, Decision
from treescale.brokers.connections import fd_of
from treescale.brokers.sessions import AUTHENTICATING, READY, Session
from treescale.permissions import ALL

if TYPE_CHECKING:
    from treescale.brokers.node import Node

log = logging.getLogger("treescale.node")

AUTH_WORKERS = 4
SERVICE = Decision(True, "service", ALL)
NODE_KEY = Decision(True, "authorized node key", ALL)


class Handshake:
    """Hellos in, ready sessions out."""

    def __init__(self, node: Node, auth: AuthHook) -> None:
        self.node = node
        self.auth = auth
        self.service_secret = secrets.token_hex(16)  # our own services show this
        self.results: queue.SimpleQueue = queue.SimpleQueue()  # from the auth workers
        self._pool: ThreadPoolExecutor | None = None
        # Connections whose hello is with the auth workers: one each, a bounded
        # number in all, so one connection's flood cannot queue ahead of others.
        self.in_flight: set[bytes] = set()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def on_hello(self, rid: bytes, hello: P.Hello | P.Link, frames: list) -> None:
        node = self.node
        is_link = isinstance(hello, P.Link)
        is_service = not is_link and hello.options.get("service") == self.service_secret
        if not is_service and self._refused(rid):
            return
        if rid in node.sessions:
            node.drop_session(rid, "re-hello")
        cid = node.new_client_id()
        session = Session(rid, cid, hello.name or f"client-{cid}",
                          groups=hello.groups, tags=hello.tags,
                          channels=() if is_link else hello.channels,
                          last_seen=time.monotonic(),
                          quiet=is_link or bool(hello.options.get("direct")),
                          is_link=is_link, fd=fd_of(frames[1]))
        node.add_session(session)
        if node.curve is not None and self._by_key(rid, hello, session, is_link, frames):
            return
        if is_link:
            self.finish(rid, hello, self.link_decision(hello.token))
            return
        who = ClientIdentity(session.name, session.groups, session.tags, session.channels,
                             _peer_address(frames[0]))
        if is_service:
            session.quiet = True  # one of this node's own services
            session.is_service = True
            self.finish(rid, hello, SERVICE)
            return
        if not self.auth.blocking:
            self.finish(rid, hello, self.auth.check(hello.token, who))
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(AUTH_WORKERS, thread_name_prefix="auth")

        def work() -> None:
            self.results.put((rid, hello, self.auth.check(hello.token, who)))
            node.wake()

        self.in_flight.add(rid)
        self._pool.submit(work)

    def link_decision(self, token: str | None) -> Decision:
        """Whether a LINK carrying ``token`` may become a child link."""
        config = self.node.config
        if config.link_token is None:
            if config.has_auth:
                return Decision(False, f"links need link_token: node {self.node.name} "
                                "has client auth but no link_token set")
            return Decision(True, "no auth on this node", ALL_PERMISSIONS)
        if not token:
            return Decision(False, "link token required")
        if not hmac.compare_digest(_digest(token), _digest(config.link_token)):
            return Decision(False, "invalid link token")
        return Decision(True, "link", ALL_PERMISSIONS)

    def _by_key(self, rid: bytes, hello: P.Hello | P.Link, session: Session,
                is_link: bool, frames: list) -> bool:
        """CURVE: the key this connection proved decides first. A revoked key, or a
        link without its node's authorized key, is refused; a link with it needs
        nothing else. True if the hello was dealt with here."""
        node = self.node
        session.curve_key = node.curve.key_of(frames[1])
        refusal = node.curve.admit(session, is_link)
        if refusal is not None:
            node.forget_session(rid)
            node.send_error(rid, refusal.code, refusal.message)
            node.emit(subjects.CLIENT_DENIED, {"node": node.name, "client": session.name,
                                               "reason": refusal.message})
            return True
        if is_link:
            self.finish(rid, hello, NODE_KEY)
            return True
        return False

    def _refused(self, rid: bytes) -> bool:
        """Admission limits on a hello, checked before any state is made for it."""
        node, config = self.node, self.node.config
        if rid in self.in_flight:
            node.send_error(rid, subjects.AUTH_PENDING, "this connection's hello is "
                            "still being authenticated: wait for its answer")
            return True
        if self.auth.blocking and len(self.in_flight) >= config.max_pending_auth:
            node.send_error(rid, subjects.MAX_PENDING_AUTH,
                            f"{len(self.in_flight)} hellos are waiting for "
                            f"authentication (max_pending_auth {config.max_pending_auth})"
                            ": try again later")
            return True
        if rid not in node.sessions and len(node.sessions) >= config.max_sessions:
            node.send_error(rid, subjects.MAX_SESSIONS, f"this node has "
                            f"{len(node.sessions)} sessions (max_sessions "
                            f"{config.max_sessions}): try again later")
            return True
        return False

    def finish_pending(self) -> None:
        """Hellos whose auth check finished on a worker thread."""
        while True:
            try:
                rid, hello, decision = self.results.get_nowait()
            except queue.Empty:
                return
            self.in_flight.discard(rid)
            try:
                self.finish(rid, hello, decision)
            except Exception:  # one bad result must not cost the others theirs
                log.exception("node %s failed finishing a hello", self.node.name)

    def finish(self, rid: bytes, hello: P.Hello | P.Link, decision: Decision) -> None:
        node = self.node
        session = node.sessions.get(rid)
        if session is None or session.state != AUTHENTICATING:
            return
        if not decision.allowed:
            node.forget_session(rid, close=True)
            code = subjects.TOKEN_REQUIRED if not hello.token else subjects.BAD_TOKEN
            node.send_error(rid, code, f"authentication failed: {decision.reason}")
            node.emit(subjects.CLIENT_DENIED, {"node": node.name, "client": session.name,
                                               "reason": decision.reason})
            return
        session.state = READY
        # A child link carries full rights (what it forwards was checked where it
        # entered the tree); a client what its token allows.
        session.permissions = ALL if session.is_link else decision.permissions
        session.publish_check = session.permissions.publish_check()
        node.connections.became_ready(session.fd, rid)
        if session.is_link:
            node.placement.on_link(session, hello)
            return
        node.by_client_id[session.client_id] = rid
        node.table.add_member(rid, hello.groups, hello.tags, hello.channels)
        node.table.subscribe(rid, subjects.client_inboxes(node.name, session.client_id))
        for pattern, q in hello.subs:
            node.subscribe(session, pattern, q)
        limits = {"max_payload": node.config.max_payload,
                  "large_payload": P.LARGE_PAYLOAD,
                  "client_timeout": node.config.client_timeout}
        node.send(rid, P.encode_ready(node.name, session.client_id, limits))
        if not session.quiet:
            node.emit(subjects.CLIENT_CONNECT, {"node": node.name, "client": session.name,
                                                "id": session.client_id})


def _digest(token: str) -> bytes:
    """Equal-length values to compare (no length leak)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _peer_address(frame) -> str:
    try:
        return frame.get("Peer-Address") or ""
    except Exception:  # not every transport reports a peer address
        return ""

