"""What runs beside a node's loop: its machine services, its /metrics endpoint and its
WebSocket gateway (treescale.web).

Owns: starting the services the config turns on (each needs its ``<name>_enabled``
flag and client auth on the node; one log line says why one is off) as clients of the
node, on a thread of their own, after the loop runs (a service talks to its node like
any client, so the loop never waits on Docker or a process), closing them within a
bounded time, and the Prometheus endpoint's life; and the node process's allocator
(how many malloc arenas its threads share, freed start-up memory given back).

Must not touch: the loop, sessions or routing. Services reach the node only through
its port.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from treescale.brokers.node import Node

log = logging.getLogger("treescale.node")

SERVICES_CLOSE_TIMEOUT = 5.0  # a stop never waits longer than this on the services
MALLOC_ARENAS = 2  # glibc's M_ARENA_MAX for a node process
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None)


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """glibc gives each thread that allocates an arena of its own (up to 8 per core),
    each holding hundreds of KiB to MBs resident; a node's threads (ZeroMQ's I/O, the
    services' client, the services' workers and watchers) allocate little, and Python
    objects come from its own allocator. Call before the node starts any thread. No-op
    where the C library has no mallopt."""
    try:
        _libc().mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass


def release_free_memory() -> None:
    """Give the kernel back what start-up freed (glibc keeps freed heap pages resident
    until malloc_trim): imports and handshakes leave megabytes a node never reuses."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Hosting:
    """The services and the metrics server of one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.services: list = []
        self.context = None
        self.metrics_server = None
        self.gateway = None
        self._lock = threading.Lock()
        self._closed = False

    def start_listeners(self) -> None:
        """The node's other ports, before it announces itself: /metrics and the
        WebSocket gateway, each when the config asks for it. Raises OSError (a port
        taken) or ConfigError (an unreadable TLS file)."""
        if self.node.config.metrics_port is not None:
            self.start_metrics()
        if self.node.config.websocket_port is not None:
            self.start_gateway()

    def start_gateway(self) -> None:
        """Serve WebSocket sessions and the dashboard (treescale.web), each session
        a client of this node on its Unix socket when it has one, else on loopback;
        the gateway runs apart (a child process) or on a thread, as configured."""
        node = self.node
        config = node.config
        address = node.ipc_endpoint or self.local_address
        if config.websocket_gateway == "process":
            from treescale.web.apart import GatewayProcess

            gateway: Any = GatewayProcess(config, address)
        else:
            from treescale.services import node_client_keys
            from treescale.web.gateway import Gateway, GatewaySettings

            gateway = Gateway(GatewaySettings.from_config(
                config, address, node_client_keys(config)), node.name)
        where = f"websocket port {config.websocket_port} on " \
                f"{config.websocket_host or config.host}"
        try:
            gateway.start()
        except OSError as exc:
            raise OSError(f"{where}: {exc.strerror or exc}") from None
        self.gateway = gateway

    @property
    def websocket_port(self) -> int | None:
        return self.gateway.port if self.gateway else None

    @property
    def local_address(self) -> str:
        """The node's TCP endpoint as a process on its machine reaches it."""
        return self.node.endpoint.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:")

    def start_metrics(self) -> None:
        """Serve /metrics on the node's host (port 0: a free one, logged and reported
        in the stats as metrics_port)."""
        from treescale.metrics import MetricsServer

        config = self.node.config
        try:
            self.metrics_server = MetricsServer(self.node, config.host, config.metrics_port)
        except OSError as exc:
            raise OSError(f"metrics port {config.metrics_port} on "
                          f"{config.host}: {exc.strerror or exc}") from None

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server.port if self.metrics_server else None

    def start_services(self) -> None:
        threading.Thread(target=self._start_services, daemon=True, name="services").start()

    def _start_services(self) -> None:
        from treescale.services import SERVICES, ServiceContext, load_factory

        node = self.node
        self.context = ServiceContext(self.local_address, node.name, node.config,
                                      node.handshake.service_secret,
                                      tree_state=lambda: node.parent.state.state)
        for name in SERVICES:
            if node.stopping:
                return
            off = node.config.service_off_reason(name)
            if off is not None:  # secure by default: say why, once
                log.info("node %s: service %s not started: %s", node.name, name, off)
                continue
            try:
                service = load_factory(SERVICES[name])(self.context)
                with self._lock:
                    if not self._closed:
                        self.services.append(service)
                        continue
                service.close()  # the node closed while this one was starting
                return
            except Exception as exc:
                if node.stopping:  # stopped while the service was starting
                    log.info("node %s stopping: service %s not started (%s)", node.name,
                             name, exc)
                    return
                log.exception("node %s could not start service %s", node.name, name)
        release_free_memory()

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.close()
            self.gateway = None
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        with self._lock:  # a service still starting closes itself
            self._closed = True
            services = list(self.services)
        closer = threading.Thread(target=self._close_services, args=(services,),
                                  daemon=True, name="close-services")
        closer.start()
        closer.join(SERVICES_CLOSE_TIMEOUT)
        if closer.is_alive():
            log.warning("node %s: services still closing after %gs; going on",
                        self.node.name, SERVICES_CLOSE_TIMEOUT)

    def _close_services(self, services: list) -> None:
        for service in services:
            try:
                service.close()
            except Exception:
                log.exception("closing a service")
        if self.context is not None:
            self.context.close()
