"""CURVE against real nodes: links and clients are encrypted and authenticated by key.

Each attack case asserts that the attack fails (with what the node says) and that the
same thing with the right key works: a node that refused everything would fail here.
The packet capture runs two nodes in two network namespaces (root) and looks for a
published payload on the veth between them, with keys and, as the control that proves
the capture sees the traffic, without."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import msgpack
import pytest
import zmq

from tests.conftest import wait_until
from treescale import keys as K
from treescale import protocol as P
from treescale import subjects
from treescale.client import AuthError, Client


def keyring(tmp_path: Path, *names: str) -> dict[str, Path]:
    """A keys_dir with a fresh keypair for each name."""
    dirs = {n: tmp_path / f"keys-{n}" for n in names}
    for d in dirs.values():
        K.generate(d)
    return dirs


def trust(dirs: dict[str, Path], who: str, *names: str) -> None:
    """``who`` trusts each of ``names`` under its name."""
    for n in names:
        K.trust(dirs[who], n, str(dirs[n] / K.OWN_PUBLIC))


def key(d: Path) -> str:
    return K.load_own(d).public


def watch(clients, node, pattern: str, keys_dir: Path) -> Client:
    c = clients(node.address, name="watcher", server_key=key(keys_dir))
    c.subscribe(pattern)
    return c


def children_reported(watcher: Client, name: str, children: list[str],
                      timeout: float = 15) -> None:
    """Until node ``name``'s $sys.node.stats lists exactly ``children``."""
    def seen() -> bool:
        ev = watcher.next_event(0.2)
        return bool(ev is not None and ev.name == subjects.NODE_STATS
                    and ev.json()["node"] == name and ev.json()["children"] == children)

    wait_until(seen, timeout, f"{name} to report children {children}", interval=0)


def next_matching(c: Client, name: str, match, timeout: float = 15) -> dict:
    found: list[dict] = []

    def seen() -> bool:
        ev = c.next_event(0.2)
        if ev is not None and ev.name == name and match(ev.json()):
            found.append(ev.json())
        return bool(found)

    wait_until(seen, timeout, f"{name} matching", interval=0)
    return found[0]


def event_crosses(pub: Client, sub: Client, name: str, data: bytes) -> bool:
    """Publish until ``sub`` gets it (interest crosses the link shortly after linking)."""
    got = []

    def arrived() -> bool:
        pub.publish(name, data)
        pub.flush()
        ev = sub.next_event(0.2)
        if ev is not None and ev.name == name:
            got.append(bytes(ev.data))
        return bool(got)

    wait_until(arrived, 15, f"{name} across the link")
    return got[0] == data


# ------------------------------------------------------------------ links by key


def test_a_trusted_child_links_over_curve_and_events_flow(tmp_path, node_factory, clients):
    d = keyring(tmp_path, "p1", "c1")
    trust(d, "p1", "c1")
    trust(d, "c1", "p1")
    parent = node_factory("p1", {"keys_dir": str(d["p1"])})
    child = node_factory("c1", {"keys_dir": str(d["c1"]), "parent": parent.address,
                                "parent_key": "p1"})
    watcher = watch(clients, parent, subjects.NODE_STATS, d["p1"])
    children_reported(watcher, "p1", ["c1"])
    sub = clients(parent.address, name="sub", server_key=key(d["p1"]))
    sub.subscribe("curve.demo")
    # parent_key as z85 works as well as a name; the env variable as well as the argument
    os.environ["TREESCALE_SERVER_KEY"] = key(d["c1"])
    try:
        pub = clients(child.address, name="pub")
    finally:
        del os.environ["TREESCALE_SERVER_KEY"]
    assert event_crosses(pub, sub, "curve.demo", b"over curve")
    # a plain (NULL) client cannot even start a session with a CURVE node
    with pytest.raises(TimeoutError):
        Client(parent.address, name="plain", timeout=1.5).close()


