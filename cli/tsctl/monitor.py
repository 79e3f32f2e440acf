"""`tsctl monitor`: the whole fabric, live, as a tree. Thin: the model lives in
treescale/monitor_model.py; this module subscribes, reads keys and draws.

Must not touch: the rules of what the fabric's state is (the model owns them), subject
spellings (it follows treescale.subjects.MONITOR_PATTERNS)."""

from __future__ import annotations

import json
import os
import select
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from treescale import subjects
from tsctl.common import (
    address_of_node,
    address_option,
    at_least,
    connect,
    friendly,
    out,
    terminal_width,
    timeout_option,
    token_option,
    wide_option,
)
from tsctl.tables import KEY, WIDE_HINT, Column, Frame, Layout, draw, fit, note

if TYPE_CHECKING:
    from rich.console import Group

    from treescale.monitor_model import FabricModel

STATE_STYLE = {"up": "green", "down": "bold red", "re-homing": "yellow",
               "running": "green", "stopped": "red", "created": "yellow"}
CHROME_ROWS = 3  # title, table header, one spare line (says which columns are hidden)


@click.command()
@click.option("-n", "--node", "via", help="Attach through this node, by name "
              "(looked up in --config) instead of -a ADDRESS.")
@click.option("--config", "config_path", default="configs/tree.toml", show_default=True,
              type=click.Path(dir_okay=False), help="Tree file that names the nodes.")
@click.option("--once", is_flag=True, help="Print one snapshot and exit (for scripts).")
@click.option("--json", "as_json", is_flag=True, help="With --once: the nodes as JSON.")
@click.option("--wait", type=click.FloatRange(min=0), default=2.5, show_default=True,
              help="With --once: seconds to collect the nodes' reports.")
@click.option("--refresh", type=click.FloatRange(0.05, 0.5), default=0.5,
              show_default=True, help="Seconds between redraws.")
@wide_option
@address_option
@token_option
@timeout_option
@friendly
def monitor(via: str | None, config_path: str, once: bool, as_json: bool, wait: float,
            refresh: float, wide: bool, address: str, token: str | None,
            timeout: float) -> None:
    """Watch every node of the tree live: state, uptime, events/s, link RTT,
    subscriptions, drops, CPU and memory, containers. `q` or Ctrl-C quits. Columns
    that do not fit the terminal are left out (and named under the tree)."""
    if as_json and not once:
        raise click.UsageError("--json needs --once")
    if wide and not once:
        raise click.UsageError("--wide needs --once (the live view fits the screen)")
    if via is not None:
        address = address_of_node(via, config_path)
    if once:
        snapshot(address, token, timeout, wait, as_json, wide)
    else:
        live(address, token, timeout, refresh)


def _subscribe(address: str, token: str | None, timeout: float):
    client = connect(address, token, timeout, name="tsctl-monitor")
    try:
        for pattern in subjects.MONITOR_PATTERNS:
            client.subscribe(pattern)
        client.flush(timeout)
    except BaseException:
        client.close(timeout=1)
        raise
    if client.errors:
        client.close(timeout=1)
        raise client.errors[0]
    return client


def _drain(client, model, limit: int = 5000, wait: float = 0.0) -> None:
    """Fold every event that is ready (up to ``limit``) into ``model``."""
    ev = client.next_event(wait)
    for _ in range(limit):
        if ev is None:
            return
        try:
            data = ev.json()
        except Exception:  # a payload that is not msgpack: not ours to show
            data = None
        model.apply(ev.name, data, time.monotonic())
        ev = client.next_event(0)


def snapshot(address: str, token: str | None, timeout: float, wait: float,
             as_json: bool, wide: bool = False) -> None:
    from treescale.monitor_model import FabricModel

    model = FabricModel()
    with _subscribe(address, token, timeout) as client:
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            _drain(client, model, wait=min(left, 0.1))
    now = time.monotonic()
    if as_json:
        print(json.dumps(model.to_json(now), indent=1, default=str))
    else:
        view, layout = render(model, now, address, max_rows=None, live=False,
                              width=None if wide else terminal_width(out))
        at_least(layout.width).print(view)


def live(address: str, token: str | None, timeout: float, refresh: float) -> None:
    from rich.live import Live

    from treescale.monitor_model import FabricModel

    model = FabricModel()
    with _subscribe(address, token, timeout) as client, KeyReader() as keys:
        try:
            with Live(console=out, screen=True, auto_refresh=False,
                      vertical_overflow="crop") as view:
                next_draw = 0.0
                while True:
                    _drain(client, model, wait=0.05)
                    if "q" in keys.read().lower():
                        break
                    now = time.monotonic()
                    if now >= next_draw:
                        model.forget(now)
                        _follow_terminal_size(out)
                        rows = max(1, out.size.height - CHROME_ROWS)
                        view.update(render(model, now, address, rows,
                                           width=out.size.width)[0], refresh=True)
                        next_draw = now + refresh
        except KeyboardInterrupt:
            pass  # Ctrl-C is how people leave a live view: a clean exit


