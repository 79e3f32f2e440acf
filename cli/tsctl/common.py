"""What every tsctl command shares: connection options, one-line errors, rendering
(tables are printed at the terminal's width here).

Must not touch: any one command's work (its own tsctl module), how config is read or
checked (treescale.loader and treescale.config: it only calls them), which columns of
a table fit (tsctl.tables decides; this module only measures and prints).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from treescale import Client
from treescale.config import ConfigError
from tsctl.failures import USER_ERRORS as USER_ERRORS  # re-exported: commands import them here
from tsctl.failures import friendly as friendly
from tsctl.tables import BOXED, Cell, Column, Frame, Layout, draw, fit, note

if TYPE_CHECKING:
    from treescale.services.rpc import Result

DEFAULT_ADDRESS = "tcp://127.0.0.1:8888"
console = Console(stderr=True, highlight=False)
out = Console(highlight=False)

_address_option = click.option(
    "-a", "--address", default=lambda: os.environ.get("TREESCALE_ADDRESS", DEFAULT_ADDRESS),
    show_default=f"$TREESCALE_ADDRESS or {DEFAULT_ADDRESS}",
    help="Node to attach to.")
def token_option(fn: Callable) -> Callable:
    """--token (or $TREESCALE_TOKEN) and --token-file (or $TREESCALE_TOKEN_FILE): the
    ``token`` parameter. A file keeps the secret out of the command line (``ps``
    shows every process's arguments); an explicit --token wins over the file."""

    @functools.wraps(fn)
    def wrapper(*args: Any, token_file: str | None = None, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        explicit = ctx.get_parameter_source("token") == click.core.ParameterSource.COMMANDLINE
        if token_file is not None and not explicit:
            from treescale.credentials import read_token_file

            try:
                kwargs["token"] = read_token_file(token_file)
            except ConfigError as exc:
                raise click.BadParameter(str(exc), param_hint="--token-file") from None
        return fn(*args, **kwargs)

    wrapper = click.option("--token-file", envvar="TREESCALE_TOKEN_FILE", default=None,
                           type=click.Path(dir_okay=False),
                           help="Read the auth token from this file (or "
                           "$TREESCALE_TOKEN_FILE), e.g. the one `tsctl build` wrote.")(wrapper)
    return click.option("--token", envvar="TREESCALE_TOKEN", default=None,
                        help="Auth token (or $TREESCALE_TOKEN; --token-file keeps it off "
                        "the command line).")(wrapper)

SERVER_KEY = "server_key"  # where --server-key is kept for connect() (click's ctx.meta)


def _keep_server_key(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:  # checked when the client is made: a bad key is one line (friendly)
        ctx.meta[SERVER_KEY] = value


_server_key_option = click.option(
    "--server-key", envvar="TREESCALE_SERVER_KEY", expose_value=False,
    callback=_keep_server_key,
    help="The node's CURVE public key (z85, or its key file), for a node with keys "
    "(or $TREESCALE_SERVER_KEY).")


def address_option(fn: Callable) -> Callable:
    """-a/--address and --server-key: where the node is and, with CURVE, its key."""
    return _address_option(_server_key_option(fn))


def server_key() -> str | None:
    """The --server-key of the running command, if one was given."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(SERVER_KEY) if ctx is not None else None


timeout_option = click.option("--timeout", type=float, default=10.0, show_default=True,
                              help="Seconds to wait for the node.")


wide_option = click.option("--wide", "wide", is_flag=True,
                           help="Show every column, however narrow the terminal.")


def terminal_width(console: Console) -> int | None:
    """The width a table must fit: the terminal's own size (not a stale exported
    $COLUMNS), else $COLUMNS, else None: output to a pipe or a file is never cut."""
    if console.is_terminal:
        try:
            return os.get_terminal_size(console.file.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return console.width
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else None


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], *,
                wide: bool = False, frame: Frame = BOXED, **table_kw: Any) -> Layout:
    """Print ``rows`` with the columns that fit the terminal (all of them if ``wide``)
    and, under the table, a dim line naming what was left out (tsctl.tables)."""
    layout = fit(columns, rows, None if wide else terminal_width(out), frame)
    at_least(layout.width).print(draw(columns, layout, rows, frame, **table_kw))
    hidden = note(layout)
    if hidden:  # wrapped at the terminal's width, between words
        out.print(Text(hidden, style="dim"))
    return layout


def at_least(width: int) -> Console:
    """``out``, or one like it but ``width`` wide where ``out`` is narrower: a table
    laid out wider than the screen (--wide, a pipe, key columns that cannot fit) is
    printed whole, never squeezed by rich, and the terminal wraps its lines."""
    if width <= out.width:
        return out
    return Console(file=out.file, width=width, highlight=False,
                   force_terminal=out.is_terminal, color_system=out.color_system,
                   no_color=out.no_color)


def connect(address: str, token: str | None, timeout: float, **kw: Any) -> Client:
    # Node errors are collected in client.errors and reported by the command itself.
    return Client(address, token=token, name=kw.pop("name", None) or "tsctl",
                  timeout=timeout, on_error=lambda err: None,
                  server_key=kw.pop("server_key", None) or server_key(), **kw)


def target_options(fn: Callable) -> Callable:
    """-t NODE / --group G / --tag T: where a service command runs (exactly one)."""
    fn = click.option("--tag", help="Every node with this tag (results labelled).")(fn)
    fn = click.option("--group", help="Every node of this group (results labelled).")(fn)
    return click.option("-t", "--target", "node", help="The node to act on.")(fn)


def one_target(node: str | None, group: str | None, tag: str | None,
               attached: str | None = None) -> dict:
    """The node/group/tag keywords for treescale.services.rpc.call, checked; with none
    given, the ``attached`` node (the one tsctl is attached to) if that is given."""
    if attached is not None and node is None and group is None and tag is None:
        node = attached
    if sum(x is not None for x in (node, group, tag)) != 1:
        raise click.UsageError("give exactly one of -t NODE, --group G, --tag T")
    return {"node": node, "group": group, "tag": tag}


def service_options(fn: Callable | None = None, *, json_help: str = "Print JSON (for scripts).",
                    timeout: Callable = timeout_option) -> Callable:
    """-t/--group/--tag, --json (``as_json``), -a, --token and --timeout: what every
    command driving a node service takes. ``timeout`` may be another option that also
    fills the ``timeout`` parameter. Use as ``@service_options`` or with keywords."""

    def apply(fn: Callable) -> Callable:
        json_option = click.option("--json", "as_json", is_flag=True, help=json_help)
        for option in (timeout, token_option, address_option, json_option, target_options):
            fn = option(fn)
        return fn

    return apply if fn is None else apply(fn)


def call_service(service: str, op: str, args: dict, *, address: str, token: str | None,
                 timeout: float, node: str | None, group: str | None, tag: str | None,
                 default_to_attached: bool = True, extra_timeout: float = 0.0,
                 on_stream: Callable[[str, str, Any], None] | None = None,
                 name: str | None = None) -> list[Result]:
    """Connect (as ``name``) and run ``op`` of ``service`` on the chosen node(s): the
    node given, else the attached one (unless ``default_to_attached`` is false); wait
    ``timeout + extra_timeout`` seconds at most. Each node's Result, failed or not."""
    from treescale.services.rpc import call

    if not default_to_attached or any(x is not None for x in (node, group, tag)):
        one_target(node, group, tag)  # a wrong choice fails before connecting
    with connect(address, token, timeout, name=name) as client:
        target = one_target(node, group, tag,
                            attached=client.node if default_to_attached else None)
        return call(client, service, op, args, timeout=timeout + extra_timeout,
                    on_stream=on_stream, **target)


def report_failures(results: list[Result], *, quiet: bool = False) -> None:
    """One error line per node that failed (``[node] `` first when several answered;
    none if ``quiet``, e.g. with --json), and exit status 1 if any did. The line is not
    markup: ``[node]`` and brackets in the error are printed as they are."""
    failed = [r for r in results if not r.ok]
    if not quiet:
        for r in failed:
            label = f"[{r.node}] " if len(results) > 1 else ""
            console.print(f"[bold red]error:[/] {escape(f'{label}{r.error}')}",
                          soft_wrap=True)
    if failed:
        sys.exit(1)


def render_data(data: Any) -> str:
    raw = bytes(data)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return f"<{len(raw)} bytes>"
    return text if len(text) <= 200 else text[:200] + f"... ({len(raw)} bytes)"


def event_dict(ev: Any) -> dict:
    raw = bytes(ev.data)
    try:
        data: Any = raw.decode()
        encoding = "utf-8"
    except UnicodeDecodeError:
        data, encoding = raw.hex(), "hex"
    return {"name": ev.name, "data": data, "encoding": encoding, "source": ev.source,
            "headers": dict(ev.headers), "reply": ev.reply}


def address_of_node(name: str, config_path: str) -> str:
    """`-n NODE`: the node's address from the tree file that names it."""
    from pathlib import Path

    from treescale.loader import load_tree

    if not Path(config_path).exists():
        raise ConfigError(f"-n {name}: no tree file {config_path} to find it in "
                          "(use -a ADDRESS)")
    tree = load_tree(config_path)
    if name not in tree.names:
        raise ConfigError(f"{config_path}: no node named {name!r}")
    return tree.spec(name).address
