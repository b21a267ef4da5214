"""Import an etcd data directory written by `etcdctl snapshot restore` into a fresh Store.

After `etcdctl snapshot restore backup.db --data-dir DIR`, DIR/member/snap/db is etcd's bbolt
backend (the backup, with its member buckets rewritten) and DIR/member/wal holds a WAL that only
bootstraps the new cluster's members. etcd started on DIR serves exactly the backup's keyspace:
every retained revision of every key, the same versions and create/mod revisions, the same
current and compacted revision, the same leases (with their granted TTL, timers restarted), as
a new cluster formed from its flags.

``import_restored(member_dir, store_dir)`` does the same for shardkv: it decodes the bbolt file
(``etcd_db.read_etcd_db``) and writes the keyspace, index, leases and revisions into a new Store
whose applied index is 0 (a new Raft group starts from its own first entry), then moves etcd's
``snap``/``wal`` directories aside into ``member/etcd-restored/`` so the data dir is ours.
A data dir etcd itself ran on is refused (``EtcdDataDirError``): its WAL may hold committed
entries past the backend, which only etcd can replay; snapshot save + restore migrates it.
"""
from __future__ import annotations

import logging
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import msgspec

from shardkv.mvcc import etcd_db, index
from shardkv.mvcc.kv import KeyValue
from shardkv.mvcc.revision import rev_to_bytes
from shardkv.mvcc.store import INITIAL_MAP_SIZE, Store, fsync_dir

log = logging.getLogger("shardkv.mvcc.etcd_import")

_I64 = struct.Struct(">q")
_LEASE_ID = struct.Struct(">q")  # etcd: int64 IDs, two's-complement bytes
_encode = msgspec.msgpack.Encoder().encode


class EtcdDataDirError(OSError):
    """The data dir holds an etcd backend that `etcdctl snapshot restore` did not write."""


@dataclass
class Imported:
    revision: int  # the store's current revision after the import
    compact_revision: int  # 0 when the backup was never compacted
    keys: int  # live keys
    revisions: int  # key-bucket records imported (puts and tombstones)
    leases: int
    source_consistent_index: int


def restored_etcd_db(member_dir: Path | str, store_dir: Path | str) -> Path | None:
    """The etcd backend file to import, if ``member_dir`` is an etcd data dir's ``member``
    written by `etcdctl snapshot restore` (or by etcd) and the store has no state yet."""
    member_dir, store_dir = Path(member_dir), Path(store_dir)
    db = member_dir / "snap" / "db"
    if not db.is_file() or (Path(store_dir) / "data.mdb").exists():
        return None
    if (member_dir / "identity").exists():
        return None
    return db


def written_by_restore(member_dir: Path | str, src: etcd_db.EtcdDb) -> bool:
    """`etcdctl snapshot restore` leaves a Raft snapshot file whose index is the backend's
    consistent index (the number of members it bootstrapped) and a WAL with nothing past it.
    A data dir etcd itself ran on has no such snapshot file (or an older one): its WAL may hold
    committed entries the backend has not applied yet, which only etcd can replay."""
    for snap in (Path(member_dir) / "snap").glob("*.snap"):
        try:
            index = int(snap.stem.split("-")[1], 16)
        except (IndexError, ValueError):
            continue
        if index == src.consistent_index:
            return True
    return False


