"""tsctl node: run a node in the foreground (what `tsctl up` and systemd units start).

Owns: the `node` group, `node start`'s options and `node gateway` (a WebSocket
gateway in a process of its own, in front of a node). It imports no more than parsing
and the node need (click, treescale's config and broker; no rich, no other command),
because every node process runs it: what it loads, a node carries in memory.

Must not touch: what a node does (treescale.brokers.node), how config is read
(treescale.loader).
"""

from __future__ import annotations

import os
from typing import Any

import click

from treescale.config import ConfigError, NodeConfig, is_loopback
from treescale.loader import load_node_config
from tsctl.failures import friendly

# --------------------------------------------------------------------------- node


@click.group()
def node() -> None:
    """Run a node on this machine."""


@node.command("start")
@click.option("--name", help="Node name (required unless the config names it).")
@click.option("--port", type=int, help="TCP port for clients and child nodes.")
@click.option("--host", help="Address to listen on [default: 127.0.0.1].")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Node or tree config (TOML, JSON or YAML).")
@click.option("--token", "tokens", multiple=True,
              help="Accept this client token (repeatable; visible in `ps`: prefer tokens "
              "in the config file, or $TREESCALE_ADMIN_TOKEN); default: no auth.")
@click.option("--max-payload", type=int, help="Largest payload in bytes.")
@click.option("--parent", help="Link under the node at this address (tcp://HOST:PORT); "
              "if it is full it redirects us below it.")
@click.option("--join", help="Join the tree through any node at this address: the tree "
              "places us where it stays shallow and balanced.")
@click.option("--parent-token", envvar="TREESCALE_PARENT_TOKEN",
              help="The link token the parent expects (or $TREESCALE_PARENT_TOKEN; "
              "link_token in the config, or $TREESCALE_LINK_TOKEN, keeps it out of ps).")
@click.option("--local", is_flag=True,
              help="Rewrite this node's and its parent's addresses to 127.0.0.1.")
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              help="Serve Prometheus /metrics on this port (0: pick a free one).")
@click.option("--ipc", "ipc_path", type=click.Path(dir_okay=False),
              help="Also serve applications on this machine on a Unix socket at PATH "
              "(connect with ipc://PATH): faster than loopback TCP, same auth.")
@click.option("--ws-port", type=click.IntRange(0, 65535),
              help="Serve WebSocket sessions (browsers, Node.js) and the dashboard on "
              "this port (0: a free one); wss:// with websocket_tls_cert/_key.")
@click.option("--ws-host", help="Address of the WebSocket port [default: --host].")
@click.option("--insecure", is_flag=True,
              help="Listen on a non-loopback address without client auth (a trusted "
              "network only; the config's `insecure = true`).")
@click.option("--keys-dir", type=click.Path(file_okay=False),
              help="CURVE: the node's keys (tsctl keys gen); links and clients encrypted.")
@click.option("--parent-key", help="CURVE: the parent's public key (z85, or its name in "
              "the keys dir's authorized/).")
@friendly
def node_start(name: str | None, port: int | None, host: str | None,
               config_path: str | None, tokens: tuple[str, ...],
               max_payload: int | None, parent: str | None, join: str | None,
               parent_token: str | None, local: bool, metrics_port: int | None,
               insecure: bool, keys_dir: str | None, parent_key: str | None,
               ipc_path: str | None, ws_port: int | None, ws_host: str | None) -> None:
    """Start a node in the foreground (SIGTERM or Ctrl-C stops it cleanly).

    Secrets come from the config file or the environment, never the command line:
    $TREESCALE_LINK_TOKEN (the link token, unless the config sets one),
    $TREESCALE_ADMIN_TOKEN (a client token with every permission) and
    $TREESCALE_PARENT_TOKEN; the node removes them from its environment."""
    from treescale.brokers.node import serve
    from treescale.config import secrets_from_env

    cfg = load_node_config(config_path, name)
    if insecure:
        cfg.insecure = True
    if join:
        cfg.parent, cfg.join = join, True
    if local:
        cfg.to_loopback()
    for key, value in (("port", port), ("host", host), ("max_payload", max_payload),
                       ("parent", parent), ("parent_token", parent_token),
                       ("metrics_port", metrics_port), ("keys_dir", keys_dir),
                       ("parent_key", parent_key), ("ipc_path", ipc_path),
                       ("websocket_port", ws_port), ("websocket_host", ws_host)):
        if value is not None:
            setattr(cfg, key, value)
    if tokens:
        cfg.tokens = list(tokens)
    secrets_from_env(cfg, os.environ)
    os.environ.pop("TREESCALE_PARENT_TOKEN", None)  # --parent-token has read it
    serve(cfg, announce)


@node.command("gateway")
@click.option("--node", "node_address", required=True,
              help="The node's address (tcp://HOST:PORT or ipc://PATH).")
@click.option("--ws-port", type=click.IntRange(0, 65535), required=True,
              help="Serve WebSocket sessions and the dashboard on this port.")
@click.option("--ws-host", default="127.0.0.1", show_default=True,
              help="Address to listen on.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="A node config for the websocket_* keys (TLS, origins, limits).")
@click.option("--insecure", is_flag=True,
              help="Listen off loopback without TLS (a trusted network only).")
@friendly
def node_gateway(node_address: str, ws_port: int, ws_host: str,
                 config_path: str | None, insecure: bool) -> None:
    """Relay WebSocket sessions to a node from a process of its own (a node's
    websocket_port runs the same gateway on a thread of the node). Each session
    says its own hello and token to the node."""
    import signal
    import threading

    from treescale.web.gateway import Gateway, GatewaySettings

    cfg = load_node_config(config_path, None) if config_path else NodeConfig()
    cfg.websocket_port, cfg.websocket_host = ws_port, ws_host
    if not (is_loopback(ws_host) or cfg.websocket_tls_cert or insecure):
        raise ConfigError(f"refusing a WebSocket listener on {ws_host} without TLS "
                          "(set websocket_tls_cert and websocket_tls_key in --config), "
                          "or pass --insecure on a trusted network")
    gateway = Gateway(GatewaySettings.from_config(cfg, node_address, {}), "gateway")
    port = gateway.start()
    click.echo(f"gateway on ws://{ws_host}:{port}/ relaying to {node_address}", err=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    gateway.close()


def announce(n: Any) -> None:
    """Where the started node listens, on stderr (stdout stays the caller's)."""
    click.echo(f"node {n.name} listening on {n.endpoint}", err=True)
    if n.ipc_endpoint:
        click.echo(f"node {n.name} serving local clients on {n.ipc_endpoint}", err=True)



COMMANDS = [node]
