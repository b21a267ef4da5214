"""A hand-driven Raft cluster for scenario tests: deliver messages until quiet, cut links, crash
and restart nodes, force campaigns. Every node persists each Ready before sending (perfect disk).
"""
from __future__ import annotations

from shardkv.raft import Config, Entry, Message, PersistedState, RawNode, ReadState


class Cluster:
    def __init__(self, n: int, bugs: frozenset[str] = frozenset(), **cfg) -> None:
        self.ids = list(range(1, n + 1))
        self.initial = list(self.ids)
        self.joiners: set[int] = set()
        self.bugs = bugs
        self.cfg = cfg
        self.disks: dict[int, PersistedState] = {i: PersistedState() for i in self.ids}
        self.nodes: dict[int, RawNode | None] = {}
        self.applied: dict[int, list[Entry]] = {i: [] for i in self.ids}
        self.read_states: dict[int, list[ReadState]] = {i: [] for i in self.ids}
        self.sent: list[Message] = []  # every message ever sent, for assertions
        self.cut: set[tuple[int, int]] = set()
        self.queue: list[Message] = []
        for i in self.ids:
            self.start(i)

    def add_node(self, i: int) -> None:
        """A brand-new process that will join through a membership change (empty log)."""
        self.ids.append(i)
        self.disks[i] = PersistedState()
        self.joiners.add(i)
        self.start(i)

    def start(self, i: int) -> None:
        voters = () if i in self.joiners else tuple(self.initial)
        cfg = Config(id=i, voters=voters, seed=i, bugs=self.bugs, **self.cfg)
        d = self.disks[i]
        self.nodes[i] = RawNode(cfg, PersistedState(d.hard_state, d.snapshot, list(d.entries)))
        self.applied[i] = []  # re-applied from the log after a restart
        self.read_states.setdefault(i, [])

    def crash(self, i: int) -> None:
        self.nodes[i] = None

    def isolate(self, i: int) -> None:
        for j in self.ids:
            if j != i:
                self.cut.update({(i, j), (j, i)})

    def heal(self) -> None:
        self.cut.clear()

    def node(self, i: int) -> RawNode:
        n = self.nodes[i]
        assert n is not None
        return n

    def _flush(self, i: int) -> None:
        n = self.nodes[i]
        while n is not None and n.has_ready():
            rd = n.ready()
            d = self.disks[i]
            if rd.snapshot is not None:
                d.snapshot, d.entries = rd.snapshot, []
            if rd.entries:
                first = rd.entries[0].index
                d.entries = [e for e in d.entries if e.index < first] + list(rd.entries)
            if rd.hard_state is not None:
                d.hard_state = rd.hard_state
            self.queue.extend(rd.messages)
            self.sent.extend(rd.messages)
            self.applied[i].extend(rd.committed_entries)
            self.read_states[i].extend(rd.read_states)
            n.advance(rd)

    def deliver(self, max_rounds: int = 100, drop=lambda m: False) -> None:
        """Deliver messages (and whatever they cause) until nothing is left to send."""
        for _ in range(max_rounds):
            for i in self.ids:
                self._flush(i)
            if not self.queue:
                return
            batch, self.queue = self.queue, []
            for m in batch:
                target = self.nodes.get(m.to)
                if target is None or (m.frm, m.to) in self.cut or drop(m):
                    continue
                target.step(m)

    def campaign(self, i: int) -> None:
        self.node(i).campaign()
        self.deliver()

    def tick_all(self, times: int = 1, drop=lambda m: False) -> None:
        for _ in range(times):
            for n in self.nodes.values():
                if n is not None:
                    n.tick()
            self.deliver(drop=drop)

    def leader(self) -> int | None:
        leaders = [i for i, n in self.nodes.items() if n is not None and n.is_leader]
        return max(leaders, key=lambda i: self.node(i).raft.term) if leaders else None

    def compact(self, i: int) -> None:
        """Snapshot node ``i`` at its applied index and drop the log before it."""
        n = self.node(i)
        snap = n.compact(n.raft.log.applied, b"state@%d" % n.raft.log.applied)
        d = self.disks[i]
        d.snapshot, d.entries = snap, [e for e in d.entries if e.index > snap.meta.index]

    def data_applied(self, i: int) -> list[bytes]:
        return [e.data for e in self.applied[i] if e.type == 0 and e.data]

    def log_terms(self, i: int) -> list[int]:
        log = self.node(i).raft.log
        return [e.term for e in log.entries]
