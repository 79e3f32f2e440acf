"""Tables in real terminals (tmux) of 80x24 and 200x50 against a real local tree:
`tsctl status`, `event ls`, `lb ls`, `docker ps` and the monitor show only the columns
that fit, never cut a node name, never stub a column to "…", say what they left out,
and show everything when the terminal is wide (or with --wide).

The tree has long node names (the seed's shape), so 80 columns cannot hold every
column; its nodes are pointed at no Docker engine, so this machine's containers do
not crowd the monitor. `docker ps` runs against a node of the real engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from tsctl.bus_cmd import STATUS_COLUMNS
from tsctl.event_cmd import LS_COLUMNS as EVENT_COLUMNS
from tsctl.lb_cmd import LS_COLUMNS as LB_COLUMNS
from tsctl.monitor import COLUMNS as MONITOR_COLUMNS

from tests import dockerkit
from tests.conftest import ADMIN, ROOT, free_port, wait_until
from tests.integration.test_monitor import rows as monitor_rows
from tests.tmuxkit import TSCTL, Terminal, run_in_terminal
from treescale.local import down

# The seed's shape (tree1 > tree2 > tree3, tree1 > tree4 > tree5..7) with long names.
SHAPE = {"frankfurt-core": ["frankfurt-edge-a", "frankfurt-edge-b"],
         "frankfurt-edge-a": ["frankfurt-edge-a-cache-node"],
         "frankfurt-edge-a-cache-node": [],
         "frankfurt-edge-b": ["fra-b-1", "fra-b-2", "fra-b-3"],
         "fra-b-1": [], "fra-b-2": [], "fra-b-3": []}
DEEP = "frankfurt-edge-a-cache-node"  # where the handler and the lb service live
HANDLER = "frankfurt-deploy"
COMMAND = "echo rolling out $TREESCALE_EVENT to the frankfurt cache nodes now"
HIDDEN = re.compile(r"^\((\d+) columns? hidden: ([^;]*);(?: cut short: ([^;]*);)? "
                    r"widen the terminal(?: or use --wide/--json)?\)$")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """The seven long-named nodes as local processes (`tsctl up`), down at teardown."""
    tmp = tmp_path_factory.mktemp("narrow")
    ports = {name: free_port() for name in SHAPE}
    lines = ["[tree_node]"]
    for name, kids in SHAPE.items():
        groups = ["frontend", "cache"] if name == DEEP else []
        lines += [f'[tree_node."{name}"]', f'name = "{name}"', f"tree_port = {ports[name]}",
                  'tree_ip = "127.0.0.1"', "tags = []", f"groups = {json.dumps(groups)}",
                  f"childs = {json.dumps(kids)}",
                  f'docker_host = "unix://{tmp}/no-docker.sock"']
        if name == DEEP:
            lines += ["handlers_enabled = true", "lb_enabled = true"]
    cfg = tmp / "tree.toml"
    cfg.write_text("\n".join(lines) + "\n")
    state = tmp / "state" / "up.json"
    try:
        # the tree's admin token: what every tsctl of the tests presents
        r = subprocess.run([sys.executable, "-m", "tsctl.main", "up", str(cfg), "--state",
                            str(state)], cwd=ROOT, capture_output=True, timeout=120,
                           env={**os.environ, "TREESCALE_TOKEN": ADMIN})
        assert r.returncode == 0, r.stderr.decode()
        address = {name: f"tcp://127.0.0.1:{port}" for name, port in ports.items()}
        wait_until(lambda: linked(address["fra-b-3"]), 60, "seven linked nodes")
        yield address
    finally:
        down(state)


def tsctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """tsctl with the tree's admin token (the module's tree outlives a test's env)."""
    return subprocess.run([sys.executable, "-m", "tsctl.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TREESCALE_TOKEN": ADMIN})


def linked(address: str) -> bool:
    r = tsctl("status", "--json", "-a", address, "--wait", "1.5")
    nodes = {n["node"]: n for n in json.loads(r.stdout or "[]")}
    return len(nodes) == 7 and all(nodes[kid]["parent"] == parent
                                   for parent, kids in SHAPE.items() for kid in kids)


# ------------------------------------------------------------------ reading screens


