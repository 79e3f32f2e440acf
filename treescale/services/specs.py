"""Service specs in the node's LMDB: every node keeps the whole set, versioned.

Owns: the tables (``service_specs``: name -> spec; ``service_meta``: version, term)
and the rule that a stored set only moves forward (a higher ``(version, term)``), in
one transaction. Must not touch: what a valid spec is (treescale/sched/spec.py), who
may change the set (the scheduler), how sets travel (orchestrator.py).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from treescale.sched.spec import ServiceSpec, SpecError, SpecSet

log = logging.getLogger("treescale.service")

SPECS_TABLE = "service_specs"
META_TABLE = "service_meta"


class SpecStore:
    """The stored spec set of this node, with the copy in memory that reads use."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._lock = threading.Lock()
        self.current = self._load()

    def _load(self) -> SpecSet:
        meta = self.store.items(META_TABLE)
        specs = {}
        for name, body in self.store.items(SPECS_TABLE).items():
            try:
                specs[name] = ServiceSpec.from_dict(body)
            except SpecError as exc:
                log.error("stored service spec %s is unreadable, skipped: %s", name, exc)
        return SpecSet(int(meta.get("version", 0)), int(meta.get("term", 0)), specs)

    def save(self, specs: SpecSet) -> bool:
        """Store ``specs`` if newer than what is stored (atomically); True if it was."""
        with self._lock:
            if not specs.newer_than(self.current):
                return False
            with self.store.write() as w:
                w.replace(SPECS_TABLE, {n: s.to_dict() for n, s in specs.specs.items()})
                w.put(META_TABLE, "version", specs.version)
                w.put(META_TABLE, "term", specs.term)
            self.current = specs
            return True
