"""Prometheus metrics of a node: the counters it keeps, and the scrape endpoint.

The node counts once per batch (``Traffic.count_in`` / ``count_out``), never per event,
so the hot path stays as fast as before; everything else (sessions, queues, the tree,
RTT) is read from the node when Prometheus scrapes, by a custom collector. Each node has
its own ``CollectorRegistry`` so that many nodes can live in one process (tests).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("treescale.metrics")

CLIENTS, LINKS, SERVICES = "clients", "links", "services"
CLASSES = (CLIENTS, LINKS, SERVICES)
TOP_TOPICS = 32  # distinct first tokens counted by name; the rest go to OTHER_TOPIC
OTHER_TOPIC = "other"


class Traffic:
    """Events and payload bytes in/out per client class, per tree link and per topic.

    A counter row is ``[events_in, bytes_in, events_out, bytes_out]``. Bytes are payload
    bytes (what publishers sent), so they do not depend on batching. Topics are the
    first token of the event name (``orders`` for ``orders.created``); the first
    ``max_topics`` distinct ones get their own counter, later ones share ``other``, so
    the number of series stays bounded whatever names clients invent.
    """

    __slots__ = ("classes", "links", "topics", "max_topics", "_topic_of")

    def __init__(self, max_topics: int = TOP_TOPICS) -> None:
        self.classes: dict[str, list[int]] = {c: [0, 0, 0, 0] for c in CLASSES}
        self.links: dict[tuple[str, str], list[int]] = {}  # (neighbour, role) -> row
        self.topics: dict[str, int] = {}
        self.max_topics = max_topics
        self._topic_of: dict[str, str] = {}  # event name -> topic bucket (a cache)

    def count_in(self, kind: str, link: tuple[str, str] | None, view: Any) -> None:
        """A batch (a protocol BatchView) entered the node from ``kind``/``link``.

        O(distinct names): the body's length is the small payloads' total (checked
        at decode). Only a batch mixing several topics counts its index column (C).
        """
        n = view.n
        nbytes = len(view.body) + (sum(map(len, view.large)) if view.large else 0)
        row = self.classes[kind]
        row[0] += n
        row[1] += nbytes
        if link is not None:
            row = self.links.get(link) or self.links.setdefault(link, [0, 0, 0, 0])
            row[0] += n
            row[1] += nbytes
        names = view.names
        if not names:
            return
        topics = [self._topic(name) for name in names]
        first = topics[0]
        if len(topics) == 1 or all(t == first for t in topics):
            self.topics[first] = self.topics.get(first, 0) + n
        else:
            for i, count in Counter(view.index).items():
                self.topics[topics[i]] = self.topics.get(topics[i], 0) + count

    def count_out(self, kind: str, link: tuple[str, str] | None, n: int,
                  frames: list) -> None:
        """A message of ``n`` events (frames: header, meta, body, large...) left."""
        nbytes = sum(map(len, frames[2:]))
        row = self.classes[kind]
        row[2] += n
        row[3] += nbytes
        if link is not None:
            row = self.links.get(link) or self.links.setdefault(link, [0, 0, 0, 0])
            row[2] += n
            row[3] += nbytes

    def _topic(self, name: str) -> str:
        """The counter an event name goes to: its first token, or ``other`` once
        ``max_topics`` first tokens have their own."""
        topic = self._topic_of.get(name)
        if topic is None:
            topic = name.split(".", 1)[0]
            if topic not in self.topics:
                if len(self.topics) >= self.max_topics:
                    topic = OTHER_TOPIC
                self.topics.setdefault(topic, 0)
            if len(self._topic_of) > 10_000:
                self._topic_of.clear()  # names are unbounded; the cache must not be
            self._topic_of[name] = topic
        return topic


class ProcessUsage:
    """CPU percent (since the previous sample) and resident memory of this process."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), _cpu_seconds())

    def sample(self) -> tuple[float, int]:
        now, cpu = time.monotonic(), _cpu_seconds()
        wall = now - self._last[0]
        percent = 100.0 * (cpu - self._last[1]) / wall if wall > 0 else 0.0
        self._last = (now, cpu)
        return round(percent, 1), rss_bytes()


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def rss_bytes() -> int:
    """Resident memory of this process in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class NodeCollector:
    """Reads a node's state at scrape time (prometheus_client's custom collector API).

    The node's loop runs in another thread; reads copy dicts first (atomic under the
    GIL) and a snapshot that raced with a change is simply taken again.
    """

    def __init__(self, node: Any) -> None:
        self.node = node

    def collect(self) -> Iterator:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        from treescale import __version__
        from treescale.brokers.report import report

        node = self.node
        snap = _retry(lambda: report(node))
        yield InfoMetricFamily("treescale_build", "TreeScale build information.",
                               value={"version": __version__,
                                      "python": platform.python_version()})
        yield InfoMetricFamily(
            "treescale_node", "This node's place in the tree (changes when it re-homes).",
            value={"node": node.name, "address": snap["address"],
                   "parent": snap["parent"] or "", "children": ",".join(snap["children"]),
                   "groups": ",".join(snap["groups"]), "tags": ",".join(snap["tags"])})
        for name, doc, value in (
                ("treescale_tree_depth", "Links between this node and the root.",
                 snap["depth"]),
                ("treescale_children", "Child nodes linked now.", len(snap["children"])),
                ("treescale_uptime_seconds", "Seconds since the node started.",
                 snap["uptime"]),
                ("treescale_clients", "Clients attached now.", snap["clients"]),
                ("treescale_subscriptions", "Subscriptions of attached clients.",
                 snap["subscriptions"]),
                ("treescale_slow_clients", "Clients whose outbound queue is backed up.",
                 snap["slow_clients"]),
                ("treescale_pending_messages", "Messages parked for slow clients.",
                 snap["pending_messages"]),
                ("treescale_pending_bytes", "Bytes parked for slow clients.",
                 snap["pending_bytes"])):
            yield GaugeMetricFamily(name, doc, value=value)
        stats = dict(node.stats)
        for key, doc in (("no_route", "Events no subscriber wanted."),
                         ("dropped", "Events dropped (slow consumers, full links)."),
                         ("errors_sent", "Errors sent to clients."),
                         ("batches_in", "Batches received.")):
            yield CounterMetricFamily(f"treescale_{key}_events_total"
                                      if key in ("no_route", "dropped")
                                      else f"treescale_{key}_total", doc, value=stats[key])
        traffic = node.traffic
        rows = {"events_in": 0, "bytes_in": 1, "events_out": 2, "bytes_out": 3}
        classes = {c: list(r) for c, r in dict(traffic.classes).items()}
        links = {k: list(r) for k, r in dict(traffic.links).items()}
        for key, col in rows.items():
            unit = "Events" if key.startswith("events") else "Payload bytes"
            way = "into" if key.endswith("_in") else "out of"
            fam = CounterMetricFamily(f"treescale_{key}", f"{unit} {way} this node, per "
                                      "client class (clients, links, services).",
                                      labels=["class"])
            for cls, row in classes.items():
                fam.add_metric([cls], row[col])
            yield fam
            fam = CounterMetricFamily(f"treescale_link_{key}", f"{unit} {way} this node, "
                                      "per tree link.", labels=["link", "role"])
            for (neighbour, role), row in sorted(links.items()):
                fam.add_metric([neighbour, role], row[col])
            yield fam
        fam = CounterMetricFamily("treescale_topic_events_in", "Events into this node per "
                                  "first name token (bounded; the rest under 'other').",
                                  labels=["topic"])
        for topic, count in sorted(dict(traffic.topics).items()):
            fam.add_metric([topic], count)
        yield fam
        if snap["parent"] is not None and snap["rtt"] is not None:
            for name, key, doc in (
                    ("treescale_link_rtt_seconds", "rtt", "Last ping round trip to the "
                     "parent."),
                    ("treescale_link_rtt_ewma_seconds", "rtt_ewma", "Smoothed (EWMA) "
                     "ping round trip to the parent.")):
                fam = GaugeMetricFamily(name, doc, labels=["parent"])
                fam.add_metric([snap["parent"]], snap[key])
                yield fam


def _retry(read: Callable[[], dict], attempts: int = 5) -> dict:
    """Call ``read`` again when it raced with the node's loop changing a dict."""
    for _ in range(attempts - 1):
        try:
            return read()
        except (RuntimeError, KeyError):  # raced with the loop changing a dict
            continue
    return read()


class MetricsServer:
    """The HTTP endpoint serving one node's /metrics."""

    def __init__(self, node: Any, host: str, port: int) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.process_collector import ProcessCollector

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(node))
        ProcessCollector(registry=self.registry)
        self._server, self._thread = start_http_server(port, addr=host,
                                                       registry=self.registry)
        self.host = host
        self.port = self._server.server_port
        log.info("node %s serves metrics on http://%s:%d/metrics", node.name, host,
                 self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
