"""Durable Raft log: what save/load/compact keep, and what they refuse."""
from __future__ import annotations

import pytest

from shardkv.mvcc.raftlog import RaftLog
from shardkv.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta


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


def test_large_batches_grow_the_map(tmp_path):
    with RaftLog(tmp_path / "log", map_size=1024 * 1024) as log:
        big = [Entry(1, i, data=b"x" * 4096) for i in range(1, 1001)]
        log.save(HardState(term=1, commit=1000), big)
        assert log.last_index() == 1000