def boxed(screen: str) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the boxed table on the screen, cell by cell; the
    continuation lines of a multi-line row are joined to it with newlines."""
    headers: list[str] = []
    rows: list[list[str]] = []
    for line in screen.splitlines():
        if line.startswith("┃"):
            headers = [c.strip() for c in line.strip("┃").split("┃")]
        elif line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            if rows and not cells[0]:
                rows[-1] = [f"{a}\n{b}" if b else a for a, b in zip(rows[-1], cells,
                                                                     strict=True)]
            else:
                rows.append(cells)
    return headers, rows


def footer(screen: str) -> tuple[list[str], list[str]] | None:
    """(hidden columns, columns cut short) from the note under a table, if any (the
    note may be wrapped over several lines, between words)."""
    lines = [line.strip() for line in screen.splitlines()]
    starts = [i for i, line in enumerate(lines) if re.match(r"\(\d+ columns? hidden", line)]
    if not starts:
        return None
    [start] = starts
    end = next(i for i in range(start, len(lines)) if lines[i].endswith(")"))
    m = HIDDEN.match(" ".join(lines[start:end + 1]))
    assert m, lines[start:end + 1]
    hidden = m[2].split(", ")
    assert int(m[1]) == len(hidden), m[0]
    return hidden, (m[3].split(", ") if m[3] else [])


def check_boxed(screen: str, width: int, every: list[str], keys: dict[str, set[str]],
                narrow: bool) -> list[str]:
    """The screen's boxed table fits ``width`` (no line the terminal had to wrap), each
    KEY column holds exactly the ``keys`` values (whole), no cell but those of a
    column the note says was cut short has "…", and the columns shown plus the
    hidden ones are ``every`` column (hidden ones only when ``narrow``). The shown
    headers."""
    assert max(len(line) for line in screen.splitlines()) <= width, screen
    headers, rows = boxed(screen)
    assert rows, screen
    for header, values in keys.items():
        assert {r[headers.index(header)] for r in rows} == values, screen
    note = footer(screen)
    hidden, cut = note if note else ([], [])
    assert (note is not None) == narrow, screen
    assert sorted(headers + hidden) == sorted(every), screen
    assert headers == [h for h in every if h in headers]  # in their own order
    for i, header in enumerate(headers):
        if header not in cut:
            assert not any("…" in r[i] for r in rows), (header, screen)
    return headers


def headers_of(columns) -> list[str]:
    return [c.header for c in columns]


# ------------------------------------------------------------------------ tests


def test_status_at_80_and_200_columns(tree, tmp_path):
    keys = {"node": set(SHAPE)}
    narrow, code, err = run_in_terminal(tmp_path / "80", f"status -a {tree[DEEP]}", 80, 24)
    assert code == 0, err
    shown = check_boxed(narrow, 80, headers_of(STATUS_COLUMNS), keys, narrow=True)
    assert shown[:3] == ["node", "parent", "address"]  # the most useful ones stay
    wide, code, err = run_in_terminal(tmp_path / "200", f"status -a {tree[DEEP]}", 200, 50)
    assert code == 0, err
    check_boxed(wide, 200, headers_of(STATUS_COLUMNS), keys, narrow=False)
    # --wide at 80: every column, the lines longer than the terminal (it wraps them)
    every, code, err = run_in_terminal(tmp_path / "w", f"status --wide -a {tree[DEEP]}",
                                       80, 24)
    assert code == 0, err
    assert boxed(every)[0] == headers_of(STATUS_COLUMNS) and footer(every) is None
    assert max(len(line) for line in every.splitlines()) > 80


def test_event_ls_cuts_only_the_command_and_lb_ls_keeps_its_keys(tree, tmp_path):
    a = ("-a", tree[DEEP], "-t", DEEP)
    added = tsctl("event", "add", "deploy.frankfurt.>", "--id", HANDLER, "--run", COMMAND, *a)
    assert added.returncode == 0, added.stderr
    vip, reals = f"127.0.0.1:{free_port()}", [f"127.0.0.1:{free_port()}" for _ in range(2)]
    added = tsctl("lb", "add", vip, "--backend", "proxy", "--real", reals[0], "--real",
                  reals[1] + "@3", *a)
    assert added.returncode == 0, added.stderr

    keys = {"node": {DEEP}, "id": {HANDLER}}
    args = f"event ls -a {tree[DEEP]} -t {DEEP}"
    narrow, code, err = run_in_terminal(tmp_path / "e80", args, 80, 24)
    assert code == 0, err
    shown = check_boxed(narrow, 80, headers_of(EVENT_COLUMNS), keys, narrow=True)
    assert footer(narrow)[1] == ["command"] and "command" in shown
    [row] = boxed(narrow)[1]
    command = row[shown.index("command")]
    assert command.endswith("…") and COMMAND.startswith(command[:-1]) and len(command) >= 16
    wide, code, err = run_in_terminal(tmp_path / "e200", args, 200, 50)
    assert code == 0, err
    check_boxed(wide, 200, headers_of(EVENT_COLUMNS), keys, narrow=False)
    [row] = boxed(wide)[1]
    assert row[headers_of(EVENT_COLUMNS).index("command")] == COMMAND

    keys = {"node": {DEEP}, "service": {f"tcp/{vip}"}}
    args = f"lb ls -a {tree[DEEP]} -t {DEEP}"
    for size, (width, height) in (("l80", (80, 24)), ("l200", (200, 50))):
        screen, code, err = run_in_terminal(tmp_path / size, args, width, height)
        assert code == 0, err
        shown = check_boxed(screen, width, headers_of(LB_COLUMNS), keys,
                            narrow=width == 80)
        assert "real servers" in shown  # the most useful data column, on two lines
        [row] = boxed(screen)[1]
        assert sorted(row[shown.index("real servers")].split("\n")) == \
            sorted([f"{reals[0]}@1", f"{reals[1]}@3"])  # one per line, in the service's order
        assert "no ip_vs module" in screen  # why auto would not take IPVS, still said


def test_the_live_monitor_at_80x24_and_200x50(tree, tmp_path):
    exit_file, errors = tmp_path / "monitor.exit", tmp_path / "monitor.err"
    term = Terminal(tmp_path, f"env -u COLUMNS -u LINES {TSCTL} monitor -a "
                    f"{tree['frankfurt-core']} 2> {errors}; echo $? > {exit_file}", 80, 24)
    every = headers_of(MONITOR_COLUMNS)
    try:
        def shows(width: int, narrow: bool) -> None:
            last = [""]

            def check() -> bool:
                assert not exit_file.exists(), errors.read_text()
                last[0] = screen = term.screen(joined=True)
                drawn = monitor_rows(screen)
                if set(drawn) != set(SHAPE) or any(s != "up" for _, s in drawn.values()):
                    return False  # not all seven up yet
                lines = screen.splitlines()
                header = next(line for line in lines if line.split()[:2] == ["node", "state"])
                note = footer(screen)
                return (max(len(line) for line in lines) <= width and "…" not in screen
                        and (note is not None) == narrow
                        and sorted(header.split() + (note[0] if note else []))
                        == sorted(every))

            try:
                wait_until(check, 60, f"all seven nodes, whole, at {width} columns",
                           interval=0.3)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the screen was:\n{last[0]}") from None

        shows(80, narrow=True)
        term.resize(200, 50)
        shows(200, narrow=False)
        term.resize(80, 24)
        shows(80, narrow=True)
        term.tmux("send-keys", "-t", "t", "q")
        wait_until(lambda: exit_file.exists() and exit_file.read_text().strip() != "",
                   15, "the monitor to exit after q")
        assert exit_file.read_text().strip() == "0", errors.read_text()
    finally:
        term.close()
    once = tsctl("monitor", "--once", "--wide", "-a", tree["frankfurt-core"], "--wait", "2")
    assert once.returncode == 0, once.stderr
    assert set(monitor_rows(once.stdout)) == set(SHAPE) and "hidden" not in once.stdout
    refused = tsctl("monitor", "--wide", "-a", tree["frankfurt-core"])
    assert refused.returncode == 2 and "--wide needs --once" in refused.stderr


# ------------------------------------------------------------------- docker ps


@pytest.fixture(scope="session")
def engine() -> None:
    """Skip (saying why) where no Docker engine answers on this machine."""
    if shutil.which("docker") is None:
        pytest.skip("no docker command on this machine (Debian package docker.io)")
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                          capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        pytest.skip(f"no Docker engine answers here: {info.stderr.strip()[:200]}")


def test_docker_ps_at_80_and_200_columns(engine, request, tmp_path: Path):
    n, _ = request.getfixturevalue("docker_node")
    [(key, value)] = request.getfixturevalue("test_label").items()
    name = f"narrow-terminal-web-{uuid.uuid4().hex[:8]}"
    run = tsctl("docker", "run", "-a", n.address, "-t", "d1", "--name", name, "-l",
                f"{key}={value}", "-p", "127.0.0.1::8080", dockerkit.IMAGE,
                *dockerkit.httpd_command())
    assert run.returncode == 0, run.stderr
    args = f"docker ps -a {n.address} -t d1 -f label={key}={value}"
    every = ["NODE", "ID", "NAME", "IMAGE", "STATE", "STATUS", "PORTS"]
    for width, height in ((80, 24), (200, 50)):
        screen, code, err = run_in_terminal(tmp_path / str(width), args, width, height)
        assert code == 0, err
        lines = screen.splitlines()
        assert max(len(line) for line in lines) <= width and "…" not in screen, screen
        header = next(line.split() for line in lines if line.split()[:1] == ["NODE"])
        [row] = [line.split() for line in lines if line.split()[:1] == ["d1"]]
        assert row[header.index("NAME")] == name  # whole
        note = footer(screen)
        assert (note is not None) == (width == 80), screen
        assert sorted(header + (note[0] if note else [])) == sorted(every), screen
        if width == 200:
            assert header == every and "->8080/tcp" in screen


# The Docker kit's fixtures, found by pytest as attributes of this module.
docker_client, test_label, docker_node = (dockerkit.docker_client, dockerkit.test_label,
                                          dockerkit.docker_node)
