"""Durable Raft log: what save/load/compact keep, and what they refuse."""
from __future__ import annotations

import struct

import lmdb
import pytest

from shardkv.mvcc.raftlog import CorruptLogError, RaftLog
from shardkv.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta, encode


def ents(term: int, first: int, last: int) -> list[Entry]:
    return [Entry(term, i, data=b"%d" % i) for i in range(first, last + 1)]


@pytest.fixture
def log(tmp_path):
    with RaftLog(tmp_path / "log") as raft_log:
        yield raft_log


def terms(log: RaftLog) -> list[tuple[int, int]]:
    return [(e.index, e.term) for e in log.load().entries]


def test_empty_log_loads_defaults(log):
    state = log.load()
    assert (state.hard_state, state.snapshot, state.entries) == (HardState(), Snapshot(), [])
    assert log.last_index() == 0


def test_entries_replace_the_suffix_from_their_first_index(log):
    log.save(HardState(term=1, vote=2, commit=0), ents(1, 1, 10))
    log.save(HardState(term=2, vote=3, commit=4), ents(2, 5, 6))
    assert terms(log) == [(i, 1) for i in range(1, 5)] + [(5, 2), (6, 2)]
    assert log.load().hard_state == HardState(term=2, vote=3, commit=4)
    assert log.load().entries[0].data == b"1"


def test_state_survives_reopen(tmp_path):
    snap = Snapshot(SnapshotMeta(index=3, term=1, conf_state=ConfState(voters=(1, 2))), b"img")
    with RaftLog(tmp_path / "log") as log:
        log.save(HardState(term=1, commit=3), ents(1, 1, 5))
        log.set_snapshot(snap)
        log.compact(2)
    with RaftLog(tmp_path / "log") as log:
        state = log.load()
        assert state.snapshot == snap
        assert [e.index for e in state.entries] == [4, 5]


def test_received_snapshot_replaces_the_whole_log(log):
    log.save(None, ents(1, 1, 10))
    log.save(HardState(term=3, commit=20), ents(3, 21, 22), Snapshot(SnapshotMeta(index=20, term=3)))
    state = log.load()
    assert state.snapshot.meta.index == 20
    assert terms(log) == [(21, 3), (22, 3)]
    assert log.last_index() == 22


def test_gaps_and_bad_compactions_are_refused(log):
    log.save(None, ents(1, 1, 5))
    with pytest.raises(ValueError):
        log.save(None, ents(1, 7, 8))  # gap after 5
    with pytest.raises(ValueError):
        log.save(None, [Entry(1, 6), Entry(1, 8)])  # not contiguous
    with pytest.raises(ValueError):
        log.compact(3)  # no snapshot covers 3 yet
    with pytest.raises(ValueError):
        log.set_snapshot(Snapshot(SnapshotMeta(index=9, term=1)))  # beyond the last entry
    log.set_snapshot(Snapshot(SnapshotMeta(index=4, term=1)))
    log.compact(4)
    assert terms(log) == [(5, 1)]
    with pytest.raises(ValueError):
        log.save(None, ents(2, 3, 4))  # would rewrite what the snapshot covers


def test_segments_roll_over_and_compaction_deletes_old_ones(tmp_path):
    path = tmp_path / "log"
    with RaftLog(path, segment_bytes=64 * 1024) as log:
        for first in range(1, 1001, 50):
            log.save(HardState(term=1, commit=first), ents_sized(1, first, first + 49, 400))
        assert len(segments(path)) > 3
        before = log.load()
    with RaftLog(path, segment_bytes=64 * 1024) as log:
        assert log.load() == before
        assert log.last_index() == 1000
        log.set_snapshot(Snapshot(SnapshotMeta(index=990, term=1)))
        log.compact(990)
        assert len(segments(path)) <= 2
        assert [e.index for e in log.load().entries] == list(range(991, 1001))
    with RaftLog(path, segment_bytes=64 * 1024) as log:
        state = log.load()
        assert state.snapshot.meta.index == 990
        assert state.hard_state == HardState(term=1, commit=951)
        assert [e.index for e in state.entries] == list(range(991, 1001))
        log.save(None, ents(1, 1001, 1002))  # the log goes on after a reopen
        assert log.last_index() == 1002


