"""What a WebSocket peer may not do, against real nodes: each case shows the attack
failing beside the legitimate operation working (a token, an origin, TLS, a message
that breaks the framing or the limit, a flood), and the node and other sessions
unharmed."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
from websockets.exceptions import InvalidStatus

from tests.conftest import ADMIN, ROOT, secure, wait_until
from tests.netns import two_hosts
from tests.wskit import WsPeer, events, opens
from treescale import Client
from treescale.local import free_port

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")


def ws_node(node_factory, name: str = "n1", **config):
    port = free_port()
    n = node_factory(name, secure({"websocket_port": port, **config}))
    return n, port


def test_a_bad_token_gets_the_nodes_error_and_the_session_ends(node_factory):
    _, port = ws_node(node_factory)
    url = f"ws://127.0.0.1:{port}/"
    for token, code in (("wrong", "bad_token"), (None, "token_required")):
        with WsPeer(url) as ws:
            header = ws.hello("intruder", token)
            assert header[:2] == [9, code], header
            closed, _, _ = ws.closed(timeout=10)
            assert closed == 4001  # the node closed the connection; so did the gateway
    with WsPeer(url) as ws:
        assert ws.hello("admin", ADMIN)[0] == 2


def test_a_tokens_permissions_hold_over_websocket(node_factory, clients):
    reader = {"publish": ["public.>"], "subscribe": ["public.>"]}
    n, port = ws_node(node_factory, tokens={ADMIN: ["*"], "reader": reader})
    py = clients(n.address, name="py")
    py.subscribe(">")
    with WsPeer(f"ws://127.0.0.1:{port}/") as ws:
        assert ws.hello("page", "reader")[0] == 2
        ws.send([msgpack.packb([3, "$sys.>", None])])
        header, _ = ws.until(9)
        assert header[1] == "permission_denied" and header[3] == "$sys.>"
        ws.publish("secret.plans", b"x")
        header, _ = ws.until(9)
        assert header[1] == "permission_denied"
        ws.send([msgpack.packb([7, 1, "$svc.exec.n1.run", None, 1, None]), b"id"])
        header, _ = ws.until(9)
        assert header[1] == "permission_denied" and header[3] == 1
        ws.publish("public.news", b"ok")  # what it may do still works
        ev = py.next_event(5)
        assert ev is not None and (ev.name, ev.source) == ("public.news", "page")
        assert py.next_event(0.3) is None  # the refused publish went nowhere


def test_a_page_from_another_origin_is_refused_and_its_own_origin_is_not(node_factory):
    _, port = ws_node(node_factory, websocket_origins=["https://app.example.com"])
    url = f"ws://127.0.0.1:{port}/"
    with pytest.raises(InvalidStatus) as refused:
        WsPeer(url, origin="https://evil.example.net")
    assert refused.value.response.status_code == 403
    assert b"https://evil.example.net" in refused.value.response.body
    for origin in (f"http://127.0.0.1:{port}", "https://app.example.com", None):
        with WsPeer(url, origin=origin) as ws:  # the dashboard, the allowed app, no browser
            assert ws.hello("page", ADMIN)[0] == 2, origin


def test_a_session_must_ask_for_the_subprotocol(node_factory):
    _, port = ws_node(node_factory)
    url = f"ws://127.0.0.1:{port}/"
    for offered in ([], ["mqtt"]):
        with pytest.raises(InvalidStatus) as refused:
            WsPeer(url, subprotocols=offered)
        assert refused.value.response.status_code == 400
    with WsPeer(url) as ws:
        assert ws.ws.subprotocol == "treescale.v1"


def test_bad_messages_and_a_flood_leave_the_node_and_other_sessions_unharmed(
        node_factory, clients):
    n, port = ws_node(node_factory, websocket_max_message=4096)
    url = f"ws://127.0.0.1:{port}/"
    py = clients(n.address, name="py")
    py.subscribe("svc.echo", handler=lambda e: py.reply(e, e.data))
    bystander = WsPeer(url)
    try:
        assert bystander.hello("bystander", ADMIN, subs=["news.*"])[0] == 2
        bystander.barrier()

        def still_served(tag: bytes) -> None:
            py.publish("news.tick", tag)
            header, frames = bystander.until(6)
            assert events(frames) == [("news.tick", tag)]
            assert py.request("svc.echo", tag, timeout=5).data == tag

        with WsPeer(url) as ws:  # a text message: named, then closed
            ws.hello("texter", ADMIN)
            ws.ws.send("hello?")
            code, _, before = ws.closed()
            assert code == 1003 and before[-1][0][1] == "text_frame"
        still_served(b"1")

        with WsPeer(url) as ws:  # garbage: named, dropped, the session goes on
            ws.hello("garbage", ADMIN)
            for junk in (b"\x01", b"\x00\x00\x00\x09abc", b""):
                ws.ws.send(junk)
                header, _ = ws.until(9)
                assert header[1] == "bad_frame", header
            ws.send([b"\xc1\xc1 not msgpack"])  # well framed, a bad header: the node's
            header, _ = ws.until(9)
            assert header[1] == "bad_encoding", header
            ws.barrier()  # still a working session
        still_served(b"2")

        with WsPeer(url) as ws:  # one message over websocket_max_message
            ws.hello("big", ADMIN)
            ws.publish("news.big", bytes(5000))
            code, reason, _ = ws.closed()
            assert code == 1009 and "4096" in reason, (code, reason)
        still_served(b"3")

        with WsPeer(url) as ws:  # a flood: bounded in count and time
            ws.hello("flood", ADMIN)
            deadline, sent = time.monotonic() + 3.0, 0
            while sent < 20_000 and time.monotonic() < deadline:
                ws.publish("flood.x", b"x" * 64)
                sent += 1
            still_served(b"4")  # while the flood is still being taken in
            ws.barrier(timeout=30)
        still_served(b"5")
    finally:
        bystander.close()


def test_past_max_sessions_a_websocket_is_refused_until_one_closes(node_factory):
    _, port = ws_node(node_factory, max_sessions=2)
    url = f"ws://127.0.0.1:{port}/"
    first, second = WsPeer(url), WsPeer(url)
    try:
        with pytest.raises(InvalidStatus) as refused:
            WsPeer(url)
        assert refused.value.response.status_code == 503
        assert b"max_sessions" in refused.value.response.body
        first.close()
        wait_until(lambda: opens(url), 10, "a place freed by the closed session")
    finally:
        first.close()
        second.close()


def self_signed(directory: Path, *ips: str) -> tuple[Path, Path]:
    """A throwaway certificate for ``ips`` and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "treescale-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "ws-cert.pem", directory / "ws-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_serves_wss_and_only_wss(node_factory, tmp_path):
    cert, key = self_signed(tmp_path, "127.0.0.1")
    _, port = ws_node(node_factory, websocket_tls_cert=str(cert),
                      websocket_tls_key=str(key))
    trusted = ssl.create_default_context(cafile=str(cert))
    with WsPeer(f"wss://127.0.0.1:{port}/", ssl=trusted) as ws:
        assert ws.hello("secure-page", ADMIN)[0] == 2
    with pytest.raises(Exception):  # noqa: B017  plain ws:// to a TLS port: no session
        WsPeer(f"ws://127.0.0.1:{port}/", open_timeout=5)
    with pytest.raises(ssl.SSLCertVerificationError):  # a client that checks certs
        WsPeer(f"wss://127.0.0.1:{port}/", ssl=ssl.create_default_context())


