"""The reserved subject vocabulary and the error codes a node sends. Pure.

Owns: every ``$sys.*`` (what the fabric says about itself), ``$svc.*`` (node services)
and ``$inbox.*`` (replies) subject, the builders and parsers for them, and the error
codes of ERROR messages. Nothing else in the project spells these strings, so a reader
finds the whole vocabulary here and a rename is one edit.

Must not touch: sockets, clocks, the routing table. It only makes and reads strings.

Names whose first token starts with ``$`` are never matched by a leading wildcard
(``>`` or ``*.…``), so applications do not see the fabric's own traffic by accident.
"""

from __future__ import annotations

# --------------------------------------------------------------------- prefixes

SYS = "$sys"
SVC = "$svc"
INBOX = "$inbox"
SYS_PREFIX = SYS + "."
SVC_PREFIX = SVC + "."
INBOX_PREFIX = INBOX + "."

# ------------------------------------------------------ what a node says ($sys)

NODE_STATS = "$sys.node.stats"  # every node, once a second: its report
NODE_UP = "$sys.node.up"  # a link came up (published by the node that saw it)
NODE_DOWN = "$sys.node.down"  # a link went down
NODE_ROOT = "$sys.node.root"  # a node took over as the root
CLIENT_CONNECT = "$sys.client.connect"
CLIENT_DISCONNECT = "$sys.client.disconnect"
CLIENT_DENIED = "$sys.client.denied"
CLIENT_SLOW = "$sys.client.slow"
AUDIT_EXEC = "$sys.audit.exec"
AUDIT_HANDLER = "$sys.audit.handler"
CONFIG_VERSION = "$sys.config.version"
CONFIG_APPLIED = "$sys.config.applied"
DOCKER = "$sys.docker"  # $sys.docker.<node>.<action|engine|stats>
IMAGE = "$sys.image"  # $sys.image.<node>.<action>: an image moving to a node (progress)
HANDLERS = "$sys.handlers"  # $sys.handlers.<node>.result
DURABLE_OVERFLOW = "$sys.durable.overflow"  # a durable dropped events for its retention
# Services across the tree (treescale/services/orchestrator.py)
SERVICE_SYS = "$sys.service"  # $sys.service.<name>.<action>: a service's replicas moved
SERVICE_REPORT = "$sys.service.node"  # every node's agent, once a second: its replicas
SERVICE_LEASE = "$sys.service.lease"  # the scheduler, twice a second: who schedules
SERVICE_REQUESTS = "svc"  # svc.<name>: a request reaches a replica of service <name>
# The queue group of a durable's own subscription, one per durable (NODE, NAME): its
# interest is told apart from every other durable's in the whole tree, and a mode-one
# event never picks a durable in place of a client of the plain (None) group.
DURABLE_QUEUE = "$durable"


def durable_queue(node: str, durable: str) -> str:
    return f"{DURABLE_QUEUE}:{node}:{durable}"


def is_durable_queue(queue: str | None) -> bool:
    return queue is not None and queue.startswith(DURABLE_QUEUE + ":")


# A durable's key as a stand-in holds it for an absent neighbour: other nodes route by
# it like the real key, but never take it for proof that the durable is reachable.
STAND_IN_MARK = "~away"


def stand_in_queue(queue: str) -> str:
    return real_queue(queue) + STAND_IN_MARK


def real_queue(queue: str) -> str:
    return queue.removesuffix(STAND_IN_MARK)


def is_own_durable_queue(queue: str, node: str) -> bool:
    """A key (marked or not) of one of ``node``'s own durables."""
    return real_queue(queue).startswith(f"{DURABLE_QUEUE}:{node}:")


def is_stand_in_queue(queue: str | None) -> bool:
    return queue is not None and queue.endswith(STAND_IN_MARK)

# What the live monitor follows.
MONITOR_PATTERNS = (NODE_STATS, NODE_UP, NODE_DOWN, NODE_ROOT, DOCKER + ".>")

# The permission a token needs to publish a $sys.* event.
SYS_PERMISSION = "sys"


def docker_event(node: str, action: str) -> str:
    """``$sys.docker.<node>.<action>``: a container lifecycle event, engine or stats."""
    return f"{DOCKER}.{node}.{action}"


