"""The inbound gate: one decision, before any handler runs, on whether a peer may send
what it sent.

Owns: which message kinds each kind of peer may send (a connection that has not said
hello, a client, a child node, our parent), and applying a client session's
permissions (treescale/permissions.py) to every path it sends on: the names of a
publish (canonical or not) and a request, the pattern of a subscription (a SUB or one
in a hello), the subject of a reply. Every message from a session or a link passes
here first; a refusal names the rule that refused it. Child links carry full rights.

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

# Custody between nodes: durable events, their acks, the interest probe wave.
_CUSTODY = (P.DFORWARD, P.DFACK, P.DPROBE, P.DPROBED)

# What each kind of peer may send. A ready session may always introduce itself again
# (HELLO or LINK: the old session ends first).
ALLOWED: dict[str, frozenset[int]] = {
    NEW: frozenset({P.HELLO, P.LINK, P.PING, P.BYE}),
    CLIENT: frozenset({P.HELLO, P.LINK, P.PUB, P.SUB, P.UNSUB, P.REQUEST, P.REPLY,
                       P.PING, P.BYE, P.DPUB, P.DCTL, P.DACK}),
    CHILD: frozenset({P.HELLO, P.LINK, P.INTEREST, P.RESYNC, P.FORWARD, P.PING, P.PONG,
                      P.PLACEMENT, P.BYE, P.ERROR, *_CUSTODY}),
    PARENT: frozenset({P.LINKED, P.REDIRECT, P.ERROR, P.INTEREST, P.RESYNC, P.FORWARD,
                       P.PING, P.PONG, P.PLACEMENT, P.BYE, *_CUSTODY}),
}

_KIND_OF_CLASS = {P.Hello: P.HELLO, P.Ready: P.READY, P.Subscribe: P.SUB,
                  P.Unsubscribe: P.UNSUB, P.Request: P.REQUEST, P.Reply: P.REPLY,
                  P.Error: P.ERROR, P.Ping: P.PING, P.Pong: P.PONG, P.Bye: P.BYE,
                  P.Link: P.LINK, P.Linked: P.LINKED, P.Redirect: P.REDIRECT,
                  P.Interest: P.INTEREST, P.PlacementInfo: P.PLACEMENT, P.Resync: P.RESYNC,
                  P.DurablePublish: P.DPUB, P.DurableConfirm: P.DCONFIRM,
                  P.CustodyForward: P.DFORWARD, P.CustodyAck: P.DFACK,
                  P.DurableControl: P.DCTL, P.DurableControlReply: P.DCTLR,
                  P.DurableDeliver: P.DDELIVER, P.DurableAck: P.DACK, P.Probe: P.DPROBE,
                  P.ProbeAnswer: P.DPROBED}


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
    """May this peer send ``msg``? None if yes (a publish batch's names are checked
    by ``may_publish`` once the node has its names)."""
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
        why = session.permissions.why_not_request(msg.name)
        return None if why is None else Refusal(why.code, why.message, msg.req_id)
    if kind == P.SUB:
        return may_subscribe(session, msg.pattern)
    if kind == P.REPLY:
        return may_reply(msg.reply_to)
    return None


def from_parent(msg: object) -> Refusal | None:
    """May our parent send ``msg``?"""
    kind = kind_of(msg)
    if kind not in ALLOWED[PARENT]:
        return Refusal(subjects.UNEXPECTED, "a parent may not send "
                       f"{P.KIND_NAMES.get(kind, str(kind)).lower()} messages")
    return None


def may_publish(session: Session, names, ref: object = None) -> Refusal | None:
    """The publish hot path: the session's cached check (None, so free, for ``*``:
    links and the node's own services carry it). The whole batch is refused on the
    first name the token may not publish; ``ref`` is that name."""
    check = session.publish_check
    if check is None:
        return None
    refused = check.first_refused(names)
    if refused is None:
        return None
    name, why = refused
    return Refusal(why.code, why.message, name if ref is None else ref)


def may_subscribe(session: Session, pattern: str) -> Refusal | None:
    """Reserved areas need their grant, inboxes are private (the node subscribes each
    client to its own), and a deny rule that could match refuses the pattern."""
    why = session.permissions.why_not_subscribe(pattern)
    return None if why is None else Refusal(why.code, why.message, pattern)


def may_reply(reply_to: str) -> Refusal | None:
    """A reply goes to an inbox; whether its capability is genuine is checked by the
    node that owns the inbox (brokers/requests.py), the only one holding the key."""
    if subjects.parse_inbox(reply_to) is None:
        return Refusal(subjects.BAD_FIELD, f"{reply_to!r} is not a reply subject")
    return None
