"""Feeding requests to a Store as the member does: consecutive Raft entries in one batch."""
from __future__ import annotations

from shardkv.mvcc.store import Store


class Applier:
    """Feeds requests to a store as consecutive Raft entries, in one batch."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.index = store.consistent_index

    def __call__(self, *requests: object) -> list[object]:
        batch = []
        for req in requests:
            self.index += 1
            batch.append((self.index, req))
        return self.store.apply(batch).results