def docker_events(node: str | None = None) -> str:
    """The pattern of every Docker event of one node (or of all nodes)."""
    return f"{DOCKER}.{node or '*'}.>"


def image_event(node: str, action: str) -> str:
    """``$sys.image.<node>.<action>``: an image transfer to ``node`` (progress, ...)."""
    return f"{IMAGE}.{node}.{action}"


def image_events(node: str | None = None) -> str:
    """The pattern of every image transfer event of one node (or of all nodes)."""
    return f"{IMAGE}.{node or '*'}.*"


def docker_stats(node: str | None = None) -> str:
    """Live container stats of one node (or the pattern for all nodes)."""
    return f"{DOCKER}.{node or '*'}.stats"


def handler_result(node: str) -> str:
    """Where a node's event handlers publish their results."""
    return f"{HANDLERS}.{node}.result"


def is_docker_event(name: str) -> bool:
    return name.startswith(DOCKER + ".")


def parse_docker_event(name: str) -> tuple[str, str] | None:
    """(node, action) of a ``$sys.docker.<node>.<action>`` subject, else None."""
    if not is_docker_event(name):
        return None
    parts = name[len(DOCKER) + 1:].split(".")
    return (parts[0], parts[1]) if len(parts) == 2 else None


# ------------------------------------------------------------ services ($svc)


def service(name: str, node: str | None = None) -> str:
    """``$svc.S`` (every node of a group/tag target) or ``$svc.S.N`` (node N)."""
    return f"{SVC_PREFIX}{name}" + (f".{node}" if node else "")


def service_of(subject: str) -> str | None:
    """The service a ``$svc.S[.N]`` subject names, or None for any other subject."""
    if not subject.startswith(SVC_PREFIX):
        return None
    return subject[len(SVC_PREFIX):].split(".", 1)[0]


# A request's header, set by the node the requester is attached to (never the
# requester's word): the permissions of its token, so that a service can refuse what
# only a token with "*" may do (a config push that changes auth).
PERMISSIONS_HEADER = "$permissions"


def permission_for(subject: str) -> str | None:
    """The permission a token needs to send to ``subject`` (None: no special one).

    ``$svc.S…`` needs ``S`` (exec, docker, lb, handlers, config); ``$sys.…`` needs
    ``sys``, since the monitor and the load balancer believe what it says."""
    svc = service_of(subject)
    if svc is not None:
        return svc
    if subject.startswith(SYS_PREFIX):
        return SYS_PERMISSION
    return None


# ------------------------------------------------------------- replies ($inbox)


def inbox(node: str, client_id: str, req_id: int, capability: str) -> str:
    """The reply subject of a request: routes back to one client of one node.

    ``capability`` is the node's proof that it made this subject (a dot-free token:
    see brokers/requests.py); the owning node delivers nothing to an inbox without it."""
    return f"{INBOX_PREFIX}{node}.{client_id}.{req_id}.{capability}"


def inbox_prefix(node: str, client_id: str) -> str:
    """What every reply subject of one client starts with (then ``REQ_ID.CAP``)."""
    return f"{INBOX_PREFIX}{node}.{client_id}."


def client_inboxes(node: str, client_id: str) -> str:
    """The pattern a node subscribes a client to, so replies reach it."""
    return inbox_prefix(node, client_id) + "*.*"


def node_inbox_prefix(node: str) -> str:
    """What every reply subject of one node's clients starts with."""
    return f"{INBOX_PREFIX}{node}."


def node_inboxes(node: str) -> str:
    """The interest a node advertises so replies for its clients find their way."""
    return f"{INBOX_PREFIX}{node}.>"


def is_reserved(name: str) -> bool:
    """A name in a reserved area ($sys, $svc, $inbox, any "$" first token)."""
    return name.startswith("$")


def is_inbox(subject: str) -> bool:
    """An inbox subject or pattern (private: no client may subscribe to one)."""
    return subject == INBOX or subject.startswith(INBOX_PREFIX)


def parse_inbox(subject: str) -> tuple[str, str, int, str] | None:
    """(node, client_id, req_id, capability) of an inbox subject, or None."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != INBOX or not all(parts[1:]):
        return None
    try:
        return parts[1], parts[2], int(parts[3]), parts[4]
    except ValueError:
        return None


def reply_req_id(suffix: str) -> int | None:
    """The req_id of a reply subject's part after ``inbox_prefix`` (``REQ_ID.CAP``)."""
    try:
        return int(suffix.partition(".")[0])
    except ValueError:
        return None


