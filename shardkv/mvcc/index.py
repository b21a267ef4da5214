"""Per-key revision history ("key index"), stored in its own LMDB database.

etcd keeps this index in memory (a B-tree of keyIndex generations) and rebuilds it on start.
We keep it in LMDB next to the data instead, so an LMDB write transaction gives read-your-writes
inside a batch and an abort rolls back index and data together; nothing to rebuild on restart.

The value for a user key is a list of entries, oldest first:
``[main, sub, create_revision, version, lease]``; ``version == 0`` marks a tombstone (a delete),
which ends a generation exactly like etcd's tombstone revision.
"""
from __future__ import annotations

from collections.abc import Iterator

import lmdb
import msgspec

IndexEntry = list[int]  # [main, sub, create_revision, version, lease]

MAIN, SUB, CREATE, VERSION, LEASE = range(5)

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[list[int]]).decode


def range_end_of(range_end: bytes) -> bytes | None:
    """etcd's key/range_end convention -> ``None`` (single key), ``b""`` (no upper bound,
    from range_end == b"\\0") or the exclusive upper bound."""
    if not range_end:
        return None
    if range_end == b"\0":
        return b""
    return range_end


def load(txn: lmdb.Transaction, db: lmdb._Database, key: bytes) -> list[IndexEntry]:
    raw = txn.get(key, db=db)
    return _decode(raw) if raw is not None else []


def store(txn: lmdb.Transaction, db: lmdb._Database, key: bytes, entries: list[IndexEntry]) -> None:
    if entries:
        txn.put(key, _encode(entries), db=db)
    else:
        txn.delete(key, db=db)


def live_at(entries: list[IndexEntry], rev: int) -> IndexEntry | None:
    """The entry giving the key's value at main revision ``rev``, or None if absent then."""
    for entry in reversed(entries):
        if entry[MAIN] <= rev:
            return entry if entry[VERSION] > 0 else None
    return None


def scan(
    txn: lmdb.Transaction, db: lmdb._Database, key: bytes, end: bytes | None
) -> Iterator[tuple[bytes, list[IndexEntry]]]:
    """Index records of the keys in ``[key, end)`` (see ``range_end_of``), in key order."""
    if end is None:
        entries = load(txn, db, key)
        if entries:
            yield key, entries
        return
    cursor = txn.cursor(db=db)
    if not cursor.set_range(key):
        return
    for k, raw in cursor:
        if end and k >= end:
            break
        yield k, _decode(raw)


def live_in_range(
    txn: lmdb.Transaction, db: lmdb._Database, key: bytes, end: bytes | None, rev: int
) -> list[tuple[bytes, IndexEntry]]:
    """Keys in the range that exist at ``rev``, with the entry holding their state."""
    out = []
    for k, entries in scan(txn, db, key, end):
        entry = live_at(entries, rev)
        if entry is not None:
            out.append((k, entry))
    return out


def compacted(entries: list[IndexEntry], rev: int) -> tuple[list[IndexEntry], list[IndexEntry]]:
    """Split history at compaction revision ``rev`` into (kept, dropped).

    Kept: every entry above ``rev`` plus the newest entry at or below ``rev`` unless that one is a
    tombstone -- the same revisions etcd's keyIndex.compact keeps readable."""
    newer = [e for e in entries if e[MAIN] > rev]
    older = [e for e in entries if e[MAIN] <= rev]
    if older and older[-1][VERSION] > 0:
        return [older[-1], *newer], older[:-1]
    return newer, older
