"""Read and write bbolt database files (the format of etcd's backend, bbolt 1.3 / format 2).

etcd's snapshot stream is its bbolt file plus a sha256 trailer, and `etcdctl snapshot status`
and `etcdctl snapshot restore` open it with bbolt. So shardkv writes its snapshots in that
format (buckets of sorted key/value pairs) and can read etcd's.

The writer lays out a fresh, compact file: two meta pages, an empty freelist page, then for
each bucket a B+tree of leaf pages (packed to one page where possible, overflowing for big
values) under branch pages, and the root bucket's leaf listing the buckets. Every page below
the high-water mark is reachable, so bbolt's consistency check (`tx.Check`) finds nothing.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

PAGE_SIZE = 4096
MAGIC = 0xED0CDAED
VERSION = 2
BRANCH, LEAF, META, FREELIST = 0x01, 0x02, 0x04, 0x10
BUCKET_LEAF_FLAG = 0x01
PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, pgid
BUCKET_HEADER = struct.Struct("<QQ")  # root pgid, sequence
META_BODY = struct.Struct("<IIIIQQQQQ")  # magic, version, page size, flags, root, seq, freelist, pgid, txid
MAX_COUNT = 0xFFFF  # a page header counts elements in 16 bits


def _fnv64a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


class _Writer:
    def __init__(self) -> None:
        self.pages: list[bytes] = []  # page images from page id 3 on, each a multiple of PAGE_SIZE
        self.next_id = 3  # 0, 1: meta; 2: freelist

    def _add(self, flags: int, count: int, body: bytes) -> int:
        page_id = self.next_id
        size = PAGE_HEADER.size + len(body)
        npages = -(-size // PAGE_SIZE)
        header = PAGE_HEADER.pack(page_id, flags, count, npages - 1)
        self.pages.append((header + body).ljust(npages * PAGE_SIZE, b"\0"))
        self.next_id += npages
        return page_id

    def leaf(self, items: list[tuple[bytes, bytes, int]]) -> int:
        """items: (key, value, element flags)."""
        elements, data = [], []
        offset = len(items) * LEAF_ELEMENT.size  # from the first element to the data
        for i, (k, v, flags) in enumerate(items):
            pos = offset - i * LEAF_ELEMENT.size  # relative to this element
            elements.append(LEAF_ELEMENT.pack(flags, pos, len(k), len(v)))
            data.append(k + v)
            offset += len(k) + len(v)
        return self._add(LEAF, len(items), b"".join(elements) + b"".join(data))

    def branch(self, children: list[tuple[bytes, int]]) -> int:
        elements, data = [], []
        offset = len(children) * BRANCH_ELEMENT.size
        for i, (k, pgid) in enumerate(children):
            elements.append(BRANCH_ELEMENT.pack(offset - i * BRANCH_ELEMENT.size, len(k), pgid))
            data.append(k)
            offset += len(k)
        return self._add(BRANCH, len(children), b"".join(elements) + b"".join(data))

    def tree(self, items: Iterable[tuple[bytes, bytes, int]]) -> int:
        """Write sorted items as a B+tree; returns the root page id."""
        level: list[tuple[bytes, int]] = []
        for chunk in _chunks(items, LEAF_ELEMENT.size, lambda it: len(it[0]) + len(it[1])):
            level.append((chunk[0][0], self.leaf(chunk)))
        if not level:
            return self.leaf([])
        while len(level) > 1:
            level = [
                (chunk[0][0], self.branch(chunk))
                for chunk in _chunks(level, BRANCH_ELEMENT.size, lambda it: len(it[0]))
            ]
        return level[0][1]


def _chunks(items, element_size: int, payload) -> Iterator[list]:
    """Group items into pages: as many as fit in one page, at least one, at most MAX_COUNT."""
    chunk: list = []
    size = PAGE_HEADER.size
    for it in items:
        need = element_size + payload(it)
        if chunk and (size + need > PAGE_SIZE or len(chunk) == MAX_COUNT):
            yield chunk
            chunk, size = [], PAGE_HEADER.size
        chunk.append(it)
        size += need
    if chunk:
        yield chunk


def _meta_page(page_id: int, root: int, freelist: int, hwm: int, txid: int) -> bytes:
    body = META_BODY.pack(MAGIC, VERSION, PAGE_SIZE, 0, root, 0, freelist, hwm, txid)
    body += struct.pack("<Q", _fnv64a(body))
    return (PAGE_HEADER.pack(page_id, META, 0, 0) + body).ljust(PAGE_SIZE, b"\0")


def write_db(path: Path | str, buckets: dict[bytes, Iterable[tuple[bytes, bytes]]]) -> int:
    """Write a bbolt file holding ``buckets`` (name -> key/value pairs sorted by key).
    Returns the file size."""
    w = _Writer()
    roots = []
    for name in sorted(buckets):
        root = w.tree((k, v, 0) for k, v in buckets[name])
        roots.append((name, BUCKET_HEADER.pack(root, 0), BUCKET_LEAF_FLAG))
    root_page = w.leaf(roots)
    hwm = w.next_id
    freelist = (PAGE_HEADER.pack(2, FREELIST, 0, 0)).ljust(PAGE_SIZE, b"\0")
    with open(path, "wb") as f:
        f.write(_meta_page(0, root_page, 2, hwm, 0))
        f.write(_meta_page(1, root_page, 2, hwm, 1))
        f.write(freelist)
        for page in w.pages:
            f.write(page)
        return f.tell()


# ---- reading ------------------------------------------------------------------------------
class BoltFormatError(ValueError):
    pass


class DB:
    """A read-only view of a bbolt file's buckets (nested buckets are listed by name only)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        meta = max((self._meta(0), self._meta(1)), key=lambda m: m["txid"] if m else -1)
        if meta is None:
            raise BoltFormatError("not a bbolt database (no valid meta page)")
        self.page_size = meta["page_size"]
        self.root = meta["root"]

    @classmethod
    def open(cls, path: Path | str) -> "DB":
        return cls(Path(path).read_bytes())

    def _meta(self, n: int) -> dict | None:
        # meta pages sit at n * page size; the page size is in the meta itself
        for page_size in (PAGE_SIZE, 1024, 2048, 8192, 16384, 65536):
            off = n * page_size + PAGE_HEADER.size
            if off + META_BODY.size + 8 > len(self.data):
                continue
            body = self.data[off : off + META_BODY.size]
            magic, version, psize, _, root, _, _, hwm, txid = META_BODY.unpack(body)
            (checksum,) = struct.unpack_from("<Q", self.data, off + META_BODY.size)
            if magic == MAGIC and version == VERSION and psize == page_size and checksum == _fnv64a(body):
                return {"page_size": psize, "root": root, "txid": txid, "hwm": hwm}
        return None

    def _page(self, pgid: int) -> tuple[int, int, int]:
        off = pgid * self.page_size
        page_id, flags, count, _ = PAGE_HEADER.unpack_from(self.data, off)
        if page_id != pgid:
            raise BoltFormatError(f"page {pgid} has id {page_id}")
        return off, flags, count

    def _items(self, pgid: int, inline: bytes | None = None) -> Iterator[tuple[bytes, bytes, int]]:
        if inline is not None:
            buf, off = inline, 0
        else:
            buf, off = self.data, self._page(pgid)[0]
        _, flags, count, _ = PAGE_HEADER.unpack_from(buf, off)
        base = off + PAGE_HEADER.size
        if flags & BRANCH:
            for i in range(count):
                _, _, child = BRANCH_ELEMENT.unpack_from(buf, base + i * BRANCH_ELEMENT.size)
                yield from self._items(child)
        elif flags & LEAF:
            for i in range(count):
                elem = base + i * LEAF_ELEMENT.size
                eflags, pos, ksize, vsize = LEAF_ELEMENT.unpack_from(buf, elem)
                k = bytes(buf[elem + pos : elem + pos + ksize])
                v = bytes(buf[elem + pos + ksize : elem + pos + ksize + vsize])
                yield k, v, eflags
        else:
            raise BoltFormatError(f"page {pgid}: not a branch or leaf page")

    def buckets(self) -> list[bytes]:
        return [k for k, _, f in self._items(self.root) if f & BUCKET_LEAF_FLAG]

    def items(self, bucket: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Key/value pairs of a top-level bucket, in key order (values of nested buckets skipped)."""
        for k, v, f in self._items(self.root):
            if k == bucket and f & BUCKET_LEAF_FLAG:
                root, _ = BUCKET_HEADER.unpack_from(v)
                inline = v[BUCKET_HEADER.size :] if root == 0 else None
                for kk, vv, ff in self._items(root, inline):
                    if not ff & BUCKET_LEAF_FLAG:
                        yield kk, vv
                return
        raise KeyError(bucket)
