"""Remote exec over the bus: a node runs a shell command for an authorised requester.

Owns: the ``exec`` service (op ``run``) and its limits: the off switch, how many
commands run at once, the per-command timeout, the audit event.

Must not touch: how a call reaches it or how replies travel (treescale.services.rpc),
how a command is run and killed (treescale.services.process).

It is an rpc ``ServiceEndpoint`` (``$svc.exec.<node>`` and ``$svc.exec`` for group and
tag targets, which the node's routing narrows), so the node loop never waits on a
process:

    op "run", args {"command": str, "timeout": float}
    stream messages  "stdout" / "stderr", data: bytes, as the command writes them
    result           {"exit": int, "duration": float[, "error": str]}

Every run is published as ``$sys.audit.exec``. Exec is off unless the node's config
says ``exec_enabled = true``; a disabled or busy node answers exit 126 with an error
instead of silence. Who may exec is checked by the node that accepted the request
(permission ``exec``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from treescale import subjects
from treescale.services import ServiceContext
from treescale.services.process import run_command
from treescale.services.rpc import Emit, ServiceEndpoint, ServiceError

log = logging.getLogger("treescale.exec")

SERVICE = "exec"
MAX_CONCURRENT = 8


class ExecService:
    """Runs in a thread of the node process; talks to the node like any client."""

    def __init__(self, ctx: ServiceContext, enabled: bool) -> None:
        self.node = ctx.node
        self.enabled = enabled
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        # Two workers more than may run: a request past the limit finds a free worker
        # and gets its "busy" answer at once instead of queueing behind the runs.
        self.endpoint = ServiceEndpoint(ctx, SERVICE, {"run": self.run},
                                        workers=MAX_CONCURRENT + 2)

    @classmethod
    def start(cls, ctx: ServiceContext) -> ExecService:
        return cls(ctx, ctx.config.exec_enabled)

    def close(self) -> None:
        self.endpoint.close()

    def run(self, args: dict, emit: Emit) -> dict[str, Any]:
        """Run ``args["command"]``, streaming its output; the result has its exit."""
        command = args.get("command")
        if not isinstance(command, str):
            raise ServiceError("exec run needs a command (a string)")
        try:
            timeout = float(args.get("timeout", 60.0))
        except (TypeError, ValueError):
            raise ServiceError("exec run: timeout must be a number of seconds") from None
        if not self.enabled:
            return {"exit": 126, "duration": 0.0,
                    "error": f"exec is disabled on node {self.node} "
                             "(set exec_enabled = true in its config)"}
        if not self._slots.acquire(blocking=False):
            return {"exit": 126, "duration": 0.0,
                    "error": f"node {self.node} is already running "
                             f"{MAX_CONCURRENT} commands"}
        try:
            return self._run(command, timeout, args.get("_requester", ""), emit)
        finally:
            self._slots.release()

    def _run(self, command: str, timeout: float, requester: str, emit: Emit) -> dict:
        try:
            run = run_command(command, emit, timeout=timeout)
        except Exception as exc:  # report, never die silently
            return {"exit": 127, "duration": 0.0,
                    "error": f"cannot run on node {self.node}: {exc}"}
        result: dict[str, Any] = {"exit": run.exit, "duration": run.duration}
        if run.timed_out:
            result["error"] = f"timed out after {timeout:g}s on node {self.node}"
        self.endpoint.publish(subjects.AUDIT_EXEC, {
            "node": self.node, "command": command, "requester": requester,
            "exit": run.exit, "duration": run.duration})
        return result