def import_etcd_db(db_path: Path | str, store_dir: Path | str,
                   src: etcd_db.EtcdDb | None = None) -> Imported:
    """Write the keyspace of etcd backend file ``db_path`` into a new Store at ``store_dir``."""
    src = src or etcd_db.read_etcd_db(db_path)
    size = Path(db_path).stat().st_size
    store = Store(store_dir, map_size=max(INITIAL_MAP_SIZE, 8 * size + (64 << 20)))
    try:
        env, dbs = store._env, store._dbs  # same package: write the LMDB layout directly
        histories: dict[bytes, list[list[int]]] = {}
        max_rev = 0
        with env.begin(write=True) as txn:
            for main, sub, tombstone, pkv in sorted(src.revisions, key=lambda r: (r[0], r[1])):
                max_rev = max(max_rev, main)
                key = bytes(pkv.key)
                if tombstone:
                    kv = KeyValue(key=key, mod_revision=main)
                    entry = [main, sub, 0, 0, 0]
                else:
                    kv = KeyValue(key=key, create_revision=pkv.create_revision, mod_revision=main,
                                  version=pkv.version, value=bytes(pkv.value), lease=pkv.lease)
                    entry = [main, sub, pkv.create_revision, pkv.version, pkv.lease]
                txn.put(rev_to_bytes(main, sub, tombstone), _encode(kv), db=dbs.key)
                histories.setdefault(key, []).append(entry)
            live = 0
            for key, entries in histories.items():
                for entry in entries:
                    index.append(txn, dbs, key, entry)
                last = entries[-1]
                if last[index.VERSION] > 0:
                    live += 1
                    if last[index.LEASE] and last[index.LEASE] in src.leases:
                        txn.put(_LEASE_ID.pack(last[index.LEASE]) + key, b"", db=dbs.lease_keys)
            for lease_id, ttl in src.leases.items():
                txn.put(_LEASE_ID.pack(lease_id), _encode(ttl), db=dbs.lease)
            # etcd's restore: currentRev is the newest revision in the key bucket, raised to
            # the compacted revision; an empty backend is at revision 1.
            current = max(max_rev, src.compact_revision, 1)
            txn.put(b"current_rev", _I64.pack(current), db=dbs.meta)
            if src.compact_revision > 0:
                txn.put(b"compact_rev", _I64.pack(src.compact_revision), db=dbs.meta)
            txn.put(b"consistent_index", _I64.pack(0), db=dbs.meta)
        store.sync()
    finally:
        store.close()
    return Imported(current, src.compact_revision, live, len(src.revisions), len(src.leases),
                    src.consistent_index)


def import_restored(member_dir: Path | str, store_dir: Path | str) -> Imported | None:
    """If ``member_dir`` holds a restored etcd backend and no shardkv state: import it into
    ``store_dir`` and move etcd's snap/wal directories aside. Returns what was imported.

    Crash-safe in this order: the store is built beside ``store_dir`` and renamed into place,
    and only then are etcd's files moved aside (a start that finds both finishes the move)."""
    member_dir, store_dir = Path(member_dir), Path(store_dir)
    if (member_dir / "snap" / "db").is_file() and (store_dir / "data.mdb").exists() \
            and not (member_dir / "identity").exists():
        _move_etcd_files_aside(member_dir)  # a previous import stopped right before this
        return None
    db = restored_etcd_db(member_dir, store_dir)
    if db is None:
        return None
    src = etcd_db.read_etcd_db(db)
    if not written_by_restore(member_dir, src):
        raise EtcdDataDirError(
            f"{member_dir.parent} is the data dir of a member etcd ran (its WAL may hold entries "
            f"past the backend's consistent index {src.consistent_index}); shardkv imports etcd "
            "data dirs written by `etcdctl snapshot restore`: take `etcdctl snapshot save` from "
            "the etcd member and restore that")
    tmp = Path(str(store_dir) + ".importing")
    shutil.rmtree(tmp, ignore_errors=True)
    info = import_etcd_db(db, tmp, src)
    shutil.rmtree(store_dir, ignore_errors=True)  # no data.mdb in it (checked above)
    os.replace(tmp, store_dir)
    fsync_dir(store_dir.parent)
    _move_etcd_files_aside(member_dir)
    log.info("imported etcd backend %s: revision %d, compacted at %d, %d keys (%d revisions), "
             "%d leases", db, info.revision, info.compact_revision, info.keys, info.revisions,
             info.leases)
    return info


def _move_etcd_files_aside(member_dir: Path) -> None:
    aside = member_dir / "etcd-restored"
    aside.mkdir(exist_ok=True)
    for name in ("snap", "wal"):
        if (member_dir / name).exists():
            shutil.rmtree(aside / name, ignore_errors=True)
            os.replace(member_dir / name, aside / name)
    fsync_dir(member_dir)
