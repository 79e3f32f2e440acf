"""The fabric model (treescale.fabric): loading and merging files, round trips through
TOML, JSON, YAML and the LMDB tree database, and nodes started from a database."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treescale.config import ConfigError, NodeConfig
from treescale.fabric import (
    Fabric,
    SshTarget,
    compile_db,
    dump,
    fabric_from_dict,
    fabric_to_dict,
    load_fabric,
    read_db,
    store_fabric,
    stored_version,
    without_passwords,
)
from treescale.loader import load_node_config
from treescale.store import Store

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"

FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def test_the_shipped_tree_reads_the_same_in_toml_json_and_yaml():
    toml, js, yml = (load_fabric([CONFIGS / f"tree.{ext}"]) for ext in ("toml", "json", "yaml"))
    assert toml == js == yml
    assert toml.tree.root == "tree1" and len(toml.tree) == 7
    assert toml.nodes["tree3"].exec_enabled and not toml.nodes["tree2"].exec_enabled
    assert toml.nodes["tree3"].parent == "tcp://127.0.0.1:8889"  # tree2's address
    assert toml.nodes["tree1"].parent is None


def test_a_directory_merges_tree_and_ssh_and_skips_other_files():
    fabric = load_fabric([CONFIGS])
    names = {Path(s).name for s in fabric.sources}
    assert "node.toml" not in names  # a single node's file, not part of the tree
    assert names >= {"tree.toml", "ssh.toml", "tree.json", "tree.yaml"}
    assert set(fabric.ssh) == set(fabric.tree.names)
    assert fabric.ssh["tree1"] == SshTarget("tree1", "127.0.0.1", 22, "treescale",
                                            install_root="/opt/treescale/tree1")
    assert fabric.ssh["tree2"].password == "tree" and not fabric.ssh["tree2"].agent
    assert fabric.ssh["tree3"].key_file and not fabric.ssh["tree3"].agent
    fabric.validate(for_build=True)  # every node has an ssh entry


def test_a_directory_skips_files_of_other_tools_but_a_named_file_is_checked(tmp_path):
    (tmp_path / "tree.toml").write_text('[tree_node.r]\ntree_ip = "h"\ntree_port = 1\n')
    (tmp_path / "prometheus.yml").write_text("global:\n  scrape_interval: 5s\n")
    (tmp_path / "node.toml").write_text('[node]\nname = "n1"\n')
    (tmp_path / "notes.txt").write_text("not a config")
    fabric = load_fabric([tmp_path])
    assert fabric.sources == [str(tmp_path / "tree.toml")]
    with pytest.raises(ConfigError) as info:
        load_fabric([tmp_path / "tree.toml", tmp_path / "prometheus.yml"])
    assert info.value.problems == [f"{tmp_path / 'prometheus.yml'}: unknown top-level key "
                                   "'global' (expected tree_node, ssh or version)"]


def test_tables_of_one_node_merge_across_files(tmp_path):
    (tmp_path / "a.toml").write_text(
        '[tree_node.r]\ntree_ip = "10.0.0.1"\ntree_port = 1\nchilds = ["c"]\n'
        '[tree_node.c]\ntree_ip = "10.0.0.2"\ntree_port = 1\n')
    (tmp_path / "b.json").write_text(json.dumps(
        {"tree_node": {"c": {"exec_enabled": True, "tree_port": 1, "tags": ["x"]}},
         "ssh": {"c": {"host": "10.0.0.2", "port": "2222"}}}))
    fabric = load_fabric([tmp_path / "a.toml", str(tmp_path / "b.json")])
    assert fabric.nodes["c"].exec_enabled and fabric.tree.spec("c").tags == ("x",)
    assert fabric.nodes["c"].parent == "tcp://10.0.0.1:1"
    assert fabric.ssh["c"] == SshTarget("c", "10.0.0.2", 2222)  # agent by default
    assert load_fabric([f"{tmp_path}"]) == fabric  # the directory: the same merge


def test_load_node_config_reads_a_compiled_database(tmp_path):
    fabric = load_fabric([CONFIGS / "tree.toml"])
    compile_db(fabric, tmp_path / "tree.db")
    cfg = load_node_config(tmp_path / "tree.db", "tree5")
    assert (cfg.name, cfg.port, cfg.groups, cfg.tags) == ("tree5", 8892, ("frontend",),
                                                           ("edge",))
    assert cfg.parent == "tcp://127.0.0.1:8891" and cfg.exec_enabled
    with pytest.raises(ConfigError, match=r"tree\.db: no node named 'nope' \(nodes: tree1"):
        load_node_config(tmp_path / "tree.db", "nope")
    with pytest.raises(ConfigError, match="say which node with --name"):
        load_node_config(tmp_path / "tree.db")


def test_compile_versions_and_restore_keeps_other_tables(tmp_path):
    fabric = load_fabric([CONFIGS / "tree.toml"])
    db = tmp_path / "tree.db"
    assert compile_db(fabric, db) == 1
    assert compile_db(fabric, db) == 2  # unversioned files: one more each time
    assert compile_db(replace(fabric, version=7), db) == 7
    got = read_db(db)
    assert got == replace(fabric, version=7) and got.compiled_at is not None
    assert load_fabric([db]) == got  # a database is a config source like a file
    with Store(tmp_path / "node.db") as store:
        store.put("handlers", "deploy", {"run": "x"})
        store_fabric(store, got, 7)
        assert stored_version(store) == 7
        assert store.get("handlers", "deploy") == {"run": "x"}
        assert sorted(store.items("tree")) == sorted(fabric.tree.names)


def test_reading_a_database_without_a_tree_says_so(tmp_path):
    with Store(tmp_path / "empty.db") as store:
        store.put("handlers", "x", 1)
    with pytest.raises(ConfigError, match=r"empty\.db: holds no tree"):
        read_db(tmp_path / "empty.db")
    with pytest.raises(ConfigError, match=r"missing\.db: no such database file"):
        read_db(tmp_path / "missing.db")


# ------------------------------------------------------------------ round trips

names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Z")),
                min_size=1, max_size=6).filter(lambda s: "." not in s)
# What a token maps to: words, or a NATS-style mapping (treescale.permissions).
perm_words = st.lists(st.sampled_from(["*", "pub", "sub", "sys", "exec", "lb"]), max_size=2)
perm_patterns = st.lists(st.sampled_from(["orders.>", "a.*.b", "x"]), max_size=2)
permissions = st.one_of(perm_words, st.fixed_dictionaries({}, optional={
    "publish": st.fixed_dictionaries({"allow": perm_patterns, "deny": perm_patterns}),
    "subscribe": perm_patterns, "services": st.lists(st.sampled_from(["exec", "sys"]),
                                                     max_size=2)}))
words = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1,
                max_size=8)
hosts = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,12}", fullmatch=True)


@st.composite
def fabrics(draw) -> Fabric:
    node_names = draw(st.lists(names, min_size=1, max_size=7, unique=True))
    ports = draw(st.lists(st.integers(1, 65535), min_size=len(node_names),
                          max_size=len(node_names), unique=True))
    children: dict[str, list[str]] = {n: [] for n in node_names}
    for i, n in enumerate(node_names[1:], 1):
        children[node_names[draw(st.integers(0, i - 1))]].append(n)
    tree_node = {}
    for n, port in zip(node_names, ports, strict=True):
        table = {"name": n, "tree_ip": draw(hosts), "tree_port": port,
                 "tags": draw(st.lists(words, max_size=2)),
                 "groups": draw(st.lists(words, max_size=2)), "childs": children[n]}
        table.update(draw(st.fixed_dictionaries({}, optional={
            "exec_enabled": st.booleans(),
            "metrics_port": st.integers(1, 65535),
            "client_timeout": st.floats(0.5, 1e6, allow_nan=False),
            "max_children": st.integers(len(children[n]) or 1, 50),
            "tokens": st.one_of(st.lists(words, min_size=1, max_size=2),
                                st.dictionaries(words, permissions, min_size=1,
                                                max_size=2)),
            "auth_url": words, "parent_token": words})))
        tree_node[n] = table
    ssh = {}
    for n in draw(st.lists(st.sampled_from(node_names), unique=True)):
        ssh[n] = {"host": draw(hosts), **draw(st.fixed_dictionaries({}, optional={
            "port": st.integers(1, 65535), "username": words, "password": words,
            "key_file": words, "agent": st.booleans(), "python": words,
            "install_root": words.map(lambda s: "/" + s)}))}
    version = draw(st.integers(0, 2**40))
    return fabric_from_dict({"version": version, "tree_node": tree_node, "ssh": ssh})


@FAST
@given(fabrics())
def test_round_trip_toml_json_yaml_and_back(fabric):
    data = fabric_to_dict(fabric)
    assert tomllib.loads(dump(data, "toml")) == data
    for fmt in ("toml", "json", "yaml"):
        assert fabric_from_dict(_parse(dump(data, fmt), fmt), f"x.{fmt}") == fabric, fmt


@FAST
@given(fabrics())
def test_round_trip_through_the_database(tmp_path_factory, fabric):
    db = tmp_path_factory.mktemp("db") / "tree.db"
    version = compile_db(fabric, db)
    assert version == (fabric.version or 1)
    assert read_db(db) == replace(without_passwords(fabric), version=version)


def test_files_in_each_format_load_to_the_same_model(tmp_path):
    fabric = load_fabric([CONFIGS])
    data = fabric_to_dict(fabric)
    loaded = []
    for fmt in ("toml", "json", "yaml"):
        path = tmp_path / f"fabric.{fmt}"
        path.write_text(dump(data, fmt))
        loaded.append(load_fabric([path]))
    assert loaded[0] == loaded[1] == loaded[2] == fabric


def test_node_options_keep_their_types():
    fabric = fabric_from_dict({"tree_node": {"a": {
        "tree_ip": "h", "tree_port": "8888", "client_timeout": 3, "metrics_port": 9100,
        "tokens": {"t": ["pub"]}}}})
    cfg = fabric.nodes["a"]
    assert cfg == NodeConfig(name="a", host="h", port=8888, client_timeout=3.0,
                             metrics_port=9100, tokens={"t": ["pub"]})


def _parse(text: str, fmt: str) -> dict:
    if fmt == "toml":
        return tomllib.loads(text)
    return json.loads(text) if fmt == "json" else yaml.safe_load(text)