def test_an_unreadable_tls_key_is_one_line_and_no_node(tmp_path):
    cert, _ = self_signed(tmp_path, "127.0.0.1")
    done = subprocess.run(
        [sys.executable, "-m", "tsctl.main", "node", "start", "--name", "n1", "--port",
         str(free_port()), "--ws-port", "0", "--token", ADMIN, "--config",
         str(_config(tmp_path, websocket_tls_cert=str(cert),
                     websocket_tls_key=str(tmp_path / "missing.pem")))],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert "missing.pem" in line and "Traceback" not in done.stderr


def _config(tmp_path: Path, **node) -> Path:
    import json

    path = tmp_path / "ws-node.json"
    path.write_text(json.dumps({"node": node}))
    return path


@root_only
def test_a_websocket_port_off_loopback_needs_tls_and_auth_or_insecure(tmp_path,
                                                                     monkeypatch):
    """In namespaces this test makes: 10.233.0.1 on one end of a veth pair."""
    cert, key = self_signed(tmp_path, "10.233.0.1")
    monkeypatch.setenv("TREESCALE_ADMIN_TOKEN", ADMIN)
    with two_hosts("10.233.0.1", "10.233.0.2", prefix="sw") as (run, (a, _), (b, _)):
        plain = run(a, "node", "start", "--name", "plain", "--port", str(free_port()),
                    "--ws-host", "10.233.0.1", "--ws-port", "7601")
        _, err = plain.communicate(timeout=30)
        assert plain.returncode == 1, err
        [line] = err.decode().strip().splitlines()
        assert line.startswith("error: node plain: refusing a WebSocket listener on "
                               "10.233.0.1 without TLS and client auth"), line
        tls = run(a, "node", "start", "--name", "tls", "--port", str(free_port()),
                  "--ws-host", "10.233.0.1", "--ws-port", "7602", "--config",
                  str(_config(tmp_path, websocket_tls_cert=str(cert),
                              websocket_tls_key=str(key))))
        probe = ("import ssl, sys; from tests.wskit import WsPeer; "
                 "ctx = ssl.create_default_context(cafile=sys.argv[2]); "
                 "ws = WsPeer(sys.argv[1], ssl=ctx, open_timeout=2); "
                 "sys.exit(0 if ws.hello('far', sys.argv[3])[0] == 2 else 1)")

        def far_session() -> bool:
            return subprocess.run(
                ["ip", "netns", "exec", b, sys.executable, "-c", probe,
                 "wss://10.233.0.1:7602/", str(cert), ADMIN],
                cwd=ROOT, capture_output=True, timeout=30).returncode == 0

        wait_until(far_session, 30, "a wss session from the other host")
        assert tls.poll() is None
        monkeypatch.delenv("TREESCALE_ADMIN_TOKEN")
        run(a, "node", "start", "--name", "trusted", "--port", str(free_port()),
            "--ws-host", "10.233.0.1", "--ws-port", "7603", "--insecure")
        probe_plain = ("import sys; from tests.wskit import WsPeer; "
                       "ws = WsPeer(sys.argv[1], open_timeout=2); "
                       "sys.exit(0 if ws.hello('far')[0] == 2 else 1)")
        wait_until(lambda: subprocess.run(
            ["ip", "netns", "exec", b, sys.executable, "-c", probe_plain,
             "ws://10.233.0.1:7603/"], cwd=ROOT, capture_output=True,
            timeout=30).returncode == 0, 30, "the --insecure node")


def test_a_curve_node_lets_a_browser_in_by_its_token(node_factory, tmp_path):
    """Browsers have no CURVE keys: the gateway reaches the node with the node's own
    keypair, so even ``client_keys = "authorized"`` admits a WebSocket session by its
    token, and still refuses a ZeroMQ client without an authorized key."""
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "tsctl.main", "keys", "gen", "--dir",
                    str(keys)], cwd=ROOT, check=True, capture_output=True, timeout=60)
    n, port = ws_node(node_factory, keys_dir=str(keys), client_keys="authorized")
    with WsPeer(f"ws://127.0.0.1:{port}/") as ws:
        assert ws.hello("wrong", "nope")[1] == "bad_token"
    with WsPeer(f"ws://127.0.0.1:{port}/") as ws:
        assert ws.hello("page", ADMIN)[0] == 2
    from treescale.keys import load_own

    refused: list = []

    def stranger() -> None:
        try:
            Client(n.address, token=ADMIN, timeout=2, server_key=load_own(keys).public)
        except Exception as exc:  # noqa: BLE001  any refusal: the key is not authorized
            refused.append(exc)

    t = threading.Thread(target=stranger)
    t.start()
    t.join(20)
    assert refused, "a ZeroMQ client with an unauthorized key got a session"


def test_a_peer_that_stops_answering_pings_is_closed_and_a_live_one_is_not(node_factory):
    """Keep-alive: the gateway pings every websocket_ping_interval; a peer that never
    answers (a raw socket that did the handshake and then went silent, as a
    half-dead network leaves one) is closed; a real client, whose library answers
    the pings, keeps its session over the same time."""
    import base64
    import socket

    _, port = ws_node(node_factory, websocket_ping_interval=0.3)
    live = WsPeer(f"ws://127.0.0.1:{port}/")
    try:
        assert live.hello("live", ADMIN)[0] == 2
        dead = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        dead.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: treescale.v1"
                      "\r\n\r\n").encode())
        received = b""
        started = time.monotonic()
        while chunk := dead.recv(4096):  # pings (and a close) until the gateway hangs up
            received += chunk
        waited = time.monotonic() - started
        dead.close()
        assert received.startswith(b"HTTP/1.1 101")
        assert b"\x89" in received  # a ping frame (FIN + opcode 9) was sent to it
        assert waited < 8, waited
        live.barrier()  # the live session outlived the dead one's deadline
    finally:
        live.close()
