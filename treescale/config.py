"""One node's configuration: the NodeConfig model, its validation, and config files.

Owns: NodeConfig (every option a node runs with) and how a raw value becomes a field
(``coerce_field``, ``node_config_from_dict``), ConfigError, and ``read_file`` (a TOML,
JSON or YAML file into a dict). Every problem is one ConfigError line naming the
file, node and field.

Must not touch: the whole-tree model or databases (treescale.fabric), choosing a node's
table from a tree file or database (treescale.loader), sockets. It imports no other
treescale module but the registry of service names (treescale.services.SERVICES), so
everything else can build on it.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

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
    # Limits: what a peer may cost the node before it is trusted, and what it may
    # hold after. Each refusal is an ERROR whose code is the key's name.
    max_hello_bytes: int = 64 * 1024  # any message from a connection not yet ready
    max_sessions: int = 10_000  # clients and child links, authenticating or ready
    max_pending_hellos: int = 1_000  # connections without a ready session
    hello_timeout: float = 10.0  # seconds from connect to ready, else it is closed
    max_pending_auth: int = 64  # hellos waiting for a blocking auth hook
    max_subscriptions: int = 10_000  # per session
    max_interest: int = 100_000  # interest entries a link may hold here
    tokens: Any = None
    auth_command: Any = None
    auth_url: str | None = None
    auth_timeout: float = 5.0
    # Address of the parent node (tcp://host:port); None for a root.
    parent: str | None = None
    parent_token: str | None = None
    join: bool = False  # parent is a contact: let the tree place us (auto-join)
    exec_enabled: bool = False
    metrics_port: int | None = None
    # Docker service: the engine (default $DOCKER_HOST, else the local socket) and how
    # often each running container's stats are published ($sys.docker.NODE.stats).
    docker_host: str | None = None
    docker_stats_interval: float = 2.0
    # Machine services to run (treescale.services.SERVICES names); None: all of them.
    # A tree of many nodes on one machine wants Docker on one node, not on each.
    services: tuple[str, ...] | None = None
    # The node's local database (tree, handlers, load-balancer state); default
    # $TREE_DB_PATH, else /etc/treescale/tree.db (the seed's).
    db_path: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def resolved_db_path(self) -> str:
        from treescale.store import default_db_path

        return self.db_path or default_db_path()

    @property
    def bind_address(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def auth_settings(self) -> dict:
        return {k: getattr(self, k) for k in ("tokens", "auth_command", "auth_url",
                                              "auth_timeout") if getattr(self, k) is not None}


# Limits and timeouts that must be above zero.
POSITIVE = frozenset({"max_hello_bytes", "max_sessions", "max_pending_hellos",
                      "hello_timeout", "max_pending_auth", "max_subscriptions",
                      "max_interest"})

# Keys of the seed's tree format mapped onto NodeConfig fields.
_ALIASES = {"tree_port": "port", "tree_ip": "host", "childs": None, "children": None}
_FIELD_TYPES = {f.name: f.type for f in fields(NodeConfig)}


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
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def _positive(value: int | float, key: str, where: str) -> int | float:
    if key in POSITIVE and not value > 0:
        raise ConfigError(f"{where} must be above zero, got {value!r}")
    return value
