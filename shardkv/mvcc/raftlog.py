"""The durable Raft log: hard state, entries and snapshot metadata in an append-only write-ahead
log (etcd's WAL design), so that every ``save`` costs one write and one ``fdatasync``.

Why not LMDB, where the state machine lives: an LMDB commit that must survive a power loss syncs
twice (the data pages, then the meta page that points at them), and on this project's 2-core
benchmark host the Raft log's syncs were the largest single cost of a one-client put (measured
in docs/performance.md). A log that is only ever appended to needs one.

Layout: a directory of segment files ``<seq:016x>.wal``, each preallocated to ``segment_bytes``
so that appends do not change the file's size (``fdatasync`` then flushes data only). A segment
is a run of records::

    length u32 | crc32 u32 | type u8 | payload (length bytes)

little-endian; the CRC covers the type and the payload, seeded with the segment's sequence number
so a record cannot be mistaken for one of another segment. The first record with a zero length,
a bad CRC or a payload running past the file ends the segment: everything after it was never
acknowledged (``save`` returns only after the sync that covers all earlier writes), and on open
the last segment is cut there before writing resumes, so no stale bytes can follow new records.

Records: ``E`` entries (replacing the log's suffix from the first one's index), ``H`` hard
state, ``S`` a snapshot of this member's own state (entries stay), ``R`` a snapshot received
from the leader (replaces the whole log), ``C`` a compaction (entries up to an index go). Every
segment starts with ``S`` and ``H`` records of the state when it was created, so a segment whose
entries are all compacted away can be deleted and replay still starts from a complete state.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import msgspec

from shardkv.mvcc.store import fsync_dir
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

log = logging.getLogger("shardkv.raftlog")

SEGMENT_BYTES = 64 * 1024**2
_HEAD = struct.Struct("<IIB")
_INDEX = struct.Struct("<Q")
_SUFFIX = ".wal"
ENTRIES, HARD_STATE, SNAPSHOT, RECEIVED_SNAPSHOT, COMPACT = b"E", b"H", b"S", b"R", b"C"
_decode_snapshot = msgspec.msgpack.Decoder(Snapshot).decode
_decode_entries = msgspec.msgpack.Decoder(list[Entry]).decode

# TEST ONLY (tests/chaos slow-disk nemesis): a file holding a delay in milliseconds that every
# ``save`` waits before its write, as a slow fsync would; re-read at most every 100 ms. Unset
# outside those tests: ``save`` then pays one falsy check.
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


class CorruptLogError(Exception):
    """A segment other than the last is damaged, or the records do not form a log."""


class _Segment:
    """One segment file: its sequence number and the highest entry index written to it."""

    def __init__(self, seq: int, path: Path, max_index: int = 0) -> None:
        self.seq = seq
        self.path = path
        self.max_index = max_index


class RaftLog:
    def __init__(self, path: str | os.PathLike[str], segment_bytes: int = SEGMENT_BYTES) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()  # saves and compactions may come from different threads
        if (self.path / "data.mdb").exists():
            _migrate_lmdb_log(self.path)
        state, self._segments, end = self._replay()
        self._state_at_open: PersistedState | None = state  # for the first load() (below)
        self._hard_state = state.hard_state
        self._snapshot = state.snapshot
        self._last = state.entries[-1].index if state.entries else state.snapshot.meta.index
        self._fd = -1
        self._offset = 0
        if self._segments:
            self._open_tail(self._segments[-1], end)
        else:
            self._start_segment(0)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RaftLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def save(
        self,
        hard_state: HardState | None,
        entries: list[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        """Persist one Ready: a received ``snapshot`` replaces the whole log (Raft discarded its
        entries when it accepted it), then ``entries`` replace the suffix from
        ``entries[0].index``, then ``hard_state``. One write, one sync: when ``save`` returns,
        everything in it is on disk; if the process dies first, the log holds all of it, none of
        it, or a prefix of its records."""
        _check_contiguous(entries)
        tr("save0")
        if _TEST_DISK_DELAY:
            _test_disk_delay()
        with self._lock:
            snap_index, last = self._snapshot.meta.index, self._last
            if snapshot is not None:
                snap_index = last = snapshot.meta.index
            if entries:
                first = entries[0].index
                if first <= snap_index or first > last + 1:
                    raise ValueError(f"entries from {first} would leave a gap or rewrite the "
                                     f"snapshot (snapshot {snap_index}, last {last})")
            records = []
            if snapshot is not None:
                records.append((RECEIVED_SNAPSHOT, encode(snapshot)))
            if entries:
                records.append((ENTRIES, encode(entries)))
            if hard_state is not None:
                records.append((HARD_STATE, encode(hard_state)))
            self._write(records, entries[-1].index if entries else 0)
            if snapshot is not None:
                self._snapshot = snapshot
                self._last = snapshot.meta.index
            if entries:
                self._last = entries[-1].index
            if hard_state is not None:
                self._hard_state = hard_state
        tr("save1")

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """Record a snapshot the node took of its own state machine (entries stay until
        ``compact``). Its index must not go backwards nor pass the last entry."""
        with self._lock:
            current = self._snapshot.meta.index
            if not current <= snapshot.meta.index <= self._last:
                raise ValueError(f"snapshot {snapshot.meta.index} outside [{current}, {self._last}]")
            self._write([(SNAPSHOT, encode(snapshot))], 0)
            self._snapshot = snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to and including ``index``, which a saved snapshot must cover, and
        delete the segments that held nothing newer."""
        with self._lock:
            if index > self._snapshot.meta.index:
                raise ValueError(f"compact({index}) beyond the snapshot")
            self._write([(COMPACT, _INDEX.pack(index))], 0)
            removed = False
            while len(self._segments) > 1 and self._segments[0].max_index <= index:
                self._segments.pop(0).path.unlink()
                removed = True
            if removed:
                fsync_dir(self.path)

    def _write(self, records: list[tuple[bytes, bytes]], max_index: int) -> None:
        seg = self._segments[-1]
        buf = _frame(seg.seq, records)
        if self._offset + len(buf) > self._segment_bytes and self._offset > self._header_end:
            seg = self._start_segment(seg.seq + 1)
            buf = _frame(seg.seq, records)
        os.pwrite(self._fd, buf, self._offset)
        os.fdatasync(self._fd)
        self._state_at_open = None
        self._offset += len(buf)
        seg.max_index = max(seg.max_index, max_index)

    # ------------------------------------------------------------------ segments

    def _start_segment(self, seq: int) -> _Segment:
        """A new, preallocated segment opening with the current snapshot and hard state; the
        previous segment is complete (every save synced it) and is left as it is."""
        seg = _Segment(seq, self.path / f"{seq:016x}{_SUFFIX}")
        fd = os.open(seg.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        _preallocate(fd, self._segment_bytes)
        header = _frame(seq, [(SNAPSHOT, encode(self._snapshot)),
                              (HARD_STATE, encode(self._hard_state))])
        os.pwrite(fd, header, 0)
        os.fsync(fd)
        fsync_dir(self.path)  # the new file must exist after a crash
        self.close()
        self._fd, self._offset, self._header_end = fd, len(header), len(header)
        self._segments.append(seg)
        return seg

    def _open_tail(self, seg: _Segment, end: int) -> None:
        """Resume writing the last segment at its last whole record: cut whatever a crash left
        after it, so no stale bytes ever follow a new record. A segment whose header never made
        it to disk (a crash while creating it) is created again."""
        if end == 0:
            self._segments.pop()
            seg.path.unlink()
            self._start_segment(seg.seq)
            return
        fd = os.open(seg.path, os.O_RDWR)
        if os.fstat(fd).st_size != end:
            os.ftruncate(fd, end)
            _preallocate(fd, self._segment_bytes)
            os.fsync(fd)
        self._fd, self._offset, self._header_end = fd, end, 0

    # ------------------------------------------------------------------ reads

    def load(self) -> PersistedState:
        """Everything synced: hard state, snapshot, and the entries after the snapshot. The
        first call before any write gets the state the open already read (a member loads once,
        at start: the log is not read twice); every other call reads the segments again, so
        the caller may keep and change what it got."""
        with self._lock:
            state, self._state_at_open = self._state_at_open, None
            if state is None:
                state, _, _ = self._replay()
        return state

    def last_index(self) -> int:
        """Index of the last entry, or of the snapshot when no entry follows it."""
        return self._last

    def _replay(self) -> tuple[PersistedState, list[_Segment], int]:
        """Read every segment in order: the state they hold, the segments, and where the last
        one's whole records end."""
        hard_state, snapshot, entries = HardState(), Snapshot(), []
        segments: list[_Segment] = []
        paths = sorted(self.path.glob("*" + _SUFFIX))
        end = 0
        for n, path in enumerate(paths):
            seg = _Segment(int(path.stem, 16), path)
            records, end, clean = _read_segment(seg.seq, path)
            if not clean and n < len(paths) - 1:
                # Only the last segment can end in a torn write: each earlier one was synced
                # whole before the next was created.
                raise CorruptLogError(f"{path}: damaged record at offset {end}")
            for kind, payload in records:
                if kind == ENTRIES:
                    batch = _decode_entries(payload)
                    entries = _splice(entries, batch)
                    seg.max_index = max(seg.max_index, batch[-1].index)
                elif kind == HARD_STATE:
                    hard_state = decode_hard_state(payload)
                elif kind == SNAPSHOT:
                    snapshot = _decode_snapshot(payload)
                elif kind == RECEIVED_SNAPSHOT:
                    snapshot, entries = _decode_snapshot(payload), []
                elif kind == COMPACT:
                    upto = _INDEX.unpack(payload)[0]
                    entries = [e for e in entries if e.index > upto]
            segments.append(seg)
        entries = [e for e in entries if e.index > snapshot.meta.index]
        if entries and entries[0].index != snapshot.meta.index + 1:
            raise CorruptLogError(f"{self.path}: entries start at {entries[0].index}, after a "
                                  f"snapshot at {snapshot.meta.index}")
        state = PersistedState(hard_state=hard_state, snapshot=snapshot, entries=entries)
        return state, segments, end


def _read_segment(seq: int, path: Path) -> tuple[list[tuple[bytes, bytes]], int, bool]:
    """A segment's whole records (type, payload), the offset where they end, and whether they
    end cleanly (at the preallocated zeros or the file's end) rather than at a damaged record."""
    records = []
    end = 0
    with open(path, "rb") as f:
        while True:
            head = f.read(_HEAD.size)
            if len(head) < _HEAD.size:
                return records, end, not head.strip(b"\0")
            length, crc, kind = _HEAD.unpack(head)
            if length == 0:
                return records, end, not head.strip(b"\0")
            payload = f.read(length)
            kind_byte = bytes((kind,))
            if len(payload) < length or _crc(seq, kind_byte, payload) != crc:
                return records, end, False
            records.append((kind_byte, payload))
            end += _HEAD.size + length


def _crc(seq: int, kind: bytes, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(kind, seq & 0xFFFFFFFF))


def _frame(seq: int, records: list[tuple[bytes, bytes]]) -> bytes:
    parts = []
    for kind, payload in records:
        parts.append(_HEAD.pack(len(payload), _crc(seq, kind, payload), kind[0]))
        parts.append(payload)
    return b"".join(parts)


def _splice(entries: list[Entry], batch: list[Entry]) -> list[Entry]:
    """``batch`` replaces ``entries`` from its first index; after a gap (entries that were
    compacted away with their segment) the log restarts at ``batch``."""
    first = batch[0].index
    if entries and entries[0].index <= first <= entries[-1].index + 1:
        return entries[:first - entries[0].index] + batch
    return list(batch)


def _migrate_lmdb_log(path: Path) -> None:
    """Data directories written before the WAL kept the Raft log in LMDB (``data.mdb``: DBs
    ``entries``, 8-byte big-endian index -> Entry, and ``meta``): rewrite it as segment 0."""
    import lmdb

    env = lmdb.open(str(path), max_dbs=2, readonly=True, lock=False)
    try:
        entries_db, meta_db = env.open_db(b"entries"), env.open_db(b"meta")
        with env.begin() as txn:
            raw_hs = txn.get(b"hard_state", db=meta_db)
            raw_snap = txn.get(b"snapshot", db=meta_db)
            values = list(txn.cursor(db=entries_db).iternext(keys=False))
    finally:
        env.close()
    snapshot = _decode_snapshot(raw_snap) if raw_snap is not None else Snapshot()
    hard_state = decode_hard_state(raw_hs) if raw_hs is not None else HardState()
    entries = [e for e in map(decode_entry, values) if e.index > snapshot.meta.index]
    records = [(SNAPSHOT, encode(snapshot)), (HARD_STATE, encode(hard_state))]
    if entries:
        records.append((ENTRIES, encode(entries)))
    tmp = path / "migrating.tmp"
    tmp.write_bytes(_frame(0, records))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    tmp.rename(path / f"{0:016x}{_SUFFIX}")
    fsync_dir(path)
    for name in ("data.mdb", "lock.mdb"):
        (path / name).unlink(missing_ok=True)
    log.info("moved the Raft log in %s from LMDB to segment files (%d entries)", path,
             len(entries))


def _preallocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        pass  # a filesystem without fallocate: the file grows with each append instead


def _check_contiguous(entries: list[Entry]) -> None:
    for prev, entry in zip(entries, entries[1:]):
        if entry.index != prev.index + 1:
            raise ValueError(f"entries not contiguous at {prev.index} -> {entry.index}")
