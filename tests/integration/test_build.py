"""`tsctl build` / `tsctl teardown` against real sshd servers in network namespaces
(tests/sshhosts.py): a 3-node tree installed over SSH, events across hosts, idempotence,
one clear error per broken server while the others succeed, and teardown.

The tests of this module share one built tree (module-scoped) and run in file order:
build, traffic, rebuild, failures, teardown. The wheelhouse is built once per session
(tests/buildkit.py; cached in ~/.cache/treescale/wheelhouse across sessions) and passed
with --wheelhouse,
so edits to the source tree during a run cannot change what "up to date" means."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.buildkit import run_tsctl, summary, wheelhouse  # noqa: F401  (a fixture)
from tests.conftest import wait_until
from tests.sshhosts import SshHosts, sh, ssh_hosts  # noqa: F401  (the fixture)
from treescale import AuthError, Client
from treescale.fabric import read_db, to_toml
from treescale.provision import plan as P

pytestmark = pytest.mark.timeout(400)

PORTS = {"t1": 7701, "t2": 7702, "t3": 7703}


# ------------------------------------------------------------------- the pure plan


def test_plan_fresh_server_gets_everything():
    d = P.Desired("w", "db", "script")
    assert P.plan(d, P.Found()) == (P.INSTALL, P.WRITE_DB, P.SERVICE, P.START)


def test_plan_running_and_identical_is_up_to_date():
    d = P.Desired("w", "db", "script")
    found = P.Found({"wheelhouse": "w", "db": "db", "service": P.digest("script")},
                    venv_ok=True, running=True)
    assert P.plan(d, found) == ()
    assert P.describe((), systemd=False) == "up to date"


def test_plan_restarts_only_for_a_change_and_starts_a_stopped_node():
    state = {"wheelhouse": "w", "db": "db", "service": P.digest("script")}
    d = P.Desired("w", "db2", "script")
    assert P.plan(d, P.Found(state, True, True)) == (P.WRITE_DB, P.RESTART)
    assert P.plan(P.Desired("w", "db", "script"), P.Found(state, True, False)) == (P.START,)
    # a venv that vanished is reinstalled even though the state says it is there
    assert P.plan(P.Desired("w", "db", "script"), P.Found(state, False, True)) == \
        (P.INSTALL, P.RESTART)


def test_install_root_must_be_a_directory_of_its_own():
    assert P.check_install_root("/opt/treescale/") == "/opt/treescale"
    for bad in ("opt/treescale", "/", "/opt", "/usr/", "/opt/../etc"):
        with pytest.raises(ValueError, match="install_root"):
            P.check_install_root(bad)


def test_wheels_for_another_server_follow_its_glibc():
    from treescale.provision.wheelhouse import PyTarget, WheelhouseError, glibc_version

    t = PyTarget((3, 12), "aarch64", glibc_version("2.31"))
    assert t.tag == "cp312-aarch64-glibc2.31"
    plats = t.platforms()
    assert plats[0] == "manylinux_2_31_aarch64" and "manylinux_2_32_aarch64" not in plats
    assert {"manylinux2014_aarch64", "manylinux1_aarch64"} <= set(plats)
    with pytest.raises(WheelhouseError, match="not glibc"):
        PyTarget((3, 12), "x86_64", None).platforms()


# ------------------------------------------------------------------ the harness


def write_fabric(hosts: SshHosts, extra_nodes: dict | None = None,
                 extra_ssh: dict | None = None, name: str = "fabric") -> str:
    """tree.toml + ssh.toml for t1 (host1, root) with children t2 and t3, plus extras
    as more children of t1 (unless another extra lists them); returns the --files value."""
    h = hosts.hosts
    extra_nodes = extra_nodes or {}
    placed = {c for n in extra_nodes.values() for c in n.get("childs", ())}
    nodes = {"t1": {"tree_ip": h[0].address, "tree_port": PORTS["t1"],
                    "childs": ["t2", "t3", *(n for n in extra_nodes if n not in placed)]},
             "t2": {"tree_ip": h[1].address, "tree_port": PORTS["t2"]},
             "t3": {"tree_ip": h[2].address, "tree_port": PORTS["t3"]},
             **extra_nodes}
    ssh = {n: {"host": host.address, "key_file": str(hosts.key_file),
               "install_root": host.install_root} for n, host in zip(PORTS, h, strict=False)}
    del ssh["t2"]["key_file"]  # t2 logs in through the ssh-agent
    ssh["t2"]["agent"] = True
    ssh.update(extra_ssh or {})
    d = hosts.base / name
    d.mkdir(exist_ok=True)
    (d / "tree.toml").write_text(to_toml({"tree_node": nodes}))
    (d / "ssh.toml").write_text(to_toml({"ssh": ssh}))
    return f"{d / 'tree.toml'},{d / 'ssh.toml'}"


def operator_env(hosts: SshHosts) -> dict[str, str]:
    """The operator's side: the SSH agent, and where build keeps the tree's admin token
    (this module's own directory: the tree outlives any one test)."""
    return {**hosts.agent_env, "TREESCALE_CONFIG_DIR": str(hosts.base / "operator")}


def admin_token_file(hosts: SshHosts) -> Path:
    return hosts.base / "operator" / "t1.token"  # <root>.token


def tsctl(hosts: SshHosts, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_tsctl(*args, env=operator_env(hosts), timeout=timeout)


def node_pids(hosts: SshHosts) -> dict[str, int]:
    """The pid each node's run script recorded on its host."""
    return {n: int(Path(h.install_root, "node.pid").read_text())
            for n, h in zip(PORTS, hosts.hosts, strict=False)}


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""  # gone meanwhile


class Built:
    def __init__(self, hosts: SshHosts, files: str, known_hosts: Path, wheels: Path,
                 first: dict, pids: dict) -> None:
        self.hosts, self.files, self.known_hosts, self.wheels = hosts, files, known_hosts, wheels
        self.first, self.pids = first, pids

    def build(self, files: str | None = None, *extra: str) -> subprocess.CompletedProcess:
        return tsctl(self.hosts, "build", "--files", files or self.files, "--known-hosts",
                     str(self.known_hosts), "--wheelhouse", str(self.wheels), "--json",
                     "--connect-timeout", "5", "--join-timeout", "45",
                     # the hosts are namespaces of this one machine: a systemd here would
                     # start their nodes outside their namespaces
                     "--supervisor", "daemon", "--keys-dir", str(self.key_store), *extra)

    @property
    def key_store(self) -> Path:
        """The operator's CURVE keys for this tree (build makes them)."""
        return self.hosts.base / "operator-keys"

    def server_key(self, name: str) -> str:
        from treescale.keys import read_certificate

        return read_certificate(self.key_store / f"{name}.key").public


@pytest.fixture(scope="module")
def built(ssh_hosts, wheelhouse) -> Built:  # noqa: F811  (pytest fixture by name)
    """The first build of t1 (root), t2, t3 across host1..host3."""
    files = write_fabric(ssh_hosts)
    known = ssh_hosts.base / "known_hosts"
    b = Built(ssh_hosts, files, known, wheelhouse, {}, {})
    proc = b.build()
    assert proc.returncode == 0, proc.stderr
    b.first = summary(proc)
    b.pids = node_pids(ssh_hosts)
    return b


# ------------------------------------------------------------------------ the tests


def test_build_installs_and_starts_the_tree_on_three_hosts(built):
    s = built.first
    assert {n: s[n]["status"] for n in PORTS} == dict.fromkeys(PORTS, "built")
    assert "root of the tree" in s["t1"]["detail"]
    assert "joined under t1" in s["t2"]["detail"] and "joined under t1" in s["t3"]["detail"]
    for (name, host) in zip(PORTS, built.hosts.hosts, strict=False):
        # the node runs inside its host's namespace, from the venv under its install root
        assert s[name]["pid"] == built.pids[name] and built.pids[name] in host.pids()
        argv = cmdline(built.pids[name]).split(b"\0")
        assert argv[0].decode() == f"{host.install_root}/venv/bin/python"
        assert argv[-3:-1] == [b"--name", name.encode()]
        assert s[name]["mode"] == "daemon"
        # CURVE: its own keypair (secret 0600 in a 0700 directory), every node's key
        keys = Path(host.install_root, "keys")
        assert oct(keys.stat().st_mode & 0o777) == "0o700"
        assert oct((keys / "node.key_secret").stat().st_mode & 0o777) == "0o600"
        assert sorted(p.name for p in (keys / "authorized").iterdir()) == \
            [f"{n}.key" for n in PORTS]
        assert "keys" in s[name]["actions"]
    # trust on first use: every host key recorded as the servers really have them
    recorded = built.known_hosts.read_text()
    for host in built.hosts.hosts[:3]:
        key = host.host_key.with_suffix(".pub").read_text().split()[1]
        assert f"{host.address} ssh-ed25519 {key}" in recorded


def test_the_built_tree_is_closed_and_the_operator_holds_its_admin_token(built, clients):
    """The configs set no auth: build made an admin token (0600, on this side only)
    and a link token; the nodes listen on their hosts' addresses and let in only the
    admin token. Their databases are private and hold no SSH password."""
    token_file = admin_token_file(built.hosts)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    t2 = f"tcp://{built.hosts.hosts[1].address}:{PORTS['t2']}"
    key = built.server_key("t2")
    with pytest.raises(AuthError, match="invalid token"):
        Client(t2, token="guess", timeout=5, server_key=key)
    with pytest.raises(AuthError, match="token required"):
        Client(t2, token="", timeout=5, server_key=key)
    status = tsctl(built.hosts, "status", "--json", "-a", t2, "--token-file",
                   str(token_file), "--server-key", key, "--wait", "2.5")
    assert status.returncode == 0, status.stderr
    assert {n["node"] for n in json.loads(status.stdout)} == set(PORTS)  # linked
    for host in built.hosts.hosts[:3]:
        db = Path(host.install_root, "tree.db")
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        assert all(t.password is None for t in read_db(db).ssh.values())
        assert token_file.read_text().strip().encode() not in Path(
            host.install_root, "run.sh").read_bytes()  # nor on a command line


def test_an_event_published_on_one_host_reaches_a_subscriber_on_another(built, clients):
    h = built.hosts.hosts
    # the tree is closed (admin token) and links over CURVE (the node's public key)
    token = admin_token_file(built.hosts).read_text().strip()
    sub = clients(f"tcp://{h[1].address}:{PORTS['t2']}", name="on-host2", token=token,
                  server_key=built.server_key("t2"))
    sub.subscribe("build.check")
    pub = clients(f"tcp://{h[2].address}:{PORTS['t3']}", name="on-host3", token=token,
                  server_key=built.server_key("t3"))
    got = []

    def delivered() -> bool:  # interest reaches t3 through t1 shortly after subscribe
        pub.publish("build.check", b"from host3")
        pub.flush()
        ev = sub.next_event(0.2)
        if ev is not None:
            got.append(ev)
        return bool(got)

    wait_until(delivered, timeout=20, what="an event from host3's node at host2's node")
    assert got[0].name == "build.check" and bytes(got[0].data) == b"from host3"


def test_a_second_build_finds_everything_in_place(built):
    proc = built.build()
    assert proc.returncode == 0, proc.stderr
    s = summary(proc)
    for name in PORTS:
        assert s[name]["status"] == "up to date" and s[name]["actions"] == []
    assert node_pids(built.hosts) == built.pids  # nothing restarted
    assert all(s[n]["pid"] == built.pids[n] for n in PORTS)
    dry = built.build(None, "--dry-run")
    assert dry.returncode == 0 and all(v["status"] == "up to date"
                                       for v in summary(dry).values())


def test_the_seed_spelling_reaches_the_same_servers_and_plan(built):
    """The seed's `treescale build --files=configs/tree.toml,configs/ssh.toml`, as
    written (installed script, `--files=a,b`, paths relative to the working directory),
    plus this harness's own options: it logs into the same servers and finds the same
    tree in place."""
    from tests.scripts import run_line

    work = built.hosts.base / "seed"
    (work / "configs").mkdir(parents=True, exist_ok=True)
    for f in built.files.split(","):
        shutil.copy(f, work / "configs" / Path(f).name)
    proc = run_line(f"treescale build --files=configs/tree.toml,configs/ssh.toml --dry-run "
                    f"--json --known-hosts {built.known_hosts} --wheelhouse {built.wheels} "
                    f"--connect-timeout 5 --supervisor daemon --keys-dir {built.key_store}",
                    work, operator_env(built.hosts), timeout=300)
    assert proc.returncode == 0, proc.stderr
    s = summary(proc)
    assert {n: (s[n]["status"], s[n]["pid"]) for n in PORTS} == \
        {n: ("up to date", built.pids[n]) for n in PORTS}


def test_dry_run_says_what_would_change_and_changes_nothing(built):
    h = built.hosts.hosts
    files = write_fabric(built.hosts, name="regrouped")
    tree = Path(files.split(",")[0])
    tree.write_text(tree.read_text().replace(f'tree_ip = "{h[1].address}"',
                                             f'tree_ip = "{h[1].address}"\ngroups = ["web"]'))
    proc = built.build(files, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    s = summary(proc)
    for name in PORTS:  # every node keeps the whole tree: all would get the new db
        assert s[name]["status"] == "would change"
        assert s[name]["actions"] == ["db", "restart"]
        assert s[name]["detail"] == "write the tree db, restart the node"
    assert node_pids(built.hosts) == built.pids


def test_a_stopped_node_is_started_again_and_nothing_else(built):
    os.kill(built.pids["t3"], signal.SIGTERM)
    wait_until(lambda: b"tsctl.main" not in cmdline(built.pids["t3"]), timeout=15,
               what="t3's node to exit")
    proc = built.build()
    assert proc.returncode == 0, proc.stderr
    s = summary(proc)
    assert (s["t3"]["status"], s["t3"]["actions"]) == ("built", ["start"])
    assert "joined under t1" in s["t3"]["detail"]
    assert s["t1"]["status"] == s["t2"]["status"] == "up to date"
    pids = node_pids(built.hosts)
    assert pids["t3"] != built.pids["t3"] and pids["t3"] in built.hosts.hosts[2].pids()
    assert {n: pids[n] for n in ("t1", "t2")} == {n: built.pids[n] for n in ("t1", "t2")}
    built.pids = pids


def _started_at(pid: int) -> int:
    """When process ``pid`` started, in clock ticks since boot (/proc/PID/stat)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def test_children_restart_only_after_their_parent(built):
    """A changed tree restarts every node. Were a child restarted first, it would link
    to the old root, and when that root went (a slow one, here: its Python takes 4 s
    to answer) healing would move it under the heir for good. So a child's restart
    waits for its parent's build: the new root starts first, and both children join
    under it."""
    hosts = built.hosts
    h1 = hosts.hosts[0]
    slow_python = Path(h1.dir, "slow-python3")
    slow_python.write_text("#!/bin/sh\nsleep 4\nexec python3 \"$@\"\n")
    slow_python.chmod(0o755)
    files = write_fabric(hosts, None, {"t1": {
        "host": h1.address, "key_file": str(hosts.key_file), "python": str(slow_python),
        "install_root": h1.install_root}}, "slow-root")
    tree = Path(files.split(",")[0])
    fabric = tomllib.loads(tree.read_text())
    fabric["tree_node"]["t2"]["groups"] = ["changed"]  # a new tree: every node restarts
    tree.write_text(to_toml(fabric))
    proc = built.build(files)
    assert proc.returncode == 0, proc.stderr
    s = summary(proc)
    assert [s[n]["actions"] for n in PORTS] == [["db", "restart"]] * 3
    assert "joined under t1" in s["t2"]["detail"] and "joined under t1" in s["t3"]["detail"]
    pids = node_pids(hosts)
    root_started = _started_at(pids["t1"])
    assert all(_started_at(pids[n]) >= root_started for n in ("t2", "t3")), pids
    built.pids = pids


def test_broken_servers_fail_alone_with_a_clear_reason(built):
    hosts = built.hosts
    h4, h5 = hosts.hosts[3], hosts.hosts[4]
    # host5's recorded key is not the one its sshd offers: a changed host key
    other = hosts.base / "other_key"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other))
    with open(built.known_hosts, "a") as f:
        f.write(f"{h5.address} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n")
    # an interpreter that says it is Python 3.9 (this machine has no old Python to use)
    old_python = Path(h4.dir, "python3.9")
    old_python.write_text("#!/bin/sh\necho '[[3, 9, 2], \"x86_64\", [\"glibc\", \"2.36\"]]'\n")
    old_python.chmod(0o755)
    extra = {"badpw": {"tree_ip": h4.address, "tree_port": 7711, "childs": ["orphan"]},
             "orphan": {"tree_ip": h4.address, "tree_port": 7716},
             "oldpy": {"tree_ip": h4.address, "tree_port": 7715},
             "nopy": {"tree_ip": h4.address, "tree_port": 7712},
             "gone": {"tree_ip": hosts.unreachable, "tree_port": 7713},
             "newkey": {"tree_ip": h5.address, "tree_port": 7714}}
    ssh = {"badpw": {"host": h4.address, "password": "not-the-password", "agent": False,
                     "install_root": h4.install_root + "-badpw"},
           "nopy": {"host": h4.address, "key_file": str(hosts.key_file),
                    "python": "/nonexistent/python3", "install_root": h4.install_root},
           "orphan": {"host": h4.address, "key_file": str(hosts.key_file),
                      "install_root": h4.install_root + "-orphan"},
           "oldpy": {"host": h4.address, "key_file": str(hosts.key_file),
                     "python": str(old_python), "install_root": h4.install_root + "-old"},
           "gone": {"host": hosts.unreachable, "key_file": str(hosts.key_file),
                    "install_root": "/opt/treescale-test-unused"},
           "newkey": {"host": h5.address, "key_file": str(hosts.key_file),
                      "install_root": h5.install_root}}
    proc = built.build(write_fabric(hosts, extra, ssh, "broken"), "--join-timeout", "20")
    assert proc.returncode == 1
    s = summary(proc)
    # the healthy servers took the new tree (it has more nodes) and run it
    for name in PORTS:
        assert s[name]["ok"] and s[name]["status"] == "built", \
            (s[name].get("step"), s[name].get("error"), proc.stderr)
        # more nodes: a new tree, and every node's key in authorized/
        assert s[name]["actions"] == ["db", "keys", "restart"]
    assert (s["badpw"]["step"], s["badpw"]["error"]) == \
        ("connect", "authentication failed as root (password)")
    assert s["nopy"]["step"] == "python"
    assert "/nonexistent/python3 not found on the server" in s["nopy"]["error"]
    assert (s["oldpy"]["step"], s["oldpy"]["error"]) == \
        ("python", f"{old_python} is Python 3.9.2; TreeScale needs >= 3.11")
    # installed and started, but its parent is the server that failed: it cannot join
    assert s["orphan"]["step"] == "join" and s["orphan"]["error"].startswith("node orphan ")
    assert "badpw" in s["orphan"]["error"], s["orphan"]
    assert s["gone"]["step"] == "connect"
    assert s["gone"]["error"] in ("host unreachable", "no answer within 5s (host down or "
                                  "filtered?)")
    assert s["newkey"]["step"] == "connect"
    assert s["newkey"]["error"].startswith("host key changed: the server offers ssh-ed25519")
    # one readable line per failed server on stderr, naming server, address, step
    assert f"nopy ({h4.address}): python: /nonexistent/python3 not found" in proc.stderr
    assert f"badpw ({h4.address}): connect: authentication failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    # nothing was installed where the build failed before the install
    assert not Path(h4.install_root).exists() and not Path(h5.install_root).exists()
    assert not Path(h4.install_root + "-badpw").exists()
    # the healthy nodes hold the whole fabric, badpw's target too, never its password
    shipped = read_db(Path(hosts.hosts[0].install_root, "tree.db"))
    assert shipped.ssh["badpw"].host == h4.address and shipped.ssh["badpw"].password is None


def test_teardown_stops_the_nodes_and_removes_the_install(built):
    proc = tsctl(built.hosts, "teardown", "--files", built.files, "--known-hosts",
                 str(built.known_hosts), "--json")
    assert proc.returncode == 0, proc.stderr
    s = summary(proc)
    assert {n: s[n]["status"] for n in PORTS} == dict.fromkeys(PORTS, "removed")
    for host in built.hosts.hosts[:3]:
        assert not Path(host.install_root).exists()
        wait_until(lambda host=host: not any(b"tsctl.main" in cmdline(p)
                                             for p in host.pids()),
                   timeout=15, what=f"no node process left on {host.name}")
    again = tsctl(built.hosts, "teardown", "--files", built.files, "--known-hosts",
                  str(built.known_hosts), "--json")
    assert again.returncode == 0, again.stderr
    assert all(v["status"] == "nothing to remove" for v in summary(again).values())
