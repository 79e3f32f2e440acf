"""`tsctl build --supervisor systemd` for real: two Debian containers with systemd as
PID 1 and sshd (tests/system/systemdhost.py, image from tests/system/image.py) get a
two-node tree, root in one, its child in the other.

Shown against the real systemd: the unit is installed, enabled and running the exact
command (the child's install root holds a space, a specifier and a variable that systemd
would misread unless the unit escapes them) from its install root; the root sees its
child; a second build (supervisor auto) changes nothing; `kill -9` and a clean exit
alike make systemd start the node again and it rejoins; a node that cannot start fails
the build at once with its own log line, and comes back by itself once it can; teardown
stops, disables and removes the units.

The tests share one built tree (module-scoped) and run in file order. Slow tier: run by
`make test-system` (marker ``system``), not by `make test`.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests import dockerkit
from tests.buildkit import run_tsctl, summary, wheelhouse  # noqa: F401  (a fixture)
from tests.conftest import wait_until
from tests.system.systemdhost import SystemdHost, SystemdHosts, systemd_hosts  # noqa: F401
from treescale import subjects
from treescale.fabric import to_toml
from treescale.provision import plan as P

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]
docker_client = dockerkit.docker_client  # the kit's fixture, found by pytest here

ROOT, LEAF = "sroot", "sleaf"
PORTS = {ROOT: 7801, LEAF: 7802}
# systemd reads a space, %n and $HOME in a unit its own way: the unit must escape them
INSTALL_ROOTS = {ROOT: "/opt/treescale", LEAF: "/opt/tree scale/%n $HOME"}
JOIN_TIMEOUT = 45


class Listener:
    """A client on the root node hearing the tree's $sys.node events from now on.

    Short-lived on purpose: a client that only receives never pings its node (its
    heartbeat counts what it hears, not what it says), so the node drops it after
    client_timeout (15 s) and it misses a few seconds of events before it says hello
    again. One kept across these tests missed a NODE_UP."""

    def __init__(self, tree: Tree) -> None:
        from treescale import Client

        self.tree = tree
        self.client = Client(f"tcp://{tree.on[ROOT].address}:{PORTS[ROOT]}",
                             token=tree.token_file.read_text().strip(),
                             name="systemd-test", timeout=10,
                             server_key=tree.server_key_file(ROOT))
        for pattern in (subjects.NODE_UP, subjects.NODE_DOWN, subjects.NODE_STATS):
            self.client.subscribe(pattern)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close(timeout=2)

    def wait(self, what: str, match: Any, timeout: float = 30) -> dict:
        """The first event matching ``match(name, body)``."""
        found: list[dict] = []

        def heard() -> bool:
            ev = self.client.next_event(0.2)
            if ev is not None and match(ev.name, ev.json()):
                found.append(ev.json())
            return bool(found)

        try:
            wait_until(heard, timeout, what, interval=0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.tree.diagnosis()}") from None
        return found[0]

    def wait_linked(self, since: float, timeout: float = 30) -> None:
        """Until the root reports the child, and the child reports the root as its
        parent with an uptime that began after ``since`` (time.time())."""
        seen: dict[str, dict] = {}

        def match(name: str, body: dict) -> bool:
            if name == subjects.NODE_STATS:
                seen[body["node"]] = body
            root, leaf = seen.get(ROOT), seen.get(LEAF)
            return bool(root and leaf and root["children"] == [LEAF]
                        and leaf["parent"] == ROOT
                        and time.time() - leaf["uptime"] > since - 1)

        self.wait(f"{LEAF} linked under {ROOT} again", match, timeout)


class Tree:
    """The built tree: where each node runs, how to build and tear it down, what
    systemd says about its units."""

    def __init__(self, hosts: SystemdHosts, wheels: Path) -> None:
        self.hosts, self.wheels = hosts, wheels
        self.on = {ROOT: hosts.hosts[0], LEAF: hosts.hosts[1]}
        self.known_hosts = hosts.base / "known_hosts"
        self.files = self._write_fabric()
        self.first: dict[str, dict] = {}

    def _write_fabric(self) -> str:
        nodes = {ROOT: {"tree_ip": self.on[ROOT].address, "tree_port": PORTS[ROOT],
                        "childs": [LEAF]},
                 LEAF: {"tree_ip": self.on[LEAF].address, "tree_port": PORTS[LEAF]}}
        ssh = {n: {"host": self.on[n].address, "key_file": str(self.hosts.key_file),
                   "install_root": INSTALL_ROOTS[n]} for n in nodes}
        (self.hosts.base / "tree.toml").write_text(to_toml({"tree_node": nodes}))
        (self.hosts.base / "ssh.toml").write_text(to_toml({"ssh": ssh}))
        return f"{self.hosts.base / 'tree.toml'},{self.hosts.base / 'ssh.toml'}"

    def layout(self, name: str) -> P.Layout:
        return P.Layout(INSTALL_ROOTS[name], name)

    @property
    def operator_env(self) -> dict[str, str]:
        """Where build keeps the tree's admin token: this module's own directory."""
        return {"TREESCALE_CONFIG_DIR": str(self.hosts.base / "operator")}

    @property
    def token_file(self) -> Path:
        return self.hosts.base / "operator" / f"{ROOT}.token"  # <root>.token

    def tsctl(self, command: str, *extra: str) -> subprocess.CompletedProcess:
        return run_tsctl(command, "--files", self.files, "--known-hosts",
                         str(self.known_hosts), "--json", "--connect-timeout", "10", *extra,
                         env=self.operator_env)

    def build(self, *extra: str) -> subprocess.CompletedProcess:
        return self.tsctl("build", "--wheelhouse", str(self.wheels), "--join-timeout",
                          str(JOIN_TIMEOUT), "--keys-dir", str(self.key_store), *extra)

    @property
    def key_store(self) -> Path:
        """The operator's CURVE keys for this tree (build makes them): the tree links
        over CURVE, and a client needs the node's public key."""
        return self.hosts.base / "operator-keys"

    def server_key_file(self, name: str) -> str:
        return str(self.key_store / f"{name}.key")

    def unit(self, name: str, *props: str) -> dict[str, str]:
        return self.on[name].show(self.layout(name).unit_name, *props)

    def listen(self) -> Listener:
        return Listener(self)

    def diagnosis(self) -> str:
        """What systemd says about each node, for a failure message."""
        return "\n".join(self.on[n].run("systemctl", "status", "--no-pager", "-n", "20",
                                        self.layout(n).unit_name)[1] for n in PORTS)


