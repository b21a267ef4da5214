"""RawNode: the host's handle on the Raft state machine (etcd-io/raft's RawNode model).

Loop: feed ``tick()``/``step()``/``propose()``/...; while ``has_ready()``: take ``ready()``,
persist its hard state, entries and snapshot in one synced write, send its messages, apply its
snapshot and committed entries, then ``advance(ready)``.
"""
from __future__ import annotations

from .raft import Config, Raft
from .types import (
    NONE,
    ConfChange,
    EntryType,
    HardState,
    Message,
    PersistedState,
    Ready,
    Snapshot,
    SoftState,
    StateRole,
    encode,
)


class RawNode:
    def __init__(self, config: Config, persisted: PersistedState | None = None) -> None:
        self.raft = Raft(config, persisted)
        self._prev_hard = persisted.hard_state if persisted else HardState()  # what the disk has
        self._prev_soft = self.soft_state()

    # ---- inputs ------------------------------------------------------------------------------
    def tick(self) -> None:
        self.raft.tick()

    def step(self, m: Message) -> None:
        self.raft.step(m)

    def propose(self, data: bytes) -> None:
        """Append ``data`` to the log (on a follower: forward it to the leader). Raises
        ProposalDropped if that is impossible right now."""
        self.raft.propose([data])

    def propose_batch(self, datas: list[bytes]) -> None:
        """Many proposals in one append: one broadcast, one persisted write."""
        if datas:
            self.raft.propose(datas)

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Add/remove a voter or learner, or promote a learner (ADD_NODE). Leader only; one
        change at a time. Raises ProposalDropped if not possible now."""
        self.raft.propose([encode(cc)], EntryType.CONF_CHANGE)

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read point; a ReadState with ``ctx`` comes back in a Ready.
        ``ctx`` must be unique among pending reads."""
        self.raft.read_index(ctx)

    def transfer_leader(self, target: int) -> None:
        self.raft.transfer_leader(target)

    def set_lazy(self, lazy: bool) -> None:
        """Whether this member may learn new commits late (nobody here waits on its state
        machine): its answers tell the leader, which then skips it in commit broadcasts."""
        self.raft.lazy = lazy

    @property
    def commit_notices_owed(self) -> bool:
        """Leader: a commit broadcast skipped a lazy follower; call flush_commit_notices()
        after a short while (appends sent meanwhile may have told it already)."""
        return self.raft.commit_notices_owed

    def flush_commit_notices(self) -> None:
        self.raft.flush_commit_notices()

    def campaign(self) -> None:
        self.raft.campaign()

    def report_unreachable(self, node: int) -> None:
        self.raft.report_unreachable(node)

    def report_snapshot(self, node: int, ok: bool) -> None:
        self.raft.report_snapshot(node, ok)

    def compact(self, index: int, data: bytes) -> Snapshot:
        """Replace the log up to ``index`` (applied) by a snapshot holding ``data``. The host
        persists the returned snapshot and may then drop those entries from its disk."""
        return self.raft.compact(index, data)

    # ---- state -------------------------------------------------------------------------------
    def soft_state(self) -> SoftState:
        return SoftState(self.raft.lead, self.raft.role)

    @property
    def id(self) -> int:
        return self.raft.id

    @property
    def is_leader(self) -> bool:
        return self.raft.role == StateRole.LEADER

    @property
    def leader(self) -> int:
        return self.raft.lead

    # ---- Ready / advance ------------------------------------------------------------------
    def has_ready(self) -> bool:
        r = self.raft
        log = r.log
        return bool(
            r.msgs
            or r.need_bcast
            or r.read_states
            or log.pending_snapshot is not None
            or log.stable < log.last_index()
            or (log.pending_snapshot is None and log.applying < log.committed)
            or self._state_changed()
        )

    def _state_changed(self) -> bool:
        # compared field by field: this runs after every input, building Structs would cost
        r, hard, soft = self.raft, self._prev_hard, self._prev_soft
        return (
            r.term != hard.term
            or r.vote != hard.vote
            or r.log.committed != hard.commit
            or r.lead != soft.lead
            or r.role != soft.role
        )

    def ready(self) -> Ready:
        r = self.raft
        r.flush_appends()
        log = r.log
        rd = Ready(
            entries=log.unstable_entries(),
            snapshot=log.pending_snapshot,
            committed_entries=log.next_committed(),
            messages=r.msgs,
            read_states=r.read_states,
        )
        r.msgs = []
        r.read_states = []
        soft = self.soft_state()
        if soft != self._prev_soft:
            rd.soft_state = soft
            self._prev_soft = soft
        hard = r.hard_state()
        if hard != self._prev_hard:
            rd.hard_state = hard
            self._prev_hard = hard
        if rd.committed_entries:
            log.applying = rd.committed_entries[-1].index
        return rd

    def advance(self, rd: Ready) -> None:
        """The host has persisted and applied ``rd``."""
        r = self.raft
        log = r.log
        if rd.snapshot is not None and log.pending_snapshot is rd.snapshot:
            log.pending_snapshot = None
            log.applied = log.applying = max(log.applied, rd.snapshot.meta.index)
            log.stable = max(log.stable, rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            log.stable_to(last.index, last.term)
        if rd.committed_entries:
            log.applied = max(log.applied, rd.committed_entries[-1].index)
        if r.role == StateRole.LEADER:
            r.self_persisted(log.stable)

    def persisted_state(self) -> PersistedState:
        """What a restart from a perfect disk would see (for tests)."""
        log = self.raft.log
        return PersistedState(self.raft.hard_state(), log.snapshot, list(log.entries[: log.stable - log.offset]))


__all__ = ["RawNode", "Config", "HardState", "NONE"]
