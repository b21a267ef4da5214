"""The Raft log as one node sees it: a snapshot, then entries, some of them not yet persisted.

The whole log since the last snapshot is kept in memory (as etcd's MemoryStorage does); the host
persists what ``unstable_entries`` returns and reports it back with ``stable_to``.
"""
from __future__ import annotations

from .types import ConfState, Entry, Snapshot, SnapshotMeta


def entries_size(entries: list[Entry] | tuple[Entry, ...]) -> int:
    return sum(len(e.data) + 24 for e in entries)


class RaftLog:
    def __init__(self, snapshot: Snapshot, entries: list[Entry], committed: int) -> None:
        self.snapshot = snapshot  # latest snapshot (the log's base)
        self.offset = snapshot.meta.index  # index of the entry just before entries[0]
        self.entries: list[Entry] = list(entries)
        self.committed = max(committed, self.offset)
        self.applied = self.offset  # highest index the host has applied
        self.applying = self.offset  # highest index handed to the host for applying
        self.stable = self.last_index()  # highest index persisted by the host
        self.pending_snapshot: Snapshot | None = None  # received, not yet persisted

    # ---- queries -------------------------------------------------------------------------
    def first_index(self) -> int:
        return self.offset + 1

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None if compacted away or beyond the end."""
        if index == self.offset:
            return self.snapshot.meta.term
        if index < self.offset or index > self.last_index():
            return None
        return self.entries[index - self.offset - 1].term

    def last_term(self) -> int:
        term = self.term(self.last_index())
        assert term is not None
        return term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Is a log ending at (last_index, last_term) at least as up-to-date as ours (§5.4.1)?"""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi), at least one if any, at most ``max_bytes`` in total otherwise."""
        assert lo > self.offset, "slice of compacted entries"
        out = self.entries[lo - self.offset - 1 : hi - self.offset - 1]
        if max_bytes is None or len(out) <= 1:
            return out
        size = 0
        for i, e in enumerate(out):
            size += len(e.data) + 24
            if size > max_bytes and i > 0:
                return out[:i]
        return out

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term``, with that term: the
        leader and follower use it to skip a whole term of mismatching entries at once."""
        index = min(index, self.last_index())
        while index > self.offset:
            t = self.term(index)
            assert t is not None
            if t <= term:
                return index, t
            index -= 1
        return self.offset, self.snapshot.meta.term

    def unstable_entries(self) -> list[Entry]:
        return self.entries[self.stable - self.offset :]

    def next_committed(self) -> list[Entry]:
        """Committed entries not yet handed to the host for applying."""
        if self.pending_snapshot is not None:
            return []  # the snapshot must be applied first
        lo = max(self.applying, self.offset) + 1
        if lo > self.committed:
            return []
        return self.slice(lo, self.committed + 1)

    # ---- mutations -----------------------------------------------------------------------
    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> int:
        """Append, replacing any existing suffix from ``entries[0].index``."""
        if not entries:
            return self.last_index()
        first = entries[0].index
        assert first > self.committed, "cannot overwrite committed entries"
        if first <= self.last_index():
            del self.entries[first - self.offset - 1 :]
            self.stable = min(self.stable, first - 1)
        assert first == self.last_index() + 1, "log gap"
        self.entries.extend(entries)
        return self.last_index()

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """Index of the first entry that is new or conflicts with ours; 0 if all present."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def maybe_append(
        self, index: int, log_term: int, commit: int, entries: tuple[Entry, ...], truncate: bool = True
    ) -> tuple[int, int] | None:
        """Follower side of AppendEntries: (new last index, first index written or 0), or None
        if our log does not match at (index, log_term).
        ``truncate=False`` plants the "keep a conflicting suffix" bug for the simulator."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.last_index() and not truncate:
                conflict = 0  # planted bug: keep our conflicting entries
            else:
                assert conflict > self.committed, "conflict with committed entry"
                self.append(entries[conflict - index - 1 :])
        self.commit_to(min(commit, last_new, self.last_index()))
        return last_new, conflict

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            assert index <= self.last_index(), "commit beyond the log"
            self.committed = index
            return True
        return False

    def stable_to(self, index: int, term: int) -> None:
        if self.match_term(index, term) and index > self.stable:
            self.stable = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log with ``snapshot`` (a follower too far behind)."""
        self.snapshot = snapshot
        self.offset = snapshot.meta.index
        self.entries = []
        self.committed = self.offset
        self.stable = self.offset
        self.pending_snapshot = snapshot

    def compact(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Cut the log at ``index`` (already applied) into a snapshot carrying ``data``."""
        assert self.offset < index <= self.applied, "compact only applied entries"
        term = self.term(index)
        assert term is not None
        del self.entries[: index - self.offset]
        self.snapshot = Snapshot(SnapshotMeta(index, term, conf_state), data)
        self.offset = index
        return self.snapshot