def _follow_terminal_size(console) -> None:
    """Size the view by the terminal itself: a stale exported $LINES/$COLUMNS (which
    rich would otherwise prefer) must not push the tree off a resized screen."""
    try:
        console.size = os.get_terminal_size(console.file.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # not a terminal: keep what rich decided


class KeyReader:
    """Single key presses from the terminal without blocking (cbreak mode); nothing
    when stdin is not a terminal. The terminal is restored on exit."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno() if sys.stdin and sys.stdin.isatty() else None
        self._saved: Any = None

    def __enter__(self) -> KeyReader:
        if self.fd is not None:
            import termios
            import tty

            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def read(self) -> str:
        if self.fd is None or not select.select([self.fd], [], [], 0)[0]:
            return ""
        return os.read(self.fd, 64).decode(errors="replace")


# ------------------------------------------------------------------------ drawing


# The live view's columns, most useful first when the terminal is narrow.
COLUMNS = [Column("node", KEY), Column("state", KEY),
           *(Column(header, priority=p, justify="right") for header, p in (
               ("up", 3), ("in/s", 9), ("out/s", 8), ("rtt", 4), ("subs", 2), ("drop", 7),
               ("cpu", 6), ("mem", 5)))]
FRAME = Frame(boxed=False, edge=False)


def render(model: FabricModel, now: float, address: str, max_rows: int | None,
           live: bool = True, width: int | None = None) -> tuple[Group, Layout]:
    """The title line, the tree as a table (one row per line) with the columns that fit
    ``width`` (None: all), and a line naming the columns left out, if any; and the
    table's layout."""
    from rich.console import Group
    from rich.text import Text

    rows = model.rows(now, max_rows)
    states = [model.state(n, now) for n in model.nodes]
    tally = ", ".join(f"{states.count(s)} {s}" for s in ("up", "re-homing", "down")
                      if states.count(s))
    title = Text.assemble(("TreeScale", "bold"), f"  {len(states)} nodes",
                          f" ({tally})" if tally else "", f"  via {address}",
                          ("  q quits" if live else "", "dim"),
                          no_wrap=live, overflow="ellipsis")
    cells = [_cells(row, model, now) for row in rows]
    layout = fit(COLUMNS, cells, width, FRAME)
    table = draw(COLUMNS, layout, cells, FRAME, header_style="bold dim")
    hidden = note(layout, "widen the terminal" if live else WIDE_HINT)
    footer = [Text(hidden, style="dim", no_wrap=live, overflow="ellipsis")] if hidden else []
    return Group(title, table, *footer), layout


def _cells(row, model, now: float) -> list:
    from rich.text import Text

    name = Text(row.prefix, style="dim")
    if row.kind == "summary":  # "… 37 nodes" | "all up" (keeps the node column narrow)
        name.append(f"… {row.count} node{'s' if row.count != 1 else ''}",
                    style="dim italic")
        states = dict(row.counts)
        tally = "all up" if set(states) == {"up"} else \
            ", ".join(f"{n} {s}" for s, n in row.counts)
        return [name, Text(tally, style="dim" if set(states) == {"up"} else "yellow"),
                *[""] * 8]
    if row.kind == "container":
        box = row.container
        name.append(f"▣ {row.name}", style="cyan")
        mem = _bytes(box.mem_bytes) + (f"/{_bytes(box.mem_limit)}" if box.mem_limit
                                       else "")
        return [name, Text(box.state, style=STATE_STYLE.get(box.state, "")), "", "", "",
                "", "", "", _pct(box.cpu_percent), mem]
    node, state = row.node, row.state
    style = STATE_STYLE[state]
    name.append(row.name, style=f"bold {style}" if state != "up" else "bold")
    r = node.report
    rtt = r.get("rtt_ewma") if r.get("rtt_ewma") is not None else r.get("rtt")
    slow, dropped = r.get("slow_clients") or 0, r.get("dropped") or 0
    drop = Text(f"{slow}/{_count(dropped)}" if slow else _count(dropped),
                style="red" if slow or dropped else "")
    dim = state == "down"
    cells = [_age(r.get("uptime")), _rate(node.rate_in), _rate(node.rate_out),
             f"{rtt * 1000:.1f}ms" if isinstance(rtt, int | float) else "",
             str(r.get("subscriptions", "")), drop, _pct(r.get("cpu_percent")),
             _bytes(r.get("rss_bytes"))]
    if dim:
        cells = [Text(str(c), style="dim") if not isinstance(c, Text) else c
                 for c in cells]
    return [name, Text(state, style=style), *cells]


def _age(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _count(n: Any) -> str:
    if not isinstance(n, int | float):
        return ""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def _rate(rate: float | None) -> str:
    return "" if rate is None else _count(rate)


def _pct(value: Any) -> str:
    return f"{value:.0f}%" if isinstance(value, int | float) else ""


def _bytes(n: Any) -> str:
    if not isinstance(n, int | float) or not n:
        return ""
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if n >= size:
            return f"{n / size:.0f}{unit}"
    return f"{n:.0f}B"


COMMANDS = [monitor]
