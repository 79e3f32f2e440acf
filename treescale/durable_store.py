"""A node's durable storage: the LMDB file behind custody and durable subscriptions.

Owns: where durable events, their ids, what is owed to whom, and each durable's
settings live on disk, and when that is made durable (``durable_sync``): "always"
fsyncs every commit before anything is confirmed, "group" fsyncs at most every
``GROUP_INTERVAL`` and holds confirms until an fsync covers them, "none" leaves it to
the OS (confirmed events can be lost with the machine, not with the process).

The loop batches: every change of one wakeup goes into one write transaction, and one
commit (and fsync) covers them all. At start-up ``load`` hands the whole state back;
the node keeps it in memory and payloads stay on disk until they are sent.

Must not touch: routing, sessions, sockets: callers say what changed.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack

SYNC_POLICIES = ("always", "group", "none")
GROUP_INTERVAL = 0.002  # seconds: the longest a "group" confirm waits for its fsync
MAP_SIZE = 1 << 40  # address space only: the file grows as data does
_SEQ = struct.Struct(">Q")
_TABLES = (b"events", b"payloads", b"ids", b"owed", b"durables", b"meta")


def seq_key(seq: int) -> bytes:
    return _SEQ.pack(seq)


def owed_key(target: str, seq: int) -> bytes:
    return target.encode() + b"\0" + _SEQ.pack(seq)


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(data: Any) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class DurableStore:
    """One LMDB environment (a directory) holding a node's durable state."""

    def __init__(self, path: str | os.PathLike, sync: str = "always") -> None:
        if sync not in SYNC_POLICIES:
            raise ValueError(f"durable_sync must be one of {', '.join(SYNC_POLICIES)}, "
                             f"got {sync!r}")
        self.path = Path(path)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.policy = sync
        # We fsync ourselves (env.sync) when the policy says: LMDB's own per-commit
        # sync would fsync every wakeup even under "group".
        self.env = lmdb.open(str(self.path), map_size=MAP_SIZE, max_dbs=len(_TABLES),
                             sync=False, metasync=False, lock=True)
        self.db = {name.decode(): self.env.open_db(name) for name in _TABLES}
        self._txn: lmdb.Transaction | None = None
        self.last_sync = time.monotonic()
        self.unsynced = False  # a commit no fsync has covered yet

    # -------------------------------------------------------------- loading

    def load(self) -> dict:
        """Everything but payloads: {"events": {seq: row}, "ids": {id: seq},
        "owed": {target: {seq: deliveries}}, "durables": {name: state},
        "next_seq": int}."""
        out: dict = {"events": {}, "ids": {}, "owed": {}, "durables": {}, "next_seq": 1}
        with self.env.begin() as txn:
            for k, v in txn.cursor(self.db["events"]):
                out["events"][_SEQ.unpack(k)[0]] = _unpack(v)
            for k, v in txn.cursor(self.db["ids"]):
                out["ids"][bytes(k).decode()] = _SEQ.unpack(v)[0]
            for k, v in txn.cursor(self.db["owed"]):
                # target, NUL, 8-byte seq: the seq's own bytes hold NULs (1 is seven
                # of them), so split by length, never at the last NUL
                k = bytes(k)
                target, seq = k[:-_SEQ.size - 1], k[-_SEQ.size:]
                out["owed"].setdefault(target.decode(), {})[_SEQ.unpack(seq)[0]] = \
                    _unpack(v)
            for k, v in txn.cursor(self.db["durables"]):
                out["durables"][bytes(k).decode()] = _unpack(v)
            raw = txn.get(b"next_seq", db=self.db["meta"])
            if raw is not None:
                out["next_seq"] = _SEQ.unpack(raw)[0]
        if out["events"]:
            out["next_seq"] = max(out["next_seq"], max(out["events"]) + 1)
        return out

    # -------------------------------------------------------------- writing

    @property
    def txn(self) -> lmdb.Transaction:
        if self._txn is None:
            self._txn = self.env.begin(write=True)
        return self._txn

    @property
    def dirty(self) -> bool:
        return self._txn is not None

    def put_event(self, seq: int, row: list, payload: Any, eid: str) -> None:
        txn = self.txn
        key = _SEQ.pack(seq)
        txn.put(key, _pack(row), db=self.db["events"])
        txn.put(key, bytes(payload), db=self.db["payloads"])
        txn.put(eid.encode(), key, db=self.db["ids"])
        txn.put(b"next_seq", _SEQ.pack(seq + 1), db=self.db["meta"])

    def update_event(self, seq: int, row: list) -> None:
        self.txn.put(_SEQ.pack(seq), _pack(row), db=self.db["events"])

    def delete_event(self, seq: int, eid: str) -> None:
        txn = self.txn
        key = _SEQ.pack(seq)
        txn.delete(key, db=self.db["events"])
        txn.delete(key, db=self.db["payloads"])
        txn.delete(eid.encode(), db=self.db["ids"])

    def owe(self, target: str, seq: int, deliveries: int = 0) -> None:
        self.txn.put(owed_key(target, seq), _pack(deliveries), db=self.db["owed"])

    def release(self, target: str, seq: int) -> None:
        self.txn.delete(owed_key(target, seq), db=self.db["owed"])

    def release_all(self, target: str, seqs: Iterable[int]) -> None:
        for seq in seqs:
            self.release(target, seq)

    def put_durable(self, name: str, state: dict) -> None:
        self.txn.put(name.encode(), _pack(state), db=self.db["durables"])

    def delete_durable(self, name: str) -> None:
        self.txn.delete(name.encode(), db=self.db["durables"])

    def payload(self, seq: int) -> bytes:
        """An event's payload (read in its own transaction when none is open, so a
        sender sees what it just wrote)."""
        key = _SEQ.pack(seq)
        if self._txn is not None:
            data = self._txn.get(key, db=self.db["payloads"])
        else:
            with self.env.begin() as txn:
                data = txn.get(key, db=self.db["payloads"])
        return b"" if data is None else bytes(data)

    def payloads(self, seqs: Iterable[int]) -> Iterator[bytes]:
        if self._txn is not None:
            get = self._txn.get
            db = self.db["payloads"]
            for seq in seqs:
                data = get(_SEQ.pack(seq), db=db)
                yield b"" if data is None else bytes(data)
            return
        with self.env.begin(buffers=False) as txn:
            db = self.db["payloads"]
            for seq in seqs:
                data = txn.get(_SEQ.pack(seq), db=db)
                yield b"" if data is None else bytes(data)

    def commit(self, now: float) -> bool:
        """Commit this wakeup's changes; True once everything committed so far is as
        durable as the policy promises (confirms may go out)."""
        if self._txn is not None:
            self._txn.commit()
            self._txn = None
            self.unsynced = self.policy != "none"
        if not self.unsynced:
            return True
        if self.policy == "group" and now - self.last_sync < GROUP_INTERVAL:
            return False
        self.env.sync(True)
        self.last_sync = now
        self.unsynced = False
        return True

    def close(self) -> None:
        if self._txn is not None:
            self._txn.commit()
            self._txn = None
        self.env.sync(True)
        self.env.close()
