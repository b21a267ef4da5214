"""`snapshot restore`: a new member's data dir from a snapshot file, laid out as `etcdctl
snapshot restore` lays it out, so that shardkv-node started on it with the same cluster flags
imports the snapshot's keyspace (``shardkv.mvcc.etcd_import.import_restored``, the path that
already takes data dirs restored by etcdctl).

What etcdctl writes, and what is written here:
- ``member/snap/db``: the backup's bbolt file without its sha256 trailer, with the backend's
  ``consistent_index`` set to the number of members (the Raft entries that bootstrap the new
  cluster);
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
from shardkv.node.membership import cluster_id, member_id
from shardkv.protowire import varint

_U64 = struct.Struct(">Q")
COPY_CHUNK = 16 << 20


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




def _field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def snap_file(voters: list[int], index: int, term: int) -> bytes:
    """etcd's snap file: snappb.Snapshot{crc: CRC-32C of data, data: raftpb.Snapshot{metadata:
    {conf_state: {voters, auto_leave: false}, index, term}}} (no v2 store data)."""
    conf = b"".join(b"\x08" + varint(v) for v in voters) + b"\x28\x00"
    meta = _field(1, conf) + b"\x10" + varint(index) + b"\x18" + varint(term)
    data = _field(2, meta)
    return b"\x08" + varint(dbfile.crc32c(data)) + _field(2, data)


def _check_keys(items: Iterator[tuple[bytes, bytes]]) -> int:
    """Bucket ``key``: every record must be a revision and a KeyValue (the member decodes them
    at its first start; a bad one is refused here, before any dir exists). Returns how many."""
    n = 0
    for k, v in items:
        if len(k) not in (17, 18) or k[8:9] != b"_" or (len(k) == 18 and k[17:] != b"t"):
            raise AdminError(f"snapshot: bucket key holds a record that is not a revision: {k!r}")
        try:
            kv_pb2.KeyValue().ParseFromString(v)
        except Exception:  # protobuf's DecodeError and friends: a damaged record
            raise AdminError(f"snapshot: revision {etcd_db.parse_etcd_revision(k)[:2]} does "
                             "not decode as a KeyValue") from None
        n += 1
    return n


def _consistent_index_at(mm, db: bbolt.DB) -> int:
    """The file offset of the 8-byte value of ``consistent_index`` in bucket ``meta``: the
    root leaf lists the buckets; meta is a few keys, on one leaf page (inline in the root page,
    or a page of its own)."""
    def leaf(off: int) -> Iterator[tuple[bytes, int, int, int]]:
        _, flags, count, _ = bbolt.PAGE_HEADER.unpack_from(mm, off)
        if not flags & bbolt.LEAF:
            raise bbolt.BoltFormatError(f"page at {off}: not a leaf page")
        base = off + bbolt.PAGE_HEADER.size
        for i in range(count):
            elem = base + i * bbolt.LEAF_ELEMENT.size
            eflags, pos, ksize, vsize = bbolt.LEAF_ELEMENT.unpack_from(mm, elem)
            start = elem + pos
            yield mm[start:start + ksize], eflags, start + ksize, vsize

    for key, eflags, value_at, _ in leaf(db.root * db.page_size):
        if key == b"meta" and eflags & bbolt.BUCKET_LEAF_FLAG:
            root, _ = bbolt.BUCKET_HEADER.unpack_from(mm, value_at)
            page = value_at + bbolt.BUCKET_HEADER.size if root == 0 else root * db.page_size
            for k, _, at, size in leaf(page):
                if k == b"consistent_index" and size == 8 and at + 8 <= len(mm):
                    return at
    raise AdminError("snapshot: bucket meta holds no consistent_index (not an etcd backend)")


def restore(snapshot: Path | str, data_dir: Path | str, name: str, initial_cluster: str,
            token: str, peer_urls: str, skip_hash_check: bool = False) -> Restored:
    """The backup is copied as it is (streamed: memory stays small whatever its size) but for
    its consistent index, set in place. Its member buckets stay as they are, as etcd 3.4's
    restore leaves them (what it deletes goes to the keyspace): neither etcd 3.4 nor
    shardkv-node reads members from there; both take the new cluster from their flags."""
    cluster = parse_initial_cluster(initial_cluster)
    mine = parse_urls(peer_urls.split(","))
    verify_bootstrap(name, mine, cluster)
    data_dir = Path(data_dir)
    if data_dir.exists():
        raise AdminError(f'data-dir "{data_dir}" exists')
    ids = sorted(member_id(urls, token) for urls in cluster.values())
    index = len(ids)  # the Raft entries that bootstrap the new cluster: one per member

    # Built beside the target and renamed into place: a data dir exists only when complete.
    tmp = data_dir.with_name(data_dir.name + ".restoring")
    shutil.rmtree(tmp, ignore_errors=True)
    snap_dir = tmp / "member" / "snap"
    try:
        with dbfile.mapped(snapshot) as mm:
            size = len(mm)
            if dbfile.has_checksum(size):
                size -= dbfile.SHA_SIZE
                if not skip_hash_check:
                    dbfile.check_sha256(mm)
            elif not skip_hash_check:
                raise AdminError("snapshot missing hash but --skip-hash-check=false")
            db = dbfile.open_db(mm)
            try:
                revisions = _check_keys(db.items(b"key")) if b"key" in db.buckets() else 0
                ci_at = _consistent_index_at(mm, db)
            except dbfile.BAD_DB as exc:
                raise AdminError(f"snapshot file integrity check failed: {exc}") from None
            snap_dir.mkdir(parents=True)
            with open(snap_dir / "db", "wb") as f, memoryview(mm) as view:
                for off in range(0, size, COPY_CHUNK):
                    f.write(view[off:min(size, off + COPY_CHUNK)])
                f.seek(ci_at)
                f.write(_U64.pack(index))
                f.flush()
                os.fsync(f.fileno())
        with open(snap_dir / f"{1:016x}-{index:016x}.snap", "wb") as f:
            f.write(snap_file(ids, index, 1))
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(snap_dir)
        fsync_dir(snap_dir.parent)
        os.replace(tmp, data_dir)
        fsync_dir(data_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Restored(data_dir, member_id(cluster[name], token), cluster_id(ids), revisions, size)
