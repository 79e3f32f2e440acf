"""TreeScale: a pub/sub fabric for fleets of servers."""

from treescale.client import (
    AsyncClient,
    AuthError,
    Client,
    DeliveryError,
    Event,
    NodeError,
    NoResponders,
)

__version__ = "0.1.0"
__all__ = ["AsyncClient", "AuthError", "Client", "DeliveryError", "Event", "NodeError",
           "NoResponders"]