# ----------------------------------------------------------------- error codes
# The ``code`` of an ERROR message. Clients decide what each means in one place
# (treescale.client_core); docs/PROTOCOL.md lists them with their ``ref``.

BAD_MESSAGE = "bad_message"  # not a message of this protocol
BAD_FRAME_COUNT = "bad_frame_count"
BAD_ENCODING = "bad_encoding"
UNKNOWN_KIND = "unknown_kind"
VERSION = "version"  # protocol version mismatch
BAD_FIELD = "bad_field"
TOO_LARGE = "too_large"  # a payload over max_payload
BAD_PATTERN = "bad_pattern"
BAD_TARGET = "bad_target"
NOT_READY = "not_ready"  # no session: send hello (again)
TOKEN_REQUIRED = "token_required"
BAD_TOKEN = "bad_token"
PERMISSION_DENIED = "permission_denied"
NO_RESPONDERS = "no_responders"
UNEXPECTED = "unexpected"  # a kind this peer may not send
CYCLE = "cycle"  # a link that would close a loop in the tree
FULL = "full"  # no room for another child
SLOW_CONSUMER = "slow_consumer"  # events were dropped for this client: ref = how many
BAD_KEY = "bad_key"  # a CURVE key not trusted for this (a link, a revoked key)
OUT_OF_RANGE = "out_of_range"  # a number from the wire outside its range (depth, seq...)
BAD_COUNT = "bad_count"  # counts that do not add up (a forward's source runs)
BAD_ADDRESS = "bad_address"  # an address that is not tcp://host:port
TOO_MANY_NAMES = "too_many_names"  # a batch with more distinct names than the index holds
# Limits (each code is the NodeConfig key that set it): the message names the value.
MAX_HELLO_BYTES = "max_hello_bytes"  # a message before ready bigger than the cap
MAX_SESSIONS = "max_sessions"
MAX_PENDING_HELLOS = "max_pending_hellos"  # too many connections without a session
HELLO_TIMEOUT = "hello_timeout"  # not ready in time: the connection is closed
MAX_SUBSCRIPTIONS = "max_subscriptions"  # per session
MAX_INTEREST = "max_interest"  # interest entries per link
MAX_PENDING_AUTH = "max_pending_auth"  # the auth queue is full
AUTH_PENDING = "auth_pending"  # a second hello while this connection's is checked
# Durable delivery.
STORAGE_FULL = "storage_full"  # the node's durable store is at durable_max_bytes
DURABLE_MISMATCH = "durable_mismatch"  # same durable name, another pattern or queue
NO_DURABLE = "no_durable"  # no durable of that name on this node
DURABLE_LIMIT = "max_durables"  # the node holds max_durables durables already

AUTH_ERRORS = frozenset({TOKEN_REQUIRED, BAD_TOKEN, BAD_KEY})
# Before ready, these end a connection attempt as a refusal (the client should not
# wait for a ready that will not come): authentication, and the admission limits.
REFUSALS = AUTH_ERRORS | {MAX_SESSIONS, MAX_PENDING_AUTH, MAX_HELLO_BYTES}
# Errors that end the request they refer to (``ref`` = its req_id).
REQUEST_ERRORS = frozenset({NO_RESPONDERS, BAD_TARGET, BAD_PATTERN, TOO_LARGE,
                            PERMISSION_DENIED})


# ------------------------------------------------------------ services across the tree


def service_event(name: str, action: str) -> str:
    """``$sys.service.<name>.<action>``: placed, started, stopped, failed, scaled..."""
    return f"{SERVICE_SYS}.{name}.{action}"


def service_events(name: str | None = None) -> str:
    """The pattern of one service's events (or every service's)."""
    return f"{SERVICE_SYS}.{name or '*'}.*"


def service_request(name: str) -> str:
    """``svc.<name>``: what a client requests to reach service ``name``."""
    return f"{SERVICE_REQUESTS}.{name}"


def requested_service(subject: str) -> str | None:
    """The service a ``svc.<name>`` subject names, else None."""
    head, _, name = subject.partition(".")
    return name if head == SERVICE_REQUESTS and name and "." not in name else None