def test_the_asyncio_client_and_requests_go_over_curve(tmp_path, node_factory, clients):
    import asyncio

    from treescale import AsyncClient

    d = keyring(tmp_path, "p1")
    node = node_factory("p1", {"keys_dir": str(d["p1"])})
    responder = clients(node.address, name="echo", server_key=key(d["p1"]))
    responder.subscribe("curve.echo", handler=lambda ev: responder.reply(ev, ev.data))
    # a request goes over the calling thread's own session: CURVE too
    caller = clients(node.address, name="caller", server_key=key(d["p1"]))
    assert caller.request("curve.echo", b"sync", timeout=5).data == b"sync"

    async def main() -> bytes:
        async with AsyncClient(node.address, name="async", server_key=key(d["p1"])) as c:
            return bytes((await c.request("curve.echo", b"async", timeout=5)).data)

    assert asyncio.run(main()) == b"async"

    async def plain() -> None:  # without the key: no session
        async with AsyncClient(node.address, name="plain", timeout=1.5):
            pass

    with pytest.raises(TimeoutError):
        asyncio.run(plain())


def test_a_child_without_its_authorized_key_cannot_link(tmp_path, node_factory, clients):
    d = keyring(tmp_path, "p1", "c1", "impostor")
    trust(d, "p1", "c1")
    for n in ("c1", "impostor"):
        trust(d, n, "p1")
    parent = node_factory("p1", {"keys_dir": str(d["p1"])})
    denied = watch(clients, parent, subjects.CLIENT_DENIED, d["p1"])
    # its own (untrusted) key, with the name of a trusted node: refused
    node_factory("c1", {"keys_dir": str(d["impostor"]), "parent": parent.address,
                        "parent_key": key(d["p1"])})
    body = next_matching(denied, subjects.CLIENT_DENIED, lambda b: b["client"] == "c1")
    assert body["reason"] == f"link refused: key {key(d['impostor'])} is not the " \
        "authorized key of node c1"
    # the right key links, and events flow both ways
    real = node_factory("c1", {"keys_dir": str(d["c1"]), "parent": parent.address,
                               "parent_key": "p1"})
    stats = watch(clients, parent, subjects.NODE_STATS, d["p1"])
    children_reported(stats, "p1", ["c1"])
    sub = clients(real.address, name="sub", server_key=key(d["c1"]))
    sub.subscribe("curve.down")
    pub = clients(parent.address, name="pub", server_key=key(d["p1"]))
    assert event_crosses(pub, sub, "curve.down", b"to the trusted child")


def test_a_child_that_does_not_know_its_parents_key_does_not_start(tmp_path, node_factory):
    d = keyring(tmp_path, "c1")
    with pytest.raises(AssertionError, match="parent_key .*unknown.* is neither a CURVE "
                       "key nor a name"):
        node_factory("c1", {"keys_dir": str(d["c1"]), "parent": "tcp://127.0.0.1:9",
                            "parent_key": "unknown"})


