"""The inbound gate: one decision, before any handler runs, on whether a peer may send
what it sent.

Owns: which message kinds each kind of peer may send (a connection that has not said
hello, a client, a child node, our parent), and which names and patterns a session's
permissions allow it to publish, request or subscribe to. Every message from a
session or a link passes here first; a refusal names the rule that refused it.

Must not touch: sockets, sessions' life cycle, routing. The gate only answers; the
node sends the refusal (or, for the parent, logs it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from treescale import protocol as P
from treescale import subjects

if TYPE_CHECKING:
    from treescale.brokers.sessions import Session

# Kinds of peer.
NEW = "new"  # no ready session on this connection (yet, or any more)
CLIENT = "client"
CHILD = "child"
PARENT = "parent"

# What each kind of peer may send. A ready session may always introduce itself again
# (HELLO or LINK: the old session ends first).
ALLOWED: dict[str, frozenset[int]] = {
    NEW: frozenset({P.HELLO, P.LINK, P.PING, P.BYE}),
    CLIENT: frozenset({P.HELLO, P.LINK, P.PUB, P.SUB, P.UNSUB, P.REQUEST, P.REPLY,
                       P.PING, P.BYE}),
    CHILD: frozenset({P.HELLO, P.LINK, P.INTEREST, P.RESYNC, P.FORWARD, P.PING, P.PONG,
                      P.PLACEMENT, P.BYE, P.ERROR}),
    PARENT: frozenset({P.LINKED, P.REDIRECT, P.ERROR, P.INTEREST, P.RESYNC, P.FORWARD,
                       P.PING, P.PONG, P.PLACEMENT, P.BYE}),
}

_KIND_OF_CLASS = {P.Hello: P.HELLO, P.Ready: P.READY, P.Subscribe: P.SUB,
                  P.Unsubscribe: P.UNSUB, P.Request: P.REQUEST, P.Reply: P.REPLY,
                  P.Error: P.ERROR, P.Ping: P.PING, P.Pong: P.PONG, P.Bye: P.BYE,
                  P.Link: P.LINK, P.Linked: P.LINKED, P.Redirect: P.REDIRECT,
                  P.Interest: P.INTEREST, P.PlacementInfo: P.PLACEMENT, P.Resync: P.RESYNC}


def kind_of(msg: object) -> int:
    """The wire kind of a decoded message."""
    if isinstance(msg, P.Batch):
        return msg.kind
    return _KIND_OF_CLASS[type(msg)]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a message was refused: an ERROR's code, message and ref."""

    code: str
    message: str
    ref: object = None

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def peer_of(session: Session | None) -> str:
    if session is None or not session.ready:
        return NEW
    return CHILD if session.is_link else CLIENT


def admit(session: Session | None, msg: object) -> Refusal | None:
    """May this peer send ``msg``? None if yes (names are checked when it is a
    publish or request: see ``may_publish``)."""
    peer = peer_of(session)
    kind = kind_of(msg)
    if kind not in ALLOWED[peer]:
        what = P.KIND_NAMES.get(kind, str(kind)).lower()
        if peer == NEW:
            return Refusal(subjects.NOT_READY, f"{what} before ready: send hello first "
                           "and wait for ready")
        who = "a client" if peer == CLIENT else "a child node"
        return Refusal(subjects.UNEXPECTED, f"{who} may not send {what} messages")
    if kind == P.REQUEST:
        return may_publish(session, (msg.name,), ref=msg.req_id, request=True)
    if kind == P.SUB:
        return may_subscribe(session, msg.pattern)
    return None


def from_parent(msg: object) -> Refusal | None:
    """May our parent send ``msg``?"""
    kind = kind_of(msg)
    if kind not in ALLOWED[PARENT]:
        return Refusal(subjects.UNEXPECTED, "a parent may not send "
                       f"{P.KIND_NAMES.get(kind, str(kind)).lower()} messages")
    return None


def may_publish(session: Session, names, ref: object = None,
                request: bool = False) -> Refusal | None:
    """Reserved names need a permission: ``$svc.S…`` needs ``S`` (exec, docker…);
    ``$sys.…`` (what nodes and services say about the fabric, which the monitor and
    the load balancer believe) needs ``sys``. Links and services carry ``*``. A
    service is only ever asked by a REQUEST (the node stamps the requester's
    permissions on it): a publish there could carry forged ones."""
    perms = session.permissions
    if "*" in perms:
        return None
    for name in names:
        needed = subjects.permission_for(name)
        if needed is not None and needed not in perms:
            return Refusal(subjects.PERMISSION_DENIED, f"{name!r}: this client's token "
                           f"does not allow {needed}", name if ref is None else ref)
        if not request and subjects.service_of(name) is not None:
            return Refusal(subjects.PERMISSION_DENIED, f"{name!r}: services take "
                           "requests, not publishes", name if ref is None else ref)
    return None


def may_subscribe(session: Session, pattern: str) -> Refusal | None:
    """Inboxes are private: the node subscribes each client to its own."""
    if subjects.is_inbox(pattern):
        return Refusal(subjects.BAD_PATTERN, f"pattern {pattern!r}: inboxes are private",
                       pattern)
    return None
