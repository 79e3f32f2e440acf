"""One node's configuration: the NodeConfig model, its validation, and config files.

Owns: NodeConfig (every option a node runs with) and how a raw value becomes a field
(``coerce_field``, ``node_config_from_dict``), ConfigError, and ``read_file`` (a TOML,
JSON or YAML file into a dict). Every problem is one ConfigError line naming the
file, node and field.

Must not touch: the whole-tree model or databases (treescale.fabric), choosing a node's
table from a tree file or database (treescale.loader), sockets. It imports no other
treescale module but the registry of service names (treescale.services.SERVICES),
the pure parser of token permissions (treescale.permissions) and the defaults of link
liveness (treescale.healing), so everything else can build on it.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from treescale.healing import LINK_MISSED_PINGS, LINK_PING_INTERVAL
from treescale.permissions import parse_tokens
from treescale.services import SERVICES

DEFAULT_PORT = 8888
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024


class ConfigError(ValueError):
    """Config problems, one readable line each naming the file, node and field.

    ``problems`` holds every line (validation reports all it finds, not the first);
    ``str()`` joins them with newlines."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class NodeConfig:
    name: str = "node"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    max_children: int = 10
    max_payload: int = DEFAULT_MAX_PAYLOAD
    # Outbound buffer per client beyond ZeroMQ's own queue; past it events are dropped
    # for that client, counted, and announced ($sys.client.slow + an error to it).
    slow_consumer_bytes: int = 64 * 1024 * 1024
    slow_consumer_messages: int = 10_000
    client_timeout: float = 15.0
    # Silent links (healing.Liveness): as a child, say something to the parent at least
    # every link_ping_interval seconds (ZeroMQ heartbeats, and a ping of our own), and
    # drop a parent silent for link_missed_pings intervals; as a parent, drop a child
    # silent for link_missed_pings of the intervals it announced in its LINK.
    link_ping_interval: float = LINK_PING_INTERVAL
    link_missed_pings: int = LINK_MISSED_PINGS
    # Limits: what a peer may cost the node before it is trusted, and what it may
    # hold after. Each refusal is an ERROR whose code is the key's name.
    max_hello_bytes: int = 64 * 1024  # any message from a connection not yet ready
    max_sessions: int = 10_000  # clients and child links, authenticating or ready
    max_pending_hellos: int = 1_000  # connections without a ready session
    hello_timeout: float = 10.0  # seconds from connect to ready, else it is closed
    max_pending_auth: int = 64  # hellos waiting for a blocking auth hook
    max_subscriptions: int = 10_000  # per session
    max_interest: int = 100_000  # interest entries a link may hold here
    tokens: Any = field(default=None, repr=False)  # secrets: never in a repr or a log
    auth_command: Any = None
    auth_url: str | None = None
    auth_timeout: float = 5.0
    # Links have their own credential: a child presents link_token in its LINK (or
    # parent_token, an alias kept for old configs), and a node admits a LINK only with
    # its own link_token. Client tokens never admit a link.
    link_token: str | None = field(default=None, repr=False)
    # Address of the parent node (tcp://host:port); None for a root.
    parent: str | None = None
    parent_token: str | None = field(default=None, repr=False)
    # CURVE (treescale.keys): the node's keypair and whom it trusts; None: plain links.
    # With CURVE an authorized node key also authorizes a link.
    keys_dir: str | None = None
    # The parent's public key: z85, or a name in keys_dir/authorized/.
    parent_key: str | None = None
    # Which client keys may connect: "any" (clients still need their token) or
    # "authorized" (only keys in keys_dir/authorized/).
    client_keys: str = "any"
    join: bool = False  # parent is a contact: let the tree place us (auto-join)
    # Services that run commands or change the machine start only when their flag is
    # true and the node has client auth (tokens, auth_command or auth_url).
    exec_enabled: bool = False
    handlers_enabled: bool = False
    docker_enabled: bool = False
    image_enabled: bool = False  # images between nodes' engines (services/images.py)
    lb_enabled: bool = False
    config_enabled: bool = False
    service_enabled: bool = False
    # Listen on a non-loopback address without client auth (a trusted network only).
    insecure: bool = False
    metrics_port: int | None = None
    # A Unix socket for applications on this machine (ipc://PATH), beside the TCP
    # port: the same sessions, auth and limits, without the loopback TCP stack. The
    # file is created with ipc_mode (octal; default: the node's own user only).
    ipc_path: str | None = None
    ipc_mode: str = "0600"
    # The WebSocket gateway (treescale.web): browsers and Node.js programs as sessions
    # of this node, and the dashboard over HTTP, on websocket_port (0: a free one;
    # None: off), on websocket_host (default: host). wss:// with the TLS pair.
    # Browser pages from other origins than the dashboard's need websocket_origins
    # ("https://app.example.com", or "*"); a message is at most websocket_max_message.
    websocket_port: int | None = None
    websocket_host: str | None = None
    websocket_tls_cert: str | None = None
    websocket_tls_key: str | None = None
    websocket_origins: tuple[str, ...] = ()
    websocket_max_message: int = DEFAULT_MAX_PAYLOAD + (1 << 20)
    websocket_ping_interval: float = 20.0
    # Where the gateway runs: "process" (beside the node: the relay never takes the
    # node's GIL) or "thread" (inside it: one interpreter less). BENCHMARKS.md.
    websocket_gateway: str = "process"
    # Docker service: the engine (default $DOCKER_HOST, else the local socket) and how
    # often each running container's stats are published ($sys.docker.NODE.stats).
    docker_host: str | None = None
    docker_stats_interval: float = 2.0
    # Services across the tree (treescale/services/orchestrator.py): where this node's
    # published container ports are reached from other nodes (default: its host).
    service_address: str | None = None
    # Image service: the tars it saved or received, kept for other nodes to fetch
    # (default: a directory beside db_path), least recently used evicted past the cap.
    image_cache_path: str | None = None
    image_cache_bytes: int = 2 << 30
    # Machine services to run (treescale.services.SERVICES names); None: all of them.
    # A tree of many nodes on one machine wants Docker on one node, not on each.
    services: tuple[str, ...] | None = None
    # The node's local database (tree, handlers, load-balancer state); default
    # $TREE_DB_PATH, else /etc/treescale/tree.db (the seed's).
    db_path: str | None = None
    # Durable delivery (docs/DELIVERY.md): where custody and durables are kept (default:
    # a directory beside db_path), when a confirm may go out (after an fsync: "always"
    # every commit, "group" at most every few ms; "none": no fsync), the store's quota,
    # how long an event nobody is owed stays for replays, the credit window per link.
    durable_path: str | None = None
    durable_sync: str = "group"
    durable_max_bytes: int = 1 << 30
    durable_max_age: float = 3600.0
    durable_window: int = 1000
    max_durables: int = 1000
    extra: dict = field(default_factory=dict)

    @property
    def resolved_db_path(self) -> str:
        from treescale.store import default_db_path

        return self.db_path or default_db_path()

    @property
    def resolved_durable_path(self) -> str:
        return self.durable_path or self.resolved_db_path + ".durable"

    @property
    def resolved_image_cache_path(self) -> str:
        return self.image_cache_path or self.resolved_db_path + ".images"

    @property
    def bind_address(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def to_loopback(self) -> None:
        """This node and its parent on 127.0.0.1, same ports (a whole tree on one
        machine: `tsctl node start --local`, `tsctl up`)."""
        self.host = "127.0.0.1"
        if self.parent:
            self.parent = "tcp://127.0.0.1:" + self.parent.rsplit(":", 1)[1]

    def auth_settings(self) -> dict:
        return {k: getattr(self, k) for k in ("tokens", "auth_command", "auth_url",
                                              "auth_timeout") if getattr(self, k) is not None}

    @property
    def has_auth(self) -> bool:
        """Whether clients must authenticate (tokens, auth_command or auth_url)."""
        return any(getattr(self, k) is not None for k in AUTH_METHODS)

    def service_off_reason(self, service: str) -> str | None:
        """Why service ``service`` does not run on this node (None: it runs)."""
        if self.services is not None and service not in self.services:
            return f"not in services ({', '.join(self.services) or 'none'})"
        flag = service_flag(service)
        if not getattr(self, flag):
            return f"{flag} is false"
        if not self.has_auth:
            return (f"{flag} is true but the node has no client auth (set tokens, "
                    "auth_command or auth_url)")
        return None

    def bind_refusal(self) -> str | None:
        """Why this node must not listen where it is configured to (None: it may): a
        non-loopback address without client auth would let anyone who reaches the port
        in, unless the config says ``insecure``."""
        if self.websocket_port is not None and not self.insecure:
            host = self.websocket_host or self.host
            tls = bool(self.websocket_tls_cert and self.websocket_tls_key)
            if not is_loopback(host) and not (tls and self.has_auth):
                return (f"node {self.name}: refusing a WebSocket listener on {host} "
                        f"without {'client auth' if tls else 'TLS and client auth'} "
                        "(browsers on other machines need wss:// and a token): set "
                        "websocket_tls_cert, websocket_tls_key and tokens (or "
                        "auth_command, auth_url), or start it with --insecure on a "
                        "trusted network")
        if self.has_auth or self.insecure or is_loopback(self.host):
            return None
        return (f"node {self.name}: refusing to listen on {self.host} without client "
                "auth (anyone who reaches the port could use the node): set tokens, "
                "auth_command or auth_url, or start it with --insecure (insecure = true) "
                "on a trusted network")


AUTH_METHODS = ("tokens", "auth_command", "auth_url")
# What only a token with "*" may change by a config push: client auth, the link
# credential, and the switches of the services that run commands or change the machine.
PRIVILEGED_FIELDS = (*AUTH_METHODS, "auth_timeout", "link_token", "parent_token",
                     "keys_dir", "insecure", "websocket_host", "websocket_origins",
                     "websocket_tls_cert", "websocket_tls_key", "image_cache_path",
                     *(f"{name}_enabled" for name in SERVICES))
# Secrets a node database holds; shown only to a token with "*".
SECRET_FIELDS = ("tokens", "link_token", "parent_token")
# Where the node reads secrets that must never be on its command line.
ENV_LINK_TOKEN = "TREESCALE_LINK_TOKEN"
ENV_ADMIN_TOKEN = "TREESCALE_ADMIN_TOKEN"  # a token with every permission
ENV_CLIENT_TOKEN = "TREESCALE_TOKEN"  # what clients and tsctl present


def service_flag(service: str) -> str:
    """The NodeConfig flag that turns service ``service`` on (``exec_enabled``...)."""
    return f"{service}_enabled"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name or a wildcard: it may be reachable from elsewhere


def secrets_from_env(cfg: NodeConfig, environ: dict) -> NodeConfig:
    """Take the node's secrets from the environment (and out of it, so that nothing
    the node runs inherits them): ``$TREESCALE_LINK_TOKEN`` is its link_token unless
    the config sets one; ``$TREESCALE_ADMIN_TOKEN`` joins its tokens with every
    permission; a client's ``$TREESCALE_TOKEN`` is dropped."""
    link = environ.pop(ENV_LINK_TOKEN, None)
    admin = environ.pop(ENV_ADMIN_TOKEN, None)
    environ.pop(ENV_CLIENT_TOKEN, None)  # a client's: not the node's, nor its commands'
    if link and cfg.link_token is None:
        cfg.link_token = link
    if admin:
        if cfg.auth_command is not None or cfg.auth_url is not None:
            raise ConfigError(f"node {cfg.name}: ${ENV_ADMIN_TOKEN} needs token auth, "
                              "but the config sets auth_command or auth_url")
        cfg.tokens = with_token(cfg.tokens, admin, ["*"])
    return cfg


def with_token(tokens: Any, token: str, permissions: list[str]) -> dict:
    """``tokens`` (None, a list: every permission, or a map) plus ``token``."""
    if tokens is None:
        merged: dict = {}
    elif isinstance(tokens, dict):
        merged = dict(tokens)
    else:
        merged = {t: ["*"] for t in tokens}
    merged[token] = permissions
    return merged


# Limits and timeouts that must be above zero.
POSITIVE = frozenset({"max_hello_bytes", "max_sessions", "max_pending_hellos",
                      "hello_timeout", "max_pending_auth", "max_subscriptions",
                      "max_interest", "durable_max_bytes", "durable_max_age",
                      "durable_window", "max_durables", "websocket_max_message",
                      "websocket_ping_interval"})
# Numbers with bounds of their own: (lowest, highest).
# Links: a timeout of at most LINK_TIMEOUT (5 s), the limit on every link session.
RANGES = {"link_ping_interval": (0.01, 1.0), "link_missed_pings": (1, 5),
          "websocket_port": (0, 65535)}

# Keys of the seed's tree format mapped onto NodeConfig fields.
_ALIASES = {"tree_port": "port", "tree_ip": "host", "childs": None, "children": None}
_FIELD_TYPES = {f.name: f.type for f in fields(NodeConfig)}
CHOICES = {"client_keys": ("any", "authorized"), "websocket_gateway": ("process", "thread"),
           "durable_sync": ("always", "group", "none")}


def read_file(path: str | Path) -> dict:
    """Parse a TOML, JSON or YAML file into a dict (by extension)."""
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text.decode())
        elif p.suffix == ".json":
            data = json.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            import yaml  # only for YAML files: a node read from TOML or JSON never loads it

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{p}: unknown config format {p.suffix!r} "
                              "(use .toml, .json, .yaml or .yml)")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{p}: not valid {p.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a table/object")
    return data


def node_config_from_dict(raw: dict, source: str = "<config>",
                          name: str | None = None) -> NodeConfig:
    """The NodeConfig of one node's table (a ``[node]`` or a ``[tree_node.NAME]``)."""
    cfg = NodeConfig()
    for key, value in raw.items():
        target = _ALIASES.get(key, key)
        if target is None:
            continue
        if target not in _FIELD_TYPES or target == "extra":
            raise ConfigError(f"{source}: node {name or raw.get('name', '?')}: "
                              f"unknown key {key!r}")
        setattr(cfg, target, coerce_field(value, target, source, name or raw.get("name")))
    if name is not None and "name" not in raw:
        cfg.name = name
    if not cfg.name or "." in cfg.name or any(c.isspace() for c in cfg.name):
        raise ConfigError(f"{source}: node name {cfg.name!r} must be non-empty without "
                          "dots or spaces")
    return cfg


def coerce_field(value: Any, key: str, source: str, node: Any) -> Any:
    """``value`` as NodeConfig field ``key`` wants it, or a ConfigError naming
    ``source``, ``node`` and ``key``."""
    kind = _FIELD_TYPES[key]
    where = f"{source}: node {node or '?'}: {key}"
    if key == "tokens" and value is not None:
        try:
            parse_tokens(value)  # kept as written; the node parses it again at start
        except ValueError as exc:  # the message starts with "tokens"
            raise ConfigError(f"{source}: node {node or '?'}: {exc}") from None
        return value
    if kind == "int" or kind == "int | None":
        if value is None and "None" in kind:
            return None
        if isinstance(value, str) and value.isdigit():
            value = int(value)  # the seed writes ports as strings
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return _positive(value, key, where)
    if kind == "float":
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return _positive(float(value), key, where)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if kind.startswith("tuple[str, ...]"):
        if value is None and "None" in kind:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings")
        if key == "services":
            unknown = [v for v in value if v not in SERVICES]
            if unknown:
                raise ConfigError(f"{where}: unknown service(s) {', '.join(unknown)} "
                                  f"(known: {', '.join(SERVICES)})")
        return tuple(value)
    if kind == "str" or kind == "str | None":
        if value is None and "None" in kind:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        if key == "ipc_mode" and not _is_file_mode(value):
            raise ConfigError(f"{where} must be an octal file mode such as \"0660\", "
                              f"got {value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{where} must be one of {', '.join(CHOICES[key])}, "
                              f"got {value!r}")
    return value


def _is_file_mode(text: str) -> bool:
    return 3 <= len(text) <= 4 and all(c in "01234567" for c in text) and (
        len(text) == 3 or text[0] == "0")


def _positive(value: int | float, key: str, where: str) -> int | float:
    if key in POSITIVE and not value > 0:
        raise ConfigError(f"{where} must be above zero, got {value!r}")
    low, high = RANGES.get(key, (value, value))
    if not low <= value <= high:
        raise ConfigError(f"{where} must be in {low}..{high}, got {value!r}")
    return value