def test_a_revoked_key_is_dropped_and_cannot_link_or_connect(tmp_path, node_factory, clients):
    d = keyring(tmp_path, "p1", "c1", "c2", "app")
    trust(d, "p1", "c1", "c2", "app")
    for n in ("c1", "c2"):
        trust(d, n, "p1")
    parent = node_factory("p1", {"keys_dir": str(d["p1"]), "client_keys": "authorized"})
    node_factory("c1", {"keys_dir": str(d["c1"]), "parent": parent.address,
                        "parent_key": "p1"})
    watcher = clients(parent.address, name="watcher", server_key=key(d["p1"]),
                      keypair=K.load_own(d["app"]))
    for pattern in (subjects.NODE_DOWN, subjects.CLIENT_DENIED, subjects.NODE_STATS):
        watcher.subscribe(pattern)
    children_reported(watcher, "p1", ["c1"])
    # revoked while linked: dropped within the sweep (no restart), and its LINK again
    # (the child links again when the parent forgets it) is refused
    K.revoke(d["p1"], "c1")
    down = next_matching(watcher, subjects.NODE_DOWN, lambda b: b["node"] == "c1")
    assert down["reason"] == "revoked" and down["detected_by"] == "p1"
    body = next_matching(watcher, subjects.CLIENT_DENIED, lambda b: b["client"] == "c1")
    assert body["reason"] == f"key {key(d['c1'])} is revoked"
    # a new connection with the revoked key is refused at the handshake
    with pytest.raises(AuthError) as err:
        Client(parent.address, name="revoked", timeout=5, server_key=key(d["p1"]),
               keypair=K.load_own(d["c1"]))
    assert err.value.code == subjects.BAD_KEY
    # another trusted node still links in its place
    node_factory("c2", {"keys_dir": str(d["c2"]), "parent": parent.address,
                        "parent_key": "p1"})
    children_reported(watcher, "p1", ["c2"])


def test_client_keys_authorized_admits_only_authorized_clients(tmp_path, node_factory,
                                                               clients):
    d = keyring(tmp_path, "p1", "app")
    trust(d, "p1", "app")
    node = node_factory("p1", {"keys_dir": str(d["p1"]), "client_keys": "authorized",
                               "tokens": {"app-secret": ["*"]}})
    with pytest.raises(AuthError) as err:  # any other key: refused before any token
        Client(node.address, token="app-secret", name="stranger", timeout=5,
               server_key=key(d["p1"]))
    assert err.value.code == subjects.BAD_KEY and "CURVE key" in str(err.value)
    # the authorized key still needs its token, inside the encrypted channel
    with pytest.raises(AuthError) as err:
        Client(node.address, token="wrong", name="app", timeout=5,
               server_key=key(d["p1"]), keypair=K.load_own(d["app"]))
    assert err.value.code == subjects.BAD_TOKEN
    app = clients(node.address, token="app-secret", name="app", server_key=key(d["p1"]),
                  keypair=K.load_own(d["app"]))
    app.subscribe("curve.self")
    app.publish("curve.self", b"mine")
    ev = app.next_event(5)
    assert ev is not None and bytes(ev.data) == b"mine"


def test_the_documents_curve_block_reaches_a_curve_node(tmp_path, node_factory):
    import re

    from tests.conftest import ROOT

    doc = (ROOT / "docs" / "PROTOCOL.md").read_text()
    block = re.search(r"<!-- curve-example -->\s*```python\n(.*?)```", doc, re.S).group(1)
    d = keyring(tmp_path, "p1")
    node = node_factory("p1", {"keys_dir": str(d["p1"])})
    sock = zmq.Context.instance().socket(zmq.DEALER)
    try:
        exec(compile(block, "PROTOCOL.md curve block", "exec"),
             {"zmq": zmq, "sock": sock, "NODE_PUBLIC_KEY": key(d["p1"]).encode()})
        sock.connect(node.address)
        sock.send(msgpack.packb([P.HELLO, 1, None, "raw", [], [], [], [], {}]))
        assert sock.poll(5000)
        assert msgpack.unpackb(sock.recv())[0] == P.READY
    finally:
        sock.close(linger=0)


# ------------------------------------------------------------------ redirects


