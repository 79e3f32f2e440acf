"""What a node says about itself once a second (``$sys.node.stats``): its place in
the tree, its sessions, its traffic and its process.

Owns: the shape of that report (the monitor, ``tsctl status`` and the metrics read
it). Must not touch: anything it reports on; it only reads.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from treescale.brokers.links import PARENT

if TYPE_CHECKING:
    from treescale.brokers.node import Node


def report(node: Node) -> dict:
    """The node's ``$sys.node.stats`` event."""
    sessions = [s for s in node.sessions.values()
                if s.ready and not s.is_link and not s.quiet]
    members = node.table.members
    parked_messages, parked_bytes = node.fanout.parked()
    linked = node.links.parent is not None
    classes = node.traffic.classes
    return {"node": node.name, "address": node.endpoint,
            "parent": node.links.neighbour(PARENT),
            "children": sorted(link.neighbour for link in node.links.children()),
            "groups": list(node.config.groups), "tags": list(node.config.tags),
            "uptime": round(time.time() - node.started, 1),
            "clients": len(sessions),
            "subscriptions": sum(len(members[s.routing_id].subs) - 1
                                 for s in sessions if s.routing_id in members),
            "slow_clients": len(node.fanout.slow),
            "pending_messages": parked_messages, "pending_bytes": parked_bytes,
            "depth": node.placement.depth(),
            "state": node.parent.state.state,
            "rtt": node.parent.rtt if linked else None,
            "rtt_ewma": node.parent.rtt_ewma if linked else None,
            "cpu_percent": node.cpu[0], "rss_bytes": node.cpu[1],
            "metrics_port": node.hosting.metrics_port,
            "websocket_port": node.hosting.websocket_port,
            **node.stats,
            "durable": node.custody.report(),
            "bytes_in": sum(row[1] for row in classes.values()),
            "bytes_out": sum(row[3] for row in classes.values())}
