"""The store as etcd's own backend file: what `etcdctl snapshot save` receives from
Maintenance.Snapshot, so that `etcdctl snapshot status` and `etcdctl snapshot restore` work.

etcd 3.4's schema in bbolt: bucket ``key`` maps a revision (8-byte big-endian main, ``_``,
8-byte big-endian sub, and ``t`` for a tombstone) to a protobuf ``mvccpb.KeyValue``; bucket
``meta`` holds ``consistent_index`` (8-byte big-endian) and the compaction revisions; bucket
``lease`` maps an 8-byte big-endian lease id to a protobuf ``leasepb.Lease``.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from shardkv.api.etcdserverpb import rpc_pb2
from shardkv.api.mvccpb import kv_pb2
from shardkv.mvcc import bbolt
from shardkv.mvcc.kv import KeyValue
from shardkv.mvcc.revision import bytes_to_rev
from shardkv.protowire import varint

_U64 = struct.Struct(">Q")
_ALARM = struct.Struct(">QB")  # the store's alarm key: member id, alarm type
_decode_kv = msgspec.msgpack.Decoder(KeyValue).decode
_decode_int = msgspec.msgpack.Decoder(int).decode


def etcd_revision(main: int, sub: int, tombstone: bool = False) -> bytes:
    return _U64.pack(main) + b"_" + _U64.pack(sub) + (b"t" if tombstone else b"")


def parse_etcd_revision(raw: bytes) -> tuple[int, int, bool]:
    return _U64.unpack(raw[:8])[0], _U64.unpack(raw[9:17])[0], raw[17:18] == b"t"




def lease_record(lease_id: int, ttl: int) -> bytes:
    """leasepb.Lease{ID: 1, TTL: 2} (RemainingTTL is only set by checkpoints)."""
    return b"\x08" + varint(lease_id) + b"\x10" + varint(ttl)


def _kv_proto(kv: KeyValue) -> bytes:
    return kv_pb2.KeyValue(
        key=kv.key, create_revision=kv.create_revision, mod_revision=kv.mod_revision,
        version=kv.version, value=kv.value, lease=kv.lease,
    ).SerializeToString()


def _member_json(m) -> bytes:
    """etcd 3.4's membership.Member as it stores it in the ``members`` bucket."""
    out = {"id": m.id, "peerURLs": list(m.peer_urls)}
    if getattr(m, "is_learner", False):
        out["isLearner"] = True
    if getattr(m, "name", ""):
        out["name"] = m.name
    if getattr(m, "client_urls", None):
        out["clientURLs"] = list(m.client_urls)
    return json.dumps(out, separators=(",", ":")).encode()


def _cluster_buckets(cluster) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """The buckets etcd 3.4 keeps beside the keyspace, so a backup holds what etcd's holds
    (`etcdctl snapshot status` counts their keys; `snapshot restore` rewrites the member ones).
    ``cluster``: anything with ``members`` ({id: record with id, name, peer_urls,
    client_urls, is_learner}) and ``removed`` (ids), e.g. the node's member registry."""
    buckets: dict[bytes, list[tuple[bytes, bytes]]] = {
        b"auth": [(b"authRevision", _U64.pack(1))], b"authRoles": [], b"authUsers": [],
        b"cluster": [(b"clusterVersion", b"3.4.0")], b"members": [], b"members_removed": [],
    }
    if cluster is not None:
        buckets[b"members"] = sorted((f"{m.id:x}".encode(), _member_json(m))
                                     for m in cluster.members.values())
        buckets[b"members_removed"] = sorted((f"{mid:x}".encode(), b"removed")
                                             for mid in set(cluster.removed))
    return buckets


