"""Deterministic simulation of a Raft group: seeded virtual network, clock and disks.

Everything random comes from one ``random.Random(seed)``, so a seed replays exactly. A run has
a fault phase (message drop, delay, duplication, reordering, symmetric and one-way partitions,
crash-restarts that lose everything not yet persisted, slow disks, membership changes and leader
transfers) and then a calm phase in which every node is up and the network is healed: a leader
must emerge and every pending write must commit (liveness). ``SafetyChecker`` runs after every
step.
"""
from __future__ import annotations

import heapq
import random
import zlib
from dataclasses import dataclass, field

import msgspec

from shardkv.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    PersistedState,
    ProposalDropped,
    RawNode,
    Ready,
    Snapshot,
    StateRole,
)
from shardkv.raft import types as raft_types

from .checker import SafetyChecker, Violation


@dataclass
class Faults:
    drop: float = 0.0
    duplicate: float = 0.0
    max_delay: int = 1  # ticks
    disk_delay: float = 0.0  # chance a persist takes 1-3 ticks (messages wait for it)
    crash: float = 0.0  # per tick
    restart: float = 0.2  # per tick, per crashed node
    partition: float = 0.0  # per tick: form a new partition
    heal: float = 0.05
    transfer: float = 0.0
    conf_change: float = 0.0
    crash_new_leader: float = 0.0  # chance a newly elected leader is killed within a few ticks
    isolate_new_leader: float = 0.0  # chance a newly elected leader is cut off at once
    # chance that, for a few ticks, a new leader's own-term entries are cut from its appends
    # while older entries get through (as if it had sent smaller appends and the rest were
    # lost): the adversary of the Raft paper's figure 8
    mute_new_leader: float = 0.0
    write: float = 0.5  # client writes per tick (chance)
    read: float = 0.2

    @classmethod
    def random(cls, rng: random.Random) -> "Faults":
        if rng.random() < 0.25:
            return cls.leader_churn(rng)
        return cls(
            drop=rng.choice([0.0, 0.02, 0.1, 0.3]),
            duplicate=rng.choice([0.0, 0.05, 0.2]),
            max_delay=rng.choice([0, 1, 3, 8]),
            disk_delay=rng.choice([0.0, 0.1, 0.5]),
            crash=rng.choice([0.0, 0.005, 0.02]),
            restart=rng.choice([0.05, 0.2]),
            partition=rng.choice([0.0, 0.01, 0.03]),
            heal=rng.choice([0.02, 0.1]),
            transfer=rng.choice([0.0, 0.01]),
            conf_change=rng.choice([0.0, 0.01, 0.03]),
            write=rng.choice([0.2, 0.8, 2.0]),
            read=rng.choice([0.1, 0.5]),
        )


    @classmethod
    def leader_churn(cls, rng: random.Random) -> "Faults":
        """Frequent crashes and isolation of leaders with quick restarts: many short terms and
        logs that diverge at their tails (figure 8 of the Raft paper needs this)."""
        return cls(
            drop=rng.choice([0.0, 0.1]),
            duplicate=0.05,
            max_delay=rng.choice([1, 3]),
            disk_delay=rng.choice([0.0, 0.3]),
            crash=rng.choice([0.03, 0.08]),
            restart=rng.choice([0.1, 0.3]),
            partition=rng.choice([0.02, 0.05]),
            heal=0.1,
            transfer=0.02,
            conf_change=0.0,
            crash_new_leader=rng.choice([0.3, 0.6]),
            isolate_new_leader=rng.choice([0.0, 0.3]),
            mute_new_leader=rng.choice([0.0, 0.5]),
            write=rng.choice([0.5, 2.0]),
            read=0.3,
        )


# (max bytes per append message, max appends in flight); 1 byte means one entry per message
FLOW_CONTROL = [
    dict(max_size_per_msg=1, max_inflight_msgs=64),
    dict(max_size_per_msg=256, max_inflight_msgs=4, max_uncommitted_size=2048),
    dict(max_size_per_msg=256, max_inflight_msgs=64),
    dict(max_size_per_msg=1 << 20, max_inflight_msgs=1, max_uncommitted_size=512),
    dict(max_size_per_msg=1 << 20, max_inflight_msgs=256),
]

