"""Per-key revision history ("key index"), stored in LMDB next to the data.

etcd keeps this index in memory (a B-tree of keyIndex generations) and rebuilds it on start.
We keep it in LMDB instead, so an LMDB write transaction gives read-your-writes inside a batch
and an abort rolls back index and data together; nothing to rebuild on restart.

Two databases, so that a write or a read at the current revision costs the same however long a
key's history is (a key rewritten a million times must not cost a million entries per put):

* ``index``: user key -> its newest entry ``[main, sub, create_revision, version, lease]``
  (msgpack); ``version == 0`` marks a tombstone (a delete), which ends a generation exactly like
  etcd's tombstone revision, and stays until compaction drops it;
* ``history``: user key -> every entry of the key, one LMDB duplicate each (40 bytes,
  big-endian, so duplicates sort by revision): only reads at an older revision and compaction
  look here. (Plain DUPSORT: LMDB's compacting copy crashes on DUPFIXED.)
"""
from __future__ import annotations

import struct
from typing import Protocol

import lmdb
import msgspec

IndexEntry = list[int]  # [main, sub, create_revision, version, lease]

MAIN, SUB, CREATE, VERSION, LEASE = range(5)

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[int]).decode
_HIST = struct.Struct(">QQQQq")
_REV = struct.Struct(">QQ")


class IndexDbs(Protocol):
    index: lmdb._Database
    history: lmdb._Database


def range_end_of(range_end: bytes) -> bytes | None:
    """etcd's key/range_end convention -> ``None`` (single key), ``b""`` (no upper bound,
    from range_end == b"\\0") or the exclusive upper bound."""
    if not range_end:
        return None
    if range_end == b"\0":
        return b""
    return range_end


def latest(txn: lmdb.Transaction, dbs: IndexDbs, key: bytes) -> IndexEntry | None:
    """The key's newest entry (a tombstone included), None if it has no history."""
    raw = txn.get(key, db=dbs.index)
    return _decode(raw) if raw is not None else None


def append(txn: lmdb.Transaction, dbs: IndexDbs, key: bytes, entry: IndexEntry) -> None:
    """Record a new revision of ``key`` (newer than every entry it has)."""
    txn.put(key, _encode(entry), db=dbs.index)
    txn.put(key, _HIST.pack(*entry), db=dbs.history)


def history(txn: lmdb.Transaction, dbs: IndexDbs, key: bytes) -> list[IndexEntry]:
    """Every entry of ``key``, oldest first (for tests and tools)."""
    cursor = txn.cursor(db=dbs.history)
    if not cursor.set_key(key):
        return []
    return [list(_HIST.unpack(raw)) for raw in cursor.iternext_dup(keys=False)]


def _entry_at(txn: lmdb.Transaction, dbs: IndexDbs, key: bytes, rev: int) -> IndexEntry | None:
    """The newest entry of ``key`` at or below main revision ``rev`` (history lookup)."""
    cursor = txn.cursor(db=dbs.history)
    if not cursor.set_range_dup(key, _REV.pack(rev + 1, 0)):
        # every entry is at or below rev: the last duplicate
        if not cursor.set_key(key) or not cursor.last_dup():
            return None
    elif not cursor.prev_dup():
        return None  # the key's first entry is newer than rev
    return list(_HIST.unpack(cursor.value()))


def live_at(txn: lmdb.Transaction, dbs: IndexDbs, key: bytes, newest: IndexEntry,
            rev: int) -> IndexEntry | None:
    """The entry giving the key's value at main revision ``rev``, or None if absent then."""
    entry = newest if newest[MAIN] <= rev else _entry_at(txn, dbs, key, rev)
    return entry if entry is not None and entry[VERSION] > 0 else None


def live_in_range(
    txn: lmdb.Transaction, dbs: IndexDbs, key: bytes, end: bytes | None, rev: int
) -> list[tuple[bytes, IndexEntry]]:
    """Keys in ``[key, end)`` (see ``range_end_of``) that exist at ``rev``, in key order, with
    the entry holding their state then."""
    return count_in_range(txn, dbs, key, end, rev)[0]


def count_in_range(
    txn: lmdb.Transaction, dbs: IndexDbs, key: bytes, end: bytes | None, rev: int,
    keep: int | None = None,
) -> tuple[list[tuple[bytes, IndexEntry]], int]:
    """``live_in_range`` cut to its first ``keep`` keys (all if None), with the count of all of
    them: a limited range still answers how many keys the whole range holds (etcd 3.4 counts
    them), and over a million keys building an entry for each would cost most of the request."""
    out: list[tuple[bytes, IndexEntry]] = []
    if end is None:
        newest = latest(txn, dbs, key)
        entry = live_at(txn, dbs, key, newest, rev) if newest is not None else None
        if entry is not None and keep != 0:
            out.append((key, entry))
        return out, int(entry is not None)
    count = 0
    cursor = txn.cursor(db=dbs.index)
    if not cursor.set_range(key):
        return out, 0
    decode = _decode
    for k, raw in cursor:
        if end and k >= end:
            break
        newest = decode(raw)
        if newest[MAIN] <= rev:  # live_at's usual case, inline: this loop may see 1M keys
            if newest[VERSION] == 0:
                continue
            entry: IndexEntry | None = newest
        else:
            entry = live_at(txn, dbs, k, newest, rev)
            if entry is None:
                continue
        count += 1
        if keep is None or count <= keep:
            out.append((k, entry))
    return out, count


def compact(txn: lmdb.Transaction, dbs: IndexDbs, rev: int) -> list[IndexEntry]:
    """Drop what etcd's keyIndex.compact drops at revision ``rev``: every entry at or below
    ``rev`` except each key's newest one there, unless that one is a tombstone (then the key's
    generation is gone; a key left with no history leaves the index). Returns the dropped
    entries, whose data the caller deletes."""
    dropped: list[IndexEntry] = []
    gone: list[bytes] = []
    cursor = txn.cursor(db=dbs.history)
    if not cursor.first():
        return dropped
    while True:
        key = cursor.key()
        old: list[IndexEntry] = []
        for raw in cursor.iternext_dup(keys=False):
            entry = list(_HIST.unpack(raw))
            if entry[MAIN] > rev:
                break
            old.append(entry)
        if old and old[-1][VERSION] > 0:
            old.pop()  # the value readable at rev stays
        for entry in old:
            txn.delete(key, _HIST.pack(*entry), db=dbs.history)
        dropped.extend(old)
        if old and txn.get(key, db=dbs.history) is None:
            gone.append(key)
        if not cursor.set_range(key + b"\0"):
            break
    for key in gone:
        txn.delete(key, db=dbs.index)
    return dropped