@pytest.fixture(scope="module")
def tree(systemd_hosts: SystemdHosts, wheelhouse: Path) -> Tree:  # noqa: F811
    """The first build, root on the first container and its child on the second."""
    t = Tree(systemd_hosts, wheelhouse)
    proc = t.build("--supervisor", "systemd")
    assert proc.returncode == 0, proc.stderr
    t.first = summary(proc)
    return t


def node_argv(host: SystemdHost, pid: int | str) -> list[str]:
    out = host.check("cat", f"/proc/{pid}/cmdline")
    return out.split("\0")[:-1]


# ------------------------------------------------------------------------ the tests


def test_build_installs_enables_and_starts_a_unit_on_each_server(tree):
    s = tree.first
    assert {n: (s[n]["status"], s[n]["mode"]) for n in PORTS} == \
        dict.fromkeys(PORTS, ("built", "systemd"))
    assert "root of the tree" in s[ROOT]["detail"]
    assert f"joined under {ROOT}" in s[LEAF]["detail"]
    assert "write the systemd unit" in s[LEAF]["detail"]
    for name, host in tree.on.items():
        lay = tree.layout(name)
        assert host.check("cat", lay.unit_path) == P.unit_text(lay, lay.db)
        code, out = host.run("systemd-analyze", "verify", lay.unit_path)
        assert code == 0, out
        unit = tree.unit(name, "ActiveState", "SubState", "UnitFileState", "MainPID",
                         "NRestarts", "Restart")
        assert unit == {"ActiveState": "active", "SubState": "running",
                        "UnitFileState": "enabled", "MainPID": str(s[name]["pid"]),
                        "NRestarts": "0", "Restart": "always"}
        assert host.node_pids() == [s[name]["pid"]]
        # systemd ran exactly the node's command, from its install root
        assert node_argv(host, s[name]["pid"]) == list(lay.node_argv(lay.db))
        assert host.check("readlink", f"/proc/{s[name]['pid']}/cwd").strip() == lay.root
    # trust on first use recorded the host keys the containers made at boot
    recorded = tree.known_hosts.read_text()
    for host in tree.on.values():
        assert f"{host.address} {host.host_key()}" in recorded


