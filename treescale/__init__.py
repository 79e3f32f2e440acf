"""TreeScale: a pub/sub fabric for fleets of servers.

The client names are loaded on first use (PEP 562), so a process that imports only a
part of the package (a node, ``treescale.config``) does not pay for the clients, and
``AsyncClient`` (asyncio) is loaded only by a program that uses it.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "AuthError", "Client", "DeliveryError", "Event", "NodeError",
           "NoResponders"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from treescale import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
