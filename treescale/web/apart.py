"""The gateway in a process of its own beside its node (``websocket_gateway =
"process"``, the default).

Owns: starting that process from the node (its settings over the child's stdin, one
line back: the port it bound, or the error that stopped it), tying its life to the
node's (it exits when its stdin closes: the node stopped, or died, ``kill -9``
included) and stopping it.

Why a process: the relay is Python, and on the node's own thread it takes the GIL
from the node's loop; apart, a flood of WebSocket traffic or TLS handshakes, or a
crash, stays out of the node. Measured (BENCHMARKS.md, "browsers on the bus"): a
ZeroMQ subscriber of a node that also relays the stream to a WebSocket subscriber got
1.37 M and 1.33 M events/s with the gateway apart, 0.89 M and 1.22 M with it on a
thread (two runs); the WebSocket subscriber's own rate was within the noise either
way. ``"thread"`` stays for small machines: one interpreter (29 MB resident) less.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import sys
from typing import Any

from treescale.config import ConfigError, NodeConfig, node_config_from_dict

log = logging.getLogger("treescale.web")

START_TIMEOUT = 20.0  # seconds for the child to import, bind and say so
STOP_TIMEOUT = 5.0
# What the child needs of the node's config (never a token: sessions bring their own).
SETTINGS = ("name", "host", "websocket_port", "websocket_host", "websocket_tls_cert",
            "websocket_tls_key", "websocket_origins", "websocket_max_message",
            "websocket_ping_interval", "max_sessions", "keys_dir")


class GatewayProcess:
    """The gateway of one node, run as a child process of the node."""

    def __init__(self, config: NodeConfig, node_address: str) -> None:
        self.config = config
        self.node_address = node_address
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None

    def start(self) -> int:
        """Start the child and wait until it is bound; its port. Raises ConfigError
        (TLS files, keys) or OSError (the port is taken) with the child's own line."""
        settings = {k: getattr(self.config, k) for k in SETTINGS}
        settings["node_address"] = self.node_address
        self.proc = subprocess.Popen([sys.executable, "-m", "treescale.web.apart"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     close_fds=True)
        try:
            self.proc.stdin.write(json.dumps(settings).encode() + b"\n")
            self.proc.stdin.flush()
            answer = self._first_line()
        except BaseException:
            self.close()
            raise
        if "port" not in answer:
            self.close()
            error = ConfigError if answer.get("kind") == "config" else OSError
            raise error(answer.get("error", "the websocket gateway did not start"))
        self.port = answer["port"]
        return self.port

    def _first_line(self) -> dict:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(START_TIMEOUT):
            raise OSError(f"the websocket gateway did not start within {START_TIMEOUT:g}s")
        line = self.proc.stdout.readline()
        if not line:
            raise OSError(f"the websocket gateway exited ({self.proc.wait()}) "
                          "before it was bound; see the node's log")
        return json.loads(line)

    def close(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        try:
            proc.stdin.close()  # the child's signal to stop
        except OSError:
            pass
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("websocket gateway %d still running after %gs: killed", proc.pid,
                        STOP_TIMEOUT)
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _child() -> int:
    """The gateway process: settings from stdin, its port (or error) on stdout, then
    serve until stdin closes."""
    import signal

    from treescale.services import node_client_keys
    from treescale.web.gateway import Gateway, GatewaySettings

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the node's to handle
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raw: dict[str, Any] = json.loads(sys.stdin.readline())
    address = raw.pop("node_address")
    cfg = node_config_from_dict(raw, "<the node's gateway settings>")

    def say(answer: dict) -> None:
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()

    try:
        gateway = Gateway(GatewaySettings.from_config(cfg, address, node_client_keys(cfg)),
                          cfg.name)
        port = gateway.start()
    except ConfigError as exc:
        say({"error": str(exc), "kind": "config"})
        return 1
    except OSError as exc:
        say({"error": str(exc.strerror or exc), "kind": "os"})
        return 1
    say({"port": port})
    while os.read(sys.stdin.fileno(), 4096):  # until the node closes it, or dies
        pass
    gateway.close()
    return 0


if __name__ == "__main__":
    sys.exit(_child())
