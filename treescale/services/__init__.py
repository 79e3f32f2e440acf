"""Machine services: the registry of them, and what each gets from its node.

Each service runs in its node's process as a client of that node, so the broker loop
never waits on a subprocess, Docker or netlink. A service is listed in ``SERVICES`` as
``name: "module:factory"``; a node runs the ones its config names (``services``,
default all), calls ``factory(ctx)`` once its loop runs and ``close()`` on the result
when it stops. A service that fails to start is logged and the node runs on without it.

Owns: ``SERVICES`` (the names a config may list: treescale.config checks against it),
``ServiceContext`` and ``load_factory``.

Must not touch: any one service's work (its own module does it), the config model (it
is only an annotation here, so treescale.config can read this registry without a
circle), the broker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from treescale.config import NodeConfig

SERVICES: dict[str, str] = {
    "exec": "treescale.services.exec:ExecService.start",
    "config": "treescale.services.config:ConfigService.start",
    "docker": "treescale.services.docker:DockerService.start",
    "image": "treescale.services.images:ImageService.start",
    "handlers": "treescale.services.handlers:HandlerService.start",
    "lb": "treescale.services.lb:LbService.start",
    "service": "treescale.services.orchestrator:Orchestrator.start",
}


def node_client_keys(config: NodeConfig) -> dict:
    """How a process beside the node reaches it (its services, its WebSocket
    gateway): CURVE with the node's own keypair when it has keys (a key it trusts,
    whatever ``client_keys`` says), else plainly (whatever $TREESCALE_SERVER_KEY says)."""
    if not config.keys_dir:
        return {"server_key": ""}
    from treescale.keys import load_own

    own = load_own(config.keys_dir)
    return {"server_key": own.public, "keypair": own}


@dataclass
class ServiceContext:
    """What a service gets from its node."""

    address: str  # the node's endpoint, reachable from this process
    node: str  # the node's name
    config: NodeConfig
    secret: str  # hello option {"service": secret} marks a client as this node's service
    # The node's place in the tree as its healing state (treescale.healing: "root",
    # "acting_root", "linked"...), read live: the orchestrator schedules only while
    # its node leads the tree.
    tree_state: Callable[[], str] | None = None
    _store: Any = None
    _client: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client_options(self) -> dict:
        return {"service": self.secret}

    def client_keys(self) -> dict:
        return node_client_keys(self.config)

    @property
    def client(self) -> Any:
        """The one bus client all services of this node share (one connection, one I/O
        thread per node, however many services). Services never close it; the node
        does, after closing them."""
        with self._lock:
            if self._client is None:
                from treescale.client import Client

                self._client = Client(self.address, name=f"services@{self.node}",
                                      timeout=30, options=self.client_options(),
                                      **self.client_keys())
            return self._client

    @property
    def store(self) -> Any:
        """The node's local database (treescale.store.Store), opened on first use."""
        with self._lock:
            if self._store is None:
                from treescale.store import Store

                self._store = Store(self.config.resolved_db_path)
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close(timeout=2)
                self._client = None
            if self._store is not None:
                self._store.close()
                self._store = None


def load_factory(spec: str) -> Any:
    """``"pkg.module:attr.attr"`` -> the callable it names."""
    import importlib

    module, _, attrs = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for attr in attrs.split("."):
        obj = getattr(obj, attr)
    return obj
