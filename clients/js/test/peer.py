"""A Python peer for the JS client's tests, driven by JSON lines.

Owns: one ``treescale.Client`` (the reference client) and a tiny command language on
stdin/stdout, so that a test in Node.js can do things "from Python". Run as
``python peer.py ADDRESS NAME [TOKEN] [GROUPS]`` (GROUPS comma separated); it prints
``{"ready": true, "node": ...}`` once connected, then answers each command line
``{"id": N, "op": ...}`` with ``{"id": N, "ok": true, ...}`` or ``{"id": N, "error": CODE}``:

- ``subscribe`` {pattern, queue}: events matching it are printed as ``{"event": ...}``;
- ``publish`` {name, data, target, mode, headers}: published and flushed;
- ``serve`` {pattern, queue}: an echo responder (reply "echo: DATA", header from=python);
- ``request`` {name, data, timeout, target}: the reply as ``{"reply": {...}}``;
- ``quit``: closes the client and exits.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from treescale.client import Client, Event, NodeError

_out = threading.Lock()


def say(message: dict[str, Any]) -> None:
    with _out:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def describe(ev: Event) -> dict[str, Any]:
    return {"name": ev.name, "data": bytes(ev.data).decode("utf-8", "replace"),
            "source": ev.source, "headers": dict(ev.headers), "request": bool(ev.reply)}


def main() -> None:
    address, name = sys.argv[1], sys.argv[2]
    token = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None
    groups = sys.argv[4].split(",") if len(sys.argv) > 4 and sys.argv[4] else []
    client = Client(address, token=token, name=name, groups=groups)
    say({"ready": True, "node": client.node})

    def report(ev: Event) -> None:
        say({"event": describe(ev)})

    def echo(ev: Event) -> None:
        if ev.reply:
            client.reply(ev, b"echo: " + bytes(ev.data), {"from": "python"})

    for line in sys.stdin:
        cmd = json.loads(line)
        op, ident = cmd.get("op"), cmd.get("id")
        try:
            if op == "quit":
                break
            if op == "subscribe":
                client.subscribe(cmd["pattern"], cmd.get("queue"), handler=report)
                say({"id": ident, "ok": True})
            elif op == "serve":
                client.subscribe(cmd["pattern"], cmd.get("queue"), handler=echo)
                say({"id": ident, "ok": True})
            elif op == "publish":
                client.publish(cmd["name"], cmd.get("data", "").encode(),
                               target=cmd.get("target"), mode=cmd.get("mode", "all"),
                               headers=cmd.get("headers"))
                client.flush()
                say({"id": ident, "ok": True})
            elif op == "request":
                ev = client.request(cmd["name"], cmd.get("data", "").encode(),
                                    timeout=cmd.get("timeout", 5.0),
                                    target=cmd.get("target"))
                say({"id": ident, "ok": True, "reply": describe(ev)})
            else:
                say({"id": ident, "error": "unknown_op"})
        except NodeError as exc:
            say({"id": ident, "error": exc.code, "message": str(exc)})
        except TimeoutError as exc:
            say({"id": ident, "error": "timeout", "message": str(exc)})
    client.close()


if __name__ == "__main__":
    main()
