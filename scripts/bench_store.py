#!/usr/bin/env python3
"""Storage-engine throughput next to this disk's raw fdatasync rate, measured in the same run.

    python scripts/bench_store.py [--dir DIR] [--scale 1.0]

Rows: durable Store.apply commits at 1, 100 and 1000 puts per batch (each batch is one LMDB
write transaction with its syncs), single-key and 100-key ranges, and RaftLog.save at 1 and
100 entries per save. "x fdatasync" is commits per second divided by raw fdatasyncs per second:
near 0.5 means a commit costs about two syncs (LMDB syncs data pages, then the meta page);
``durable=False`` skips the meta-page sync.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from shardkv.mvcc.kv import PutRequest, RangeRequest
from shardkv.mvcc.raftlog import RaftLog
from shardkv.mvcc.store import Store
from shardkv.raft.types import Entry, HardState


def fdatasync_rate(directory: Path, count: int) -> float:
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = time.perf_counter()
        for i in range(count):
            os.pwrite(fd, b"%08d" % i, 0)
            os.fdatasync(fd)
        return count / (time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()


def timed(n_ops: int, body: Callable[[], None]) -> float:
    start = time.perf_counter()
    body()
    return n_ops / (time.perf_counter() - start)


def bench_puts(store: Store, batch: int, commits: int, value: bytes) -> tuple[float, float]:
    def run() -> None:
        for _ in range(commits):
            first = store.consistent_index + 1
            store.apply([(first + i, PutRequest(key=b"key%08d" % random.randrange(100_000),
                                                value=value)) for i in range(batch)])
    commit_rate = timed(commits, run)
    return commit_rate * batch, commit_rate


def bench_ranges(store: Store, count: int, width: int) -> float:
    def run() -> None:
        for _ in range(count):
            start = random.randrange(100_000 - width)
            store.range(RangeRequest(key=b"key%08d" % start, range_end=b"key%08d" % (start + width)))
    return timed(count, run)


def bench_raftlog(log: RaftLog, per_save: int, saves: int, value: bytes) -> float:
    def run() -> None:
        index = log.last_index()
        for _ in range(saves):
            entries = [Entry(1, index + i + 1, data=value) for i in range(per_save)]
            index += per_save
            log.save(HardState(term=1, vote=1, commit=index), entries)
    return timed(saves, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="directory on the disk to measure (default: a temp dir)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply operation counts")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    try:
        run(base, args.scale)
    finally:
        shutil.rmtree(base)


def run(base: Path, scale: float) -> None:
    n = lambda k: max(1, int(k * scale))
    value = b"v" * 256
    random.seed(1)

    sync_rate = fdatasync_rate(base, n(300))
    rows: list[tuple[str, float, float | None]] = [("raw write+fdatasync", sync_rate, sync_rate)]
    with Store(base / "store") as store:
        for batch, commits in ((1, n(300)), (100, n(100)), (1000, n(20))):
            puts, commit_rate = bench_puts(store, batch, commits, value)
            rows.append((f"put, batch {batch} (puts/s)", puts, commit_rate))
        with Store(base / "lazy", durable=False) as lazy:
            puts, commit_rate = bench_puts(lazy, 1, n(300), value)
            rows.append(("put, batch 1, durable=False (puts/s)", puts, commit_rate))
        rows.append(("range 1 key (ranges/s)", bench_ranges(store, n(20_000), 1), None))
        rows.append(("range 100 keys (ranges/s)", bench_ranges(store, n(1000), 100), None))
    with RaftLog(base / "raftlog") as log:
        for per_save, saves in ((1, n(300)), (100, n(100))):
            rate = bench_raftlog(log, per_save, saves, value)
            rows.append((f"raft log save, {per_save} entries (saves/s)", rate, rate))

    print(f"directory: {base}")
    print(f"{'operation':<40} {'ops/s':>12} {'commits/s':>10} {'x fdatasync':>12}")
    for name, ops, commits in rows:
        commit_col = f"{commits:10.0f}" if commits is not None else f"{'-':>10}"
        ratio_col = f"{commits / sync_rate:12.2f}" if commits is not None else f"{'-':>12}"
        print(f"{name:<40} {ops:12.0f} {commit_col} {ratio_col}")


if __name__ == "__main__":
    main()
