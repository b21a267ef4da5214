"""Child process for the crash tests: writes under load, announcing each write before it starts
("BEGIN ...") and after it is acknowledged ("ACK"), until the parent SIGKILLs it.

Usage: python mvcc_crash_child.py {raftlog|raftlog-small|store} PATH SEED
"""
from __future__ import annotations

import random
import sys

from shardkv.mvcc.kv import DeleteRangeRequest, PutRequest
from shardkv.mvcc.raftlog import RaftLog
from shardkv.mvcc.store import Store
from shardkv.raft.types import Entry, HardState, Snapshot, SnapshotMeta

DELETE_EVERY = 7  # entry i (i % 7 == 0) deletes the key written by entry i - 3


def entry_data(index: int, term: int) -> bytes:
    return b"%d:%d;" % (index, term) * (1 + (index * 7 + term) % 50)


def store_key(index: int) -> bytes:
    return b"k%08d" % index


def store_request(index: int) -> object:
    if index % DELETE_EVERY == 0:
        return DeleteRangeRequest(key=store_key(index - 3))
    return PutRequest(key=store_key(index), value=entry_data(index, 0))


def say(line: str) -> None:
    print(line, flush=True)


def run_raftlog(path: str, rng: random.Random, segment_bytes: int = 64 * 1024**2) -> None:
    log = RaftLog(path, segment_bytes=segment_bytes)
    state = log.load()
    snap = state.snapshot.meta.index
    terms = {e.index: e.term for e in state.entries}
    last = max(terms, default=snap)
    term = max(state.hard_state.term, 1)
    while True:
        if rng.random() < 0.1 and last - snap > 20:
            snap = last - 10
            say(f"BEGIN SNAP {snap} {terms[snap]}")
            log.set_snapshot(Snapshot(SnapshotMeta(index=snap, term=terms[snap])))
            log.compact(snap - 5)
            say("ACK")
            continue
        first = last + 1
        if rng.random() < 0.2 and last - snap > 5:
            first = last - rng.randint(0, 4)  # a new leader overwrites a suffix
            term += 1
        n = rng.randint(1, 300)
        entries = [Entry(term, i, data=entry_data(i, term)) for i in range(first, first + n)]
        last = first + n - 1
        terms.update((i, term) for i in range(first, last + 1))
        say(f"BEGIN SAVE {first} {last} {term}")
        log.save(HardState(term=term, vote=1, commit=last), entries)
        say("ACK")


def run_store(path: str, rng: random.Random) -> None:
    store = Store(path)
    index = store.consistent_index
    while True:
        n = rng.randint(1, 200)
        batch = [(i, store_request(i)) for i in range(index + 1, index + n + 1)]
        index += n
        say(f"BEGIN {index}")
        store.apply(batch)
        say("ACK")


if __name__ == "__main__":
    kind, path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    runs = {"raftlog": run_raftlog, "store": run_store,
            # segments of 64 KiB: saves roll over and compactions delete segments all the time
            "raftlog-small": lambda p, r: run_raftlog(p, r, segment_bytes=64 * 1024)}
    runs[kind](path, random.Random(seed))
