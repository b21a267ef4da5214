"""Snapshots: point-in-time, streamed with a verified sha256, restorable, and received
into a running store (verified, then swapped in)."""
from __future__ import annotations

import pytest

from shardkv.mvcc.errors import SnapshotChecksumError
from shardkv.mvcc.kv import LeaseGrantRequest, PutRequest, RangeRequest
from shardkv.mvcc.snapshot import StoreSnapshot, receive, restore
from shardkv.mvcc.store import Store


def fill(store: Store, first_index: int, n: int, tag: bytes) -> None:
    store.apply([(first_index + i, PutRequest(key=b"k%04d" % i, value=tag * 100)) for i in range(n)])


def keys_and_values(store: Store) -> list[tuple[bytes, bytes]]:
    kvs = store.range(RangeRequest(key=b"\x00", range_end=b"\x00")).kvs
    return [(kv.key, kv.value) for kv in kvs]


def test_snapshot_is_point_in_time_while_writes_continue(tmp_path):
    with Store(tmp_path / "src") as src:
        fill(src, 1, 300, b"a")
        src.apply([(301, LeaseGrantRequest(ID=5, TTL=30))])
        want_hash, want_state = src.hash(), keys_and_values(src)
        snap = StoreSnapshot(src, chunk_size=4096)
        chunks = snap.chunks()
        first = next(chunks)
        fill(src, 302, 300, b"b")  # writes go on while the snapshot is streamed
        stream = [first, *chunks]
        assert len(stream) > 2 and sum(map(len, stream)) == snap.size
        assert snap.applied_index == 301
    assert restore(stream, tmp_path / "restored") == 301
    with Store(tmp_path / "restored") as restored:
        assert restored.hash() == want_hash
        assert keys_and_values(restored) == want_state
        assert restored.lessor.ids() == [5]


def test_corrupt_stream_is_rejected(tmp_path):
    with Store(tmp_path / "src") as src:
        fill(src, 1, 50, b"a")
        stream = list(StoreSnapshot(src).chunks())
    body = bytearray(b"".join(stream))
    body[100] ^= 0xFF
    with pytest.raises(SnapshotChecksumError):
        restore([bytes(body)], tmp_path / "bad")
    assert not (tmp_path / "bad" / "data.mdb").exists()
    with pytest.raises(SnapshotChecksumError):
        restore([b"short"], tmp_path / "bad")


def test_restore_from_a_file_and_refuse_to_overwrite(tmp_path):
    with Store(tmp_path / "src") as src:
        fill(src, 1, 10, b"a")
        (tmp_path / "snap.db").write_bytes(b"".join(StoreSnapshot(src).chunks()))
    assert restore(tmp_path / "snap.db", tmp_path / "dst") == 10
    with pytest.raises(FileExistsError):
        restore(tmp_path / "snap.db", tmp_path / "dst")


def test_a_received_snapshot_replaces_a_running_store(tmp_path):
    with Store(tmp_path / "leader") as leader, Store(tmp_path / "follower") as follower:
        fill(leader, 1, 100, b"L")
        leader.apply([(101, LeaseGrantRequest(ID=9, TTL=60))])
        fill(follower, 1, 20, b"F")
        stream = list(StoreSnapshot(leader).chunks())
        corrupt = [stream[0][:-1] + b"?", *stream[1:]]
        with pytest.raises(SnapshotChecksumError):
            receive(corrupt, tmp_path / "bad", 1 << 30)
        assert not (tmp_path / "bad").exists()
        assert keys_and_values(follower)[0][1] == b"F" * 100  # untouched
        assert receive(stream, tmp_path / "good", 1 << 30) == 101
        follower.replace_with(tmp_path / "good" / "data.mdb")
        assert follower.hash().hash == leader.hash().hash
        assert follower.lessor.ids() == [9]
        follower.apply([(102, PutRequest(key=b"after", value=b"x"))])
        assert follower.current_revision == leader.current_revision + 1


def test_snapshot_of_keys_with_long_histories(tmp_path):
    """Regression: keys rewritten thousands of times put their index history in LMDB
    sub-databases, whose compacting copy crashed (segfault) when they were DUPFIXED; a leader
    sending such a snapshot to a new member hung (found by the chaos membership run)."""
    with Store(tmp_path / "src") as src:
        src.apply([(i + 1, PutRequest(key=b"hot%d" % (i % 5), value=b"v%d" % i))
                   for i in range(3000)])
        want = keys_and_values(src)
        stream = list(StoreSnapshot(src).chunks())
    assert restore(stream, tmp_path / "restored") == 3000
    with Store(tmp_path / "restored") as restored:
        assert keys_and_values(restored) == want
        old = restored.range(RangeRequest(key=b"hot0", revision=2)).kvs[0]
        assert old.value == b"v0"
