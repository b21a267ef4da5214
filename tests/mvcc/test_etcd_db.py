"""Snapshots in etcd's own format: the real etcdctl (reference client) must read what we write,
and we must read what etcd's tools write."""
import hashlib
import json
import os
import shutil
import subprocess

import pytest

from shardkv.mvcc import bbolt
from shardkv.mvcc.etcd_db import read_etcd_db, snapshot_chunks, write_store_as_etcd_db
from shardkv.mvcc.kv import CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, PutRequest
from shardkv.mvcc.store import Store

ETCDCTL = shutil.which("etcdctl")
needs_etcdctl = pytest.mark.skipif(ETCDCTL is None, reason="etcdctl not on PATH (apt-get install etcd-client)")


def etcdctl(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    out = subprocess.run([ETCDCTL, *args], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    yield s
    s.close()


def fill(store: Store) -> None:
    batch = [PutRequest(key=b"k%03d" % i, value=b"v%d" % i) for i in range(300)]
    batch += [LeaseGrantRequest(ID=77, TTL=600), PutRequest(key=b"leased", value=b"x", lease=77)]
    batch += [DeleteRangeRequest(key=b"k000"), PutRequest(key=b"k001", value=b"again")]
    batch += [CompactionRequest(revision=10)]
    store.apply([(i + 1, r) for i, r in enumerate(batch)])


def test_bbolt_roundtrip_many_pages(tmp_path):
    pairs = [(b"%08d" % i, b"v" * (i % 300)) for i in range(30_000)] + [(b"~big", b"x" * 20_000)]
    bbolt.write_db(tmp_path / "db", {b"a": pairs, b"empty": []})
    db = bbolt.DB.open(tmp_path / "db")
    assert db.buckets() == [b"a", b"empty"]
    assert list(db.items(b"a")) == pairs and list(db.items(b"empty")) == []


def test_store_roundtrips_through_etcds_format(tmp_path, store):
    fill(store)
    write_store_as_etcd_db(store, tmp_path / "snap.db")
    db = read_etcd_db(tmp_path / "snap.db")
    assert db.consistent_index == store.consistent_index
    assert db.compact_revision == 10
    assert db.leases == {77: 600}
    latest = {}
    for main, sub, tombstone, kv in db.revisions:
        latest[kv.key] = None if tombstone else kv
    assert latest[b"k001"].value == b"again" and latest[b"k000"] is None
    assert latest[b"leased"].lease == 77
    assert max(main for main, *_ in db.revisions) == store.current_revision


@needs_etcdctl
def test_etcdctl_snapshot_status_and_restore_accept_our_stream(tmp_path, store):
    fill(store)
    path = tmp_path / "backup.db"
    with open(path, "wb") as f:
        for chunk in snapshot_chunks(store, chunk_size=4096):
            f.write(chunk)
    data = path.read_bytes()
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    status = json.loads(etcdctl("snapshot", "status", str(path), "-w", "json"))
    assert status["revision"] == store.current_revision
    assert status["totalKey"] > 300
    restored = tmp_path / "restored"
    etcdctl("snapshot", "restore", str(path), "--data-dir", str(restored))
    # etcd's restore rewrote the file with real bbolt: we read its result back
    back = read_etcd_db(restored / "member" / "snap" / "db")
    assert {kv.key for *_, kv in back.revisions} >= {b"k001", b"leased"}
    assert back.leases == {77: 600}
