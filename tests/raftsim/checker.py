"""Raft's safety properties, checked by the simulator after every step.

Each check records what the cluster has ever shown (leaders per term, entries per (index, term),
what was applied at each index) and raises ``Violation`` the moment a node contradicts it.
"""
from __future__ import annotations

from shardkv.raft import Entry, RawNode, Snapshot


class Violation(AssertionError):
    pass


class SafetyChecker:
    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}  # term -> leader id
        self.log_entries: dict[tuple[int, int], tuple[int, bytes, int | None]] = {}
        self.applied: dict[int, tuple[int, int, bytes]] = {}  # index -> (term, type, data)
        self.max_applied = 0
        self.acked_writes: dict[bytes, int] = {}  # write id -> index where it took effect
        self.max_acked_index = 0
        self.reads_checked = 0

    # election safety: at most one leader per term
    def on_leader(self, node: RawNode) -> None:
        term = node.raft.term
        prev = self.leaders.setdefault(term, node.id)
        if prev != node.id:
            raise Violation(f"election safety: nodes {prev} and {node.id} both lead term {term}")
        self._check_leader_completeness(node)

    # leader completeness: a leader's log holds every entry committed before its election
    def _check_leader_completeness(self, node: RawNode) -> None:
        log = node.raft.log
        for index, (term, _, _) in self.applied.items():
            if index <= log.offset:
                continue  # covered by its snapshot (whose contents are checked on install)
            got = log.term(index)
            if got != term:
                raise Violation(
                    f"leader completeness: leader {node.id} of term {node.raft.term} has term {got} "
                    f"at index {index}, committed with term {term}"
                )

    # log matching: entries with the same (index, term) agree, and so do their predecessors
    def on_persist(self, node_id: int, entries: list[Entry], prev_term: int | None) -> None:
        for e in entries:
            key = (e.index, e.term)
            seen = self.log_entries.setdefault(key, (e.type, e.data, prev_term))
            if seen[:2] != (e.type, e.data):
                raise Violation(f"log matching: node {node_id} has a different entry at {key}")
            if prev_term is not None and seen[2] is not None and seen[2] != prev_term:
                raise Violation(
                    f"log matching: node {node_id} has term {prev_term} before {key}, another has {seen[2]}"
                )
            prev_term = e.term

    # state machine safety: no two nodes apply different entries at one index
    def on_apply(self, node_id: int, e: Entry) -> None:
        seen = self.applied.setdefault(e.index, (e.term, e.type, e.data))
        if seen != (e.term, e.type, e.data):
            raise Violation(
                f"state machine safety: node {node_id} applied {(e.term, e.data)!r} at index {e.index}, "
                f"another applied {(seen[0], seen[2])!r}"
            )
        self.max_applied = max(self.max_applied, e.index)

    def on_snapshot(self, node_id: int, snap: Snapshot, digest_at: dict[int, int], digest: int) -> None:
        index = snap.meta.index
        if index in digest_at and digest_at[index] != digest:
            raise Violation(f"state machine safety: node {node_id} installed a snapshot at {index} that differs")
        if index > self.max_applied:
            raise Violation(f"node {node_id} installed a snapshot at {index}, beyond anything applied")

    def on_write_acked(self, write_id: bytes, index: int) -> None:
        self.acked_writes[write_id] = index
        self.max_acked_index = max(self.max_acked_index, index)

    # linearizable reads: a read sees every write acknowledged before it started
    def on_read(self, node_id: int, read_index: int, acked_before: int, ctx: bytes) -> None:
        self.reads_checked += 1
        if read_index < acked_before:
            raise Violation(
                f"stale read: read {ctx!r} on node {node_id} got read index {read_index}, but a write "
                f"acknowledged before it started took effect at index {acked_before}"
            )
