"""tsctl end to end: real processes, real node, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time

import click
import pytest

from tests.conftest import ROOT, free_port


def tsctl(*args: str, timeout: float = 30, input: bytes | None = None):
    return subprocess.run([sys.executable, "-m", "tsctl.main", *args], cwd=ROOT,
                          capture_output=True, timeout=timeout, input=input)


def one_line_error(result, *words: str) -> None:
    err = result.stderr.decode()
    assert result.returncode != 0
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("cmd", [[], ["node"], ["node", "start"], ["pub"], ["sub"],
                                 ["request"]])
def test_help_everywhere(cmd):
    r = tsctl(*cmd, "--help")
    assert r.returncode == 0 and b"Usage:" in r.stdout


def test_pub_then_sub_json(node):
    sub = subprocess.Popen([sys.executable, "-m", "tsctl.main", "sub", "greet.*", "--json",
                            "--count", "1", "-a", node.address], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while sub.poll() is None and time.monotonic() < deadline:
            r = tsctl("pub", "greet.world", "hello there", "-a", node.address)
            assert r.returncode == 0, r.stderr
            try:
                sub.wait(0.3)
            except subprocess.TimeoutExpired:
                pass
        out, err = sub.communicate(timeout=5)
    finally:
        sub.kill()
    assert sub.returncode == 0, err
    event = json.loads(out.decode().splitlines()[0])
    assert event["name"] == "greet.world" and event["data"] == "hello there"
    assert event["source"] == "tsctl"


def test_pub_count_and_mode(node, clients):
    sub = clients(node.address)
    sub.subscribe("jobs", queue="w")
    r = tsctl("pub", "jobs", "x", "--count", "25", "--mode", "one", "-a", node.address)
    assert r.returncode == 0 and b"published 25 event(s)" in r.stderr
    got = [e for _, e in zip(range(25), sub.events(5), strict=False)]
    assert len(got) == 25


def test_request_prints_reply(node, clients):
    responder = clients(node.address)
    responder.subscribe("svc.upper")

    def serve() -> None:
        for ev in responder.events(timeout=10):
            responder.reply(ev, bytes(ev.data).upper())
            return

    threading.Thread(target=serve, daemon=True).start()
    r = tsctl("request", "svc.upper", "shout", "-a", node.address)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"SHOUT\n"


def test_request_without_responder_is_one_line(node):
    one_line_error(tsctl("request", "svc.none", "x", "-a", node.address),
                   "no_responders", "svc.none")


def test_bad_pattern_is_one_line(node):
    one_line_error(tsctl("sub", "a.>.b", "-a", node.address), "'>' must be the last token")


def test_bad_target_is_one_line(node):
    one_line_error(tsctl("pub", "x", "y", "--target", "mars:1", "-a", node.address),
                   "target 'mars:1' must be node:NAME")


def test_unreachable_node_is_one_line():
    port = free_port()
    one_line_error(tsctl("pub", "x", "y", "-a", f"tcp://127.0.0.1:{port}", "--timeout",
                         "0.5"), "no answer from a TreeScale node", str(port))


def test_wrong_token_is_one_line(node_factory):
    n = node_factory("secure", {"tokens": ["t"]})
    one_line_error(tsctl("pub", "x", "y", "-a", n.address, "--token", "bad"),
                   "bad_token", "invalid token")


def test_bad_config_is_one_line(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text("[node]\nname = 'a'\nport = 'eighty'\n")
    one_line_error(tsctl("node", "start", "--config", str(cfg)), str(cfg), "port",
                   "must be an integer")
    cfg.write_text("[node]\nname = 'a'\nbogus = 1\n")
    one_line_error(tsctl("node", "start", "--config", str(cfg)), "unknown key 'bogus'")
    cfg.write_text("[node\n")
    one_line_error(tsctl("node", "start", "--config", str(cfg)), "not valid TOML")


def test_node_start_reads_seed_tree_config(tmp_path):
    port = free_port()
    cfg = tmp_path / "tree.toml"
    cfg.write_text(f"""
[tree_node]
  [tree_node.tree1]
  name = "tree1"
  tree_port = {port}
  tree_ip = "127.0.0.1"
  tags = []
  groups = ["backend"]
  childs = ["tree2"]
  [tree_node.tree2]
  tree_port = {free_port()}
  tree_ip = "127.0.0.1"
