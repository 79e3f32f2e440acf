"""treescale/keys.py: the key files, their permissions, one-line errors, the live view."""

from __future__ import annotations

import os
import stat

import pytest
import zmq.auth

from treescale import keys as K
from treescale import protocol as P
from treescale.client_io import ClientCurve


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_generate_writes_a_private_keypair_zmq_auth_can_read(tmp_path):
    d = tmp_path / "keys"
    pair = K.generate(d)
    assert mode(d) == 0o700 and mode(d / K.AUTHORIZED) == 0o700
    assert mode(d / K.OWN_SECRET) == 0o600
    assert K.load_own(d) == pair
    # the files are zmq.auth certificates
    public, secret = zmq.auth.load_certificate(d / K.OWN_SECRET)
    assert (public.decode(), secret.decode()) == (pair.public, pair.secret)
    assert zmq.auth.load_certificate(d / K.OWN_PUBLIC) == (public, None)
    with pytest.raises(K.KeysError, match="a keypair exists already"):
        K.generate(d)
    assert K.generate(d, force=True) != pair


def test_the_same_key_always_makes_the_same_file():
    pair = K.Keypair.generate()
    assert K.certificate_text(pair) == K.certificate_text(K.Keypair(pair.public))
    assert pair.secret not in K.certificate_text(pair)
    assert pair.secret in K.certificate_text(pair, secret=True)


@pytest.mark.parametrize("content, message", [
    (None, "no such key file"),
    ("metadata\ncurve\n", "malformed key file (no public-key line)"),
    ('curve\n    public-key = "short"\n', "not a CURVE key"),
])
def test_a_missing_or_malformed_key_file_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "node.key_secret"
    if content is not None:
        path.write_text(content)
    with pytest.raises(K.KeysError) as err:
        K.read_certificate(path)
    assert str(path) in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_secret_that_does_not_match_its_public_key_is_refused(tmp_path):
    a, b = K.Keypair.generate(), K.Keypair.generate()
    path = tmp_path / "x.key_secret"
    path.write_text(K.certificate_text(K.Keypair(a.public, b.secret), secret=True))
    with pytest.raises(K.KeysError, match="does not match"):
        K.read_certificate(path)
    path.write_text(K.certificate_text(a))
    with pytest.raises(K.KeysError, match="no secret-key line"):
        K.read_certificate(path, need_secret=True)
    with pytest.raises(K.KeysError, match="no such directory"):
        K.load_own(tmp_path / "none")


def test_trust_revoke_and_the_live_view(tmp_path):
    d, other = tmp_path / "n1", tmp_path / "n2"
    own = K.generate(d)
    theirs = K.generate(other)
    trust = K.Trust(d, "n1")
    assert trust.authorizes(own.public, "n1")  # the node's own key: its services
    assert trust.key_of("n2") is None and not trust.is_authorized(theirs.public)
    K.trust(d, "n2", str(other / K.OWN_PUBLIC))  # a key file
    K.trust(d, "app", K.Keypair.generate().public)  # or z85
    assert set(K.authorized(d)) == {"n2", "app"}
    assert trust.refresh() and trust.authorizes(theirs.public, "n2")
    assert not trust.authorizes(theirs.public, "app")  # a key is authorized as its name
    assert not trust.refresh()  # nothing changed
    assert K.revoke(d, "n2") == (theirs.public, "n2")
    assert theirs.public in K.revoked(d) and "n2" not in K.authorized(d)
    assert trust.refresh() and trust.is_revoked(theirs.public)
    assert not trust.is_authorized(theirs.public) and trust.key_of("n2") is None
    with pytest.raises(K.KeysError, match="is revoked"):  # not trusted again by mistake
        K.trust(d, "n2", theirs.public)
    with pytest.raises(K.KeysError, match="neither an authorized name"):
        K.revoke(d, "nobody")
    with pytest.raises(K.KeysError, match="must be non-empty"):
        K.trust(d, "../evil", K.Keypair.generate().public)


def test_revoked_keys_may_hold_the_comment_character(tmp_path):
    """'#' is a z85 character: a key holding one is read whole."""
    def key_where(ok) -> str:
        while True:  # about one key in three holds a '#'
            public = K.Keypair.generate().public
            if ok(public):
                return public

    d = tmp_path / "n1"
    K.generate(d)
    one, two = key_where(lambda k: "#" in k), key_where(lambda k: "#" in k)
    (d / K.REVOKED).write_text(f"# revoked by hand\n{one}  # a\n\n{two}\n")
    assert K.revoked(d) == {one, two}
    other = key_where(lambda k: "#" in k)
    K.trust(d, "x", other)
    assert K.revoke(d, "x") == (other, "x") and other in K.revoked(d)
    with pytest.raises(K.KeysError, match="not a CURVE key"):  # z85 that overflows
        K.check_key("#" * 40)


