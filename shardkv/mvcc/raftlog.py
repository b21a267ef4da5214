"""The durable Raft log: hard state, entries and snapshot metadata in their own LMDB environment.

Entries are stored under their index as 8 big-endian bytes (so LMDB order is log order), each the
``shardkv.raft.types.encode`` of an ``Entry``. Every ``save`` is one LMDB write transaction with
one sync at commit (the environment is opened ``sync=True``), however many entries it carries:
when ``save`` returns, everything in it is on disk; if the process dies first, none of it is.

The log is kept in its own environment (not the state machine's) so its fsync cadence is the
Raft loop's, independent of the state machine's batch commits.
"""
from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import lmdb
import msgspec

from shardkv.raft.types import (
    Entry,
    HardState,
    PersistedState,
    Snapshot,
    decode_entry,
    decode_hard_state,
    encode,
)
from shardkv.trace import tr

_INDEX = struct.Struct(">Q")
_HARD_STATE = b"hard_state"
_SNAPSHOT = b"snapshot"
_decode_snapshot = msgspec.msgpack.Decoder(Snapshot).decode

# TEST ONLY (tests/chaos slow-disk nemesis): a file holding a delay in milliseconds that every
# ``save`` waits before its write transaction, as a slow fsync would; re-read at most every
# 100 ms. Unset outside those tests: ``save`` then pays one falsy check.
_TEST_DISK_DELAY = os.environ.get("SHARDKV_TEST_DISK_DELAY")
_test_delay = [0.0, -1.0]  # [delay in seconds, when the file was last read]


def _test_disk_delay() -> None:
    now = time.monotonic()
    if now - _test_delay[1] >= 0.1:
        _test_delay[1] = now
        try:
            with open(_TEST_DISK_DELAY) as f:
                _test_delay[0] = max(0.0, float(f.read().strip() or 0)) / 1000
        except (OSError, ValueError):
            _test_delay[0] = 0.0
    if _test_delay[0]:
        time.sleep(_test_delay[0])


class RaftLog:
    def __init__(self, path: str | os.PathLike[str], map_size: int = 256 * 1024**2) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._map_size = map_size
        self._env = lmdb.open(str(self.path), map_size=map_size, max_dbs=2, sync=True,
                              metasync=True, readahead=False)
        self._entries = self._env.open_db(b"entries")
        self._meta = self._env.open_db(b"meta")

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> RaftLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def save(
        self,
        hard_state: HardState | None,
        entries: list[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        """Persist one Ready: a received ``snapshot`` replaces the whole log (Raft discarded its
        entries when it accepted it), then ``entries`` replace the suffix from
        ``entries[0].index``, then ``hard_state``. One transaction, one sync."""
        _check_contiguous(entries)
        tr("save0")
        if _TEST_DISK_DELAY:
            _test_disk_delay()
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    if snapshot is not None:
                        txn.drop(self._entries, delete=False)
                        txn.put(_SNAPSHOT, encode(snapshot), db=self._meta)
                    if entries:
                        self._append(txn, entries)
                    if hard_state is not None:
                        txn.put(_HARD_STATE, encode(hard_state), db=self._meta)
                tr("save1")
                return
            except lmdb.MapFullError:
                self._map_size *= 2
                self._env.set_mapsize(self._map_size)

    def _append(self, txn: lmdb.Transaction, entries: list[Entry]) -> None:
        first = entries[0].index
        snap_index = self._snapshot(txn).meta.index
        last = self._last_index(txn) or snap_index
        if first <= snap_index or first > last + 1:
            raise ValueError(f"entries from {first} would leave a gap or rewrite the snapshot "
                             f"(snapshot {snap_index}, last {last})")
        cursor = txn.cursor(db=self._entries)
        if cursor.set_range(_INDEX.pack(first)):
            while cursor.delete():  # delete() moves to the next record; False at the end
                pass
        for entry in entries:
            txn.put(_INDEX.pack(entry.index), encode(entry), db=self._entries, append=True)

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """Record a snapshot the node took of its own state machine (entries stay until
        ``compact``). Its index must not go backwards nor pass the last entry."""
        with self._env.begin(write=True) as txn:
            current = self._snapshot(txn).meta.index
            last = self._last_index(txn) or current
            if not current <= snapshot.meta.index <= last:
                raise ValueError(f"snapshot {snapshot.meta.index} outside [{current}, {last}]")
            txn.put(_SNAPSHOT, encode(snapshot), db=self._meta)

    def compact(self, index: int) -> None:
        """Drop entries up to and including ``index``, which a saved snapshot must cover."""
        with self._env.begin(write=True) as txn:
            if index > self._snapshot(txn).meta.index:
                raise ValueError(f"compact({index}) beyond the snapshot")
            cursor = txn.cursor(db=self._entries)
            while cursor.first() and _INDEX.unpack(cursor.key())[0] <= index:
                cursor.delete()

    def load(self) -> PersistedState:
        """Everything synced: hard state, snapshot, and the entries after the snapshot."""
        with self._env.begin() as txn:
            raw_hs = txn.get(_HARD_STATE, db=self._meta)
            snapshot = self._snapshot(txn)
            cursor = txn.cursor(db=self._entries)
            entries = []
            if cursor.set_range(_INDEX.pack(snapshot.meta.index + 1)):
                entries = [decode_entry(v) for v in cursor.iternext(keys=False)]
        hard_state = decode_hard_state(raw_hs) if raw_hs is not None else HardState()
        return PersistedState(hard_state=hard_state, snapshot=snapshot, entries=entries)

    def last_index(self) -> int:
        """Index of the last entry, or of the snapshot when no entry follows it."""
        with self._env.begin() as txn:
            return self._last_index(txn) or self._snapshot(txn).meta.index

    def _snapshot(self, txn: lmdb.Transaction) -> Snapshot:
        raw = txn.get(_SNAPSHOT, db=self._meta)
        return _decode_snapshot(raw) if raw is not None else Snapshot()

    def _last_index(self, txn: lmdb.Transaction) -> int:
        cursor = txn.cursor(db=self._entries)
        return _INDEX.unpack(cursor.key())[0] if cursor.last() else 0


def _check_contiguous(entries: list[Entry]) -> None:
    for prev, entry in zip(entries, entries[1:]):
        if entry.index != prev.index + 1:
            raise ValueError(f"entries not contiguous at {prev.index} -> {entry.index}")
