"""The parts of `tsctl build` that run on the server itself, with the TreeScale just
installed there: ``python -m treescale.provision.onserver ACTION`` with JSON arguments on
stdin, answering one JSON line ({"ok": true, ...} or {"ok": false, "error": "..."}).

- ``join``: wait until the local node reports the expected parent in `$sys.node.stats`
  (asked here because the machine running tsctl may not reach the tree's addresses).
- ``db``: put a freshly compiled tree into the node's database, replacing only the tree
  tables, so what the node stored itself (handlers, load balancer state) survives.

Must not touch: SSH or the planning of a build (treescale.provision runs this over SSH
and decides what to change), subject spellings (treescale.subjects).
"""

from __future__ import annotations

import json
import os
import sys
import time

from treescale import subjects


def _alive(pid_file: str | None, pid: int | None = None) -> bool:
    """The node still runs: the process ``pid`` (systemd mode: the unit's main pid when
    it was started; if systemd had to start it again, this node exited) or the one
    ``pid_file`` names (daemon mode). True when neither is known."""
    try:
        if pid is None:
            if not pid_file:
                return True
            with open(pid_file) as f:
                pid = int(f.read().split()[0])
        os.kill(pid, 0)
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()  # a zombie has exited
    except (OSError, ValueError, IndexError):
        return False


def wait_joined(name: str, parent: str | None, address: str, token: str | None,
                timeout: float, pid_file: str | None = None, pid: int | None = None,
                keys_dir: str | None = None) -> dict:
    from treescale import Client

    keys: dict = {}
    if keys_dir:  # CURVE: the node's own keypair, a key it trusts
        from treescale.keys import load_own

        own = load_own(keys_dir)
        keys = {"server_key": own.public, "keypair": own}
    deadline = time.monotonic() + timeout
    last: dict | None = None
    error = "no report"
    while time.monotonic() < deadline:
        if not _alive(pid_file, pid):
            return {"ok": False, "error": f"node {name} exited"}
        try:
            with Client(address, token=token, name="tsctl-build",
                        timeout=min(5.0, max(0.5, deadline - time.monotonic())),
                        on_error=lambda err: None, **keys) as c:
                c.subscribe(subjects.NODE_STATS)
                while time.monotonic() < deadline:
                    ev = c.next_event(min(1.0, max(0.0, deadline - time.monotonic())))
                    if ev is None:
                        if not _alive(pid_file, pid):
                            return {"ok": False, "error": f"node {name} exited"}
                        continue
                    report = ev.json()
                    if report.get("node") != name:
                        continue
                    last = report
                    if report.get("parent") == parent:
                        return {"ok": True, "children": report.get("children", [])}
        except Exception as exc:  # not answering yet (starting): try again until deadline
            error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)  # the node is starting; nothing to wait on but time
    if last is not None:
        return {"ok": False, "error": f"node {name} did not link to {parent or 'nothing'} "
                f"within {timeout:g}s (it reports parent {last.get('parent') or 'none'})"}
    return {"ok": False, "error": f"node {name} at {address} did not report within "
            f"{timeout:g}s ({error})"}


def install_db(new: str, live: str, pinned: bool) -> dict:
    """Move the tree of database ``new`` into ``live`` (created if missing). Unless the
    config pinned a version, the live version goes up by one."""
    from treescale.fabric import read_db, store_fabric, stored_version
    from treescale.store import Store

    fabric = read_db(new)
    with Store(live) as store:
        version = fabric.version if pinned else stored_version(store) + 1
        store_fabric(store, fabric, version)
    os.unlink(new)
    return {"ok": True, "version": version}


def main() -> None:
    action = sys.argv[1] if len(sys.argv) > 1 else ""
    args = json.loads(sys.stdin.read() or "{}")
    try:
        if action == "join":
            answer = wait_joined(args["name"], args.get("parent"), args["address"],
                                 args.get("token"), float(args.get("timeout", 60)),
                                 args.get("pid_file"), args.get("pid"),
                                 args.get("keys_dir"))
        elif action == "db":
            answer = install_db(args["new"], args["live"], bool(args.get("pinned")))
        else:
            answer = {"ok": False, "error": f"unknown action {action!r} (join, db)"}
    except Exception as exc:  # the answer must stay one JSON line
        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(answer), flush=True)
    sys.exit(0 if answer["ok"] else 1)


if __name__ == "__main__":
    main()
