"""Message kinds: the numbers that open every header, and their names. Pure.

Owns: the protocol version, the kind numbers of client sessions (1-12) and of
node-to-node links (20-27) and of durable delivery (25,
28-36), their printable names, and the numbers kept free.

Must not touch: msgpack, frames, sockets. The numbers are part of the wire format:
never renumber one, and never reuse a reserved one for something else.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1

# A client's session with its node.
HELLO = 1
READY = 2
SUB = 3
UNSUB = 4
PUB = 5
DELIVER = 6
REQUEST = 7
REPLY = 8
ERROR = 9
PING = 10
PONG = 11
BYE = 12
# 20-39: node-to-node links. Acks and credits will take the numbers after FORWARD.
LINK = 20
LINKED = 21
REDIRECT = 22
INTEREST = 23
PLACEMENT = 24
FORWARD = 26
RESYNC = 27

# Durable delivery (protocol/durable.py): a client's durable publishes and their
# confirms, custody from hop to hop, durable subscriptions, their deliveries and acks.
DPUB = 25
DCONFIRM = 28
DFORWARD = 29
DFACK = 30
DCTL = 31
DCTLR = 32
DDELIVER = 33
DACK = 34
DPROBE = 35
DPROBED = 36

# Kept for what durable delivery may still need (credit grants): decoders refuse them
# as unknown until those messages exist.
RESERVED_KINDS = frozenset(range(37, 40))

KIND_NAMES = {
    HELLO: "hello", READY: "ready", SUB: "sub", UNSUB: "unsub", PUB: "pub",
    DELIVER: "deliver", REQUEST: "request", REPLY: "reply", ERROR: "error",
    PING: "ping", PONG: "pong", BYE: "bye", LINK: "link", LINKED: "linked",
    REDIRECT: "redirect", INTEREST: "interest", PLACEMENT: "placement", FORWARD: "forward",
    RESYNC: "resync", DPUB: "dpub", DCONFIRM: "dconfirm", DFORWARD: "dforward",
    DFACK: "dfack", DCTL: "dctl", DCTLR: "dctlr", DDELIVER: "ddeliver", DACK: "dack",
    DPROBE: "dprobe", DPROBED: "dprobed",
}
