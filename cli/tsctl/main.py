"""tsctl: the TreeScale command line. Thin: parse, call the library, render.

Owns: the command tree, its root group and completion. Each command lives in a module
of its own (``COMMAND_MODULES``), imported when the command runs (or help lists them):
`tsctl node start`, which every node process runs, then loads only tsctl.node_cmd, not
rich nor the other commands. Must not touch: what a command does (its own module).
"""

from __future__ import annotations

import importlib
import logging

import click

# Each top-level command and the tsctl module whose COMMANDS holds it.
COMMAND_MODULES: dict[str, str] = {
    "node": "node_cmd",
    "up": "bus_cmd", "down": "bus_cmd", "status": "bus_cmd", "api": "bus_cmd",
    "pub": "bus_cmd", "sub": "bus_cmd", "request": "bus_cmd", "demo": "bus_cmd",
    "event": "event_cmd", "config": "config_cmd", "lb": "lb_cmd", "monitor": "monitor",
    "docker": "docker_cmd", "build": "build_cmd", "teardown": "build_cmd",
    "doctor": "doctor_cmd", "keys": "keys_cmd", "durable": "durable_cmd",
    "service": "service_cmd",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use (click's documented pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            module = importlib.import_module(f"tsctl.{COMMAND_MODULES[cmd_name]}")
            for command in module.COMMANDS:
                self.add_command(command)
        return super().get_command(ctx, cmd_name)


def version_message() -> str:
    """What `--version` prints: the package, the wire protocol it speaks and the ZeroMQ
    it runs on (what to quote in a bug report, and what must match between nodes)."""
    import platform

    import zmq

    from treescale.protocol import PROTOCOL_VERSION

    return (f"%(prog)s %(version)s (protocol {PROTOCOL_VERSION}, pyzmq {zmq.__version__}, "
            f"libzmq {zmq.zmq_version()}, Python {platform.python_version()})")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="treescale", message=version_message())
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """TreeScale: a pub/sub fabric for fleets of servers."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --------------------------------------------------------------------- completion

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_TSCTL_COMPLETE"


@cli.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL (click's own, as
    `_TSCTL_COMPLETE=SHELL_source tsctl` prints it). Load it with
    `source <(tsctl completion bash)` in ~/.bashrc, `source <(tsctl completion zsh)` in
    ~/.zshrc, or `tsctl completion fish > ~/.config/fish/completions/tsctl.fish`."""
    from click.shell_completion import shell_complete

    # click's own entry point, so the script is byte for byte what it prints itself
    # (its trailing newline differs between click versions).
    shell_complete(cli, {}, "tsctl", COMPLETE_VAR, f"{shell}_source")


def main() -> None:
    # Named tsctl however it was started (`python -m tsctl.main` too), so usage lines
    # and the completion variable (_TSCTL_COMPLETE) are the same everywhere.
    cli(prog_name="tsctl")


if __name__ == "__main__":
    main()