class FakeChild:
    """A child linked by hand (a DEALER with a trusted key) whose listening address is
    a plain TCP listener: a joiner redirected to it shows whether it dials there."""

    def __init__(self, parent_address: str, parent_key: str, pair: K.Keypair) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.settimeout(0.1)
        self.address = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, b"node:fake")
        public, secret = pair.as_bytes()
        self.sock.curve_publickey, self.sock.curve_secretkey = public, secret
        self.sock.curve_serverkey = parent_key.encode()
        self.sock.connect(parent_address)
        self.sock.send_multipart(P.encode_link("fake", None, (), (), self.address))
        assert self.sock.poll(5000), "the parent did not answer the fake child's link"
        assert msgpack.unpackb(self.sock.recv_multipart()[0])[0] == P.LINKED

    def keep_alive(self) -> None:
        """A ping: the parent drops a silent link after a few seconds."""
        self.sock.send_multipart(P.encode_ping(0))
        while self.sock.poll(0):
            self.sock.recv_multipart()

    def dialled(self, timeout: float) -> bool:
        """Whether anyone connected to the listening address within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.keep_alive()
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.close()
            return True
        return False

    def close(self) -> None:
        self.sock.close()
        self.listener.close()


def test_a_redirect_to_an_untrusted_key_is_refused_before_any_credential(tmp_path,
                                                                          node_factory):
    d = keyring(tmp_path, "p1", "fake", "j1", "j2")
    trust(d, "p1", "fake", "j1", "j2")
    trust(d, "j1", "p1")  # j1 does not know fake's key
    trust(d, "j2", "p1", "fake")  # j2 does: the control
    parent = node_factory("p1", {"keys_dir": str(d["p1"]), "max_children": 1})
    fake = FakeChild(parent.address, key(d["p1"]), K.load_own(d["fake"]))
    try:
        j1 = node_factory("j1", {"keys_dir": str(d["j1"]), "parent": parent.address,
                                 "parent_key": "p1", "parent_token": "j1-credential"})
        refused = f"node j1 refuses the redirect to fake at {fake.address}: its key " \
            f"{key(d['fake'])} is not trusted"
        wait_until(lambda: fake.keep_alive() or refused in j1.log(), 15,
                   "j1 to refuse the redirect")
        assert not fake.dialled(1.0), "j1 dialled the untrusted target"
        assert "redirected to fake" not in j1.log()
        fake.keep_alive()
        node_factory("j2", {"keys_dir": str(d["j2"]), "parent": parent.address,
                            "parent_key": "p1"})
        assert fake.dialled(15), "j2 did not follow a redirect to a trusted key"
    finally:
        fake.close()


# ------------------------------------------------------------------ on the wire


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("tcpdump") is None,
                    reason="needs root (network namespaces) and tcpdump")
@pytest.mark.parametrize("with_keys", [True, False], ids=["curve", "plain"])
def test_a_payload_crossing_the_link_is_not_on_the_wire_with_keys(tmp_path, with_keys):
    from tests.netns import two_hosts

    # the token, many times: a TCP segment boundary can cut one copy, not all of them
    token = f"PAYLOAD-{uuid.uuid4().hex[:12]}"
    payload = "|".join([token] * 8)
    ip_p, ip_c = "10.213.7.1", "10.213.7.2"
    d = keyring(tmp_path, "wp", "wc")
    trust(d, "wp", "wc")
    trust(d, "wc", "wp")
    # no client auth: the wire is what is tested (insecure: namespace addresses)
    parent_cfg = {"name": "wp", "host": ip_p, "port": 7601, "insecure": True}
    child_cfg = {"name": "wc", "host": ip_c, "port": 7602, "parent": f"tcp://{ip_p}:7601",
                 "insecure": True}
    child_args: tuple[str, ...] = ()
    if with_keys:  # the parent from its config, the child from tsctl's options
        parent_cfg["keys_dir"] = str(d["wp"])
        child_args = ("--keys-dir", str(d["wc"]), "--parent-key", "wp")
    files = {}
    for cfg in (parent_cfg, child_cfg):
        files[cfg["name"]] = tmp_path / f"{cfg['name']}.json"
        files[cfg["name"]].write_text(json.dumps({"node": cfg}))
    capture = tmp_path / "link.pcap"
    with two_hosts(ip_p, ip_c, prefix="tc") as (run, (ns_p, veth_p), (ns_c, _)):
        # immediate mode, packet-buffered: each packet is in the file as it is seen
        dump = subprocess.Popen(["ip", "netns", "exec", ns_p, "tcpdump", "-i", veth_p,
                                 "--immediate-mode", "-U", "-s", "0", "-w", str(capture),
                                 "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            line = dump.stderr.readline().decode()
            assert "listening on" in line, line
            run(ns_p, "node", "start", "--config", str(files["wp"]))
            run(ns_c, "node", "start", "--config", str(files["wc"]), *child_args)
            keys_p = ("--server-key", str(d["wp"] / K.OWN_PUBLIC)) if with_keys else ()
            keys_c = ("--server-key", key(d["wc"])) if with_keys else ()
            sub = run(ns_p, "sub", "wire.check", "--count", "1", "--json", "--timeout",
                      "20", "-a", f"tcp://{ip_p}:7601", *keys_p)
            got = None
            deadline = time.monotonic() + 30
            while got is None and time.monotonic() < deadline:  # until interest crossed
                pub = run(ns_c, "pub", "wire.check", payload, "--timeout", "20", "-a",
                          f"tcp://{ip_c}:7602", *keys_c)
                assert pub.wait(30) == 0, pub.stderr.read().decode()
                try:
                    out, err = sub.communicate(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
                assert sub.returncode == 0, err.decode()
                got = json.loads(out.decode().splitlines()[0])
            assert got is not None and got["data"] == payload
            # the file is written in order: once it grew past this moment (the link's
            # heartbeats run every 200 ms), the event's packets are in it
            seen = capture.stat().st_size
            wait_until(lambda: capture.stat().st_size > seen + 500, 15,
                       "the capture to go past the event")
        finally:
            dump.send_signal(signal.SIGINT)
            dump.wait(10)
    wire = capture.read_bytes()
    assert len(wire) > 1000  # the capture saw the link's traffic
    if with_keys:
        assert token.encode() not in wire
        assert b"wire.check" not in wire  # names are encrypted too
    else:
        assert token.encode() in wire  # the control: the capture shows plain text


# ------------------------------------------------------------------ tsctl keys


def test_tsctl_keys_gen_ls_trust_revoke_and_one_line_errors(tmp_path):
    from tests.buildkit import run_tsctl

    a, b = tmp_path / "a", tmp_path / "b"
    gen = run_tsctl("keys", "gen", "--dir", str(a), "--json")
    assert gen.returncode == 0, gen.stderr
    assert json.loads(gen.stdout)["public_key"] == key(a)
    assert run_tsctl("keys", "gen", "--dir", str(b)).returncode == 0
    trusted = run_tsctl("keys", "trust", "--dir", str(a), "b", str(b / K.OWN_PUBLIC))
    assert trusted.returncode == 0 and "trusted b" in trusted.stderr
    listed = json.loads(run_tsctl("keys", "ls", "--dir", str(a), "--json").stdout)
    assert listed["authorized"] == {"b": key(b)} and listed["revoked"] == []
    revoked = run_tsctl("keys", "revoke", "--dir", str(a), "b", "--json")
    assert json.loads(revoked.stdout) == {"revoked": key(b), "name": "b"}
    listed = json.loads(run_tsctl("keys", "ls", "--dir", str(a), "--json").stdout)
    assert listed["authorized"] == {} and listed["revoked"] == [key(b)]
    for args, message in (
            (("gen", "--dir", str(a)), "a keypair exists already"),
            (("trust", "--dir", str(a), "x", "not-a-key"), "neither a CURVE key"),
            (("trust", "--dir", str(a), "b", key(b)), "is revoked"),
            (("ls", "--dir", str(tmp_path / "none")), "no such directory")):
        proc = run_tsctl("keys", *args)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    # a command that connects: a bad --server-key is one line too
    proc = run_tsctl("status", "--server-key", "nonsense", "--timeout", "1")
    assert proc.returncode == 1 and "neither a CURVE key" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
