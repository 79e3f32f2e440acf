"""`tsctl monitor` live in a real terminal (tmux) against a seven-node local tree."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import msgpack
import pytest

from tests.conftest import ROOT, wait_until
from tests.integration.test_local_tree import seed_file
from tests.tmuxkit import Terminal
from treescale.local import down, read_state

# One table row of a node: its tree guides, name and state.
ROW = re.compile(r"^ ?(?P<guides>[ │├└─]*)(?P<name>[\w-]+)\s+(?P<state>up|down|re-homing)\b")


def rows(screen: str) -> dict[str, tuple[int, str]]:
    """node -> (indentation of its name, state) as drawn on the screen."""
    found = {}
    for line in screen.splitlines():
        m = ROW.match(line)
        if m:
            found[m["name"]] = (len(m["guides"]), m["state"])
    return found


@pytest.fixture
def tree(tmp_path):
    """configs/tree.toml's seven nodes on free loopback ports, stopped at teardown."""
    cfg = tmp_path / "tree.toml"
    ports = seed_file(cfg)
    state = tmp_path / "state" / "up.json"
    try:
        r = subprocess.run([sys.executable, "-m", "tsctl.main", "up", str(cfg),
                            "--state", str(state)], cwd=ROOT, capture_output=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        yield ports, state
    finally:
        down(state)


def test_live_view_shows_the_tree_a_dead_node_and_the_rehomed_children(tree, tmp_path):
    ports, state = tree
    # The one-shot view for scripts (here through a leaf) draws the same tree.
    def once_shows_all() -> bool:
        r = subprocess.run([sys.executable, "-m", "tsctl.main", "monitor", "--once",
                            "--wait", "2", "-a", f"tcp://127.0.0.1:{ports['tree7']}"],
                           cwd=ROOT, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        drawn = rows(r.stdout.decode())
        return len(drawn) == 7 and drawn["tree5"][0] > drawn["tree4"][0] > 0

    wait_until(once_shows_all, 60, "all seven nodes in `tsctl monitor --once`")
    exit_file, errors = tmp_path / "monitor.exit", tmp_path / "monitor.err"
    monitor = (f"{shlex.quote(sys.executable)} -m tsctl.main monitor "
               f"-a tcp://127.0.0.1:{ports['tree1']} 2> {errors}; echo $? > {exit_file}")
    term = Terminal(tmp_path, monitor, 120, 40)
    try:
        def shows(predicate, what: str, timeout: float = 60) -> None:
            last = [""]

            def check() -> bool:
                if exit_file.exists():
                    raise AssertionError(f"the monitor exited while waiting for {what}:"
                                         f"\n{errors.read_text()}")
                last[0] = term.screen()
                return predicate(rows(last[0]), last[0])

            try:
                wait_until(check, timeout, what, interval=0.2)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the screen was:\n{last[0]}") from None

        # All seven, up, drawn as the tree of configs/tree.toml.
        def seven(r: dict, _screen: str) -> bool:
            return len(r) == 7 and all(s == "up" for _, s in r.values()) and \
                r["tree2"][0] == r["tree4"][0] < r["tree3"][0] == r["tree5"][0] == \
                r["tree6"][0] == r["tree7"][0] and r["tree1"][0] < r["tree2"][0]

        shows(seven, "seven linked nodes, all up")

        # A short terminal: subtrees below the first level collapse into summaries.
        term.resize(80, 8)
        shows(lambda r, screen: set(r) == {"tree1", "tree2", "tree4"}
              and re.search(r"└─ … 3 nodes +all up", screen) is not None,
              "the collapsed view at 80x8")
        term.resize(120, 40)
        shows(seven, "the full tree again at 120x40")

        # kill -9 an inner node: it turns red, and its children move under the root.
        victim = next(n for n in read_state(state) if n.name == "tree4")
        subprocess.run(["kill", "-9", str(victim.pid)], check=True)

        def healed(r: dict, _screen: str) -> bool:
            return set(r) == {f"tree{i}" for i in range(1, 8)} and \
                r["tree4"][1] == "down" and all(
                    r[k] == (r["tree2"][0], "up") for k in ("tree5", "tree6", "tree7")) \
                and all(r[k][1] == "up" for k in ("tree1", "tree2", "tree3"))

        shows(healed, "tree4 down and tree5..7 re-homed under tree1")
        [line] = [ln for ln in term.screen(colours=True).splitlines() if "tree4" in ln]
        assert re.search(r"\x1b\[[0-9;]*31m", line), repr(line)  # drawn in red
        # Short again: the dead node stays in view, everything else is summarised.
        term.resize(80, 8)
        shows(lambda r, screen: set(r) == {"tree1", "tree4"} and r["tree4"][1] == "down"
              and re.search(r"└─ … 5 nodes +all up", screen) is not None,
              "the dead node kept at 80x8")

        term.tmux("send-keys", "-t", "t", "q")
        wait_until(exit_file.exists, 15, "the monitor to exit after q")
        wait_until(lambda: exit_file.read_text().strip() != "", 5, "its exit status")
        assert exit_file.read_text().strip() == "0"
    finally:
        term.close()


def test_a_big_tree_collapses_on_an_80x24_terminal(node_factory, clients, tmp_path):
    """36 nodes on 80x24: the first level in full (with the root's container), deeper
    subtrees as one line each, and the path to a down node kept open. The 35 nodes under the real node `hub` are
    stand-ins: the test publishes their $sys.node.stats itself (what each real node
    would say), because 35 more node processes are too heavy for a shared 2-core CI
    machine; the monitor, the node and the terminal are real."""
    # The node's Docker service is pointed at no engine: containers of this machine
    # must not crowd the screen; the one container shown is published below.
    hub = node_factory("hub", {"docker_host": f"unix://{tmp_path}/no-docker.sock"})
    fake = {f"c{i}": "hub" for i in range(5)}
    fake.update({f"c{i}-{j}": f"c{i}" for i in range(5) for j in range(6)})
    silent: set[str] = set()
    pub = clients(hub.address, name="stand-ins")
    uptime = [100.0]

    def report() -> None:
        uptime[0] += 0.5
        for name, parent in fake.items():
            if name not in silent:
                pub.publish("$sys.node.stats", msgpack.packb(
                    {"node": name, "parent": parent, "uptime": uptime[0],
                     "events_in": 0, "events_out": 0, "subscriptions": 0}))
        pub.publish("$sys.docker.hub.stats", msgpack.packb(  # as the Docker service does
            {"node": "hub", "id": "ab" * 32, "name": "web", "image": "busybox",
             "cpu_percent": 12.4, "mem_bytes": 2 << 20, "mem_limit": 64 << 20}))
        pub.flush()

    exit_file, errors = tmp_path / "monitor.exit", tmp_path / "monitor.err"
    term = Terminal(tmp_path, f"{shlex.quote(sys.executable)} -m tsctl.main monitor -a "
                    f"{hub.address} 2> {errors}; echo $? > {exit_file}", 80, 24)
    try:
        def shows(predicate, what: str) -> None:
            screen = [""]

            def check() -> bool:
                report()  # the stand-ins keep talking while we look
                assert not exit_file.exists(), errors.read_text()
                screen[0] = term.screen()
                return predicate(rows(screen[0]), screen[0])

            try:
                wait_until(check, 60, what, interval=0.3)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the screen was:\n{screen[0]}") from None

        level1 = {"hub", *(f"c{i}" for i in range(5))}
        shows(lambda r, screen: set(r) == level1 and "36 nodes (36 up)" in screen
              and len(re.findall(r"└─ … 6 nodes +all up", screen)) == 5
              and re.search(r"├─ ▣ web +running .* 12% +2M/64M", screen) is not None,
              "hub, its container and its five children, each subtree as one line")
        silent.add("c2-3")
        pub.publish("$sys.node.down", msgpack.packb(
            {"node": "c2-3", "detected_by": "c2", "role": "child", "reason": "test"}))
        shows(lambda r, screen: set(r) == level1 | {"c2-3"} and r["c2-3"][1] == "down"
              and r["c2-3"][0] > r["c2"][0] and "… 5 nodes" in screen,
              "the down node shown inside its collapsed parent")
        screen = term.screen().splitlines()
        assert len(screen) <= 24 and " mem" in screen[1]  # the table fits 80 columns
        term.tmux("send-keys", "-t", "t", "C-c")  # Ctrl-C leaves as cleanly as q
        wait_until(lambda: exit_file.exists() and exit_file.read_text().strip() != "",
                   15, "the monitor to exit after Ctrl-C")
        assert exit_file.read_text().strip() == "0", errors.read_text()
    finally:
        term.close()


def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path):
    from tests.conftest import free_port

    def monitor(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tsctl.main", "monitor", *args],
                              cwd=ROOT, capture_output=True, timeout=60,
                              stdin=subprocess.DEVNULL)

    for args, message in (
            (("-n", "nope", "--once"), "configs/tree.toml: no node named 'nope'"),
            (("-a", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5"), "no answer"),
            (("-n", "x", "--config", str(tmp_path / "none.toml")), "no tree file")):
        r = monitor(*args)
        err = r.stderr.decode()
        assert r.returncode == 1 and message in err and len(err.splitlines()) == 1, err
    r = monitor("--json")
    assert r.returncode == 2 and "--json needs --once" in r.stderr.decode()
