"""Secure defaults, the link credential and secrets, against real node processes.

Each case shows the attack failing, with what the node answers, and the same
operation working for whoever holds the right credential: a node that refused
everything would not pass."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import msgpack
import pytest

from tests.conftest import ADMIN, LINK, ROOT, NodeProcess, free_port, secure, wait_until
from tests.integration.test_bad_input import Raw
from tests.netns import two_hosts
from treescale import Client, subjects
from treescale import protocol as P
from treescale.config import ConfigError, NodeConfig, secrets_from_env
from treescale.credentials import link_token_for, secured
from treescale.fabric import compile_db, fabric_from_dict, read_db
from treescale.services.rpc import call
from treescale.store import Store, StoreError

COMMAND_SERVICES = ("exec", "handlers", "docker", "image", "lb", "config", "service")
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, setpriv)")


def tsctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsctl.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def raw_hello(token: str | None) -> bytes:
    return msgpack.packb([P.HELLO, P.PROTOCOL_VERSION, token, "raw", [], [], [], [], {}])


def service_request(req_id: int, service: str, node: str, op: str, args: dict) -> list:
    """The REQUEST `rpc.call` sends, built by hand."""
    return P.encode_request(req_id, subjects.service(service, node),
                            msgpack.packb({"op": op, "args": args}), mode=P.MODE_ALL)


def serves(client: Client, service: str, node: str) -> bool:
    """Whether ``service`` answers on ``node`` (a harmless call: a node answers
    before its services have subscribed)."""
    op, args = ("run", {"command": "true"}) if service == "exec" else ("ls", {})
    if service == "config":
        op = "version"
    try:
        return bool(call(client, service, op, args, node=node, timeout=1))
    except TimeoutError:
        return False


def attacks(tmp: Path) -> dict[str, tuple[str, dict]]:
    """What an attacker asks of each service: a shell handler, a command, Docker, a
    proxy listener."""
    return {"handlers": ("add", {"pattern": "any.thing", "run": f"touch {tmp}/h"}),
            "exec": ("run", {"command": f"touch {tmp}/pwned"}),
            "docker": ("ps", {}),
            "service": ("add", {"name": "pwned", "image": "treescale-busybox:test",
                                "command": ["touch", f"{tmp}/pwned"]}),
            "image": ("offer", {"image": "treescale-busybox:test"}),
            "lb": ("add", {"vip": f"127.0.0.1:{free_port()}", "backend": "proxy",
                           "reals": [f"127.0.0.1:{free_port()}"]})}


# --------------------------------------------------- (a) services need flag + auth


def test_a_node_without_auth_runs_no_command_service_even_when_asked(node_factory,
                                                                      tmp_path):
    """Every *_enabled flag on, but no client auth: none of them starts (one log line
    each says why), so a bare pyzmq client gets no_responders for each."""
    n = node_factory("open", {f"{s}_enabled": True for s in COMMAND_SERVICES})
    wait_until(lambda: n.log().count("not started: ") == len(COMMAND_SERVICES), 20,
               "the node to say why each service is off")
    assert ("service exec not started: exec_enabled is true but the node has no client "
            "auth (set tokens, auth_command or auth_url)") in n.log()
    r = Raw(n.address)
    try:
        r.send(raw_hello(None))
        assert r.recv()[0] == P.READY  # no auth: anyone may connect...
        for i, (service, (op, args)) in enumerate(attacks(tmp_path).items(), 1):
            r.send(*service_request(i, service, "open", op, args))
            msg = r.recv()  # ...but nothing serves what it asks
            assert msg[0] == P.ERROR and msg[1] == subjects.NO_RESPONDERS, (service, msg)
    finally:
        r.close()
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "h").exists()


def test_a_default_node_says_which_flag_is_off(node):
    wait_until(lambda: node.log().count("not started: ") == len(COMMAND_SERVICES), 20,
               "one line per service")
    for s in COMMAND_SERVICES:
        assert f"service {s} not started: {s}_enabled is false" in node.log()


def test_with_tokens_and_flags_the_admin_does_each(node_factory, clients, tmp_path):
    n = node_factory("closed", secure({"tokens": {ADMIN: ["*"], "viewer": ["pub"]}},
                                      "exec", "handlers", "docker", "lb"))
    stranger = Raw(n.address)
    try:
        code, message = stranger.error(raw_hello(None))
        assert code == subjects.TOKEN_REQUIRED, message  # the door is shut
    finally:
        stranger.close()
    admin = clients(n.address, token=ADMIN)
    for service in ("exec", "handlers", "docker", "lb"):
        wait_until(lambda s=service: serves(admin, s, "closed"), 30, f"the {service} service")
    todo = attacks(tmp_path)
    [r] = call(admin, "exec", *todo["exec"], node="closed", timeout=10)
    assert r.ok and r.result["exit"] == 0 and (tmp_path / "pwned").exists()
    [r] = call(admin, "handlers", *todo["handlers"], node="closed", timeout=10)
    assert r.ok, r.error
    [r] = call(admin, "lb", *todo["lb"], node="closed", timeout=10)
    assert r.ok and r.result["backend"] == "proxy", r.error
    [r] = call(admin, "docker", *todo["docker"], node="closed", timeout=10)
    assert r.node == "closed"  # answered (the engine itself may or may not be there)
    viewer = clients(n.address, token="viewer", on_error=lambda e: None)
    with pytest.raises(Exception, match="does not allow exec"):
        call(viewer, "exec", *todo["exec"], node="closed", timeout=5)


def test_doctor_reports_what_will_not_start_and_why(tmp_path):
    def checks(config: dict) -> tuple[int, dict]:
        path = tmp_path / "node.json"
        path.write_text(json.dumps({"node": {"name": "d", "port": free_port(), **config}}))
        r = tsctl("doctor", "--config", str(path), "--db", str(tmp_path / "t.db"), "--json")
        assert "Traceback" not in r.stderr, r.stderr
        return r.returncode, {c["name"]: c for c in json.loads(r.stdout)["checks"]}

    _, found = checks({"exec_enabled": True})
    assert found["services"]["status"] == "warn"
    assert "exec (exec_enabled is true but the node has no client auth" in \
        found["services"]["detail"]
    assert found["auth"]["status"] == "ok" and "loopback only" in found["auth"]["detail"]
    code, found = checks({"host": "10.99.0.1"})
    assert code == 1 and found["auth"]["status"] == "fail"
    assert "will refuse to start" in found["auth"]["detail"]
    _, found = checks(secure(None, "exec"))
    assert found["services"]["status"] == "ok"
    assert found["services"]["detail"].startswith("on: exec; off: config (config_enabled")
    assert found["auth"]["status"] == "ok" and "link_token" in found["auth"]["detail"]


# --------------------------------------------------------- (b) the link credential


def forward_exec(node: str, command: str) -> list:
    """A FORWARD, as a child node sends it, of an exec request for ``node``."""
    body = msgpack.packb({"op": "run", "args": {"command": command}})
    meta, payload, *large = P.encode_single(subjects.service("exec", node), body,
                                            mode=P.MODE_ALL,
                                            reply=subjects.inbox("intruder", "1", 1, "cap"))
    return [P.encode_forward_header([["intruder", 1]]), meta, payload, *large]


def link(token: str | None, name: str = "intruder") -> list:
    return P.encode_link(name, token, address="tcp://127.0.0.1:9")


def children(node: NodeProcess) -> list[str]:
    with Client(node.address, token=ADMIN, name="watcher") as c:
        c.subscribe(subjects.NODE_STATS)
        for ev in c.events(timeout=3):
            if ev.json()["node"] == node.name:
                return ev.json()["children"]
    return []


def test_a_client_token_never_links_and_the_link_token_does(node_factory, tmp_path):
    parent = node_factory("p", secure({"tokens": {ADMIN: ["*"], "viewer": ["pub"]}},
                                      "exec"))
    with Client(parent.address, token=ADMIN) as admin:
        wait_until(lambda: serves(admin, "exec", "p"), 30, "p's exec service")
    pwned = tmp_path / "pwned"
    for token, code in ((ADMIN, subjects.BAD_TOKEN), ("viewer", subjects.BAD_TOKEN),
                        (None, subjects.TOKEN_REQUIRED)):
        r = Raw(parent.address)
        try:
            got, message = r.error(*link(token))
            assert got == code and "link token" in message, message
            # nothing of the refused link is left: its FORWARD is from a stranger
            got, message = r.error(*forward_exec("p", f"touch {pwned}"))
            assert got == subjects.NOT_READY, message
        finally:
            r.close()
    # the same two messages with the link token: linked, and the request runs
    proof = tmp_path / "proof"
    r = Raw(parent.address)
    try:
        r.send(*link(LINK, "rawchild"))
        wait_until(lambda: r.recv()[0] == P.LINKED, 10, "LINKED")
        r.send(*forward_exec("p", f"touch {proof}"))
        wait_until(proof.exists, 20, "the forwarded command to run")
    finally:
        r.close()
    assert not pwned.exists()
    # and a real child node with the link token links (the raw one times out)
    node_factory("c", secure(None), args=("--parent", parent.address))
    wait_until(lambda: "c" in children(parent), 20, "c linked under p")


def test_client_auth_without_a_link_token_refuses_every_link(node_factory):
    lonely = node_factory("q", {"tokens": {ADMIN: ["*"]}})
    for token in (ADMIN, LINK, None):
        r = Raw(lonely.address)
        try:
            _, message = r.error(*link(token))
            assert "links need link_token: node q has client auth but no link_token" \
                in message, message
        finally:
            r.close()
    # development on loopback (no auth at all): links as before, no token needed
    dev = node_factory("dev")
    r = Raw(dev.address)
    try:
        r.send(*link(None, "devchild"))
        wait_until(lambda: r.recv()[0] == P.LINKED, 10, "LINKED from an open node")
    finally:
        r.close()


# ------------------------------------------------- (c) no open non-loopback address


def pings_from(ns: str, address: str) -> bool:
    probe = ("import sys; from treescale.local import answers_ping; "
             "sys.exit(0 if answers_ping(sys.argv[1], 1.0) else 1)")
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe, address],
                          cwd=ROOT, capture_output=True, timeout=30).returncode == 0


@root_only
def test_a_non_loopback_address_needs_auth_or_insecure(monkeypatch):
    """In namespaces this test makes: 10.232.0.1 on one end of a veth pair."""
    with two_hosts("10.232.0.1", "10.232.0.2", prefix="sd") as (run, (a, _), (b, _)):
        exposed = run(a, "node", "start", "--name", "exposed", "--host", "10.232.0.1",
                      "--port", "7501")
        _, err = exposed.communicate(timeout=30)
        assert exposed.returncode == 1, err
        assert err.decode().strip().splitlines() == [
            "error: node exposed: refusing to listen on 10.232.0.1 without client auth "
            "(anyone who reaches the port could use the node): set tokens, auth_command "
            "or auth_url, or start it with --insecure (insecure = true) on a trusted "
            "network"]
        assert not pings_from(b, "tcp://10.232.0.1:7501")  # it never listened
        run(a, "node", "start", "--name", "trusted", "--host", "10.232.0.1", "--port",
            "7501", "--insecure")
        wait_until(lambda: pings_from(b, "tcp://10.232.0.1:7501"), 30, "--insecure node")
        monkeypatch.setenv("TREESCALE_ADMIN_TOKEN", ADMIN)  # auth from the environment
        run(a, "node", "start", "--name", "authed", "--host", "10.232.0.1", "--port",
            "7502")
        wait_until(lambda: pings_from(b, "tcp://10.232.0.1:7502"), 30, "node with auth")


# ------------------------------------------------------------- (d) secrets at rest


def readable_by_nobody(path: Path) -> bool:
    done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup",
                           "--clear-groups", "cat", str(path)], capture_output=True,
                          timeout=30)
    return done.returncode == 0


@root_only
def test_database_files_are_private_to_the_node(tmp_path):
    shared = Path(tempfile.mkdtemp(prefix="ts-shared-"))  # others may look in here
    try:
        shared.chmod(0o755)
        old = shared / "old.db"
        import lmdb

        lmdb.open(str(old), subdir=False, create=True).close()  # 0644, as it used to be
        assert readable_by_nobody(old)  # the probe sees what another user would
        with Store(old) as store:  # opening it makes it private
            store.put("meta", "version", 1)
        assert not readable_by_nobody(old)
        with Store(shared / "fresh" / "tree.db") as store:
            store.put("tokens", "x", "secret")
        for f in (shared / "fresh" / "tree.db", shared / "fresh" / "tree.db-lock", old):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert stat.S_IMODE((shared / "fresh").stat().st_mode) == 0o700
        with Store(shared / "fresh" / "tree.db", readonly=True) as store:
            assert store.get("tokens", "x") == "secret"  # the owner reads it
        # a directory anyone may write to: refused (the sticky /tmp style is fine)
        loose = shared / "loose"
        loose.mkdir()
        loose.chmod(0o777)
        with pytest.raises(StoreError, match="any user may write to this directory"):
            Store(loose / "tree.db")
        loose.chmod(0o1777)
        Store(loose / "tree.db").close()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_compiled_or_built_database_holds_no_ssh_password(tmp_path):
    from treescale.provision import compile_config

    fabric = fabric_from_dict({"tree_node": {"a": {"tree_ip": "10.0.0.1", "tree_port": 1}},
                               "ssh": {"a": {"host": "10.0.0.1",
                                             "password": "hunter2-secret"}}})
    assert fabric.ssh["a"].password == "hunter2-secret"  # the operator's file has it
    built, _ = compile_config(fabric, tmp_path)  # what `tsctl build` ships
    compile_db(fabric, tmp_path / "compiled.db")  # `tsctl config compile`
    for db in (built, tmp_path / "compiled.db"):
        assert b"hunter2-secret" not in db.read_bytes()
        assert read_db(db).ssh["a"].host == "10.0.0.1"  # the target is kept
    assert "hunter2" not in repr(fabric)  # nor in a repr that could reach a log


def test_secrets_come_from_the_environment_and_leave_it():
    env = {"TREESCALE_ADMIN_TOKEN": "adm", "TREESCALE_LINK_TOKEN": "lnk",
           "TREESCALE_TOKEN": "client", "PATH": "/bin"}
    cfg = secrets_from_env(NodeConfig(name="n", tokens={"viewer": ["pub"]}), env)
    assert env == {"PATH": "/bin"}  # nothing the node runs inherits them
    assert cfg.tokens == {"viewer": ["pub"], "adm": ["*"]} and cfg.link_token == "lnk"
    assert "adm" not in repr(cfg) and "lnk" not in repr(cfg)
    with pytest.raises(ConfigError, match="needs token auth"):
        secrets_from_env(NodeConfig(name="n", auth_url="http://x"),
                         {"TREESCALE_ADMIN_TOKEN": "adm"})


def test_a_local_tree_keeps_its_tokens_off_command_lines_and_out_of_commands(tmp_path):
    from treescale.local import down, token_file, up

    port = free_port()
    cfg = tmp_path / "tree.toml"
    cfg.write_text(f'[tree_node.solo]\ntree_ip = "127.0.0.1"\ntree_port = {port}\n'
                   "childs = []\nexec_enabled = true\n")
    state = tmp_path / "state" / "up.json"
    try:
        [solo] = up(cfg, state)  # $TREESCALE_TOKEN (ADMIN) is the tree's admin token
        assert token_file(state).read_text().strip() == ADMIN
        assert stat.S_IMODE(token_file(state).stat().st_mode) == 0o600
        assert ADMIN.encode() not in Path(f"/proc/{solo.pid}/cmdline").read_bytes()
        with Client(solo.address, token=ADMIN) as c:
            wait_until(lambda: serves(c, "exec", "solo"), 30, "solo's exec service")
            [r] = call(c, "exec", "run", {"command": "env"}, node="solo", timeout=10)
        out = b"".join(data for stream, data in r.streams if stream == "stdout").decode()
        assert r.ok and "PATH=" in out
        for secret in (ADMIN, link_token_for(ADMIN), "TREESCALE_ADMIN_TOKEN"):
            assert secret not in out
    finally:
        down(state)


# ------------------------------------------------------------ (e) config push


def one_node_tree(path: Path, node: NodeProcess, **options) -> Path:
    table = secure({"tokens": TOKENS, "tree_ip": "127.0.0.1", "tree_port": node.port},
                   "config")
    path.write_text(json.dumps({"tree_node": {"n1": {**table, **options}}}))
    return path


TOKENS = {ADMIN: ["*"], "cfg": ["config"], "viewer": ["pub", "sub"]}


@pytest.fixture
def config_node(tmp_path):
    n = NodeProcess(tmp_path, "n1")
    n.args = ("--config", str(one_node_tree(tmp_path / "tree.json", n)))
    try:
        n.start()
        with Client(n.address, token=ADMIN) as c:
            wait_until(lambda: serves(c, "config", "n1"), 30, "n1's config service")
        yield n
    finally:
        n.kill()


def push(node: NodeProcess, path: Path, *auth: str) -> subprocess.CompletedProcess:
    return tsctl("config", "push", "-p", str(path), "-a", node.address, "--timeout", "5",
                 *auth)


def test_config_push_needs_config_and_only_star_turns_on_a_command_service(config_node,
                                                                          tmp_path):
    n = config_node
    cfg_file = tmp_path / "cfg.token"
    cfg_file.write_text("cfg\n")
    tagged = one_node_tree(tmp_path / "tagged.json", n, tags=["v2"])
    seeded = read_db(n.db_path).version  # the tree file n1 started from
    denied = push(n, tagged, "--token", "viewer")
    assert denied.returncode == 1 and "does not allow config" in denied.stderr
    assert read_db(n.db_path).version == seeded
    ok = push(n, tagged, "--token-file", str(cfg_file))  # config permission: applied
    assert ok.returncode == 0, ok.stderr
    pushed = read_db(n.db_path)
    assert pushed.version == seeded + 1 and pushed.tree.spec("n1").tags == ("v2",)
    for field, value in (("exec_enabled", True), ("tokens", {"cfg": ["*"]}),
                         ("link_token", "mine")):
        refused = push(n, one_node_tree(tmp_path / f"{field}.json", n, tags=["v2"],
                                        **{field: value}), "--token-file", str(cfg_file))
        assert refused.returncode == 1
        [line] = refused.stderr.strip().splitlines()
        assert f"changing {field} of node n1 needs a token with \"*\"" in line, line
        assert read_db(n.db_path).version == pushed.version
    admin = push(n, one_node_tree(tmp_path / "exec.json", n, exec_enabled=True))
    assert admin.returncode == 0, admin.stderr  # $TREESCALE_TOKEN: ADMIN, with "*"
    assert read_db(n.db_path).nodes["n1"].exec_enabled
    bad = push(n, tagged, "--token-file", str(tmp_path / "missing.token"))
    assert bad.returncode == 2 and "cannot read the token file" in bad.stderr


def test_config_get_shows_tokens_only_to_star_and_a_publish_cannot_forge_it(config_node):
    n = config_node
    with Client(n.address, token="cfg") as c:
        [r] = call(c, "config", "get", node="n1", timeout=5)
    node_table = r.result["fabric"]["tree_node"]["n1"]
    assert r.ok and ADMIN not in json.dumps(node_table) and LINK not in json.dumps(node_table)
    with Client(n.address, token=ADMIN) as c:
        [r] = call(c, "config", "get", node="n1", timeout=5)
    assert r.result["fabric"]["tree_node"]["n1"]["link_token"] == LINK
    # a publish to the service, with made-up permissions, is refused at the door
    raw = Raw(n.address)
    try:
        raw.send(raw_hello("cfg"))
        assert raw.recv()[0] == P.READY
        meta, body, large = P.encode_events([(subjects.service("config", "n1"),
                                              msgpack.packb({"op": "get", "args": {}}),
                                              None, 0, subjects.inbox("n1", "x", 1, "cap"),
                                              {subjects.PERMISSIONS_HEADER: ["*"]})])
        code, message = raw.error(P.PUB_HEADER, meta, body, *large)
        assert code == subjects.PERMISSION_DENIED and "services take requests" in message
    finally:
        raw.close()


# ------------------------------------------------------------ what build makes


def test_build_credentials_close_every_node_and_keep_their_own_settings():
    fabric = fabric_from_dict({"tree_node": {
        "r": {"tree_ip": "10.0.0.1", "tree_port": 1, "childs": ["a", "b"]},
        "a": {"tree_ip": "10.0.0.2", "tree_port": 1, "tokens": {"ops": ["exec"]}},
        "b": {"tree_ip": "10.0.0.3", "tree_port": 1, "auth_url": "http://auth/",
              "link_token": "own"}}})
    closed = secured(fabric, "adm")
    link = link_token_for("adm")
    assert closed.nodes["r"].tokens == {"adm": ["*"]} and closed.nodes["r"].link_token == link
    assert closed.nodes["a"].tokens == {"ops": ["exec"], "adm": ["*"]}
    assert closed.nodes["b"].tokens is None and closed.nodes["b"].link_token == "own"
    assert all(cfg.bind_refusal() is None for cfg in closed.nodes.values())
    assert fabric.nodes["r"].bind_refusal() is not None  # as the configs say: refused
    assert secured(fabric, "adm") == closed  # the same values each build: no restart