""")
    proc = subprocess.Popen([sys.executable, "-m", "tsctl.main", "node", "start",
                             "--config", str(cfg), "--name", "tree1"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        from tests.conftest import ping, wait_until
        wait_until(lambda: ping(f"tcp://127.0.0.1:{port}"), 15, "node from tree.toml")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert f"node tree1 listening on tcp://127.0.0.1:{port}" in out.decode()
    one_line_error(tsctl("node", "start", "--config", str(cfg), "--name", "nope"),
                   "no node named 'nope'", "tree1")
    cfg.write_text(cfg.read_text().replace('childs = ["tree2"]', 'childs = ["tree9"]'))
    one_line_error(tsctl("node", "start", "--config", str(cfg), "--name", "tree1"),
                   str(cfg), "tree9")


@pytest.mark.parametrize("path,name", [("configs/node.toml", None),
                                       ("configs/tree.toml", "tree4")])
def test_shipped_configs_load(path, name):
    from treescale.loader import load_node_config

    cfg = load_node_config(ROOT / path, name)
    assert cfg.name == (name or "n1") and cfg.port > 0


def test_demo_runs_and_shows_events_flowing():
    """`make demo` runs `tsctl demo`: a seven-node tree of real processes, applications
    on different nodes, events crossing the tree, shown live."""
    r = tsctl("demo", "--duration", "6", "--rate", "200", timeout=90)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    last = out.rsplit("tree of", 1)[-1]
    assert last.startswith(" 7 nodes"), last[:200]
    for node in ("tree1", "tree2", "tree3", "tree4", "tree5", "tree6", "tree7"):
        assert node in last
    rows = dict(re.findall(r"│ (\S+) @ tree\d.*?│\s+([\d,]+) │", last))
    assert set(rows) == {"dashboard", "kitchen-display", "worker-1", "worker-2"}, rows
    # the feed publishes on tree7; the dashboard on tree3 is four hops away
    assert int(rows["dashboard"].replace(",", "")) > 0, last


# ----------------------------------------------------------- completion and --json

# Commands that print no data to parse: a node in the foreground, a live demo, a
# completion script (a script, checked below against click's own).
NO_JSON = {"node start", "node gateway", "demo", "completion"}  # servers and a live view


def test_every_command_that_prints_data_has_json():
    from tsctl.main import cli

    def leaves(group, path=()):
        ctx = click.Context(group)  # list/get: the root group imports its commands lazily
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if isinstance(command, click.Group):
                yield from leaves(command, (*path, name))
            else:
                yield " ".join((*path, name)), command

    found = dict(leaves(cli))
    assert NO_JSON <= set(found) and {"doctor", "status", "up", "down", "pub"} <= set(found)
    missing = [name for name, command in found.items() if name not in NO_JSON
               and not any("--json" in p.opts for p in command.params)]
    assert not missing, f"commands without --json: {missing}"


@pytest.mark.parametrize("shell,marker", [
    ("bash", "complete -o nosort -F _tsctl_completion tsctl"),
    ("zsh", "#compdef tsctl"),
    ("fish", "complete --no-files --command tsctl")])
def test_completion_prints_clicks_own_script(shell, marker):
    r = tsctl("completion", shell)
    assert r.returncode == 0, r.stderr
    script = r.stdout.decode()
    clicks = subprocess.run([sys.executable, "-m", "tsctl.main"], cwd=ROOT,
                            capture_output=True, timeout=30,
                            env={**os.environ, "_TSCTL_COMPLETE": f"{shell}_source"})
    assert clicks.returncode == 0 and script == clicks.stdout.decode()
    assert marker in script and "_TSCTL_COMPLETE" in script
    bad = tsctl("completion", "tcsh")
    assert bad.returncode == 2 and b"'tcsh' is not one of" in bad.stderr


def test_bash_completion_sourced_in_a_real_bash_completes_commands(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "tsctl"  # this checkout's tsctl, whatever is installed
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m tsctl.main \"$@\"\n")
    wrapper.chmod(0o755)
    script = ('source <(tsctl completion bash) && complete -p tsctl && '
              'COMP_WORDS=(tsctl sta) COMP_CWORD=1 && _tsctl_completion tsctl sta tsctl && '
              'printf "reply:%s\\n" "${COMPREPLY[@]}" && '
              'COMP_WORDS=(tsctl docker p) COMP_CWORD=2 && COMPREPLY=() && '
              '_tsctl_completion tsctl p docker && printf "reply:%s\\n" "${COMPREPLY[@]}"')
    r = subprocess.run(["bash", "--norc", "-c", script], cwd=ROOT, capture_output=True,
                       text=True, timeout=60,
                       env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "complete -o nosort -F _tsctl_completion tsctl", r.stdout
    replies = [ln.removeprefix("reply:") for ln in lines[1:]]
    assert replies == ["status", "ps", "pull"], r.stdout


def test_pub_up_and_down_print_json(node, tmp_path):
    from treescale.local import answers_ping, down

    r = tsctl("pub", "greet.json", "hello", "--count", "3", "--json", "-a", node.address)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"name": "greet.json", "count": 3, "bytes": 5,
                                    "target": None, "mode": "all", "node": "n1"}
    port = free_port()
    cfg = tmp_path / "one.toml"
    cfg.write_text(f'[tree_node]\n[tree_node.solo]\nname = "solo"\ntree_port = {port}\n'
                   'tree_ip = "127.0.0.1"\nchilds = []\n')
    state = tmp_path / "state" / "up.json"
    try:
        r = tsctl("up", str(cfg), "--state", str(state), "--json", timeout=60)
        assert r.returncode == 0, r.stderr
        [started] = json.loads(r.stdout)
        assert started["name"] == "solo" and started["address"] == f"tcp://127.0.0.1:{port}"
        assert started["pid"] > 0 and answers_ping(started["address"])
        r = tsctl("down", "--state", str(state), "--json")
        assert r.returncode == 0 and json.loads(r.stdout) == {"stopped": ["solo"]}
    finally:
        down(state)
