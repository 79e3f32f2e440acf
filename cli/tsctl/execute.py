"""`tsctl api exec`: run a command through the exec service and stream its output.

Owns: turning exec's replies into what the user sees (output as it arrives, labelled
``[node] line`` for a group/tag, ``--json`` rows) and into tsctl's exit code.

Must not touch: how the call travels (treescale.services.rpc) or what the service does
(treescale.services.exec).
"""

from __future__ import annotations

import json
import sys

from treescale import Client
from treescale.services.rpc import iter_call

QUIET = 1.5  # group/tag: stop once every node heard from finished and this long passed


def run_exec(address: str, token: str | None, timeout: float, command: str,
             exec_timeout: float, node: str | None, group: str | None, tag: str | None,
             as_json: bool) -> int:
    """Stream stdout/stderr as they arrive; return the exit code (the worst one over
    several nodes; 124 if a node did not answer in time, 1 if the service refused)."""
    rows: dict[str, dict] = {}  # node -> its output, then its result

    def row(name: str) -> dict:
        return rows.setdefault(name, {"node": name, "stdout": b"", "stderr": b""})

    def on_stream(name: str, stream: str, data: bytes) -> None:
        row(name)[stream] += data
        if not as_json:
            _echo(name, stream, data, labelled=node is None)

    from tsctl.common import server_key

    with Client(address, token=token, name="tsctl-exec", timeout=timeout,
                on_error=lambda err: None, server_key=server_key()) as c:
        for r in iter_call(c, "exec", "run", {"command": command, "timeout": exec_timeout},
                           node=node, group=group, tag=tag,
                           timeout=exec_timeout + timeout, quiet=QUIET,
                           on_stream=on_stream):
            result = r.result if r.ok else {"exit": 1, "error": r.error}
            row(r.node).update(exit=result["exit"], duration=result.get("duration"),
                               error=result.get("error"))
            if result.get("error") and not as_json:
                print(f"error: {result['error']}", file=sys.stderr)
    if node is not None and node not in rows:
        print(f"error: no answer from node {node!r}: it is not in the tree, or its exec "
              "service is off (it runs with exec_enabled = true and client auth)",
              file=sys.stderr)
        return 124
    if not rows:
        print("error: no node of that group/tag answered", file=sys.stderr)
        return 124
    if as_json:
        for r in rows.values():
            print(json.dumps({**r, "stdout": r["stdout"].decode(errors="replace"),
                              "stderr": r["stderr"].decode(errors="replace")}))
    return max((r.get("exit", 124) for r in rows.values()), default=124)


def _echo(node: str, stream: str, data: bytes, labelled: bool) -> None:
    out = sys.stdout if stream == "stdout" else sys.stderr
    if labelled:
        text = data.decode(errors="replace")
        for line in text.splitlines(keepends=True):
            out.write(f"[{node}] {line}")
    else:
        out.buffer.write(data)
    out.flush()
