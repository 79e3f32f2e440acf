"""A node's local database: one LMDB file of named tables holding msgpack values.

Every node keeps what must survive a restart here: the tree config and its version,
custom event handlers, load-balancer state. LMDB gives atomic multi-key writes and
lets `tsctl` read a running node's file without stopping it.

The file holds secrets (tokens, the link token): it and its lock file are created
0600, a directory made for it is 0700, and a directory any user may write to (without
the sticky bit) is refused: another user could swap the file.

    with Store("/etc/treescale/tree.db") as db:
        db.put("handlers", "deploy", {"run": "..."})
        with db.write() as w:              # several changes, applied atomically
            w.put("meta", "version", 3); w.replace("tree", {...})
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb
import msgpack

DEFAULT_DB_PATH = "/etc/treescale/tree.db"
MAP_SIZE = 256 * 1024 * 1024  # address space only; the file grows as data does
MAX_TABLES = 32
FILE_MODE = 0o600
DIR_MODE = 0o700


def default_db_path() -> str:
    """Where a node keeps its database: $TREE_DB_PATH, else the seed's default."""
    return os.environ.get("TREE_DB_PATH", DEFAULT_DB_PATH)


class StoreError(RuntimeError):
    """The database cannot be opened or written (message names the path)."""


def _check_directory(directory: Path) -> None:
    """Refuse a directory every user may write to without the sticky bit."""
    import stat

    mode = directory.stat().st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise StoreError(f"{directory}: any user may write to this directory (mode "
                         f"{stat.filemode(mode)}): keep the database somewhere private "
                         f"(chmod o-w {directory}, or another db_path / $TREE_DB_PATH)")


def _make_private(*files: Path) -> None:
    """Files made before databases were private (0644) become 0600 (ours only)."""
    for f in files:
        try:
            st = f.stat()
        except FileNotFoundError:
            continue
        if st.st_mode & 0o077 and st.st_uid == os.geteuid():
            os.chmod(f, FILE_MODE)


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


class Writer:
    """The write side of one transaction (see ``Store.write``)."""

    def __init__(self, store: Store, txn: lmdb.Transaction) -> None:
        self._store, self._txn = store, txn

    def put(self, table: str, key: str, value: Any) -> None:
        self._txn.put(key.encode(), _pack(value), db=self._store._db(table, self._txn))

    def delete(self, table: str, key: str) -> bool:
        return self._txn.delete(key.encode(), db=self._store._db(table, self._txn))

    def replace(self, table: str, items: dict[str, Any]) -> None:
        """Make ``table`` hold exactly ``items``."""
        db = self._store._db(table, self._txn)
        self._txn.drop(db, delete=False)
        for key, value in items.items():
            self._txn.put(key.encode(), _pack(value), db=db)


class Store:
    """Named tables in one LMDB file; safe to share between threads of a process."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        try:
            if not readonly:
                self.path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                _check_directory(self.path.parent)
            self.env = lmdb.open(str(self.path), subdir=False, map_size=MAP_SIZE,
                                 max_dbs=MAX_TABLES, readonly=readonly, lock=True,
                                 create=not readonly, mode=FILE_MODE)
            if not readonly:
                _make_private(self.path, Path(f"{self.path}-lock"))
        except (lmdb.Error, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open the database: {exc}") from None
        self._tables: dict[str, Any] = {}
        self.readonly = readonly

    def _db(self, table: str, txn: lmdb.Transaction | None = None) -> Any:
        """The handle of ``table`` (None if it does not exist in a read-only store).

        Inside a write transaction the handle must be opened in it: LMDB's writer
        lock is not re-entrant."""
        db = self._tables.get(table)
        if db is None:
            try:
                db = self.env.open_db(table.encode(), txn=txn, create=not self.readonly)
            except lmdb.NotFoundError:
                return None
            self._tables[table] = db
        return db

    def get(self, table: str, key: str, default: Any = None) -> Any:
        db = self._db(table)
        if db is None:
            return default
        with self.env.begin(db=db) as txn:
            raw = txn.get(key.encode())
        return default if raw is None else _unpack(raw)

    def items(self, table: str) -> dict[str, Any]:
        db = self._db(table)
        if db is None:
            return {}
        with self.env.begin(db=db) as txn:
            return {k.decode(): _unpack(v) for k, v in txn.cursor()}

    @contextmanager
    def write(self) -> Iterator[Writer]:
        """One atomic transaction: all its changes land, or none on an exception."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        try:
            with self.env.begin(write=True) as txn:
                yield Writer(self, txn)
        except lmdb.Error as exc:
            raise StoreError(f"{self.path}: write failed: {exc}") from None

    def put(self, table: str, key: str, value: Any) -> None:
        with self.write() as w:
            w.put(table, key, value)

    def delete(self, table: str, key: str) -> bool:
        with self.write() as w:
            return w.delete(table, key)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
