"""The launcher of a local tree: one interpreter imports the node once, then forks one
process per node (`tsctl up`, through treescale.local.up).

A hundred nodes started as a hundred `python -m tsctl.main node start` each pay the
interpreter's start and every import (about 0.3 s of CPU a node): on two cores that
was most of a 100-node tree's start. Here they are paid once; each forked child is
still a node process of its own (its own session, log, database and pid; `kill -9`
stops it alone), running ``treescale.brokers.node.serve`` as `tsctl node start` does.

Run as ``python -m treescale.launcher CONFIG DIR [--local]`` with the tree's secrets
in the environment: it prints one JSON line per node it forked (``name``, ``pid``,
``log``), closes its output, then stays only to reap its children and exits when the
last one has. No ZeroMQ context exists before a fork (each node makes its own).

Must not touch: what a node does (treescale.brokers.node), the state file and stopping
(treescale.local).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from treescale.config import (
    ENV_ADMIN_TOKEN,
    ENV_CLIENT_TOKEN,
    ENV_LINK_TOKEN,
    NodeConfig,
    service_flag,
)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # as tsctl logs


def log_path(state_dir: Path, name: str) -> Path:
    return state_dir / "logs" / f"{name}.log"


def db_path(state_dir: Path, name: str) -> Path:
    """Each local node its own database (one machine, many nodes)."""
    return state_dir / "db" / f"{name}.db"


def socket_path(state_dir: Path, name: str) -> str | None:
    """Where node ``name`` serves local applications (``ipc_path``): a socket in the
    tree's state directory, or None where that path is too long for a Unix socket."""
    from treescale.brokers.listener import MAX_IPC_PATH

    path = state_dir.absolute() / "sockets" / f"{name}.sock"
    return str(path) if len(os.fsencode(path)) <= MAX_IPC_PATH else None


def websocket_url(cfg: NodeConfig) -> str | None:
    """Where node ``cfg`` serves browsers and its dashboard (None: no fixed port)."""
    if not cfg.websocket_port:
        return None
    scheme = "wss" if cfg.websocket_tls_cert else "ws"
    return f"{scheme}://{cfg.websocket_host or cfg.host}:{cfg.websocket_port}/"


def _run_child(cfg: NodeConfig, state_dir: Path, secrets: dict) -> NoReturn:
    """In the forked child: become the node's own process, then serve it."""
    from treescale.brokers.node import serve
    from treescale.config import secrets_from_env

    try:
        os.setsid()
        out = os.open(log_path(state_dir, cfg.name), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                      0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)  # the launcher's pipe is no longer held: up() sees its end
        os.dup2(out, 2)
        os.close(out)
        os.close(devnull)
        os.environ["TREE_DB_PATH"] = str(db_path(state_dir, cfg.name))
        secrets_from_env(cfg, dict(secrets))
        logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
        serve(cfg, lambda n: print(f"node {cfg.name} listening on {n.endpoint}",
                                   file=sys.stderr, flush=True))
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(1)


def main(argv: list[str]) -> None:
    from treescale.loader import load_node_config, load_tree
    from treescale.services import SERVICES

    config, state_dir, local = argv[0], Path(argv[1]), "--local" in argv[2:]
    # The tree's secrets go to each node, and are kept out of everything else.
    secrets = {k: os.environ.pop(k) for k in (ENV_ADMIN_TOKEN, ENV_LINK_TOKEN)
               if k in os.environ}
    os.environ.pop(ENV_CLIENT_TOKEN, None)
    tree = load_tree(config)
    configs = [load_node_config(config, name) for name in tree.names]
    for cfg in configs:
        if local:
            cfg.to_loopback()
        if cfg.ipc_path is None:  # applications on this machine: the faster way in
            cfg.ipc_path = socket_path(state_dir, cfg.name)
    # What every node imports, imported here once: the children share these pages.
    import treescale.brokers.node  # noqa: F401
    import treescale.client  # noqa: F401  (the services' client)

    for name in {s for cfg in configs for s in (cfg.services or SERVICES)
                 if getattr(cfg, service_flag(s))}:
        __import__(SERVICES[name].partition(":")[0])
    for sub in ("logs", "db", "sockets"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    for cfg in configs:
        pid = os.fork()
        if pid == 0:
            _run_child(cfg, state_dir, secrets)
        print(json.dumps({"name": cfg.name, "pid": pid, "ipc": cfg.ipc_path,
                          "websocket": websocket_url(cfg),
                          "log": str(log_path(state_dir, cfg.name))}), flush=True)
    sys.stdout.close()
    os.close(1)
    while True:  # reap the nodes as they stop; the last one ends the launcher
        try:
            os.wait()
        except ChildProcessError:
            return
        except KeyboardInterrupt:
            continue


if __name__ == "__main__":
    main(sys.argv[1:])