def write_store_as_etcd_db(store, path: Path | str, cluster=None, cluster_buckets=None) -> int:
    """Write a consistent copy of ``store`` (one LMDB read transaction) as etcd's bbolt file,
    with etcd's cluster buckets (members from ``cluster``, see ``_cluster_buckets``)."""
    env, dbs = store._env, store._dbs  # same package: reads the LMDB layout directly
    with env.begin() as txn:
        alarms = sorted(
            (rpc_pb2.AlarmMember(memberID=member, alarm=kind).SerializeToString(), b"")
            for member, kind in (_ALARM.unpack(k) for k in
                                 txn.cursor(db=dbs.alarm).iternext(values=False)))
        keys = []
        for raw_rev, raw_kv in txn.cursor(db=dbs.key):
            main, sub, tombstone = bytes_to_rev(raw_rev)
            keys.append((etcd_revision(main, sub, tombstone), _kv_proto(_decode_kv(raw_kv))))
        leases = [(k, lease_record(_U64.unpack(k)[0], _decode_int(v))) for k, v in txn.cursor(db=dbs.lease)]
        compact = store._meta(txn, b"compact_rev", -1)  # as of this transaction
        meta = [(b"consistent_index", _U64.pack(store._meta(txn, b"consistent_index", 0)))]
        if compact > 0:
            meta += [
                (b"finishedCompactRev", etcd_revision(compact, 0)),
                (b"scheduledCompactRev", etcd_revision(compact, 0)),
            ]
    return bbolt.write_db(path, {b"key": keys, b"lease": leases, b"meta": sorted(meta),
                                 b"alarm": alarms,
                                 **(cluster_buckets or _cluster_buckets(cluster))})


def snapshot_chunks(store, chunk_size: int = 1 << 20, cluster=None) -> Iterator[bytes]:
    """etcd's Maintenance.Snapshot stream: the bbolt file, then its sha256 (32 bytes).
    ``cluster`` (see ``_cluster_buckets``) is read at once, in the caller's thread."""
    return (blob for blob, _ in snapshot_stream(store, chunk_size, cluster))


def snapshot_stream(store, chunk_size: int = 1 << 20,
                    cluster=None) -> Iterator[tuple[bytes, int]]:
    """``snapshot_chunks`` with etcd's ``remaining_bytes`` beside each chunk: the bytes of the
    bbolt file still to come after this chunk (the file is written whole before the first chunk,
    so its size is known up front, as etcd knows its backend's), 0 on the sha256 trailer.
    ``cluster`` is read at once, in the caller's thread."""
    return _stream(store, chunk_size, _cluster_buckets(cluster))


def _stream(store, chunk_size: int, cluster_buckets) -> Iterator[tuple[bytes, int]]:
    fd, name = tempfile.mkstemp(prefix="shardkv-snapshot-", suffix=".db")
    os.close(fd)
    try:
        remaining = write_store_as_etcd_db(store, name, cluster_buckets=cluster_buckets)
        digest = hashlib.sha256()
        with open(name, "rb") as f:
            while chunk := f.read(chunk_size):
                digest.update(chunk)
                remaining -= len(chunk)
                yield chunk, remaining
        yield digest.digest(), 0
    finally:
        os.unlink(name)


@dataclass
class EtcdDb:
    """What an etcd backend file holds, decoded (for importing a restored etcd data dir)."""

    revisions: list[tuple[int, int, bool, kv_pb2.KeyValue]]
    leases: dict[int, int]  # id -> TTL
    consistent_index: int
    compact_revision: int


def read_etcd_db(path: Path | str) -> EtcdDb:
    data = Path(path).read_bytes()
    if len(data) % 512 == 32:  # a snapshot file: strip and check etcd's sha256 trailer
        data, trailer = data[:-32], data[-32:]
        if hashlib.sha256(data).digest() != trailer:
            raise bbolt.BoltFormatError("snapshot sha256 mismatch")
    db = bbolt.DB(data)
    names = set(db.buckets())
    revisions = []
    for raw, value in db.items(b"key") if b"key" in names else ():
        main, sub, tombstone = parse_etcd_revision(raw)
        kv = kv_pb2.KeyValue()
        kv.ParseFromString(value)
        revisions.append((main, sub, tombstone, kv))
    leases = {}
    for raw, value in db.items(b"lease") if b"lease" in names else ():
        lease = _parse_lease(value)
        leases[lease[0]] = lease[1]
    meta = dict(db.items(b"meta")) if b"meta" in names else {}
    ci = _U64.unpack(meta[b"consistent_index"])[0] if b"consistent_index" in meta else 0
    compact = parse_etcd_revision(meta[b"finishedCompactRev"])[0] if b"finishedCompactRev" in meta else 0
    return EtcdDb(revisions, leases, ci, compact)


def _parse_lease(raw: bytes) -> tuple[int, int]:
    fields = {}
    i = 0
    while i < len(raw):
        tag = raw[i]
        i += 1
        value, shift = 0, 0
        while True:
            b = raw[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        fields[tag >> 3] = value - (1 << 64) if value >= 1 << 63 else value
    return fields.get(1, 0), fields.get(2, 0)
