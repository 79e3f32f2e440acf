"""Remote exec over the bus: a node runs a shell command for an authorised requester.

The service is a client of its own node (so the node loop never waits on a process):
it subscribes to ``$svc.exec.<node>`` and ``$svc.exec`` (the latter for group and
tag targets, which the node's routing narrows), runs each command with a timeout
and a concurrency limit, and publishes the output back in chunks as it comes:

    request payload (msgpack): {"command": str, "timeout": float, "reply": subject}
    results on ``reply``:      {"node", "stream": "stdout"|"stderr", "data": bytes}
                               {"node", "exit": int, "duration": float[, "error"]}

Every run is published as ``$sys.audit.exec``. Exec is off unless the node's config
says ``exec_enabled = true``; a disabled node answers with an error instead of
silence. Who may exec is checked by the node that accepted the request (permission
``exec``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import msgpack

from treescale.client import Client, Event
from treescale.services import ServiceContext
from treescale.services.process import run_command
from treescale.services.rpc import service_subject

log = logging.getLogger("treescale.exec")

EXEC_SUBJECT = service_subject("exec")
MAX_CONCURRENT = 8


def exec_subject(node: str) -> str:
    return f"{EXEC_SUBJECT}.{node}"


class ExecService:
    """Runs in a thread of the node process; talks to the node like any client."""

    def __init__(self, client: Client, node: str, enabled: bool) -> None:
        self.node = node
        self.enabled = enabled
        self.client = client
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        for subject in (exec_subject(node), EXEC_SUBJECT):
            self.client.subscribe(subject, handler=self._on_request)

    @classmethod
    def start(cls, ctx: ServiceContext) -> ExecService:
        return cls(ctx.client, ctx.node, ctx.config.exec_enabled)

    def close(self) -> None:
        """Nothing to release: the client is the node's shared one."""

    def _on_request(self, ev: Event) -> None:
        try:
            req = msgpack.unpackb(ev.data, raw=False)
            command, reply = req["command"], req["reply"]
            timeout = float(req.get("timeout", 60.0))
            if not isinstance(command, str) or not isinstance(reply, str):
                raise TypeError("command and reply must be strings")
        except Exception as exc:
            log.warning("bad exec request from %s: %s", ev.source, exc)
            return
        if not self.enabled:
            self._result(reply, {"exit": 126, "duration": 0.0,
                                 "error": f"exec is disabled on node {self.node} "
                                          "(set exec_enabled = true in its config)"})
            return
        if not self._slots.acquire(blocking=False):
            self._result(reply, {"exit": 126, "duration": 0.0,
                                 "error": f"node {self.node} is already running "
                                          f"{MAX_CONCURRENT} commands"})
            return
        threading.Thread(target=self._run, args=(command, reply, timeout, ev.source),
                         daemon=True, name="exec").start()

    def _run(self, command: str, reply: str, timeout: float, requester: str) -> None:
        try:
            run = run_command(command, lambda stream, chunk: self._result(
                reply, {"stream": stream, "data": chunk}), timeout=timeout)
            result: dict[str, Any] = {"exit": run.exit, "duration": run.duration}
            if run.timed_out:
                result["error"] = f"timed out after {timeout:g}s on node {self.node}"
            self._result(reply, result)
            self.client.publish("$sys.audit.exec", msgpack.packb({
                "node": self.node, "command": command, "requester": requester,
                "exit": run.exit, "duration": run.duration}))
        except Exception as exc:  # report, never die silently
            self._result(reply, {"exit": 127, "duration": 0.0,
                                 "error": f"cannot run on node {self.node}: {exc}"})
        finally:
            self._slots.release()

    def _result(self, reply: str, body: dict) -> None:
        self.client.publish(reply, msgpack.packb({"node": self.node, **body}))
