"""How a tsctl command fails: one readable line and exit status 1.

Owns: ``USER_ERRORS`` (the failures a user caused or can fix) and ``friendly``. Kept
apart from tsctl.common so that `tsctl node start` (every node process) can use it
without loading rich: rich is loaded here only to print an error.

Must not touch: any command's work, rendering beyond the error line (tsctl.common).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import zmq

from treescale.client_core import DeliveryError, NodeError
from treescale.config import ConfigError
from treescale.routing import PatternError, TargetError
from treescale.tree import TreeError

USER_ERRORS = (ConfigError, NodeError, PatternError, TargetError, TimeoutError,
               ValueError, OSError, zmq.ZMQError, RuntimeError, TreeError, DeliveryError)


def friendly(fn: Callable) -> Callable:
    """Turn user-facing failures into one readable line and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            from rich.console import Console
            from rich.markup import escape

            console = Console(stderr=True, highlight=False)  # as tsctl.common's
            console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper
