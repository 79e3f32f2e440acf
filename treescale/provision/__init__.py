"""Provisioning a tree onto servers over SSH (`tsctl build`, `tsctl teardown`).

For every server of a fabric (tree + ssh targets), in parallel: connect (paramiko, known
hosts on first use), check the remote Python, compare what is installed with what should
be (plan.py, pure), then copy the wheelhouse, install a venv, write the compiled tree,
install a systemd unit or a run script, (re)start the node only if something changed (a
child only once its parent's build is over: the tree restarts from the root down), and
wait until the node reports its parent. One server failing never stops the others; each
result names the step and the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from treescale.provision import keyring
from treescale.provision import plan as P
from treescale.provision.server import Artifacts, ServerJob, ServerResult
from treescale.provision.ssh import DEFAULT_KNOWN_HOSTS, KnownHosts, StepError
from treescale.provision.wheelhouse import (
    DEFAULT_CACHE,
    Wheelhouse,
    WheelhouseCache,
    WheelhouseError,
)

__all__ = ["build", "teardown", "ServerResult", "StepError", "WheelhouseError",
           "DEFAULT_KNOWN_HOSTS", "DEFAULT_CACHE", "DEFAULT_KEY_STORE", "servers"]
DEFAULT_KEY_STORE = keyring.DEFAULT_KEY_STORE

log = logging.getLogger(__name__)
SUPERVISORS = ("auto", "systemd", "daemon")
Report = Callable[[str, str], None]  # (server name, step)


def servers(fabric: Any) -> list[tuple[str, Any]]:
    """(node name, ssh target) for every node, root first; ValueError if one lacks ssh."""
    missing = [n for n in fabric.tree.names if n not in fabric.ssh]
    if missing:
        raise ValueError(f"no ssh target for node(s): {', '.join(missing)}")
    return [(n, fabric.ssh[n]) for n in fabric.tree.names]


def _token_for(node_cfg: Any, given: str | None) -> str | None:
    """A token the join check can use on this node: --token if the node's own tokens
    take it (or it has another kind of auth), else the last of its tokens (the tree's
    admin token, in a fabric `tsctl build` secured)."""
    tokens = getattr(node_cfg, "tokens", None)
    known = [tokens] if isinstance(tokens, str) else \
        list(tokens) if isinstance(tokens, dict | list | tuple) else []
    if given is not None and (not known or given in known):
        return given
    return known[-1] if known else None


def compile_config(fabric: Any, workdir: Path) -> tuple[Path, str]:
    """The tree every node starts from, compiled once: (db file, digest of its tree).

    SSH passwords stay here: nodes get the targets (any node can rebuild the tree) but
    never the secrets used to log into the other servers."""
    from treescale.fabric import compile_db, fabric_to_dict, without_passwords

    shipped = without_passwords(fabric)
    path = workdir / "tree.db"
    compile_db(shipped, path)
    content = json.dumps(fabric_to_dict(shipped), sort_keys=True).encode()
    return path, hashlib.sha256(content).hexdigest()


def _fixed_wheelhouse(directory: Path) -> Callable[[Any], Wheelhouse]:
    """--wheelhouse DIR: these wheels for every server, as they are."""
    files = sorted(Path(directory).glob("*.whl"))
    if not any(f.name.startswith("treescale-") for f in files):
        raise WheelhouseError(f"{directory} holds no treescale wheel")
    house = Wheelhouse.of(files)
    return lambda target: house


class _ParentsFirst:
    """Which builds are over, so that a node restarts after its parent: restarted
    before, it links to the old parent, and healing moves it under the heir when that
    parent goes. The jobs start in tree order (root first) and only wait on earlier
    ones, so a waiting job's parent always holds a worker or is done: no deadlock."""

    def __init__(self, names: list[str], parent_of: Callable[[str], str | None]) -> None:
        self._done = {name: threading.Event() for name in names}
        order = {name: i for i, name in enumerate(names)}
        self._parent = {name: p for name in names
                        if (p := parent_of(name)) in order and order[p] < order[name]}

    def run(self, name: str, build: Callable[[], ServerResult]) -> ServerResult:
        try:
            return build()
        finally:
            self._done[name].set()

    def wait(self, name: str) -> None:
        parent = self._parent.get(name)
        if parent is not None:
            self._done[parent].wait()


