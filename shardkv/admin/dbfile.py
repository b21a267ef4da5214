"""Reading a snapshot file (etcd's bbolt backend + a sha256 trailer, what `snapshot save`
writes, whether from shardkv or from etcd) as `etcdctl snapshot status` reads it."""
from __future__ import annotations

import hashlib
import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shardkv.admin.client import AdminError
from shardkv.mvcc import bbolt

SHA_SIZE = 32
# What a damaged or hostile bbolt file makes the reader raise (a page cycle: RecursionError).
BAD_DB = (bbolt.BoltFormatError, ValueError, IndexError, KeyError, RecursionError, struct.error)


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


class Crc32c:
    """CRC-32C (Castagnoli), Go's crc32.New(crc32.MakeTable(crc32.Castagnoli)). Pure Python
    (no dependency beyond the project's): a few MB/s."""

    def __init__(self, crc: int = 0) -> None:
        self._crc = crc ^ 0xFFFFFFFF

    def update(self, data: bytes) -> None:
        crc, table = self._crc, _CRC32C
        for b in data:
            crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
        self._crc = crc

    def value(self) -> int:
        return self._crc ^ 0xFFFFFFFF


def crc32c(data: bytes) -> int:
    h = Crc32c()
    h.update(data)
    return h.value()


def has_checksum(size: int) -> bool:
    """etcd's hasChecksum: a bbolt file is whole pages (512-byte multiples); a snapshot adds a
    32-byte sha256."""
    return size % 512 == SHA_SIZE


@contextmanager
def mapped(path: Path | str) -> Iterator[mmap.mmap]:
    """The file, mapped read-only (a multi-GB snapshot is never read into memory whole)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise AdminError(f"stat {path}: no such file or directory") from None
    except OSError as exc:
        raise AdminError(f"open {path}: {exc.strerror.lower()}") from None
    try:
        if os.fstat(fd).st_size == 0:
            raise AdminError("invalid database")
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
            yield mm
    finally:
        os.close(fd)


def check_sha256(mm: mmap.mmap) -> None:
    """The trailer equals the sha256 of what precedes it (etcd's restore check, its error)."""
    body = len(mm) - SHA_SIZE
    h = hashlib.sha256()
    step = 16 << 20
    with memoryview(mm) as view:
        for off in range(0, body, step):
            h.update(view[off:min(body, off + step)])
    want, got = mm[body:], h.digest()
    if want != got:
        raise AdminError(f"expected sha256 [{' '.join(map(str, want))}], "
                         f"got [{' '.join(map(str, got))}]")


def open_db(mm: mmap.mmap) -> bbolt.DB:
    try:
        return bbolt.DB(mm)
    except BAD_DB as exc:
        raise AdminError(f"invalid database ({exc})") from None


@dataclass
class DbStatus:
    """etcd's snapshot.Status."""

    hash: int
    revision: int
    total_key: int
    total_size: int

    def as_json(self) -> dict:
        return {"hash": self.hash, "revision": self.revision, "totalKey": self.total_key,
                "totalSize": self.total_size}


def status(path: Path | str) -> DbStatus:
    """etcd's v3Manager.Status: a CRC-32C over every bucket's name and key/value pairs (in
    bucket order), the revision of the last key in bucket ``key``, the number of pairs and the
    database size (the file without its sha256 trailer: what bbolt's tx.Size() is for a file
    that Maintenance.Snapshot streamed)."""
    with mapped(path) as mm:
        db = open_db(mm)
        h = Crc32c()
        revision = total = 0
        try:
            for name in db.buckets():
                h.update(name)
                for k, v in db.items(name):
                    h.update(k)
                    h.update(v)
                    if name == b"key":
                        if len(k) < 17:
                            raise AdminError(f"invalid revision key {k!r} in bucket key")
                        revision = int.from_bytes(k[:8], "big", signed=True)
                    total += 1
        except BAD_DB as exc:
            raise AdminError(f"snapshot file integrity check failed: {exc}") from None
        size = len(mm) - SHA_SIZE if has_checksum(len(mm)) else len(mm)
    return DbStatus(h.value(), revision, total, size)
