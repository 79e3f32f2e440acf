"""`tsctl api exec`: send an exec request into the tree and stream the results."""

from __future__ import annotations

import json
import os
import sys
import time

import msgpack

from treescale import Client
from treescale.services.exec import EXEC_SUBJECT, exec_subject


def run_exec(address: str, token: str | None, timeout: float, command: str,
             exec_timeout: float, node: str | None, group: str | None, tag: str | None,
             as_json: bool) -> int:
    """Stream stdout/stderr as they arrive; return the exit code (the worst one over
    several nodes; 124 if a node did not answer in time)."""
    reply = f"_exec.{os.getpid()}.{time.monotonic_ns()}"
    results: dict[str, dict] = {}
    with Client(address, token=token, name="tsctl-exec", timeout=timeout,
                on_error=lambda err: None) as c:
        c.subscribe(reply)
        body = msgpack.packb({"command": command, "timeout": exec_timeout, "reply": reply})
        if node is not None:
            c.publish(exec_subject(node), body)
        else:
            c.publish(EXEC_SUBJECT, body, target=f"group:{group}" if group else f"tag:{tag}")
        c.flush(timeout)
        if c.errors:
            raise c.errors[0]
        deadline = time.monotonic() + exec_timeout + timeout
        quiet_after = None  # group/tag: stop once no new node answered for a while
        while time.monotonic() < deadline:
            ev = c.next_event(0.5)
            if ev is None:
                if node is None and results and all("exit" in r for r in results.values()):
                    quiet_after = quiet_after or time.monotonic() + 1.5
                    if time.monotonic() > quiet_after:
                        break
                continue
            quiet_after = None
            msg = msgpack.unpackb(ev.data, raw=False)
            r = results.setdefault(msg["node"], {"node": msg["node"], "stdout": b"",
                                                 "stderr": b""})
            if "stream" in msg:
                r[msg["stream"]] += msg["data"]
                if not as_json:
                    _echo(msg["node"], msg["stream"], msg["data"], labelled=node is None)
            else:
                r.update(exit=msg["exit"], duration=msg.get("duration"),
                         error=msg.get("error"))
                if msg.get("error") and not as_json:
                    print(f"error: {msg['error']}", file=sys.stderr)
                if node is not None:
                    break
    if node is not None and node not in results:
        print(f"error: no answer from node {node!r} within {exec_timeout + timeout:g}s "
              "(is it in the tree?)", file=sys.stderr)
        return 124
    if not results:
        print("error: no node of that group/tag answered", file=sys.stderr)
        return 124
    if as_json:
        for r in results.values():
            print(json.dumps({**r, "stdout": r["stdout"].decode(errors="replace"),
                              "stderr": r["stderr"].decode(errors="replace")}))
    return max((r.get("exit", 124) for r in results.values()), default=124)


def _echo(node: str, stream: str, data: bytes, labelled: bool) -> None:
    out = sys.stdout if stream == "stdout" else sys.stderr
    if labelled:
        text = data.decode(errors="replace")
        for line in text.splitlines(keepends=True):
            out.write(f"[{node}] {line}")
    else:
        out.buffer.write(data)
    out.flush()
