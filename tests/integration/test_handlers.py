"""Custom event handlers (`tsctl event`) on real node processes, running real commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, secure, wait_until
from treescale.services.handlers import MAX_OUTPUT
from treescale.services.rpc import call
from treescale.subjects import AUDIT_HANDLER, handler_result

TOKENS = {"admin": ["*"], "app": ["pub", "sub"]}


def tsctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsctl.main", *args], cwd=ROOT,
                          capture_output=True, timeout=timeout)


def event(node, *args: str, token: str = "admin") -> subprocess.CompletedProcess:
    return tsctl("event", *args, "-a", node.address, "--token", token)


def service_up(node, target: str | None = None) -> bool:
    extra = ("-t", target) if target else ()
    return event(node, "ls", "--json", "--call-timeout", "2", *extra).returncode == 0


def add(node, *args: str) -> None:
    r = event(node, "add", *args)
    assert r.returncode == 0, r.stderr.decode()


def next_result(watcher, timeout: float = 15.0) -> dict:
    ev = watcher.next_event(timeout)
    assert ev is not None, "no handler result arrived"
    return ev.json()


@pytest.fixture
def n1(node_factory):
    n = node_factory("n1", secure({"tokens": TOKENS}, "handlers"))
    wait_until(lambda: service_up(n), 30, "the handlers service")
    return n


@pytest.fixture
def watcher(n1, clients):
    """Sees every result and audit event of n1."""
    c = clients(n1.address, token="admin", name="watcher")
    c.subscribe(handler_result("n1"))
    return c


def test_cli_handler_gets_payload_on_stdin_and_headers_in_env(n1, watcher, clients):
    add(n1, "deploy.web", "--run",
        'printf "%s|%s|%s|%s" "$(cat)" "$TREESCALE_HEADER_COLOR" "$TREESCALE_EVENT" '
        '"$TREESCALE_NODE"')
    watcher.subscribe(AUDIT_HANDLER)
    app = clients(n1.address, token="app", name="app")
    app.publish("deploy.web", b"v1.2", headers={"color": "red"})
    got = {}
    while len(got) < 2:
        ev = watcher.next_event(15)
        assert ev is not None, f"missing result or audit, have {list(got)}"
        got[ev.name] = ev.json()
    r = got[handler_result("n1")]
    assert r["stdout"] == "v1.2|red|deploy.web|n1"
    assert (r["ok"], r["exit"], r["handler"], r["source"]) == (True, 0, "deploy.web", "app")
    audit = got[AUDIT_HANDLER]
    assert {k: audit[k] for k in ("node", "handler", "event", "source", "exit")} == \
        {"node": "n1", "handler": "deploy.web", "event": "deploy.web", "source": "app",
         "exit": 0}
    assert audit["duration"] == r["duration"]
    ls = json.loads(event(n1, "ls", "--json").stdout)
    assert [(h["id"], h["runs"], h["last_exit"]) for h in ls] == [("deploy.web", 1, 0)]


def test_wildcard_handler_runs_only_for_matching_events(n1, watcher, clients):
    add(n1, "deploy.>", "--run", 'echo "$TREESCALE_EVENT"; exit 3')
    app = clients(n1.address, token="app")
    # one publisher's events arrive in order: had other.thing run the handler, its
    # result would come first
    for name in ("other.thing", "deploy", "deploy.web.eu"):
        app.publish(name, b"")
    r = next_result(watcher)
    assert r["event"] == "deploy.web.eu" and r["stdout"] == "deploy.web.eu\n"
    assert r["exit"] == 3 and not r["ok"]
    table = event(n1, "ls")
    assert table.returncode == 0 and b"deploy.>" in table.stdout


def test_a_request_gets_the_result_as_its_reply(n1, clients):
    add(n1, "ask.time", "--run", 'echo "reply to $TREESCALE_REPLY"; cat')
    app = clients(n1.address, token="app")
    reply = app.request("ask.time", b"question", timeout=15).json()
    assert reply["ok"] and reply["node"] == "n1"
    assert reply["stdout"].startswith("reply to $inbox.n1.")
    assert reply["stdout"].endswith("question")


def test_large_output_is_truncated_in_the_result(n1, watcher, clients):
    add(n1, "big.output", "--run", "head -c 200000 /dev/zero | tr '\\0' x")
    clients(n1.address, token="app").publish("big.output", b"")
    r = next_result(watcher)
    assert r["ok"] and r["truncated"] and r["stdout"] == "x" * MAX_OUTPUT


def test_timeout_kills_the_command_and_says_so(n1, watcher, clients, tmp_path):
    marker = tmp_path / "finished"
    add(n1, "slow.job", "--timeout", "0.5", "--run", f"sleep 30; touch {marker}")
    clients(n1.address, token="app").publish("slow.job", b"")
    r = next_result(watcher)
    assert not r["ok"] and r["exit"] == -9
    assert "timed out after 0.5s on node n1 (killed)" in r["error"]
    assert not marker.exists()
    ls = json.loads(event(n1, "ls", "--json").stdout)
    assert ls[0]["running"] == 0 and "timed out" in ls[0]["last_error"]


def test_concurrency_limit_queues_then_refuses(n1, watcher, clients, tmp_path):
    gate, trace = tmp_path / "gate", tmp_path / "trace"
    # each run records its start and end; it waits (bounded by its timeout) for the
    # test to open the gate, so the second event must queue and the third is refused
    add(n1, "work.item", "--max-concurrent", "1", "--queue", "1", "--timeout", "30",
        "--run", f'echo "start $(cat)" >> {trace}; '
                 f'while [ ! -e {gate} ]; do sleep 0.02; done; echo "end" >> {trace}')
    app = clients(n1.address, token="app")
    for i in range(3):
        app.publish("work.item", str(i).encode())
    refused = next_result(watcher)
    assert refused["exit"] is None and not refused["ok"]
    assert refused["error"] == ("handler 'work.item' on node n1 refused work.item: already "
                                "1 running (max_concurrent 1) and 1 queued (queue 1)")
    gate.touch()
    done = [next_result(watcher), next_result(watcher)]
    assert all(r["ok"] for r in done)
    assert trace.read_text().split("\n") == ["start 0", "end", "start 1", "end", ""]
    ls = json.loads(event(n1, "ls", "--json").stdout)
    assert (ls[0]["runs"], ls[0]["refused"]) == (2, 1)


def test_handlers_survive_a_restart(n1, clients):
    add(n1, "boot.check", "--id", "checker", "--run", "echo still here")
    n1.stop()
    n1.start()
    wait_until(lambda: service_up(n1), 30, "the handlers service after the restart")
    r = event(n1, "trigger", "boot.check", "--json")
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    assert result["handler"] == "checker" and result["stdout"] == "still here\n"


def test_managing_handlers_needs_the_handlers_permission(n1):
    r = event(n1, "add", "x.y", "--run", "true", token="app")
    assert r.returncode == 1
    assert r.stderr.decode().strip().endswith("this client's token does not allow handlers")
    assert len(r.stderr.strip().splitlines()) == 1 and b"Traceback" not in r.stderr
    assert json.loads(event(n1, "ls", "--json").stdout) == []


@pytest.mark.parametrize("args, message", [
    (("add", "deploy..web", "--run", "true"), "invalid event pattern"),
    (("add", "deploy.web", "--run", ""), "the command to run is empty"),
    (("add", "$sys.handlers.>", "--run", "true"), "trigger itself in a loop"),
    (("rm", "ghost"), "no handler 'ghost' on node n1 (known: none)"),
    (("trigger", "nobody.listens"), "no handler on node n1 matches nobody.listens"),
])
def test_bad_input_gives_one_clear_line(n1, args, message):
    r = event(n1, *args)
    assert r.returncode == 1
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr.decode()


def test_the_service_itself_validates_what_it_stores(n1, clients):
    admin = clients(n1.address, token="admin")
    [r] = call(admin, "handlers", "add", {"pattern": "a.*", "run": "   "}, node="n1",
               timeout=10)
    assert not r.ok and "command to run is empty" in r.error
    [r] = call(admin, "handlers", "add", {"pattern": "a", "run": "x", "timeout": -1},
               node="n1", timeout=10)
    assert not r.ok and "timeout must be between" in r.error
    [r] = call(admin, "handlers", "ls", {}, node="n1", timeout=10)
    assert r.ok and r.result == []


@pytest.fixture
def tree(node_factory):
    """n1 <- n2 <- n3, n2 and n3 in group workers; handlers on everywhere."""
    n1 = node_factory("n1", secure({"tokens": TOKENS}, "handlers"))
    n2 = node_factory("n2", secure({"tokens": TOKENS, "groups": ["workers"]}, "handlers"),
                      args=("--parent", n1.address))
    n3 = node_factory("n3", secure({"tokens": TOKENS, "groups": ["workers"]}, "handlers"),
                      args=("--parent", n2.address))
    for name in ("n1", "n2", "n3"):
        wait_until(lambda name=name: service_up(n1, name), 30, f"handlers on {name}")
    return n1, n2, n3


def test_a_publish_on_one_node_runs_a_handler_on_another(tree, clients):
    n1, _, n3 = tree
    add(n1, "deploy.*", "-t", "n3", "--run", 'echo "$TREESCALE_NODE got $(cat)"')
    watcher = clients(n1.address, token="admin")
    watcher.subscribe(handler_result("n3"))
    app = clients(n1.address, token="app")
    seen: list = []

    def runs_on_n3() -> bool:
        # interest crosses the hops asynchronously: publish until the first result
        app.publish("deploy.web", b"release")
        ev = watcher.next_event(0.2)
        if ev is not None:
            seen.append(ev.json())
        return bool(seen)

    wait_until(runs_on_n3, 30, "n3's handler to run for an event published on n1")
    assert seen[0]["node"] == "n3" and seen[0]["stdout"] == "n3 got release\n"
    assert seen[0]["source"] == app.core.name


def test_trigger_runs_only_the_targeted_nodes_handlers(tree):
    n1, _, _ = tree
    add(n1, "deploy.*", "--group", "workers", "--run", 'echo "$TREESCALE_NODE: $(cat)"')

    def trigger_answers() -> bool:
        return event(n1, "trigger", "deploy.web", "go", "-t", "n3").returncode == 0

    wait_until(trigger_answers, 30, "n3's handler to answer a trigger from n1")
    ls = {h["node"]: h for h in json.loads(event(n1, "ls", "--group", "workers",
                                                 "--json").stdout)}
    assert set(ls) == {"n2", "n3"} and ls["n2"]["runs"] == 0 and ls["n3"]["runs"] >= 1
    wait_until(lambda: event(n1, "trigger", "deploy.web", "x", "--group", "workers")
               .returncode == 0, 30, "both workers to answer")
    r = event(n1, "trigger", "deploy.web", "go", "--group", "workers", "--json")
    assert r.returncode == 0, r.stderr.decode()
    results = {d["node"]: d for d in map(json.loads, r.stdout.splitlines())}
    assert {n: d["stdout"] for n, d in results.items()} == {"n2": "n2: go\n",
                                                           "n3": "n3: go\n"}
    plain = event(n1, "trigger", "deploy.web", "go", "--group", "workers")
    assert b"[n2/deploy.*] n2: go" in plain.stdout and b"[n3/deploy.*] n3: go" in plain.stdout


def test_trigger_exits_non_zero_when_a_handler_fails(n1):
    add(n1, "fail.now", "--run", "echo broken >&2; exit 5")
    r = event(n1, "trigger", "fail.now")
    assert r.returncode == 1
    assert b"broken" in r.stderr and b"exit 5" in r.stderr
