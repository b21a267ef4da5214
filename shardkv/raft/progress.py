"""The leader's view of each follower's replication (etcd's tracker.Progress and Inflights)."""
from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.IntEnum):
    PROBE = 0  # one append at a time until we find where the follower's log matches
    REPLICATE = 1  # pipelined appends, bounded by the in-flight window
    SNAPSHOT = 2  # a snapshot is on its way; send nothing until it is acknowledged


class Inflights:
    """A window of append messages sent but not acknowledged: at most ``max_count`` messages
    and ``max_bytes`` bytes (0 = unbounded), so a slow follower cannot take unbounded memory."""

    def __init__(self, max_count: int, max_bytes: int = 0) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._items: deque[tuple[int, int]] = deque()  # (last index, bytes)
        self.bytes = 0

    def add(self, last_index: int, size: int) -> None:
        self._items.append((last_index, size))
        self.bytes += size

    def free_le(self, index: int) -> None:
        while self._items and self._items[0][0] <= index:
            self.bytes -= self._items.popleft()[1]

    def free_first_one(self) -> None:
        if self._items:
            self.bytes -= self._items.popleft()[1]

    def full(self) -> bool:
        return len(self._items) >= self.max_count or (0 < self.max_bytes <= self.bytes)

    def reset(self) -> None:
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)


class Progress:
    def __init__(self, next_index: int, max_inflight: int, max_inflight_bytes: int = 0) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False  # in PROBE: an append is outstanding, wait for its answer
        self.pending_snapshot = 0  # in SNAPSHOT: index of the snapshot sent
        self.recent_active = False  # heard from since the last check-quorum round
        self.lazy = False  # the follower's last answer asked for no prompt commit notices
        self.sent_commit = 0  # highest commit index sent that the follower can act on
        self.inflights = Inflights(max_inflight, max_inflight_bytes)

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, index: int) -> bool:
        """An append up to ``index`` was accepted. Returns whether ``match`` moved."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """An append at ``rejected`` was refused; the follower hints its log may match up to
        ``match_hint``. Returns False for a stale rejection (nothing to do)."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True