def _run_all(jobs: list[tuple[ServerJob, Callable[[ServerJob], ServerResult]]],
             parallel: int) -> list[ServerResult]:
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = [pool.submit(fn, job) for job, fn in jobs]
        results = []
        for (job, _), fut in zip(jobs, futures, strict=True):
            try:
                results.append(fut.result())
            except Exception as exc:  # a bug must not hide the other servers' results
                log.exception("%s: unexpected failure", job.name)
                job.result.status, job.result.error = "failed", f"{type(exc).__name__}: {exc}"
                results.append(job.result)
        return results


def build(fabric: Any, *, parallel: int = 8, dry_run: bool = False, wait: bool = True,
          join_timeout: float = 60.0, known_hosts: Path = DEFAULT_KNOWN_HOSTS,
          wheelhouse: Path | None = None, cache: Path = DEFAULT_CACHE,
          token: str | None = None, connect_timeout: float = 10.0, supervisor: str = "auto",
          key_store: Path | None = DEFAULT_KEY_STORE,
          report: Report = lambda name, step: None) -> list[ServerResult]:
    """Build every server of ``fabric``; one ServerResult each, in tree order.
    ``supervisor``: what keeps the node running: systemd, daemon (a run script and a pid
    file) or auto (systemd where it runs and we are root). ``key_store``: where the
    nodes' CURVE keypairs are kept on this machine (made there on first use); None:
    the tree runs without keys."""
    if supervisor not in SUPERVISORS:
        raise ValueError(f"supervisor must be one of {', '.join(SUPERVISORS)}")
    targets = servers(fabric)
    known = KnownHosts(known_hosts, record=not dry_run)
    houses = (_fixed_wheelhouse(wheelhouse) if wheelhouse is not None
              else WheelhouseCache(cache).get)
    keys: dict = {}
    if key_store is not None:  # made here even in a dry run: it shows the real plan
        fabric, keys = _with_keys(fabric, Path(key_store), targets)
    with tempfile.TemporaryDirectory(prefix="tsctl-build-") as tmp:
        db_file, db_digest = compile_config(fabric, Path(tmp))
        art = Artifacts(houses, db_file, db_digest, pinned=bool(fabric.version), keys=keys)
        jobs = []
        parent_built = _ParentsFirst([name for name, _ in targets], fabric.tree.parent)
        for name, target in targets:
            job = ServerJob(name, target, known, lambda step, n=name: report(n, step),
                            connect_timeout)
            spec = fabric.tree.spec(name)
            host = "127.0.0.1" if spec.host in ("0.0.0.0", "*", "::") else spec.host
            node_token = _token_for(fabric.nodes.get(name), token)
            jobs.append((job, lambda j, s=spec, h=host, t=node_token: parent_built.run(
                j.name, lambda: j.build(
                    art, fabric.tree.parent(s.name), f"tcp://{h}:{s.port}", t, dry_run,
                    wait, join_timeout, supervisor, lambda: parent_built.wait(j.name)))))
        return _run_all(jobs, parallel)


def _with_keys(fabric: Any, store: Path, targets: list) -> tuple[Any, dict]:
    """The fabric with keys_dir and parent_key set, and each node's key files."""
    pairs = keyring.ensure_keys(store, [name for name, _ in targets])
    dirs = {}
    for name, target in targets:
        try:
            dirs[name] = P.Layout(P.check_install_root(target.install_root), name).keys_dir
        except ValueError:
            pass  # that server's job fails on its install_root, with its reason
    files = {name: keyring.server_files(name, pairs) for name in dirs}
    return keyring.keyed_fabric(fabric, pairs, dirs), files


def teardown(fabric: Any, *, parallel: int = 8, dry_run: bool = False,
             known_hosts: Path = DEFAULT_KNOWN_HOSTS, connect_timeout: float = 10.0,
             report: Report = lambda name, step: None) -> list[ServerResult]:
    """Stop every node of ``fabric`` and remove what build installed."""
    known = KnownHosts(known_hosts, record=not dry_run)
    jobs = [(ServerJob(name, target, known, lambda step, n=name: report(n, step),
                       connect_timeout), lambda j: j.teardown(dry_run))
            for name, target in servers(fabric)]
    return _run_all(jobs, parallel)
