"""The Raft consensus state machine: roles, terms, elections, replication, reads, membership.

Pure: no I/O, no clocks, no threads. Time is ``tick()``, input is ``step(message)``, output is
``self.msgs`` plus the log's unstable entries and committed entries, collected by ``RawNode``.

Rules followed (Raft thesis; etcd-io/raft is the model for the engineering):
- pre-vote and check-quorum: a node that cannot reach a quorum neither disrupts nor leads;
- the leader counts only its own *persisted* entries toward commit (``self_persisted``);
- only entries of the leader's current term are committed by counting (§5.4.2);
- membership changes one voter at a time, effective as soon as the entry is in the log, at most
  one uncommitted change, and only after the leader committed an entry of its own term.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .log import RaftLog, entries_size
from .progress import Progress, ProgressState
from .types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType as MT,
    PersistedState,
    ProposalDropped,
    ReadState,
    Snapshot,
    StateRole,
    decode_conf_change,
    encode,
)

# Test-only switches that plant classic Raft bugs, so the simulator can prove it catches them.
BUG_COMMIT_PREVIOUS_TERM = "commit_previous_term"  # commit an old-term entry by counting replicas
BUG_VOTE_WITHOUT_LOG_CHECK = "vote_without_log_check"  # grant votes to out-of-date candidates
BUG_KEEP_CONFLICTING_SUFFIX = "keep_conflicting_suffix"  # follower does not truncate conflicts


@dataclass
class Config:
    id: int
    voters: tuple[int, ...] = ()  # initial cluster, written into a brand-new log (bootstrap)
    learners: tuple[int, ...] = ()
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_size_per_msg: int = 1 << 20
    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 0
    # a leader refuses proposals once this many payload bytes are appended but not committed
    # (0: no limit), so a leader cut off from its quorum cannot grow its log without bound
    max_uncommitted_size: int = 0
    applied: int = 0  # on restart: the last index the host's state machine has applied
    seed: int = 0  # seeds the randomized election timeout
    bugs: frozenset[str] = field(default_factory=frozenset)


def apply_conf_change(cs: ConfState, cc: ConfChange) -> ConfState:
    voters, learners = set(cs.voters), set(cs.learners)
    if cc.type == ConfChangeType.ADD_NODE:
        voters.add(cc.node_id)
        learners.discard(cc.node_id)
    elif cc.type == ConfChangeType.REMOVE_NODE:
        voters.discard(cc.node_id)
        learners.discard(cc.node_id)
    elif cc.type == ConfChangeType.ADD_LEARNER:
        voters.discard(cc.node_id)
        learners.add(cc.node_id)
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))


class ReadOnly:
    """Pending ReadIndex requests, confirmed by a quorum of heartbeat acknowledgements."""

    def __init__(self) -> None:
        self.pending: dict[bytes, tuple[int, int, set[int]]] = {}  # ctx -> (index, from, acks)
        self.queue: list[bytes] = []

    def add(self, ctx: bytes, index: int, frm: int, self_id: int) -> None:
        if ctx not in self.pending:
            self.pending[ctx] = (index, frm, {self_id})
            self.queue.append(ctx)

    def ack(self, ctx: bytes, frm: int) -> set[int] | None:
        entry = self.pending.get(ctx)
        if entry is None:
            return None
        entry[2].add(frm)
        return entry[2]

    def advance(self, ctx: bytes) -> list[tuple[bytes, int, int]]:
        """Release ``ctx`` and every request queued before it (they are confirmed too)."""
        if ctx not in self.pending:
            return []
        n = self.queue.index(ctx) + 1
        done, self.queue = self.queue[:n], self.queue[n:]
        out = []
        for c in done:
            index, frm, _ = self.pending.pop(c)
            out.append((c, index, frm))
        return out

    def last_pending(self) -> bytes:
        return self.queue[-1] if self.queue else b""


class Raft:
    def __init__(self, config: Config, persisted: PersistedState | None = None) -> None:
        persisted = persisted or PersistedState()
        self.id = config.id
        self.cfg = config
        self.rng = random.Random(config.seed)
        hs = persisted.hard_state
        self.log = RaftLog(persisted.snapshot, persisted.entries, hs.commit)
        self.log.applied = self.log.applying = min(max(config.applied, self.log.offset), self.log.committed)
        self.term = hs.term
        self.vote = hs.vote
        self.lead = NONE
        self.role = StateRole.FOLLOWER
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.votes: dict[int, bool] = {}
        self.prs: dict[int, Progress] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        self.lead_transferee = NONE
        self.read_only = ReadOnly()
        self.pending_read_index: list[Message] = []  # reads waiting for a commit in this term
        self.need_bcast = False  # new entries appended: one broadcast at the next Ready
        self.uncommitted_size = 0  # leader: payload bytes appended and not yet committed
        # Set by the host: nobody here waits on the state machine, so the leader may skip
        # this follower in its commit broadcasts (sent in every APP_RESP and HEARTBEAT_RESP).
        self.lazy = False
        # leader: a commit broadcast skipped a lazy follower; the host calls
        # flush_commit_notices() a little later unless another append told it meanwhile
        self.commit_notices_owed = False
        if not persisted.entries and persisted.snapshot.meta.index == 0 and hs == HardState():
            self._bootstrap(config)
        # (index, term, conf) for the snapshot's configuration and each conf change in the log
        self.conf_history: list[tuple[int, int, ConfState]] = [
            (self.log.offset, self.log.snapshot.meta.term, persisted.snapshot.meta.conf_state)
        ]
        self._scan_conf_changes(self.log.first_index())
        self.become_follower(self.term, NONE)

    def _bootstrap(self, config: Config) -> None:
        """A brand-new member of the initial cluster writes the initial configuration into its
        log as committed conf change entries (term 1), identical on every initial member, so the
        configuration is always a function of the log: a member added later learns it there.
        A member joining an existing cluster starts empty (no voters) and waits for the leader."""
        changes = [ConfChange(ConfChangeType.ADD_NODE, n) for n in sorted(config.voters)]
        changes += [ConfChange(ConfChangeType.ADD_LEARNER, n) for n in sorted(config.learners)]
        if not changes:
            return
        self.log.append([Entry(1, i + 1, EntryType.CONF_CHANGE, encode(cc)) for i, cc in enumerate(changes)])
        self.log.commit_to(len(changes))
        self.term = 1

    # ---- membership ---------------------------------------------------------------------------
    @property
    def conf(self) -> ConfState:
        return self.conf_history[-1][2]

    def conf_state_at(self, index: int) -> ConfState:
        cs = self.conf_history[0][2]
        for idx, _, c in self.conf_history:
            if idx <= index:
                cs = c
        return cs

    def is_voter(self, node: int | None = None) -> bool:
        return (self.id if node is None else node) in self.conf.voters

    def quorum(self) -> int:
        return len(self.conf.voters) // 2 + 1

    def _scan_conf_changes(self, first: int) -> None:
        """Make the configuration match the log again from index ``first`` on: drop changes
        that were truncated away and adopt changes that were appended."""
        while len(self.conf_history) > 1 and self.conf_history[-1][0] >= first:
            self.conf_history.pop()
        for e in self.log.entries[max(first, self.log.first_index()) - self.log.first_index() :]:
            if e.type == EntryType.CONF_CHANGE:
                cc = decode_conf_change(e.data)
                self.conf_history.append((e.index, e.term, apply_conf_change(self.conf, cc)))
        self._sync_progress()

    def _sync_progress(self) -> None:
        members = set(self.conf.voters) | set(self.conf.learners)
        for node in list(self.prs):
            if node not in members:
                del self.prs[node]
        for node in members:
            if node not in self.prs:
                self.prs[node] = self._new_progress()
        if self.lead_transferee not in members:
            self.lead_transferee = NONE

    def _new_progress(self) -> Progress:
        return Progress(self.log.last_index() + 1, self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes)

    def _compact_conf_history(self) -> None:
        """Keep the latest change at or before the snapshot as the base."""
        keep = [h for h in self.conf_history if h[0] > self.log.offset]
        base = (self.log.offset, self.log.snapshot.meta.term, self.conf_state_at(self.log.offset))
        self.conf_history = [base] + keep

    # ---- role changes -------------------------------------------------------------------------
    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.cfg.election_tick + self.rng.randrange(self.cfg.election_tick)
        self.lead_transferee = NONE
        self.votes = {}
        self.uncommitted_size = 0
        self.read_only = ReadOnly()
        self.pending_read_index = []
        self.need_bcast = False
        self.commit_notices_owed = False
        self.prs = {}
        self._sync_progress()
        me = self.prs.get(self.id)
        if me is not None:
            me.match = self.log.stable
            me.next = self.log.last_index() + 1

    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = StateRole.FOLLOWER

    def become_pre_candidate(self) -> None:
        # Neither term nor vote changes: a pre-vote must leave no trace if it fails.
        self.role = StateRole.PRE_CANDIDATE
        self.votes = {}
        self.lead = NONE

    def become_candidate(self) -> None:
        assert self.role != StateRole.LEADER
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = StateRole.CANDIDATE

    def become_leader(self) -> None:
        assert self.role != StateRole.FOLLOWER
        self._reset(self.term)
        self.lead = self.id
        self.role = StateRole.LEADER
        for node, pr in self.prs.items():
            if node != self.id:
                pr.next = self.log.last_index() + 1
        # An empty entry of the new term: committing it commits everything before it (§5.4.2)
        # and unblocks reads and membership changes, which wait for a commit in this term.
        self._append([Entry(self.term, self.log.last_index() + 1)])

    def campaign(self, transfer: bool = False) -> None:
        """Start an election: a pre-vote round first unless this is a leadership transfer."""
        if not self.cfg.pre_vote or transfer:
            self._start_election(transfer)
            return
        self.become_pre_candidate()
        if self._poll(self.id, True) == "won":
            self._start_election(False)
            return
        self._request_votes(MT.PRE_VOTE, self.term + 1, False)

    def _start_election(self, transfer: bool) -> None:
        self.become_candidate()
        if self._poll(self.id, True) == "won":
            self.become_leader()
            return
        self._request_votes(MT.VOTE, self.term, transfer)

    def _request_votes(self, vote_type: int, term: int, force: bool) -> None:
        for node in self.conf.voters:
            if node != self.id:
                self._send(Message(vote_type, node, self.id, term=term, index=self.log.last_index(),
                                   log_term=self.log.last_term(), force=force))

    def _poll(self, node: int, granted: bool) -> str:
        self.votes.setdefault(node, granted)
        yes = sum(1 for n, g in self.votes.items() if g and n in self.conf.voters)
        no = sum(1 for n, g in self.votes.items() if not g and n in self.conf.voters)
        if yes >= self.quorum():
            return "won"
        if no > len(self.conf.voters) - self.quorum():  # the rest cannot make a quorum
            return "lost"
        return "pending"

    # ---- ticks ----------------------------------------------------------------------------
    def tick(self) -> None:
        if self.role == StateRole.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.is_voter() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.campaign()

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                self.become_follower(self.term, NONE)
                return
            if self.lead_transferee != NONE:
                self.lead_transferee = NONE  # the transfer took too long: take proposals again
            for pr in self.prs.values():
                if pr.state == ProgressState.SNAPSHOT:
                    pr.become_probe()  # the snapshot was lost somewhere: start over
        if self.role == StateRole.LEADER and self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat(self.read_only.last_pending())

    def _quorum_active(self) -> bool:
        active = sum(
            1 for n in self.conf.voters if n == self.id or (n in self.prs and self.prs[n].recent_active)
        )
        for n, pr in self.prs.items():
            if n != self.id:
                pr.recent_active = False
        return active >= self.quorum()

    # ---- sending --------------------------------------------------------------------------
    def _send(self, m: Message) -> None:
        self.msgs.append(m)

    def _msg(self, type_: int, to: int, **kw) -> None:
        self.msgs.append(Message(type_, to, self.id, term=self.term, **kw))

    def _answer_leader(self, type_: int, to: int, **kw) -> None:
        """A follower's answer to an append or heartbeat: it tells whether this member is lazy."""
        self._msg(type_, to, lazy=self.lazy, **kw)

    def _send_append(self, to: int, send_if_empty: bool = True, broadcast: bool = False) -> bool:
        pr = self.prs[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None or pr.next <= self.log.offset:
            return self._send_snapshot(to, pr)
        entries = self.log.slice(pr.next, self.log.last_index() + 1, self.cfg.max_size_per_msg)
        if not entries and not send_if_empty:
            return False
        if not entries and broadcast and pr.lazy and pr.state == ProgressState.REPLICATE:
            # A follower nobody waits on learns this commit from the next append, or from
            # flush_commit_notices or a heartbeat if no append follows soon: at low load that
            # spares it (and the leader's CPU, which it shares on a small host) one message
            # and one wakeup per commit.
            self.commit_notices_owed = True
            return False
        # An append that only carries the commit index needs no answer when the leader knows
        # the follower holds `prev`, or, in a broadcast, when the follower's answer to the
        # append that sent `prev` is still to come (if that one is lost, the next heartbeat
        # answer finds match < last and sends a plain append, which is answered). At low load
        # that spares most answers to commit updates: one per follower per commit.
        quiet = not entries and (pr.match >= prev or (
            broadcast and pr.state == ProgressState.REPLICATE and len(pr.inflights) > 0))
        self._msg(MT.APP, to, index=prev, log_term=prev_term, entries=tuple(entries),
                  commit=self.log.committed, quiet=quiet)
        # the follower commits at most up to the last index this append makes it hold
        held = entries[-1].index if entries else prev
        pr.sent_commit = max(pr.sent_commit, min(self.log.committed, held))
        if entries:
            last = entries[-1].index
            if pr.state == ProgressState.REPLICATE:
                pr.next = last + 1
                pr.inflights.add(last, entries_size(entries))
            elif pr.state == ProgressState.PROBE:
                pr.probe_sent = True
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # don't ship a whole snapshot to a node that may be down
        snap = self.log.snapshot
        self._msg(MT.SNAPSHOT, to, snapshot=snap)
        pr.become_snapshot(snap.meta.index)
        return True

    def _bcast_append(self) -> None:
        for node in self.prs:
            if node != self.id:
                self._send_append(node, broadcast=True)

    def flush_commit_notices(self) -> None:
        """Tell the commit index to every follower that has not heard it yet (the lazy ones
        the commit broadcasts skipped), unless appends or heartbeats told them meanwhile."""
        self.commit_notices_owed = False
        if self.role != StateRole.LEADER:
            return
        for node, pr in self.prs.items():
            if node != self.id and pr.state == ProgressState.REPLICATE \
                    and pr.sent_commit < self.log.committed:
                self._send_append(node)

    def flush_appends(self) -> None:
        """Send the entries appended since the last Ready: one append per follower."""
        if self.need_bcast and self.role == StateRole.LEADER:
            self._bcast_append()
        self.need_bcast = False

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        for node, pr in self.prs.items():
            if node != self.id:
                # never tell a follower to commit beyond what it is known to have
                commit = min(pr.match, self.log.committed)
                pr.sent_commit = max(pr.sent_commit, commit)
                self._msg(MT.HEARTBEAT, node, commit=commit, context=ctx)

    # ---- leader: appending and committing ---------------------------------------------------
    def _append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        self.log.append(entries)
        if any(e.type == EntryType.CONF_CHANGE for e in entries):
            self._scan_conf_changes(first)
        self.need_bcast = True

    def self_persisted(self, index: int) -> None:
        """The host persisted the log up to ``index``: the leader may now count itself."""
        pr = self.prs.get(self.id)
        if pr is not None and self.role == StateRole.LEADER:
            pr.maybe_update(index)
            if self._maybe_commit():
                self.need_bcast = True

    def _maybe_commit(self) -> bool:
        voters = self.conf.voters
        if not voters:
            return False
        matches = sorted((self.prs[n].match if n in self.prs else 0 for n in voters), reverse=True)
        index = matches[self.quorum() - 1]
        if index <= self.log.committed:
            return False
        if self.log.term(index) != self.term and BUG_COMMIT_PREVIOUS_TERM not in self.cfg.bugs:
            return False  # §5.4.2: an old-term entry commits only under a current-term entry
        previous = self.log.committed
        first_commit_in_term = self.log.term(previous) != self.term
        newly = self.log.slice(max(previous, self.log.offset) + 1, index + 1)
        self.uncommitted_size = max(0, self.uncommitted_size - sum(len(e.data) for e in newly))
        self.log.commit_to(index)
        if any(previous < at <= index for at, _, _ in self.conf_history):
            for pr in self.prs.values():
                pr.lazy = False  # every member shows a membership change at once
        if first_commit_in_term and self.log.term(index) == self.term:
            self._release_pending_reads()
        self._maybe_step_down_removed()
        return True

    def _maybe_step_down_removed(self) -> None:
        """A leader removed from the voters leads only until its removal is committed."""
        if self.role == StateRole.LEADER and not self.is_voter() and self.conf_history[-1][0] <= self.log.committed:
            self.become_follower(self.term, NONE)

    def propose(self, datas: list[bytes], entry_type: int = EntryType.NORMAL) -> None:
        if self.role != StateRole.LEADER:
            if self.lead == NONE or entry_type != EntryType.NORMAL:
                raise ProposalDropped("no leader" if self.lead == NONE else "not the leader")
            self._send(Message(MT.PROP, self.lead, self.id,
                               entries=tuple(Entry(0, 0, entry_type, d) for d in datas)))
            return
        self._leader_append(datas, entry_type)

    def _leader_append(self, datas: list[bytes], entry_type: int) -> None:
        if self.lead_transferee != NONE:
            raise ProposalDropped("leadership transfer in progress")
        if self.id not in self.prs:
            raise ProposalDropped("this node was removed")
        if entry_type == EntryType.CONF_CHANGE:
            self._check_conf_change(datas)
        size = sum(len(d) for d in datas)
        limit = self.cfg.max_uncommitted_size
        if limit and self.uncommitted_size and self.uncommitted_size + size > limit:
            raise ProposalDropped("too many uncommitted entries")
        self.uncommitted_size += size
        last = self.log.last_index()
        self._append([Entry(self.term, last + 1 + i, entry_type, d) for i, d in enumerate(datas)])

    def _check_conf_change(self, datas: list[bytes]) -> None:
        if len(datas) != 1:
            raise ProposalDropped("one membership change at a time")
        if self.log.term(self.log.committed) != self.term:
            raise ProposalDropped("leader has not committed an entry in its term yet")
        if self.conf_history[-1][0] > self.log.committed:
            raise ProposalDropped("a membership change is still pending")
        new = apply_conf_change(self.conf, decode_conf_change(datas[0]))
        if not new.voters:
            raise ProposalDropped("cannot remove the last voter")

    # ---- reads ----------------------------------------------------------------------------
    def read_index(self, ctx: bytes) -> None:
        if self.role == StateRole.LEADER:
            self._leader_read_index(Message(MT.READ_INDEX, self.id, self.id, context=ctx))
        elif self.lead != NONE:
            self._send(Message(MT.READ_INDEX, self.lead, self.id, context=ctx))
        else:
            raise ProposalDropped("no leader")

    def _leader_read_index(self, m: Message) -> None:
        if len(self.conf.voters) == 1 and self.is_voter():
            self._answer_read(m.context, self.log.committed, m.frm)
            return
        if self.log.term(self.log.committed) != self.term:
            self.pending_read_index.append(m)  # our commit index may be stale until then
            return
        self.read_only.add(m.context, self.log.committed, m.frm, self.id)
        self._bcast_heartbeat(m.context)

    def _release_pending_reads(self) -> None:
        pending, self.pending_read_index = self.pending_read_index, []
        for m in pending:
            self._leader_read_index(m)

    def _answer_read(self, ctx: bytes, index: int, frm: int) -> None:
        if frm == self.id:
            self.read_states.append(ReadState(index, ctx))
        else:
            self._msg(MT.READ_INDEX_RESP, frm, index=index, context=ctx)

    # ---- leadership transfer --------------------------------------------------------------
    def transfer_leader(self, target: int) -> None:
        if self.role != StateRole.LEADER:
            if self.lead != NONE:
                self._send(Message(MT.TRANSFER_LEADER, self.lead, self.id, index=target))
            return
        if target == self.id or target not in self.conf.voters or target == self.lead_transferee:
            return
        self.election_elapsed = 0  # the transfer must finish within an election timeout
        self.lead_transferee = target
        if self.prs[target].match == self.log.last_index():
            self._msg(MT.TIMEOUT_NOW, target)
        else:
            self._send_append(target)

    # ---- receiving ------------------------------------------------------------------------
    def step(self, m: Message) -> None:
        if m.term == 0:
            pass  # forwarded local requests (PROP, READ_INDEX, TRANSFER_LEADER) carry no term
        elif m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE) and not m.force and self._in_lease():
                return  # we hear from a live leader: don't let a partitioned node disrupt it
            if m.type == MT.PRE_VOTE or (m.type == MT.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never change terms
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAPSHOT):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if m.type in (MT.APP, MT.HEARTBEAT) and (self.cfg.check_quorum or self.cfg.pre_vote):
                # a stale leader: tell it our term so it steps down
                self._msg(MT.APP_RESP, m.frm)
            elif m.type == MT.PRE_VOTE:
                self._msg(MT.PRE_VOTE_RESP, m.frm, reject=True)
            return

        if m.type in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role == StateRole.LEADER:
            self._step_leader(m)
        elif self.role in (StateRole.CANDIDATE, StateRole.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def _in_lease(self) -> bool:
        return (
            self.cfg.check_quorum
            and self.lead != NONE
            and self.election_elapsed < self.cfg.election_tick
        )

    def _handle_vote_request(self, m: Message) -> None:
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type == MT.PRE_VOTE and m.term > self.term)
        )
        up_to_date = self.log.is_up_to_date(m.index, m.log_term) or BUG_VOTE_WITHOUT_LOG_CHECK in self.cfg.bugs
        resp = MT.VOTE_RESP if m.type == MT.VOTE else MT.PRE_VOTE_RESP
        if can_vote and up_to_date:
            # a granted pre-vote answers in the candidate's future term
            self._send(Message(resp, m.frm, self.id, term=m.term))
            if m.type == MT.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._msg(resp, m.frm, reject=True)

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self.log.commit_to(min(m.commit, self.log.last_index()))
            self._answer_leader(MT.HEARTBEAT_RESP, m.frm, context=m.context)
        elif t == MT.SNAPSHOT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t in (MT.PROP, MT.READ_INDEX, MT.TRANSFER_LEADER):
            if self.lead != NONE:
                self._send(Message(t, self.lead, m.frm, entries=m.entries, context=m.context, index=m.index))
        elif t == MT.TIMEOUT_NOW:
            if self.is_voter():
                self.campaign(transfer=True)
        elif t == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t in (MT.APP, MT.HEARTBEAT, MT.SNAPSHOT):
            self.become_follower(m.term, m.frm)  # a leader of this term exists
            self._step_follower(m)
        elif (t == MT.VOTE_RESP and self.role == StateRole.CANDIDATE) or (
            t == MT.PRE_VOTE_RESP and self.role == StateRole.PRE_CANDIDATE
        ):
            result = self._poll(m.frm, not m.reject)
            if result == "won":
                if self.role == StateRole.PRE_CANDIDATE:
                    self._start_election(False)
                else:
                    self.become_leader()
            elif result == "lost":
                self.become_follower(self.term, NONE)

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t in (MT.PROP, MT.READ_INDEX) and m.frm != self.id and m.frm in self.prs:
            self.prs[m.frm].lazy = False  # it waits for these: its next commits are due at once
        if t == MT.PROP:
            try:
                self._leader_append([e.data for e in m.entries], EntryType.NORMAL)
            except ProposalDropped:
                pass  # the forwarding node's host will time the request out and retry
            return
        if t == MT.READ_INDEX:
            self._leader_read_index(m)
            return
        if t == MT.TRANSFER_LEADER:
            self.transfer_leader(m.index)
            return
        pr = self.prs.get(m.frm)
        if pr is None:
            return
        if t == MT.APP_RESP:
            pr.recent_active = True
            pr.lazy = m.lazy
            self._handle_append_response(m, pr)
        elif t == MT.HEARTBEAT_RESP:
            pr.lazy = m.lazy
            self._handle_heartbeat_response(m, pr)

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                hint, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, hint):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            if was_paused and not pr.is_paused():
                self._send_append(m.frm, send_if_empty=False)
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            if self.role == StateRole.LEADER:
                self._bcast_append()
        elif self.role == StateRole.LEADER:
            sent = False
            while self._send_append(m.frm, send_if_empty=False):
                sent = True
            if not sent and not pr.lazy and pr.sent_commit < min(pr.match, self.log.committed):
                self._send_append(m.frm)  # a follower that stopped being lazy: tell it now
        if self.role == StateRole.LEADER and m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._msg(MT.TIMEOUT_NOW, m.frm)

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state == ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.free_first_one()
        if pr.match < self.log.last_index():
            self._send_append(m.frm)
        if not m.context:
            return
        acks = self.read_only.ack(m.context, m.frm)
        if acks is None or sum(1 for n in acks if n in self.conf.voters) < self.quorum():
            return
        for ctx, index, frm in self.read_only.advance(m.context):
            self._answer_read(ctx, index, frm)

    # ---- follower: receiving the log -------------------------------------------------------
    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._answer_leader(MT.APP_RESP, m.frm, index=self.log.committed)
            return
        truncate = BUG_KEEP_CONFLICTING_SUFFIX not in self.cfg.bugs
        result = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries, truncate)
        if result is not None:
            last_new, conflict = result
            if conflict and (
                self.conf_history[-1][0] >= conflict or any(e.type == EntryType.CONF_CHANGE for e in m.entries)
            ):
                self._scan_conf_changes(conflict)
            if not (m.quiet and not m.entries):
                self._answer_leader(MT.APP_RESP, m.frm, index=last_new)
            return
        hint_index = min(m.index, self.log.last_index())
        hint_index, hint_term = self.log.find_conflict_by_term(hint_index, m.log_term)
        self._answer_leader(MT.APP_RESP, m.frm, index=m.index, reject=True, reject_hint=hint_index,
                            log_term=hint_term)

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        assert snap is not None
        meta = snap.meta
        if meta.index <= self.log.committed:
            self._answer_leader(MT.APP_RESP, m.frm, index=self.log.committed)
            return
        if self.log.match_term(meta.index, meta.term):
            # we already have the log up to the snapshot: just learn that it is committed
            self.log.commit_to(meta.index)
            self._answer_leader(MT.APP_RESP, m.frm, index=self.log.last_index())
            return
        self.log.restore(snap)
        self.conf_history = [(meta.index, meta.term, meta.conf_state)]
        self._sync_progress()
        self._answer_leader(MT.APP_RESP, m.frm, index=self.log.last_index())

    # ---- host feedback --------------------------------------------------------------------
    def report_unreachable(self, node: int) -> None:
        pr = self.prs.get(node)
        if self.role == StateRole.LEADER and pr is not None and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, node: int, ok: bool) -> None:
        pr = self.prs.get(node)
        if self.role != StateRole.LEADER or pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = ok  # on success, wait for the follower's answer before probing

    def compact(self, index: int, data: bytes) -> Snapshot:
        snap = self.log.compact(index, self.conf_state_at(index), data)
        self._compact_conf_history()
        return snap

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)