CALM = Faults(write=0.0, read=0.2)  # no new writes: the pending ones must finish


class StateMachine(msgspec.Struct):
    """The replicated state: which writes took effect, and a digest of every applied entry."""

    index: int = 0
    digest: int = 0
    writes: list[bytes] = []


@dataclass
class Disk:
    hard_state: HardState = HardState()
    snapshot: Snapshot = Snapshot()
    entries: list[Entry] = field(default_factory=list)


@dataclass
class SimNode:
    id: int
    initial: tuple[int, ...]  # initial voters (empty for a member added later)
    disk: Disk = field(default_factory=Disk)
    raw: RawNode | None = None
    sm: StateMachine = field(default_factory=StateMachine)
    write_set: set[bytes] = field(default_factory=set)
    in_flight: tuple[Ready, int] | None = None  # a Ready being persisted, done at tick
    reads: dict[bytes, int] = field(default_factory=dict)  # ctx -> acked index at start
    waiting_reads: list[tuple[bytes, int]] = field(default_factory=list)  # (ctx, read index)


_sm_encoder = msgspec.msgpack.Encoder()
_sm_decoder = msgspec.msgpack.Decoder(StateMachine)


class Simulation:
    def __init__(self, seed: int, nodes: int | None = None, bugs: frozenset[str] = frozenset(),
                 faults: Faults | None = None, election_tick: int = 10, compact_every: int = 30,
                 trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.n = nodes or self.rng.choice([3, 5])
        self.faults = faults or Faults.random(self.rng)
        self.bugs = bugs
        self.election_tick = election_tick
        self.compact_every = compact_every
        self.checker = SafetyChecker()
        # Lazy followers (skipped by commit broadcasts) in half the seeds, decided by an RNG of
        # their own so the other half replay exactly as they did before laziness existed.
        self.lazy_rng = random.Random(seed * 7919 + 17)
        self.lazy = self.lazy_rng.random() < 0.5
        self.trace: int | None = 0 if trace else None  # digest of every message delivered
        self.now = 0
        self.seq = 0
        self.net: list[tuple[int, float, int, Message]] = []
        self.blocked: set[tuple[int, int]] = set()
        initial = tuple(range(1, self.n + 1))
        self.nodes: dict[int, SimNode] = {i: SimNode(i, initial) for i in initial}
        self.next_id = self.n + 1
        self.pending_writes: dict[bytes, tuple[int, int, int]] = {}  # id -> (node, proposed at, tries)
        self.write_seq = 0
        self.read_seq = 0
        self.digest_at: dict[int, int] = {}
        self.write_effect: dict[bytes, int] = {}  # write id -> index where it took effect
        self.leaders_seen: set[tuple[int, int]] = set()
        self.doomed: dict[int, int] = {}  # node -> tick at which the nemesis kills it
        self.muted: dict[int, tuple[int, int]] = {}  # leader -> (its term, muted until tick)
        self.down_until: dict[int, int] = {}  # crashed node -> earliest tick of its restart
        self.stats = {"writes": 0, "acked": 0, "reads": 0, "crashes": 0, "partitions": 0,
                      "conf_changes": 0, "transfers": 0, "snapshots_sent": 0, "messages": 0}
        for node in self.nodes.values():
            self._start(node)

    # ---- node lifecycle -------------------------------------------------------------------------
    def _start(self, node: SimNode) -> None:
        d = node.disk
        cfg = Config(id=node.id, voters=node.initial, election_tick=self.election_tick,
                     seed=self.rng.randrange(1 << 30), applied=d.snapshot.meta.index,
                     bugs=self.bugs, **self.rng.choice(FLOW_CONTROL))
        node.raw = RawNode(cfg, PersistedState(d.hard_state, d.snapshot, list(d.entries)))
        node.sm = _sm_decoder.decode(d.snapshot.data) if d.snapshot.data else StateMachine()
        node.write_set = set(node.sm.writes)
        node.in_flight = None
        node.reads.clear()
        node.waiting_reads.clear()

    def _crash(self, node: SimNode) -> None:
        node.raw = None  # everything not on its disk is gone
        node.in_flight = None
        self.stats["crashes"] += 1

    def alive(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.raw is not None]

    def leader(self) -> SimNode | None:
        leaders = [n for n in self.alive() if n.raw.is_leader]
        return max(leaders, key=lambda n: n.raw.raft.term) if leaders else None

    # ---- network ----------------------------------------------------------------------------------
    def _send(self, m: Message) -> None:
        self.stats["messages"] += 1
        f = self.faults
        m = self._mute(m)
        if (m.frm, m.to) in self.blocked or self.rng.random() < f.drop:
            self._report_lost(m)
            return
        copies = 2 if self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            self.seq += 1
            heapq.heappush(self.net, (self.now + self.rng.randint(0, f.max_delay), self.rng.random(), self.seq, m))

    def _mute(self, m: Message) -> Message:
        mute = self.muted.get(m.frm)
        if mute is None or m.type != MessageType.APP or m.term != mute[0] or self.now > mute[1]:
            return m
        for i, e in enumerate(m.entries):
            if e.term == m.term:  # the leader's own entries come last: keep what precedes them
                return msgspec.structs.replace(m, entries=m.entries[:i])
        return m

    def _report_lost(self, m: Message) -> None:
        """A real transport notices a snapshot stream that failed; tell the sender's Raft."""
        if m.type == MessageType.SNAPSHOT:
            sender = self.nodes.get(m.frm)
            if sender is not None and sender.raw is not None:
                sender.raw.report_snapshot(m.to, False)
                self._drive(sender)

    def _deliver_due(self) -> None:
        budget = 200_000
        while self.net and self.net[0][0] <= self.now and budget:
            budget -= 1
            _, _, _, m = heapq.heappop(self.net)
            node = self.nodes.get(m.to)
            if node is None or node.raw is None or (m.frm, m.to) in self.blocked:
                self._report_lost(m)
                continue
            if m.type == MessageType.SNAPSHOT:
                self.stats["snapshots_sent"] += 1
            if self.trace is not None:
                self.trace = zlib.crc32(raft_types.encode(m), self.trace)
            node.raw.step(m)
            self._after_input(node)

    # ---- the host loop: persist, send, apply, advance ----------------------------------------
    def _after_input(self, node: SimNode) -> None:
        self._note_leader(node)
        self._drive(node)

    def _note_leader(self, node: SimNode) -> None:
        raw = node.raw
        if raw is not None and raw.raft.role == StateRole.LEADER:
            key = (raw.raft.term, node.id)
            if key not in self.leaders_seen:
                self.leaders_seen.add(key)
                self.checker.on_leader(raw)
                if self.rng.random() < self.faults.mute_new_leader:
                    self.muted[node.id] = (raw.raft.term, self.now + self.rng.randint(10, 30))
                if self.rng.random() < self.faults.isolate_new_leader:
                    self._isolate(node.id)  # its new entries pile up where nobody sees them
                elif self.rng.random() < self.faults.crash_new_leader:
                    self.doomed[node.id] = self.now + self.rng.randint(0, 12)

    def _drive(self, node: SimNode) -> None:
        while node.raw is not None and node.in_flight is None and node.raw.has_ready():
            rd = node.raw.ready()
            # As etcd (and the node) do: a leader sends before its own write is durable (the
            # disk write runs in parallel with replication; Raft counts the leader's own log
            # only once advanced). Everybody else persists first. A crash in between loses the
            # leader's unsynced entries after followers may have them: the sim covers that.
            if node.raw.raft.role == StateRole.LEADER:
                for m in rd.messages:
                    self._send(m)
                rd.messages = []
            if rd.must_sync and self.rng.random() < self.faults.disk_delay:
                node.in_flight = (rd, self.now + self.rng.randint(1, 3))
                return
            self._complete(node, rd)

    def _complete(self, node: SimNode, rd: Ready) -> None:
        node.in_flight = (rd, self.now)  # no other Ready may start until this one advanced
        self._persist(node, rd)
        for m in rd.messages:
            self._send(m)
        if rd.snapshot is not None:
            self._install_snapshot(node, rd.snapshot)
        for e in rd.committed_entries:
            self._apply(node, e)
        for rs in rd.read_states:
            if rs.context in node.reads:
                node.waiting_reads.append((rs.context, rs.index))
        self._serve_reads(node)
        node.raw.advance(rd)
        node.in_flight = None
        self._note_leader(node)
        self._maybe_compact(node)

    def _persist(self, node: SimNode, rd: Ready) -> None:
        d = node.disk
        if rd.snapshot is not None:
            d.snapshot = rd.snapshot
            d.entries = []
        if rd.entries:
            first = rd.entries[0].index
            base = d.snapshot.meta.index
            d.entries = d.entries[: max(0, first - base - 1)]
            if base + len(d.entries) + 1 != first:
                raise Violation(f"node {node.id} persisted a log gap before index {first}")
            prev_term = d.entries[-1].term if d.entries else d.snapshot.meta.term
            self.checker.on_persist(node.id, rd.entries, prev_term if first > 1 else None)
            d.entries.extend(rd.entries)
        if rd.hard_state is not None:
            if rd.hard_state.term < d.hard_state.term:
                raise Violation(f"node {node.id} persisted a term going backwards")
            d.hard_state = rd.hard_state

    def _install_snapshot(self, node: SimNode, snap: Snapshot) -> None:
        sm = _sm_decoder.decode(snap.data) if snap.data else StateMachine()
        self.checker.on_snapshot(node.id, snap, self.digest_at, sm.digest)
        node.sm = sm
        node.write_set = set(sm.writes)

    def _apply(self, node: SimNode, e: Entry) -> None:
        sm = node.sm
        if e.index != sm.index + 1:
            raise Violation(f"node {node.id} applied index {e.index} after {sm.index}")
        self.checker.on_apply(node.id, e)
        sm.index = e.index
        sm.digest = zlib.crc32(b"%d:%d:%d:" % (e.index, e.term, e.type) + e.data, sm.digest)
        self.digest_at.setdefault(e.index, sm.digest)
        if self.digest_at[e.index] != sm.digest:
            raise Violation(f"node {node.id}: state differs from another node's at index {e.index}")
        if e.type != EntryType.NORMAL or not e.data:
            return
        if e.data not in node.write_set:  # a retried write takes effect once
            node.write_set.add(e.data)
            sm.writes.append(e.data)
            self.write_effect.setdefault(e.data, e.index)
        pending = self.pending_writes.get(e.data)
        if pending is not None and pending[0] == node.id:
            del self.pending_writes[e.data]
            self.stats["acked"] += 1
            self.checker.on_write_acked(e.data, self.write_effect[e.data])

    def _serve_reads(self, node: SimNode) -> None:
        still = []
        for ctx, index in node.waiting_reads:
            if node.sm.index >= index:
                self.checker.on_read(node.id, index, node.reads.pop(ctx, 0), ctx)
            else:
                still.append((ctx, index))
        node.waiting_reads = still

    def _maybe_compact(self, node: SimNode) -> None:
        raw = node.raw
        log = raw.raft.log
        if log.applied - log.offset < self.compact_every or node.sm.index != log.applied:
            return
        snap = raw.compact(log.applied, _sm_encoder.encode(node.sm))
        node.disk.snapshot = snap
        node.disk.entries = [e for e in node.disk.entries if e.index > snap.meta.index]

    # ---- clients ----------------------------------------------------------------------------------
    def members(self) -> list[SimNode]:
        """Live nodes a client would use: the members of the newest configuration (removed
        nodes are shut out of the endpoint list, as etcd's clients learn from MemberList)."""
        live = self.alive()
        newest = max(live, key=lambda n: (n.raw.raft.log.committed, n.raw.raft.term), default=None)
        if newest is None:
            return []
        conf = newest.raw.raft.conf
        members = [n for n in live if n.id in conf.voters or n.id in conf.learners]
        return members or live

    def _client_ops(self, f: Faults) -> None:
        live = self.members()
        if not live:
            return
        writes = int(f.write) + (1 if self.rng.random() < f.write % 1 else 0)
        for _ in range(writes):
            self.write_seq += 1
            wid = b"w%d" % self.write_seq
            self.stats["writes"] += 1
            self._propose(self.rng.choice(live), wid)
        if self.rng.random() < f.read:
            node = self.rng.choice(live)
            self.read_seq += 1
            ctx = b"r%d" % self.read_seq
            try:
                node.raw.read_index(ctx)
            except ProposalDropped:
                return
            self.stats["reads"] += 1
            node.reads[ctx] = self.checker.max_acked_index
            self._drive(node)

    def _propose(self, node: SimNode, wid: bytes) -> None:
        tries = self.pending_writes[wid][2] + 1 if wid in self.pending_writes else 0
        self.pending_writes[wid] = (node.id, self.now, tries)
        try:
            node.raw.propose(wid)
        except ProposalDropped:
            return
        self._drive(node)

    def _retry_writes(self) -> None:
        """Clients retry unacknowledged writes with exponential backoff (a retried write takes
        effect at most once)."""
        live = self.members()
        if not live:
            return
        for wid, (_, at, tries) in list(self.pending_writes.items()):
            if self.now - at >= 3 * self.election_tick << min(tries, 2):
                self._propose(self.rng.choice(live), wid)

    # ---- nemesis ------------------------------------------------------------------------------------
    def _nemesis(self, f: Faults) -> None:
        rng = self.rng
        for node_id, at in list(self.doomed.items()):
            if at <= self.now:
                del self.doomed[node_id]
                if self.nodes[node_id].raw is not None:
                    self._crash(self.nodes[node_id])
                    # stay down long enough for the others to elect someone else
                    self.down_until[node_id] = self.now + rng.randint(10, 40)
        live = self.alive()
        if live and rng.random() < f.crash:
            leader = self.leader()
            victim = leader if leader is not None and rng.random() < 0.5 else rng.choice(live)
            self._crash(victim)
        for node in self.nodes.values():
            if node.raw is None and self.down_until.get(node.id, 0) <= self.now and rng.random() < f.restart:
                self._start(node)
                self._drive(node)
        if rng.random() < f.partition:
            self._partition()
        elif self.blocked and rng.random() < f.heal:
            self.blocked.clear()
        if rng.random() < f.transfer:
            self._transfer()
        if rng.random() < f.conf_change:
            self._conf_change()

    def _partition(self) -> None:
        rng = self.rng
        ids = sorted(self.nodes)
        self.stats["partitions"] += 1
        kind = rng.choice(["split", "isolate_leader", "one_way", "bridge"])
        self.blocked.clear()
        if kind == "isolate_leader" and self.leader() is not None:
            self._isolate(self.leader().id)
            return
        if kind == "one_way":
            for _ in range(rng.randint(1, len(ids))):
                a, b = rng.sample(ids, 2)
                self.blocked.add((a, b))
            return
        elif kind == "bridge" and len(ids) >= 3:
            shuffled = ids[:]
            rng.shuffle(shuffled)
            bridge, rest = shuffled[0], shuffled[1:]
            half = set(rest[: len(rest) // 2])
            for a in rest:
                for b in rest:
                    if (a in half) != (b in half):
                        self.blocked.add((a, b))
            return
        else:
            side = set(rng.sample(ids, rng.randint(1, len(ids) // 2)))
        for a in ids:
            for b in ids:
                if (a in side) != (b in side):
                    self.blocked.add((a, b))

    def _isolate(self, node_id: int) -> None:
        self.blocked.clear()
        for other in self.nodes:
            if other != node_id:
                self.blocked.update({(node_id, other), (other, node_id)})

    def _transfer(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        voters = [v for v in leader.raw.raft.conf.voters if v != leader.id]
        if voters:
            self.stats["transfers"] += 1
            leader.raw.transfer_leader(self.rng.choice(voters))
            self._drive(leader)

    def _conf_change(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        rng = self.rng
        conf = leader.raw.raft.conf
        choices = []
        if len(self.nodes) < self.n + 3:
            choices += ["add_learner", "add_voter"]
        if conf.learners:
            choices += ["promote", "remove_learner"]
        if len(conf.voters) > 3:
            choices.append("remove_voter")
        if not choices:
            return
        action = rng.choice(choices)
        if action in ("add_learner", "add_voter"):
            node_id = self.next_id
            cc = ConfChange(ConfChangeType.ADD_LEARNER if action == "add_learner" else ConfChangeType.ADD_NODE, node_id)
        elif action == "promote":
            cc = ConfChange(ConfChangeType.ADD_NODE, rng.choice(conf.learners))
        elif action == "remove_learner":
            cc = ConfChange(ConfChangeType.REMOVE_NODE, rng.choice(conf.learners))
        else:
            cc = ConfChange(ConfChangeType.REMOVE_NODE, rng.choice(conf.voters))
        try:
            leader.raw.propose_conf_change(cc)
        except ProposalDropped:
            return
        self.stats["conf_changes"] += 1
        if cc.node_id == self.next_id:
            self.next_id += 1
            node = SimNode(cc.node_id, ())
            self.nodes[node.id] = node
            self._start(node)
        self._drive(leader)

    # ---- the clock ----------------------------------------------------------------------------------
    def _tick(self, f: Faults, nemesis: bool) -> None:
        self.now += 1
        if nemesis:
            self._nemesis(f)
        self._client_ops(f)
        order = self.alive()
        self.rng.shuffle(order)
        for node in order:
            if node.raw is not None and self.rng.random() > 0.02:  # 2%: a late tick (clock skew)
                node.raw.tick()
                self._after_input(node)
        if self.lazy:
            self._lazy_turn()
        self._deliver_due()
        for node in self.alive():
            if node.in_flight is not None and node.in_flight[1] <= self.now:
                self._complete(node, node.in_flight[0])
                self._drive(node)
        self._deliver_due()
        if self.now % self.election_tick == 0:
            self._retry_writes()

    def _lazy_turn(self) -> None:
        """Members turn lazy and eager at random, whoever waits on them (pending writes and
        reads then rely on appends, heartbeats and flushes for their commits); a leader that
        owes commit notices flushes them sometimes, as the host does after a short delay."""
        rng = self.lazy_rng
        for node in self.alive():
            if rng.random() < 0.2:
                node.raw.set_lazy(rng.random() < 0.7)
            if node.raw.commit_notices_owed and rng.random() < 0.5:
                node.raw.flush_commit_notices()
                self._drive(node)

    def run(self, ticks: int = 300, calm_ticks: int = 600) -> dict:
        for _ in range(ticks):
            self._tick(self.faults, nemesis=True)
        # calm: heal everything, restart everyone, and require progress
        self.blocked.clear()
        self.doomed.clear()
        self.muted.clear()
        for node in self.nodes.values():
            if node.raw is None:
                self._start(node)
                self._drive(node)
        self.faults = CALM
        deadline = self.now + calm_ticks
        probe = None
        while self.now < deadline:
            self._tick(CALM, nemesis=False)
            if probe is None and self.leader() is not None:
                self.write_seq += 1
                probe = b"w%d" % self.write_seq
                self._propose(self.leader(), probe)
            if probe is not None and not self.pending_writes and self.leader() is not None:
                break
        else:
            stuck = sorted(self.pending_writes)[:5]
            raise Violation(
                f"liveness: after {calm_ticks} calm ticks, leader={self.leader() and self.leader().id}, "
                f"{len(self.pending_writes)} writes still pending (e.g. {stuck})"
            )
        if self.trace is not None:
            self.stats["trace"] = self.trace
        self.stats.update(ticks=self.now, nodes=len(self.nodes), reads_checked=self.checker.reads_checked,
                          applied=self.checker.max_applied, terms=len(self.checker.leaders))
        return self.stats


def run_seed(seed: int, ticks: int = 300, **kw) -> dict:
    """Run one seed; raises Violation (with the seed in the message) on any failure."""
    sim = Simulation(seed, **kw)
    try:
        return sim.run(ticks)
    except (Violation, AssertionError) as v:  # the core's own invariant checks count too
        raise Violation(f"seed {seed} (n={sim.n}, tick {sim.now}): {type(v).__name__}: {v}") from None


__all__ = ["Simulation", "Faults", "run_seed", "Violation", "raft_types"]
