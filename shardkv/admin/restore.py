"""`snapshot restore`: a new member's data dir from a snapshot file, laid out as `etcdctl
snapshot restore` lays it out, so that shardkv-node started on it with the same cluster flags
imports the snapshot's keyspace (``shardkv.mvcc.etcd_import.import_restored``, the path that
already takes data dirs restored by etcdctl).

What etcdctl writes, and what is written here:
- ``member/snap/db``: the backup's bbolt file without its sha256 trailer, with the backend's
  ``consistent_index`` set to the number of members (the Raft entries that bootstrap the new
  cluster) and the member buckets holding the new cluster;
- ``member/snap/<term>-<index>.snap``: the Raft snapshot at that index, in etcd's snap file
  format (snappb.Snapshot with a CRC-32C), voters = the new members. The importer takes a data
  dir as one written by restore when this file's index equals the backend's consistent index.
Not written: etcd's v2 store inside the Raft snapshot and the bootstrap WAL, which only etcd
reads (shardkv-node sets its Raft group up from its flags); start etcd itself on a data dir
from `etcdctl snapshot restore`.
"""
from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from shardkv.admin import dbfile
from shardkv.admin.client import EXIT_BAD_ARGS, AdminError
from shardkv.api.mvccpb import kv_pb2
from shardkv.mvcc import bbolt, etcd_db
from shardkv.mvcc.store import fsync_dir
from shardkv.node.membership import MemberRecord, Registry, cluster_id, member_id

_U64 = struct.Struct(">Q")


@dataclass
class Restored:
    data_dir: Path
    member_id: int
    cluster_id: int
    revisions: int  # records in bucket key
    size: int  # bytes of member/snap/db


def parse_urls(urls: list[str]) -> list[str]:
    """etcd's types.NewURLs, with its errors."""
    if not urls:
        raise AdminError("no valid URLs given", EXIT_BAD_ARGS)
    out = []
    for raw in urls:
        text = raw.strip()
        try:
            u = urlsplit(text)
            port = u.port
        except ValueError:
            raise AdminError(f'URL address does not have the form "host:port": {text}',
                             EXIT_BAD_ARGS) from None
        if u.scheme not in ("http", "https", "unix", "unixs"):
            raise AdminError(f"URL scheme must be http, https, unix, or unixs: {text}",
                             EXIT_BAD_ARGS)
        if not u.hostname or port is None:
            raise AdminError(f'URL address does not have the form "host:port": {text}',
                             EXIT_BAD_ARGS)
        if u.path:
            raise AdminError(f"URL must not contain a path: {text}", EXIT_BAD_ARGS)
        out.append(text)
    return sorted(out)


def parse_initial_cluster(text: str) -> dict[str, list[str]]:
    """name -> sorted peer URLs from "n1=http://a:2380,n2=http://b:2380" (a name may repeat)."""
    pairs: dict[str, list[str]] = {}
    for part in text.split(","):
        name, sep, url = part.partition("=")
        if not sep:
            raise AdminError(f"--initial-cluster: cannot parse {part!r} (want name=url)",
                             EXIT_BAD_ARGS)
        pairs.setdefault(name, []).append(url)
    return {name: parse_urls(urls) for name, urls in pairs.items()}


def verify_bootstrap(name: str, peer_urls: list[str], cluster: dict[str, list[str]]) -> None:
    """etcd's ServerConfig.VerifyBootstrap, with its errors."""
    if name not in cluster:
        raise AdminError(f'couldn\'t find local name "{name}" in the initial cluster '
                         "configuration", EXIT_BAD_ARGS)
    mine = cluster[name]
    if sorted(set(mine)) != sorted(set(peer_urls)):
        missing = [u for u in mine if u not in peer_urls]
        if missing:
            raise AdminError(f"--initial-cluster has {','.join(name + '=' + u for u in missing)}"
                             f" but missing from --initial-advertise-peer-urls="
                             f"{','.join(peer_urls)}", EXIT_BAD_ARGS)
        extra = [u for u in peer_urls if u not in mine]
        raise AdminError(f"--initial-advertise-peer-urls has {','.join(extra)} but missing from "
                         f"--initial-cluster={','.join(name + '=' + u for u in mine)}",
                         EXIT_BAD_ARGS)
    every = [u for urls in cluster.values() for u in urls]
    if len(every) != len(set(every)):
        text = ",".join(f"{n}={u}" for n in sorted(cluster) for u in cluster[n])
        raise AdminError(f"initial cluster {text} has duplicate url", EXIT_BAD_ARGS)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if not n:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def snap_file(voters: list[int], index: int, term: int) -> bytes:
    """etcd's snap file: snappb.Snapshot{crc: CRC-32C of data, data: raftpb.Snapshot{metadata:
    {conf_state: {voters, auto_leave: false}, index, term}}} (no v2 store data)."""
    conf = b"".join(b"\x08" + _varint(v) for v in voters) + b"\x28\x00"
    meta = _field(1, conf) + b"\x10" + _varint(index) + b"\x18" + _varint(term)
    data = _field(2, meta)
    return b"\x08" + _varint(dbfile.crc32c(data)) + _field(2, data)