def test_a_broken_revoked_list_keeps_the_last_good_view(tmp_path):
    d = tmp_path / "n1"
    K.generate(d)
    trust = K.Trust(d, "n1")
    (d / K.REVOKED).write_text("not a key\n")
    with pytest.raises(K.KeysError, match=f"{d / K.REVOKED}:1"):
        trust.refresh()
    assert trust.revoked == set()


def test_client_curve_takes_a_key_a_key_file_or_the_environment(tmp_path, monkeypatch):
    d = tmp_path / "n1"
    pair = K.generate(d)
    monkeypatch.delenv("TREESCALE_SERVER_KEY", raising=False)
    assert ClientCurve.of(None) is None
    assert ClientCurve.of(pair.public).server_key == pair.public
    assert ClientCurve.of(str(d / K.OWN_PUBLIC)).server_key == pair.public
    mine = K.Keypair.generate()
    assert ClientCurve.of(pair.public, (mine.public, mine.secret)).keypair == mine
    monkeypatch.setenv("TREESCALE_SERVER_KEY", pair.public)
    assert ClientCurve.of(None).server_key == pair.public
    assert ClientCurve.of("") is None  # explicitly plain, whatever the environment says
    monkeypatch.delenv("TREESCALE_SERVER_KEY")
    with pytest.raises(ValueError, match="needs the node's key"):
        ClientCurve.of(None, mine)
    with pytest.raises(K.KeysError, match="neither a CURVE key"):
        ClientCurve.of("nonsense")


def test_a_redirect_carries_the_targets_key_and_reads_without_one():
    key = K.Keypair.generate().public
    assert P.decode(P.encode_redirect("n2", "tcp://h:1", key)) == \
        P.Redirect("n2", "tcp://h:1", key)
    assert P.decode(P.encode_redirect("n2", "tcp://h:1")) == P.Redirect("n2", "tcp://h:1")


# ----------------------------------------------------------------- tsctl build's keys


def test_build_gives_every_node_its_keypair_every_public_key_and_its_parents(tmp_path):
    from treescale.fabric import compile_db, load_fabric, read_db
    from treescale.provision import _with_keys
    from treescale.provision import plan as PL
    from treescale.provision.keyring import files_digest

    (tmp_path / "tree.toml").write_text(
        '[tree_node.a]\ntree_ip = "10.0.0.1"\ntree_port = 1\nchilds = ["b"]\n'
        '[tree_node.b]\ntree_ip = "10.0.0.2"\ntree_port = 2\n')
    (tmp_path / "ssh.toml").write_text(
        '[ssh.a]\nhost = "10.0.0.1"\ninstall_root = "/opt/ts-a"\n'
        '[ssh.b]\nhost = "10.0.0.2"\n')
    fabric = load_fabric([tmp_path / "tree.toml", tmp_path / "ssh.toml"], for_build=True)
    store = tmp_path / "store"
    targets = [(n, fabric.ssh[n]) for n in fabric.tree.names]
    keyed, files = _with_keys(fabric, store, targets)
    assert mode(store) == 0o700 and mode(store / "a.key_secret") == 0o600
    a, b = (K.read_certificate(store / f"{n}.key_secret") for n in "ab")
    # the node configs, as the compiled tree carries them to the servers
    compile_db(keyed, tmp_path / "tree.db")
    back = read_db(tmp_path / "tree.db")
    assert (back.nodes["a"].keys_dir, back.nodes["a"].parent_key) == ("/opt/ts-a/keys", None)
    assert (back.nodes["b"].keys_dir, back.nodes["b"].parent_key) == \
        ("/opt/treescale/keys", a.public)
    # b's server: its own secret, everyone's public key, nobody else's secret
    fb = files["b"]
    assert set(fb) == {"node.key", "node.key_secret", "authorized/a.key", "authorized/b.key"}
    assert fb["node.key_secret"][1] == 0o600 and b.secret.encode() in fb["node.key_secret"][0]
    assert a.secret.encode() not in b"".join(data for data, _ in fb.values())
    # a second build keeps the keypairs: the same files, nothing to write
    again = _with_keys(fabric, store, targets)[1]
    assert files_digest(again["b"]) == files_digest(fb)
    state = {"wheelhouse": "w", "db": "d", "service": PL.digest("s"), "keys": files_digest(fb)}
    assert PL.plan(PL.Desired("w", "d", "s", files_digest(fb)), PL.Found(state, True, True)) == ()
    assert PL.plan(PL.Desired("w", "d", "s", "new"), PL.Found(state, True, True)) == \
        (PL.WRITE_KEYS, PL.RESTART)
    assert PL.describe((PL.WRITE_KEYS,), systemd=False) == "write the node's keys"