def test_a_torn_last_record_is_cut_and_never_comes_back(tmp_path):
    """A crash mid-write leaves a damaged record (and maybe whole ones after it, unsynced):
    the log ends before it, and what is written next replaces all of it."""
    path = tmp_path / "log"
    with RaftLog(path) as log:
        log.save(HardState(term=1, commit=1), ents(1, 1, 3))
        offset = log._offset
        log.save(None, ents(1, 4, 5))
        log.save(None, ents(1, 6, 7))  # unsynced in the story: survives the torn write before it
    seg = segments(path)[-1]
    with open(seg, "r+b") as f:
        f.seek(offset + 20)
        f.write(b"\xff")  # damage the record of entries 4-5
    with RaftLog(path) as log:
        assert [e.index for e in log.load().entries] == [1, 2, 3]
        log.save(None, ents(2, 4, 5))  # same size as the damaged record
    with RaftLog(path) as log:
        assert terms(log) == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]


def test_a_crash_while_creating_a_segment_is_repaired(tmp_path):
    path = tmp_path / "log"
    with RaftLog(path, segment_bytes=4096) as log:
        log.save(HardState(term=1, commit=2), ents(1, 1, 5))
    (path / f"{1:016x}.wal").write_bytes(b"\0" * 100)  # created, header not yet written
    with RaftLog(path, segment_bytes=4096) as log:
        assert [e.index for e in log.load().entries] == [1, 2, 3, 4, 5]
        log.save(HardState(term=1, commit=5), ents(1, 6, 6))
        log.set_snapshot(Snapshot(SnapshotMeta(index=6, term=1)))
        log.compact(6)  # deletes segment 0: segment 1 must start with a whole state
    with RaftLog(path, segment_bytes=4096) as log:
        state = log.load()
        assert (state.snapshot.meta.index, state.hard_state.commit, state.entries) == (6, 5, [])


def test_a_damaged_earlier_segment_is_refused(tmp_path):
    path = tmp_path / "log"
    with RaftLog(path, segment_bytes=4096) as log:
        for first in range(1, 41, 10):
            log.save(None, ents_sized(1, first, first + 9, 200))
    first_seg = segments(path)[0]
    data = bytearray(first_seg.read_bytes())
    data[40] ^= 0xFF
    first_seg.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError):
        RaftLog(path, segment_bytes=4096)


def test_an_lmdb_raft_log_is_migrated(tmp_path):
    """Data directories from before the WAL held the log in LMDB: it is rewritten on open."""
    path = tmp_path / "log"
    path.mkdir()
    env = lmdb.open(str(path), max_dbs=2)
    entries_db, meta_db = env.open_db(b"entries"), env.open_db(b"meta")
    snap = Snapshot(SnapshotMeta(index=2, term=1))
    with env.begin(write=True) as txn:
        for e in ents(1, 1, 6):
            txn.put(struct.pack(">Q", e.index), encode(e), db=entries_db)
        txn.put(b"hard_state", encode(HardState(term=1, vote=2, commit=5)), db=meta_db)
        txn.put(b"snapshot", encode(snap), db=meta_db)
    env.close()
    with RaftLog(path) as log:
        state = log.load()
        assert state.snapshot == snap and state.hard_state == HardState(term=1, vote=2, commit=5)
        assert [e.index for e in state.entries] == [3, 4, 5, 6]
        assert log.last_index() == 6
    assert not (path / "data.mdb").exists()


def ents_sized(term: int, first: int, last: int, size: int) -> list[Entry]:
    return [Entry(term, i, data=b"x" * size) for i in range(first, last + 1)]


def segments(path) -> list:
    return sorted(path.glob("*.wal"))
