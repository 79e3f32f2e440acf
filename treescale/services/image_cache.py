"""The image service's tars on disk: saved or received images other nodes may read.

One file per image id (``<hex>.tar``) and its digest beside it (``<hex>.sha256``),
written whole under a temporary name and renamed, so a tar in the cache is always
complete. Past ``max_bytes`` the least recently offered tars go, never one in use.

Owns: the cache directory, its temp files, LRU eviction, pins.
Must not touch: the engine, the bus (treescale.services.images does both).
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_ID = re.compile(r"^sha256:([0-9a-f]{64})$")
PARTIAL = ".partial-"  # temp files: removed on failure and at start


def id_hex(image_id: str) -> str | None:
    """The hex of a full image id ``sha256:<64 hex>``, else None (never a path)."""
    m = _ID.match(image_id) if isinstance(image_id, str) else None
    return m.group(1) if m else None


class ImageCache:
    """Complete image tars by id, with their sha256."""

    def __init__(self, path: str, max_bytes: int) -> None:
        self.dir = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._pins: dict[str, int] = {}
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in self.dir.glob(PARTIAL + "*"):  # a crash mid-write
            stale.unlink(missing_ok=True)

    def tar(self, hex_id: str) -> Path:
        return self.dir / f"{hex_id}.tar"

    def lookup(self, hex_id: str) -> tuple[Path, str, int] | None:
        """(tar, "sha256:<digest>", size) of a cached image, marked as just used."""
        tar, meta = self.tar(hex_id), self.dir / f"{hex_id}.sha256"
        try:
            digest = meta.read_text().strip()
            size = tar.stat().st_size
            os.utime(tar)
        except OSError:
            return None
        return tar, digest, size

    def temp_path(self) -> Path:
        return self.dir / f"{PARTIAL}{uuid.uuid4().hex}"

    def add(self, hex_id: str, temp: Path, digest: str) -> Path:
        """Move a complete temp tar in as ``hex_id``'s; evict past the cap."""
        tar = self.tar(hex_id)
        meta = self.dir / f"{hex_id}.sha256"
        meta_tmp = self.temp_path()
        meta_tmp.write_text(digest + "\n")
        with self._lock:
            os.replace(temp, tar)
            os.replace(meta_tmp, meta)
        self.evict(keep=hex_id)
        return tar

    @contextmanager
    def pinned(self, hex_id: str) -> Iterator[None]:
        """Keep ``hex_id``'s tar from eviction while it is read or written."""
        with self._lock:
            self._pins[hex_id] = self._pins.get(hex_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._pins[hex_id] -= 1
                if not self._pins[hex_id]:
                    del self._pins[hex_id]

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used tars until the cache fits ``max_bytes``."""
        with self._lock:
            tars = []
            for tar in self.dir.glob("*.tar"):
                try:
                    st = tar.stat()
                except OSError:
                    continue
                tars.append((st.st_mtime, st.st_size, tar.stem))
            total = sum(size for _, size, _ in tars)
            gone = []
            for _, size, hex_id in sorted(tars):
                if total <= self.max_bytes:
                    break
                if hex_id == keep or hex_id in self._pins:
                    continue
                self.tar(hex_id).unlink(missing_ok=True)
                (self.dir / f"{hex_id}.sha256").unlink(missing_ok=True)
                total -= size
                gone.append(hex_id)
            return gone

    def partials(self) -> list[Path]:
        return sorted(self.dir.glob(PARTIAL + "*"))