def test_the_root_sees_its_child(tree):
    proc = run_tsctl("status", "--json", "--address",
                     f"tcp://{tree.on[ROOT].address}:{PORTS[ROOT]}", "--token-file",
                     str(tree.token_file), "--server-key", tree.server_key_file(ROOT))
    assert proc.returncode == 0, proc.stderr
    nodes = {n["node"]: n for n in json.loads(proc.stdout)}
    assert nodes[ROOT]["children"] == [LEAF] and nodes[ROOT]["parent"] is None
    assert nodes[LEAF]["parent"] == ROOT
    assert nodes[LEAF]["address"] == f"tcp://{tree.on[LEAF].address}:{PORTS[LEAF]}"


def test_a_second_build_finds_the_units_in_place(tree):
    proc = tree.build("--supervisor", "auto")  # auto: systemd runs there and we are root
    assert proc.returncode == 0, proc.stderr
    s = summary(proc)
    for name in PORTS:
        assert (s[name]["status"], s[name]["actions"], s[name]["mode"]) == \
            ("up to date", [], "systemd")
        assert s[name]["pid"] == tree.first[name]["pid"]
        assert tree.unit(name, "MainPID", "NRestarts") == \
            {"MainPID": str(tree.first[name]["pid"]), "NRestarts": "0"}


@pytest.mark.parametrize("signal", ["KILL", "TERM"])
def test_systemd_restarts_a_node_however_it_ends_and_it_rejoins(tree, signal):
    """kill -9 (a crash) and SIGTERM (a clean exit, which Restart=on-failure would
    leave down) alike."""
    host = tree.on[LEAF]
    before = tree.unit(LEAF, "MainPID", "NRestarts")
    restarted: list[dict] = []

    def running_again() -> bool:
        now = tree.unit(LEAF, "MainPID", "NRestarts", "ActiveState")
        restarted[:] = [now]
        return now["ActiveState"] == "active" and now["MainPID"] not in ("0", before["MainPID"])

    with tree.listen() as heard:
        killed_at = time.time()
        host.check("sh", "-c", f"kill -{signal} {before['MainPID']}")
        down = heard.wait(f"{ROOT} to see {LEAF} go", lambda name, body:
                          name == subjects.NODE_DOWN and body["node"] == LEAF)
        assert down["detected_by"] == ROOT
        wait_until(running_again, 30, f"systemd to start {LEAF} again", interval=0.2)
        assert int(restarted[0]["NRestarts"]) == int(before["NRestarts"]) + 1
        assert host.node_pids() == [int(restarted[0]["MainPID"])]
        up = heard.wait(f"{LEAF} to link to {ROOT} again", lambda name, body:
                        name == subjects.NODE_UP and body["node"] == LEAF)
        assert up["detected_by"] == ROOT
        heard.wait_linked(since=killed_at)


