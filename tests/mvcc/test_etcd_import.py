"""etcd_import: a store written as etcd's backend file (etcd_db) and imported back is the same
keyspace: every retained revision, versions, create/mod revisions, current and compacted
revision, leases and their keys; the applied index starts over at 0."""
from __future__ import annotations

import random

import pytest

from shardkv.mvcc import etcd_db, etcd_import
from shardkv.mvcc.errors import CompactedError
from shardkv.mvcc.kv import (
    CompactionRequest,
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    LeaseTimeToLiveRequest,
    PutRequest,
    RangeRequest,
)
from shardkv.mvcc.store import Store


def everything(store: Store, rev: int = 0):
    try:
        resp = store.range(RangeRequest(key=b"\0", range_end=b"\0", revision=rev))
    except CompactedError:
        return "compacted"
    return [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
            for kv in resp.kvs]


def build(store: Store, seed: int) -> None:
    rnd = random.Random(seed)
    index = 0

    def apply(req):
        nonlocal index
        index += 1
        return store.apply([(index, req)]).results[0]

    apply(LeaseGrantRequest(ID=7, TTL=100))
    apply(LeaseGrantRequest(ID=8, TTL=50))
    for i in range(120):
        key = f"k{rnd.randrange(12)}".encode()
        op = rnd.random()
        if op < 0.6:
            apply(PutRequest(key=key, value=f"v{i}".encode(), lease=rnd.choice([0, 0, 7, 8])))
        elif op < 0.85:
            apply(DeleteRangeRequest(key=key))
        elif op < 0.9 and store.current_revision > store.compact_revision + 5:
            apply(CompactionRequest(revision=store.current_revision - rnd.randrange(1, 5)))
        if i == 100:
            apply(LeaseRevokeRequest(ID=8))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_import_round_trip(tmp_path, seed):
    src = Store(tmp_path / "src")
    build(src, seed)
    backup = tmp_path / "backup.db"
    backup.write_bytes(b"".join(etcd_db.snapshot_chunks(src)))
    info = etcd_import.import_etcd_db(backup, tmp_path / "dst")
    dst = Store(tmp_path / "dst")
    try:
        assert info.revision == dst.current_revision == src.current_revision
        assert dst.compact_revision == src.compact_revision
        assert dst.consistent_index == 0
        for rev in range(1, src.current_revision + 1):
            assert everything(dst, rev) == everything(src, rev), rev
        assert dst.lessor.ids() == src.lessor.ids()
        for lid in src.lessor.ids():
            a = src.lease_time_to_live(LeaseTimeToLiveRequest(ID=lid, keys=True))
            b = dst.lease_time_to_live(LeaseTimeToLiveRequest(ID=lid, keys=True))
            assert (a.grantedTTL, sorted(a.keys)) == (b.grantedTTL, sorted(b.keys))
        # writes continue from the imported revision
        dst.apply([(1, PutRequest(key=b"new", value=b"x"))])
        assert dst.current_revision == src.current_revision + 1
        dst.apply([(2, LeaseRevokeRequest(ID=7))])
        assert all(kv[5] != 7 for kv in everything(dst))
    finally:
        src.close()
        dst.close()