def _checked_keys(items: Iterator[tuple[bytes, bytes]], counter: list[int]):
    """Bucket ``key`` as it is copied: every record must be a revision and a KeyValue (the
    member decodes them at its first start; a bad one is refused here, before any dir exists)."""
    for k, v in items:
        if len(k) not in (17, 18) or k[8:9] != b"_" or (len(k) == 18 and k[17:] != b"t"):
            raise AdminError(f"snapshot: bucket key holds a record that is not a revision: {k!r}")
        kv = kv_pb2.KeyValue()
        try:
            kv.ParseFromString(v)
        except Exception:  # protobuf's DecodeError and friends: a damaged record
            raise AdminError(f"snapshot: revision {etcd_db.parse_etcd_revision(k)[:2]} does "
                             "not decode as a KeyValue") from None
        counter[0] += 1
        yield k, v


def restore(snapshot: Path | str, data_dir: Path | str, name: str, initial_cluster: str,
            token: str, peer_urls: str, skip_hash_check: bool = False) -> Restored:
    cluster = parse_initial_cluster(initial_cluster)
    mine = parse_urls(peer_urls.split(","))
    verify_bootstrap(name, mine, cluster)
    data_dir = Path(data_dir)
    if data_dir.exists():
        raise AdminError(f'data-dir "{data_dir}" exists')
    members = {}
    for n, urls in cluster.items():
        mid = member_id(urls, token)
        members[mid] = MemberRecord(id=mid, name=n, peer_urls=urls)
    registry = Registry(cluster_id=cluster_id(list(members)), members=members)
    own_id = member_id(cluster[name], token)

    # Built beside the target and renamed into place: a data dir exists only when complete.
    tmp = data_dir.with_name(data_dir.name + ".restoring")
    shutil.rmtree(tmp, ignore_errors=True)
    snap_dir = tmp / "member" / "snap"
    try:
        with dbfile.mapped(snapshot) as mm:
            if dbfile.has_checksum(len(mm)):
                if not skip_hash_check:
                    dbfile.check_sha256(mm)
            elif not skip_hash_check:
                raise AdminError("snapshot missing hash but --skip-hash-check=false")
            db = dbfile.open_db(mm)
            counter = [0]
            try:
                names = db.buckets()
                buckets = {n: db.items(n) for n in names
                           if n not in (b"members", b"members_removed")}
                if b"key" in buckets:
                    buckets[b"key"] = _checked_keys(buckets[b"key"], counter)
                meta = dict(db.items(b"meta")) if b"meta" in names else {}
                meta[b"consistent_index"] = _U64.pack(len(members))
                buckets[b"meta"] = iter(sorted(meta.items()))
                # etcd's member records, of the new cluster (etcd_db writes them as etcd does)
                buckets[b"members"] = etcd_db._cluster_buckets(registry)[b"members"]
                buckets[b"members_removed"] = []
                snap_dir.mkdir(parents=True)
                size = bbolt.write_db(snap_dir / "db", buckets)
            except dbfile.BAD_DB as exc:
                raise AdminError(f"snapshot file integrity check failed: {exc}") from None
        index = len(members)
        (snap_dir / f"{1:016x}-{index:016x}.snap").write_bytes(
            snap_file(sorted(members), index, 1))
        for path in (snap_dir / "db", *snap_dir.glob("*.snap")):
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        fsync_dir(snap_dir)
        fsync_dir(snap_dir.parent)
        os.replace(tmp, data_dir)
        fsync_dir(data_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Restored(data_dir, own_id, registry.cluster_id, counter[0], size)