def test_a_node_that_cannot_start_fails_the_build_with_its_log_then_recovers(tree):
    host, lay = tree.on[LEAF], tree.layout(LEAF)
    address = f"{host.address}:{PORTS[LEAF]}"
    host.check("systemctl", "stop", lay.unit_name)
    # something else holds the node's port: the node exits at once, again and again
    # (SO_REUSEADDR: the port has connections in TIME_WAIT from the join checks)
    blocker = (f"echo $$ > /run/blocker.pid; exec python3 -c 'import socket, time; "
               "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
               f"s.bind((\"{host.address}\", {PORTS[LEAF]})); s.listen(); time.sleep(600)'")
    host.container.exec_run(["sh", "-c", blocker], detach=True)
    wait_until(lambda: host.check("ss", "-Hltn", f"sport = :{PORTS[LEAF]}").strip() != "",
               10, f"a blocker listening on {address}")
    started = time.monotonic()
    proc = tree.build()
    took = time.monotonic() - started
    assert proc.returncode == 1
    s = summary(proc)
    assert (s[ROOT]["status"], s[LEAF]["status"]) == ("up to date", "failed")
    # seen exiting at once (start) or while the build waited for it to join
    assert s[LEAF]["step"] in ("start", "join")
    assert re.match(f"node {LEAF} exited( at once)?; node log: ", s[LEAF]["error"]), s[LEAF]
    assert f"Address already in use (addr='tcp://{address}')" in s[LEAF]["error"]
    assert took < JOIN_TIMEOUT, "the build waited for a node that had exited"
    print(f"{LEAF}: {s[LEAF]['step']}: {s[LEAF]['error']} ({took:.1f}s)")
    # systemd keeps trying; once the port is free the node is back, with no build
    with tree.listen() as heard:
        freed_at = time.time()
        host.check("sh", "-c", "kill $(cat /run/blocker.pid)")
        heard.wait(f"{LEAF} to link to {ROOT} by itself", lambda name, body:
                   name == subjects.NODE_UP and body["node"] == LEAF, timeout=60)
        heard.wait_linked(since=freed_at)
    assert int(tree.unit(LEAF, "NRestarts")["NRestarts"]) >= 1


@pytest.mark.parametrize("supervisor", ["daemon", "systemd"])
def test_switching_the_supervisor_leaves_one_node_running(tree, supervisor):
    """From systemd to a run script, then back: the old node is stopped, the unit is
    removed (daemon) or installed (systemd), and exactly one node runs and joins."""
    proc = tree.build("--supervisor", supervisor)
    assert proc.returncode == 0, proc.stderr
    s = summary(proc)
    for name, host in tree.on.items():
        lay = tree.layout(name)
        assert (s[name]["status"], s[name]["mode"], s[name]["actions"]) == \
            ("built", supervisor, ["service", "restart"])
        assert "joined under" in s[name]["detail"] or "root of the tree" in s[name]["detail"]
        assert host.node_pids() == [s[name]["pid"]]
        unit = tree.unit(name, "LoadState", "ActiveState", "MainPID")
        if supervisor == "daemon":
            assert host.run("test", "-e", lay.unit_path)[0] == 1
            assert unit["LoadState"] == "not-found" and unit["ActiveState"] == "inactive"
            assert host.check("cat", lay.pid_file).strip() == str(s[name]["pid"])
        else:
            assert unit == {"LoadState": "loaded", "ActiveState": "active",
                            "MainPID": str(s[name]["pid"])}


def test_teardown_stops_disables_and_removes_the_units(tree):
    proc = tree.tsctl("teardown")
    assert proc.returncode == 0, proc.stderr
    s = summary(proc)
    assert {n: s[n]["status"] for n in PORTS} == dict.fromkeys(PORTS, "removed")
    for name, host in tree.on.items():
        lay = tree.layout(name)
        assert "remove the systemd unit" in s[name]["detail"]
        assert host.run("test", "-e", lay.unit_path)[0] == 1
        code, out = host.run("systemctl", "status", lay.unit_name)
        assert code == 4 and f"Unit {lay.unit_name} could not be found." in out
        assert host.run("systemctl", "is-enabled", lay.unit_name)[0] != 0
        listed = host.check("systemctl", "list-units", "--all", "--no-legend",
                            "treescale-*")
        assert listed.strip() == ""
        wants = host.check("ls", "/etc/systemd/system/multi-user.target.wants")
        assert lay.unit_name not in wants.split()
        assert host.node_pids() == []
        assert host.run("test", "-e", lay.root)[0] == 1
    again = tree.tsctl("teardown")
    assert again.returncode == 0, again.stderr
    assert all(v["status"] == "nothing to remove" for v in summary(again).values())
