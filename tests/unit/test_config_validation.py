"""Config validation: every problem is one exact line naming the file, node and field,
and all of them are reported at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from treescale.config import ConfigError
from treescale.fabric import fabric_from_dict, fabric_to_dict, load_fabric


def node(ip: str, port: int | str, /, *childs: str, **options) -> str:
    """One [tree_node.X] body in TOML."""
    lines = [f'tree_ip = "{ip}"', f"tree_port = {json.dumps(port)}",
             f"childs = {json.dumps(list(childs))}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    return "\n".join(lines)


def toml(tmp: Path, name: str, **nodes: str) -> Path:
    path = tmp / name
    path.write_text("\n".join(f"[tree_node.{n}]\n{body}" for n, body in nodes.items()) + "\n")
    return path


def problems(*paths: Path | str, for_build: bool = False) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_fabric(list(paths), for_build=for_build)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def test_unknown_keys_name_file_node_and_key(tmp_path):
    p = toml(tmp_path, "t.toml", a=node("h", 1, colour="red", port=2, parent="tcp://x:1"))
    assert problems(p) == [
        f"{p}: node a: unknown key 'colour'",
        f"{p}: node a: unknown key 'port' (a tree node's address is tree_ip and tree_port)",
        f"{p}: node a: unknown key 'parent' (a node's parent is the node whose childs "
        "lists it)",
    ]


def test_unknown_top_level_key(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"tree_node": {"a": {"tree_ip": "h", "tree_port": 1}},
                             "nodes": {}}))
    assert problems(p) == [
        f"{p}: unknown top-level key 'nodes' (expected tree_node, ssh or version)"]


def test_bad_types(tmp_path):
    p = toml(tmp_path, "t.toml", a=node("h", "x80", exec_enabled="yes", tags="edge",
                                        max_children=0, client_timeout=True))
    assert problems(p) == [
        f"{p}: node a: tree_port must be an integer in 1..65535, got 'x80'",
        f"{p}: node a: exec_enabled must be true or false, got 'yes'",
        f"{p}: node a: tags must be a list of non-empty strings, got 'edge'",
        f"{p}: node a: max_children must be at least 1, got 0",
        f"{p}: node a: client_timeout must be a number, got True",
    ]


def test_link_liveness_stays_within_the_five_seconds_of_every_link(tmp_path):
    """A child's ping interval and the missed pings that end a silent link: bounded so
    their product never passes LINK_TIMEOUT, the limit on every link session."""
    p = toml(tmp_path, "t.toml", a=node("h", 80, "b", link_ping_interval=2,
                                        link_missed_pings=0),
             b=node("h", 81, link_ping_interval=0.001, link_missed_pings=6))
    assert problems(p) == [
        f"{p}: node a: link_ping_interval must be in 0.01..1.0, got 2.0",
        f"{p}: node a: link_missed_pings must be in 1..5, got 0",
        f"{p}: node b: link_ping_interval must be in 0.01..1.0, got 0.001",
        f"{p}: node b: link_missed_pings must be in 1..5, got 6",
    ]
    good = toml(tmp_path, "g.toml", a=node("h", 80, link_ping_interval=0.5,
                                           link_missed_pings=4))
    cfg = load_fabric([good]).node_config("a")
    assert (cfg.link_ping_interval, cfg.link_missed_pings) == (0.5, 4)


def test_bad_token_permissions_name_the_field_not_the_secret(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"tree_node": {
        "a": {"tree_ip": "h", "tree_port": 1, "childs": ["b", "c"], "tokens": {
            "s3cret": ["pub"], "other-secret": {"publish": {"allow": ["a..b"]}}}},
        "b": {"tree_ip": "h", "tree_port": 2, "tokens": {"s3cret": {"pubish": []}}},
        "c": {"tree_ip": "h", "tree_port": 3, "tokens": "s3cret"}}}))
    found = problems(p)
    assert found == [
        f"{p}: node a: tokens: token #2: permissions.publish.allow: pattern 'a..b' has "
        "an empty token",
        f"{p}: node b: tokens: token #1: permissions: unknown key(s) pubish (known: "
        "publish, subscribe, services)",
        f"{p}: node c: tokens must be a list of strings or a mapping, not a single string",
    ]
    assert not any("secret" in line for line in found)


def test_missing_address_and_name_mismatch(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text('[tree_node.a]\nname = "b"\ntree_ip = "h"\n')
    assert problems(p) == [f"{p}: node a: name 'b' differs from the table name 'a'",
                           f"{p}: node a: tree_port is missing"]


def test_a_node_with_two_parents(tmp_path):
    p = toml(tmp_path, "t.toml", r=node("h", 1, "a", "b"), a=node("h", 2, "c"),
             b=node("h", 3, "c"), c=node("h", 4))
    assert problems(p) == [f"{p}: node b: childs lists c, already a child of a: "
                           "a node has one parent"]


def test_a_cycle(tmp_path):
    p = toml(tmp_path, "t.toml", r=node("h", 1), b=node("h", 2, "c"), c=node("h", 3, "d"),
             d=node("h", 4, "b"))
    assert problems(p) == [f"{p}: node b: childs makes a cycle: b -> c -> d -> b"]


def test_unreachable_nodes(tmp_path):
    p = toml(tmp_path, "t.toml", r=node("h", 1, "a"), a=node("h", 2), x=node("h", 3, "y"),
             y=node("h", 4))
    assert problems(p) == [f"{p}: node x: not connected to the root r: no node's childs "
                           "lists it (nor its subtree: y)"]


def test_child_limit_and_unknown_or_repeated_children(tmp_path):
    p = toml(tmp_path, "t.toml", r=node("h", 1, "a", "b", "a", "zz", max_children=2),
             a=node("h", 2), b=node("h", 3))
    assert problems(p) == [f"{p}: node r: childs lists a twice",
                           f"{p}: node r: childs lists unknown node zz",
                           f"{p}: node r: childs has 4 nodes, more than max_children = 2"]
    q = toml(tmp_path, "q.toml", r=node("h", 1, *[f"c{i}" for i in range(11)]),
             **{f"c{i}": node("h", 10 + i) for i in range(11)})
    assert problems(q) == [f"{q}: node r: childs has 11 nodes, more than max_children = 10"]


def test_two_nodes_on_the_same_host_and_port(tmp_path):
    p = toml(tmp_path, "t.toml", r=node("10.0.0.1", 8888, "a"), a=node("10.0.0.1", "8888"))
    assert problems(p) == [f"{p}: node a: tree_ip:tree_port 10.0.0.1:8888 is also used by "
                           "node r"]
    q = toml(tmp_path, "q.toml", b=node("10.0.0.1", 8888))
    other = toml(tmp_path, "o.toml", r=node("10.0.0.2", 1, "b"))
    assert load_fabric([other, q]).tree.root == "r"  # another host: fine
    assert problems(p, q) == [f"{p}: node a: tree_ip:tree_port 10.0.0.1:8888 is also used "
                              "by node r",
                              f"{q}: node b: tree_ip:tree_port 10.0.0.1:8888 is also used "
                              f"by node r (in {p})",
                              f"{q}: node b: not connected to the root r: no node's childs "
                              "lists it"]


def test_a_node_without_ssh_only_matters_for_build(tmp_path):
    t = toml(tmp_path, "tree.toml", r=node("h", 1, "a"), a=node("h", 2))
    s = tmp_path / "ssh.toml"
    s.write_text('[ssh.r]\nhost = "10.0.0.1"\n[ssh.ghost]\nhost = "10.0.0.9"\n')
    assert load_fabric([t, s]).ssh["r"].host == "10.0.0.1"
    assert problems(t, s, for_build=True) == [
        f"{s}: ssh ghost: no node ghost in the tree (no tree_node.ghost table)",
        f"{t}: node a: no ssh entry: add an ssh.a table with host, username, and password, "
        "key_file or agent"]
    fabric = load_fabric([t, s])
    with pytest.raises(ConfigError) as info:
        fabric.validate(for_build=True)  # the model remembers which file said what
    assert info.value.problems == problems(t, s, for_build=True)
    fabric.validate()


def test_bad_ssh_entries(tmp_path):
    t = toml(tmp_path, "tree.toml", r=node("h", 1))
    s = tmp_path / "ssh.yaml"
    s.write_text("ssh:\n  r:\n    port: 0\n    agent: 'no'\n    user: root\n"
                 "    install_root: opt/ts\n    username: ''\n")
    assert problems(t, s) == [
        f"{s}: ssh r: port must be an integer in 1..65535, got 0",
        f"{s}: ssh r: agent must be true or false, got 'no'",
        f"{s}: ssh r: unknown key 'user' (known: name, host, port, username, password, "
        "key_file, agent, python, install_root)",
        f"{s}: ssh r: install_root must be an absolute path, got 'opt/ts'",
        f"{s}: ssh r: username must be a non-empty string, got ''",
        f"{s}: ssh r: host is missing",
    ]


def test_merging_a_conflicting_key_names_both_files(tmp_path):
    a = toml(tmp_path, "a.toml", r=node("h", 1))
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"version": 3, "tree_node": {"r": {"tree_port": 2,
                                                               "tree_ip": "h"}}}))
    c = tmp_path / "c.yaml"
    c.write_text("version: 4\n")
    assert problems(a, b, c) == [f"{b}: node r: tree_port = 2 conflicts with 1 in {a}",
                                 f"{c}: version = 4 conflicts with 3 in {b}"]


def test_unreadable_files_are_reported_with_the_rest(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[tree_node.a\n")
    good = toml(tmp_path, "good.toml", r=node("h", 1, "ghost"))
    lines = problems(bad, good, tmp_path / "missing.toml", tmp_path / "x.ini")
    assert lines[0].startswith(f"{bad}: not valid TOML: ")
    assert lines[1:] == [f"{tmp_path / 'missing.toml'}: no such file or directory",
                         f"{tmp_path / 'x.ini'}: no such file or directory",
                         f"{good}: node r: childs lists unknown node ghost"]
    (tmp_path / "y.ini").write_text("")
    assert problems(good.parent / "y.ini")[0].endswith("unknown config format '.ini' "
                                                       "(use .toml, .json, .yaml or .yml)")


def test_an_empty_directory_and_a_file_without_nodes(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert problems(empty) == [f"{empty}: no .toml, .json, .yaml or .yml files in it",
                               f"{empty}: no tree_node tables: the tree has no nodes"]
    s = tmp_path / "ssh.toml"
    s.write_text('[ssh.a]\nhost = "h"\n')
    assert problems(s) == [f"{s}: no tree_node tables: the tree has no nodes"]


def test_every_problem_is_reported_not_only_the_first(tmp_path):
    p = toml(tmp_path, "t.toml", r=node("h", 1, "a", "b", max_children=1, speed=1),
             a=node("h", 1), b=node("h", 3, "r"))
    assert problems(p) == [
        f"{p}: node r: unknown key 'speed'",
        f"{p}: node a: tree_ip:tree_port h:1 is also used by node r",
        f"{p}: node r: childs has 2 nodes, more than max_children = 1",
        f"{p}: node b: childs makes a cycle: b -> r -> b",
    ]


def test_a_fabric_from_a_dict_is_checked_the_same_way():
    with pytest.raises(ConfigError) as info:
        fabric_from_dict({"tree_node": {"a": {"tree_ip": "h", "tree_port": 1,
                                              "childs": ["a"]}}}, "pushed")
    assert info.value.problems == ["pushed: node a: childs makes a cycle: a -> a"]
    good = fabric_from_dict({"tree_node": {"a": {"tree_ip": "h", "tree_port": 1}}})
    assert fabric_from_dict(fabric_to_dict(good)) == good
