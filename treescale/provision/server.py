"""The SSH steps on one server: check Python, inspect, install, configure, start, wait for
the node to join; and the reverse for teardown. Each step reports its name first, so a
failure says where it happened."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from treescale.provision import keyring
from treescale.provision import plan as P
from treescale.provision.ssh import KnownHosts, Remote, StepError, q
from treescale.provision.wheelhouse import PyTarget, Wheelhouse, WheelhouseError, glibc_version

MIN_PYTHON = (3, 11)
# Reads the remote Python's version without assuming anything else about it.
PROBE_PYTHON = ("import sys, platform, json; print(json.dumps([list(sys.version_info[:3]), "
                "platform.machine(), list(platform.libc_ver())]))")


@dataclass
class Artifacts:
    """What every server of one build receives (built locally, once)."""

    wheelhouses: Callable[[PyTarget], Wheelhouse]  # what suits a kind of server
    db_file: Path                             # the compiled tree
    db_digest: str                            # digest of the tree it holds
    pinned: bool                              # the config set the version itself
    # CURVE: node name -> its keys_dir's files (relative path -> (content, mode))
    keys: dict = field(default_factory=dict)


@dataclass
class ServerResult:
    """How one server fared; ``status`` is built, up to date, would change, removed,
    nothing to remove, or failed (then ``step`` and ``error`` say where and why)."""

    name: str
    host: str
    status: str = "pending"
    step: str | None = None
    error: str | None = None
    actions: tuple[str, ...] = ()
    detail: str = ""
    pid: int | None = None
    mode: str | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def line(self) -> str:
        where = f"{self.name} ({self.host})"
        if not self.ok:
            return f"{where}: {self.step}: {self.error}"
        return f"{where}: {self.status}" + (f" — {self.detail}" if self.detail else "")

    def as_dict(self) -> dict:
        return {"name": self.name, "host": self.host, "ok": self.ok, "status": self.status,
                "step": self.step, "error": self.error, "actions": list(self.actions),
                "detail": self.detail, "pid": self.pid, "mode": self.mode,
                "seconds": round(self.seconds, 2)}


@dataclass
class Probe:
    """What inspecting a server found."""

    systemd: bool
    root: bool
    marker: bool
    venv_ok: bool
    pid: int | None
    unit: bool
    state: dict

    @property
    def mode(self) -> str:
        return "systemd" if self.systemd and self.root else "daemon"


def _probe_script(layout: P.Layout) -> str:
    r = layout
    return "; ".join([
        "[ -d /run/systemd/system ] && echo systemd",
        '[ "$(id -u)" = 0 ] && echo root',
        f"[ -e {q(r.marker)} ] && echo marker",
        f"[ -x {q(r.python)} ] && echo venv",
        f"[ -e {q(r.unit_path)} ] && echo unit",
        f"if [ -e {q(r.unit_path)} ]; then P=$(systemctl show -p MainPID --value "
        f"{q(r.unit_name)} 2>/dev/null); else P=$(cat {q(r.pid_file)} 2>/dev/null); fi",
        # the pid counts only if it is still this node (pids are reused)
        'if [ -n "$P" ] && [ "$P" != 0 ] && C=$(tr "\\0" " " < /proc/$P/cmdline 2>/dev/null) '
        f"&& echo \"$C\" | grep -qF -- {q(r.python + ' -m tsctl.main node start ')} "
        f"&& echo \"$C\" | grep -qF -- {q(' --name ' + r.name + ' ')}; then echo pid=$P; fi",
        "true",
    ])


def probe(remote: Remote, layout: P.Layout) -> Probe:
    out = remote.check(_probe_script(layout), "inspect", timeout=30).split()
    pid = next((int(w[4:]) for w in out if w.startswith("pid=")), None)
    state: dict = {}
    if "marker" in out:
        text = remote.read_text(layout.state_file)
        try:
            state = json.loads(text) if text else {}
        except ValueError:
            state = {}  # a damaged state file: everything counts as changed
    return Probe(systemd="systemd" in out, root="root" in out, marker="marker" in out,
                 venv_ok="venv" in out, pid=pid, unit="unit" in out, state=state)


def check_python(remote: Remote, python: str) -> PyTarget:
    """What the remote Python is; StepError if it is missing or too old."""
    code, output = remote.run(f"{q(python)} -c {q(PROBE_PYTHON)}", 30, step="python")
    if code == 127 or "not found" in output and code != 0:
        raise StepError("python", f"{python} not found on the server (install Python "
                        f">= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or set python = \"/path\" for "
                        "this server in the ssh config)")
    try:
        version, machine, (lib, lib_version) = json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError, TypeError):
        raise StepError("python", f"{python} did not run (exit status {code}): "
                        f"{output.strip()[-200:] or 'no output'}") from None
    if tuple(version[:2]) < MIN_PYTHON:
        raise StepError("python", f"{python} is Python {'.'.join(map(str, version))}; "
                        f"TreeScale needs >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}")
    return PyTarget(tuple(version[:2]), machine,
                    glibc_version(lib_version) if lib == "glibc" else None)


class ServerJob:
    """Build or tear down one server; ``report(step)`` is told each step as it starts."""

    def __init__(self, name: str, target: Any, known: KnownHosts,
                 report: Callable[[str], None] = lambda step: None,
                 connect_timeout: float = 10.0) -> None:
        self.name = name
        self.target = target
        self.known = known
        self.report = report
        self.connect_timeout = connect_timeout
        self.result = ServerResult(name, target.host)
        self.keyed = False  # the node has CURVE keys (the join check needs them)
        try:
            self.layout = P.Layout(P.check_install_root(target.install_root), name)
            self.bad_config: str | None = None
        except ValueError as exc:
            self.layout, self.bad_config = P.Layout("/nonexistent", name), str(exc)

    def _step(self, step: str) -> None:
        self.result.step = step
        self.report(step)

    def run(self, work: Callable[[Remote], None]) -> ServerResult:
        started = time.monotonic()
        if self.bad_config is not None:
            self.result.status, self.result.step, self.result.error = \
                "failed", "config", self.bad_config
            return self.result
        try:
            self._step("connect")
            with Remote(self.target, self.known, self.connect_timeout).connect() as remote:
                work(remote)
            self.result.step = None
        except StepError as exc:
            self.result.status, self.result.step, self.result.error = \
                "failed", exc.step, exc.reason
        except WheelhouseError as exc:
            self.result.status, self.result.error = "failed", str(exc)
        except (OSError, EOFError) as exc:  # the connection broke mid-step
            self.result.status, self.result.error = "failed", f"connection lost: {exc}"
        except Exception as exc:
            import paramiko

            if not isinstance(exc, paramiko.SSHException):
                raise
            self.result.status, self.result.error = "failed", f"ssh: {exc}"
        self.result.seconds = time.monotonic() - started
        return self.result

    # -- build --------------------------------------------------------------------------

    def build(self, art: Artifacts, parent: str | None, node_address: str,
              token: str | None, dry_run: bool = False, wait: bool = True,
              join_timeout: float = 60.0, supervisor: str = "auto",
              parent_built: Callable[[], None] = lambda: None) -> ServerResult:
        """``parent_built`` returns once the parent's own build is over: this node is
        (re)started, and its join checked, only then."""
        return self.run(lambda remote: self._build(remote, art, parent, node_address, token,
                                                   dry_run, wait, join_timeout, supervisor,
                                                   parent_built))

    def _build(self, remote: Remote, art: Artifacts, parent: str | None, node_address: str,
               token: str | None, dry_run: bool, wait: bool, join_timeout: float,
               supervisor: str, parent_built: Callable[[], None]) -> None:
        lay, res = self.layout, self.result
        self._step("python")
        py = check_python(remote, self.target.python)
        self._step("inspect")
        found = probe(remote, lay)
        if found.state and found.state.get("node") not in (None, self.name):
            raise StepError("inspect", f"{lay.root} holds node {found.state['node']!r}; "
                            "give each node its own install_root")
        mode = found.mode if supervisor == "auto" else supervisor
        if mode == "systemd" and found.mode != "systemd":
            raise StepError("inspect", "systemd asked for, but the server does not run it "
                            "(no /run/systemd/system) or we are not root there")
        systemd = mode == "systemd"
        service = P.unit_text(lay, lay.db) if systemd else P.run_script(lay, lay.db)
        self._step("wheelhouse")
        house = art.wheelhouses(py)
        keys = art.keys.get(self.name)
        self.keyed = bool(keys)
        desired = P.Desired(house.digest, art.db_digest, service,
                            keyring.files_digest(keys) if keys else None)
        actions = P.plan(desired, P.Found(found.state, found.venv_ok, found.pid is not None))
        res.actions, res.mode, res.pid = actions, mode, found.pid
        res.detail = P.describe(actions, systemd, len(house.files), house.size) if actions \
            else ""
        if dry_run:
            res.status = "would change" if actions else "up to date"
            return
        state = dict(found.state, node=self.name, mode=mode)
        if not found.marker:
            remote.check(f"mkdir -p {q(lay.root)} && touch {q(lay.marker)}", "prepare")
        stopped, waited = [], []

        def after_parent() -> None:
            # A node started while its parent still has to restart links to the old
            # parent; when that one goes, healing moves it under the heir, for good.
            if parent is not None and not waited:
                waited.append(True)
                self._step("wait for parent")
                parent_built()

        def stop_once() -> None:  # the old node must not run from a venv being replaced
            if P.RESTART in actions and not stopped:
                after_parent()
                self._step("stop")
                self._stop(remote, found)
                stopped.append(True)

        if P.INSTALL in actions:
            self._install(remote, house, state, before_venv=stop_once)
        if P.WRITE_DB in actions:
            self._step("db")
            remote.put(art.db_file, lay.db + ".new", mode=0o600)  # it holds tokens
            self._on_server(remote, "db", {"new": lay.db + ".new", "live": lay.db,
                                           "pinned": art.pinned}, 60, "db")
            self._save(remote, state, db=art.db_digest)
        if P.WRITE_KEYS in actions:
            self._step("keys")
            self._write_keys(remote, keys)
            self._save(remote, state, keys=desired.keys)
        if P.SERVICE in actions:
            self._step("service")
            self._write_service(remote, service, systemd, found)
            self._save(remote, state, service=P.digest(service))
        stop_once()
        if P.RESTART in actions or P.START in actions:
            after_parent()
            self._step("start")
            res.pid = self._start(remote, systemd)
        res.status = "built" if actions else "up to date"
        if wait:
            after_parent()
            self._step("join")
            joined = self._wait_join(remote, parent, node_address, token, join_timeout)
            res.detail = "; ".join(filter(None, (res.detail, joined)))

    def _save(self, remote: Remote, state: dict, **changes: Any) -> None:
        state.update(changes)
        remote.write_file(self.layout.state_file, json.dumps(state, indent=1).encode())

    def _install(self, remote: Remote, house: Wheelhouse, state: dict,
                 before_venv: Callable[[], None]) -> None:
        lay = self.layout
        self._step("upload")
        self._save(remote, state, wheelhouse=None)  # a failed install must not look done
        remote.check(f"mkdir -p {q(lay.wheels)}", "upload")
        have = remote.listdir_sizes(lay.wheels)
        wanted = {f.name: f for f in house.files}
        for name in set(have) - set(wanted):
            remote.remove(f"{lay.wheels}/{name}")
        for name, f in sorted(wanted.items()):
            if have.get(name) != f.stat().st_size:
                remote.put(f, f"{lay.wheels}/{name}")
        before_venv()
        self._step("venv")
        # pip runs straight from its wheel when the wheelhouse has one: no copy of pip
        # in every venv, which is most of the venv's creation time
        pip = next((f.name for f in house.files if f.name.startswith("pip-")), None)
        venv = f"{q(self.target.python)} -m venv {'--without-pip ' if pip else ''}{q(lay.venv)}"
        remote.check(f"rm -rf {q(lay.venv)} && {venv}", "venv", timeout=300)
        self._step("pip install")
        run_pip = f"{q(lay.wheels + '/' + pip + '/pip')}" if pip else "-m pip"
        remote.check(f"{q(lay.python)} {run_pip} install --quiet --disable-pip-version-check "
                     f"--no-cache-dir --no-compile --no-index --find-links {q(lay.wheels)} "
                     "treescale", "pip install", timeout=600)
        self._save(remote, state, wheelhouse=house.digest)

    def _write_keys(self, remote: Remote, files: dict[str, tuple[bytes, int]]) -> None:
        """The node's keys_dir: its keypair and authorized/ as build made them (a
        revoked list kept on the server stays)."""
        d = self.layout.keys_dir
        remote.check(f"mkdir -p -m 700 {q(d)} && rm -rf {q(d + '/authorized')} && "
                     f"mkdir -m 700 {q(d + '/authorized')} && chmod 700 {q(d)}", "keys")
        for path, (data, mode) in sorted(files.items()):
            remote.write_file(f"{d}/{path}", data, mode)

    def _write_service(self, remote: Remote, text: str, systemd: bool, found: Probe) -> None:
        lay = self.layout
        if systemd:
            remote.write_file(lay.unit_path, text.encode())
            remote.check(f"systemctl daemon-reload && systemctl enable {q(lay.unit_name)}",
                         "service")
            return
        remote.write_file(lay.run_script, text.encode(), 0o755)
        if found.unit:  # from systemd to daemon: the unit must not start a second node
            remote.check(f"systemctl disable {q(lay.unit_name)}; rm -f {q(lay.unit_path)} "
                         "&& systemctl daemon-reload", "service")

    def _stop(self, remote: Remote, found: Probe) -> None:
        lay = self.layout
        if found.unit and found.mode == "systemd" and found.pid is not None:
            remote.check(f"systemctl stop {q(lay.unit_name)}", "stop", timeout=60)
        elif found.pid is not None:
            remote.check(stop_pid_script(found.pid), "stop", timeout=60)
        remote.run(f"rm -f {q(lay.pid_file)}", 10)

    def _start(self, remote: Remote, systemd: bool) -> int | None:
        lay = self.layout
        if systemd:
            remote.check(f"systemctl restart {q(lay.unit_name)}", "start", timeout=60)
            out = remote.check(f"systemctl show -p MainPID --value {q(lay.unit_name)}",
                               "start")
            if not int(out.strip() or 0):  # the main pid is kept until the node exits
                raise StepError("start", f"node {self.name} exited at once"
                                + self._node_log(remote, systemd))
            return int(out.strip())
        # `&` on the start command alone: a backgrounded list would keep the channel open
        remote.check(f"cd {q(lay.root)} || exit 1; rm -f {q(lay.pid_file)}; "
                     f"setsid nohup sh {q(lay.run_script)} >> {q(lay.log_file)} 2>&1 "
                     "< /dev/null &", "start")
        # the script writes its pid before it becomes the node: wait for the file
        out = remote.check(
            f"for i in $(seq 100); do [ -s {q(lay.pid_file)} ] && cat {q(lay.pid_file)} "
            "&& exit 0; sleep 0.1; done; exit 1", "start", timeout=30)
        pid = re.search(r"^\d+$", out, re.M)
        if pid is None:
            raise StepError("start", f"no pid in {lay.pid_file}: {out.strip()[-200:]!r}")
        return int(pid.group())

    def _wait_join(self, remote: Remote, parent: str | None, address: str,
                   token: str | None, timeout: float) -> str:
        """Ask the server itself (so its address need not be reachable from here) until
        its node reports the expected parent."""
        lay = self.layout
        systemd = self.result.mode == "systemd"
        # systemd: the main pid the unit started; a restart by systemd means it exited
        args = {"name": self.name, "parent": parent, "address": address, "token": token,
                "keys_dir": lay.keys_dir if self.keyed else None,
                "timeout": timeout, "pid_file": None if systemd else lay.pid_file,
                "pid": self.result.pid if systemd else None}
        try:
            self._on_server(remote, "join", args, timeout + 30, "join")
        except StepError as exc:
            raise StepError("join", exc.reason + self._node_log(remote, systemd)) from None
        return f"joined under {parent}" if parent else "root of the tree"

    def _node_log(self, remote: Remote, systemd: bool) -> str:
        """'; node log: ...', its last lines, for an error ('' if it wrote none)."""
        lay = self.layout
        unit = q(lay.unit_name)
        # the node's own output; systemd's lines on the unit if it wrote none (a node
        # that could not even be executed)
        logs = (f"journalctl -q -o cat -n 5 _SYSTEMD_UNIT={unit} _TRANSPORT=stdout "
                f"| grep . || journalctl -q -n 5 -u {unit}" if systemd
                else f"tail -n 5 {q(lay.log_file)}")
        tail = remote.run(f"{logs} 2>/dev/null", 10)[1].strip()
        return f"; node log: {' | '.join(tail.splitlines())}" if tail else ""

    def _on_server(self, remote: Remote, action: str, args: dict, timeout: float,
                   step: str) -> dict:
        """Run treescale.provision.onserver ACTION in the server's venv."""
        code, output = remote.run(f"{q(self.layout.python)} -m treescale.provision.onserver "
                                  f"{action}", timeout, json.dumps(args).encode(), step)
        try:
            answer = json.loads(output.strip().splitlines()[-1])
        except (ValueError, IndexError):
            answer = {"ok": False, "error": output.strip()[-300:] or f"exit status {code}"}
        if not answer.get("ok"):
            raise StepError(step, answer.get("error") or f"exit status {code}")
        return answer

    # -- teardown -----------------------------------------------------------------------

    def teardown(self, dry_run: bool = False) -> ServerResult:
        return self.run(lambda remote: self._teardown(remote, dry_run))

    def _teardown(self, remote: Remote, dry_run: bool) -> None:
        lay, res = self.layout, self.result
        self._step("inspect")
        code, _ = remote.run(f"[ -e {q(lay.root)} ]", 10)
        found = probe(remote, lay)
        exists = code == 0
        if exists and not found.marker:
            raise StepError("inspect", f"{lay.root} exists but was not installed by tsctl "
                            f"build (no {P.MARKER}); not removing it")
        work = []
        if found.unit:
            work.append("remove the systemd unit")
        elif found.pid is not None:
            work.append(f"stop the node (pid {found.pid})")
        if exists:
            work.append(f"remove {lay.root}")
        res.detail = ", ".join(work)
        res.pid = found.pid
        if not work:
            res.status = "nothing to remove"
            return
        if dry_run:
            res.status = "would change"
            return
        if found.unit:
            self._step("stop")
            # reset-failed: a unit that ended failed would otherwise stay listed
            unit = q(lay.unit_name)
            remote.check(f"systemctl disable --now {unit}; rm -f {q(lay.unit_path)} && "
                         f"systemctl daemon-reload && {{ systemctl reset-failed {unit} "
                         "2>/dev/null; true; }", "stop", timeout=60)
        elif found.pid is not None:
            self._step("stop")
            remote.check(stop_pid_script(found.pid), "stop", timeout=60)
        if exists:
            self._step("remove")
            remote.check(f"rm -rf {q(lay.root)}", "remove", timeout=120)
        res.status = "removed"


def stop_pid_script(pid: int, grace: float = 10.0) -> str:
    """SIGTERM, wait up to ``grace`` seconds for a clean exit, then SIGKILL."""
    ticks = int(grace * 10)
    # a zombie (exited, not yet reaped by whoever adopted it) counts as stopped
    alive = f"kill -0 {pid} 2>/dev/null && ! grep -qs '^State:[[:space:]]*Z' /proc/{pid}/status"
    return (f"kill -TERM {pid} 2>/dev/null; for i in $(seq {ticks}); do "
            f"{alive} || exit 0; sleep 0.1; done; kill -KILL {pid}; true")
