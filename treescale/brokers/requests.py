"""Requests and replies: a request goes out with the requester's inbox as its reply
subject; a reply finds its way back to that inbox, on this node or through the tree.

Owns: turning a REQUEST into one event (mode all: every responder; mode one: one per
queue group) carrying the reply subject ``$inbox.NODE.CLIENT.REQID.CAP`` and, to a
service, the requester's permissions (header ``subjects.PERMISSIONS_HEADER``), and
routing a REPLY to the client that owns the inbox (here) or toward the node that does
(through its ``$inbox.NODE.>`` interest). The requester's id and permissions are the
node's word, never the client's, so a reply cannot be steered to someone else's inbox
and a service knows what the requester's token allows. ``CAP``
is a capability: a MAC (keyed BLAKE2b) of the subject under a secret only this node process holds,
so only whoever was handed the request can answer it. This node delivers an event
named ``$inbox.THIS_NODE.…`` to a client only when ``genuine`` says it carries the
capability (a local reply here, one from another node in fanout.py); a forged one is
dropped, counted in ``bad_replies``, and a local sender is told.

Must not touch: how events are queued and sent (fanout.py), who may send (gate.py).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

from treescale import protocol as P
from treescale import subjects
from treescale.brokers.fanout import with_queues
from treescale.routing import PatternError, TargetError

if TYPE_CHECKING:
    from treescale.brokers.node import Node
    from treescale.brokers.sessions import Session

CAPABILITY_CHARS = 24  # hex digits of the MAC in a reply subject (96 bits)


class Requests:
    """Request/reply of one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._key = secrets.token_bytes(32)  # never leaves this process
        self.own_inboxes = subjects.node_inbox_prefix(node.name)

    def reply_subject(self, client_id: str, req_id: int) -> str:
        """The inbox a request of ``client_id`` is answered on, with its capability."""
        name = self.node.name
        # keyed BLAKE2b is a MAC by design (no HMAC construction needed): a third of
        # HMAC-SHA256's cost, and it runs twice per request
        mac = hashlib.blake2b(f"{name}.{client_id}.{req_id}".encode(), key=self._key,
                              digest_size=CAPABILITY_CHARS // 2).hexdigest()
        return subjects.inbox(name, client_id, req_id, mac)

    def genuine(self, subject: str) -> bool:
        """Did this node hand out ``subject`` as a reply subject (same spelling too)?"""
        parsed = subjects.parse_inbox(subject)
        if parsed is None or parsed[0] != self.node.name:
            return False
        return hmac.compare_digest(subject.encode(),
                                   self.reply_subject(parsed[1], parsed[2]).encode())

    def forged(self, subject: str) -> str:
        """Count a reply without a valid capability; the refusal to tell its sender."""
        self.node.stats["bad_replies"] += 1
        return (f"reply to {subject!r}: this node never gave out that reply subject "
                "(forged, or from before the node restarted)")

    def on_request(self, session: Session, req: P.Request) -> None:
        node = self.node
        reply_to = self.reply_subject(session.client_id, req.req_id)
        headers = req.headers
        if subjects.service_of(req.name) is not None:
            # what the requester's token allows, in our words (whatever it wrote there)
            headers = {**(headers or {}),
                       subjects.PERMISSIONS_HEADER: session.permissions.words()}
        try:
            route = node.table.lookup(req.name, req.target)
        except (PatternError, TargetError) as exc:
            node.send_error(session.routing_id, exc.code, str(exc), req.req_id)
            return
        if req.mode == P.MODE_ALL:
            dests = route.everyone
            if dests:
                node.fanout.queue_single(session.name, req.name, req.payload,
                                         req.target, req.mode, reply_to, headers, dests)
                return
        else:  # one member per queue group; a link is told which groups it serves
            groups_of: dict = {}
            for dest, queue in node.table.pick_groups(route):
                groups_of.setdefault(dest, []).append(queue)
            for dest, groups in groups_of.items():
                node.fanout.queue_single(session.name, req.name, req.payload,
                                         req.target, req.mode, reply_to,
                                         with_queues(headers, groups) if dest in node.links
                                         else headers, (dest,))
            if groups_of:
                return
        node.send_error(session.routing_id, subjects.NO_RESPONDERS,
                        f"no subscriber for request {req.name!r}", req.req_id)

    def on_reply(self, session: Session, rep: P.Reply) -> None:
        node = self.node
        inbox = subjects.parse_inbox(rep.reply_to)
        if inbox is None:
            node.send_error(session.routing_id, subjects.BAD_FIELD,
                            f"{rep.reply_to!r} is not a reply subject")
            return
        if inbox[0] == node.name:
            if not self.genuine(rep.reply_to):
                node.send_error(session.routing_id, subjects.PERMISSION_DENIED,
                                self.forged(rep.reply_to), rep.reply_to)
                return
            rid = node.by_client_id.get(inbox[1])
            dests: tuple = (rid,) if rid is not None else ()
        else:  # another node's inbox: its $inbox.NODE.> interest shows the way
            dests = node.table.destinations(rep.reply_to)
        if not dests:
            # The requester is gone (or timed out and left): nothing to deliver to.
            node.stats["no_route"] += 1
            return
        node.fanout.queue_single(session.name, rep.reply_to, rep.payload, None, 0, None,
                                 rep.headers, dests)
