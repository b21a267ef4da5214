"""One chaos run: start a cluster, run register clients and watchers, inject faults on a
schedule, heal, kill -9 every member and restart, then check everything.

    from runner import Config, run
    report = run(Config(members=3, seconds=60, nemeses=["kill", "pause", "partition"]))
    print(report.table()); assert report.ok
"""
from __future__ import annotations

import pickle
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

import nemesis
from checks import (Verdict, check_durability, check_leases, check_locks, check_reference,
                    check_watch)
from linearizability import check, describe, describe_history, reduce
from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc
from workload import OP_TIMEOUT, LeaseClient, LockClient, RegisterClient, SharedState, Watcher

HEAL_TIMEOUT = 60.0  # a healed cluster that does not serve within this is a liveness failure


@dataclass
class Config:
    members: int = 3
    seconds: float = 60.0  # fault phase
    nemeses: list[str] = field(default_factory=lambda: ["kill", "kill-leader", "pause",
                                                        "partition", "move-leader"])
    clients: int = 4
    keys: int = 3
    watchers: int = 2
    lockers: int = 2  # v3lock clients, and as many mutex clients, writing a fenced key
    seed: int = 0
    quiet: tuple[float, float] = (1.0, 3.0)  # healthy time between faults
    hold: tuple[float, float] = (2.0, 4.0)  # how long a fault lasts
    combine: float = 0.3  # chance that two different nemeses strike together
    snapshot_count: int | None = None  # --snapshot-count (small: re-added members get snapshots)
    serializable_reads: bool = False  # teeth: local reads are NOT linearizable under faults
    unfenced_locks: bool = False  # teeth: lock holders write without the Txn guard
    base: Path | None = None  # data dirs and logs (a temporary dir, removed if the run passes)


@dataclass
class Report:
    config: Config
    ops: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    base: Path | None = None

    @property
    def ok(self) -> bool:
        return bool(self.verdicts) and all(v.ok for v in self.verdicts)

    def table(self) -> str:
        c = self.config
        lines = [
            f"chaos run: {c.members} members, {c.seconds:.0f}s of faults "
            f"({', '.join(c.nemeses)}), seed {c.seed}, {self.elapsed:.0f}s in all",
            f"{'operations':<14}{self.ops:>8}   ok {self.counts.get('ok', 0)}  "
            f"failed {self.counts.get('failed', 0)}  unknown {self.counts.get('unknown', 0)}",
            f"{'faults':<14}{len(self.faults):>8}",
        ]
        lines += [f"    {f}" for f in self.faults]
        lines.append(f"{'checker':<24}{'checked':>8}  verdict")
        for v in self.verdicts:
            lines.append(f"{v.name:<24}{v.checked:>8}  {'ok' if v.ok else 'VIOLATION'}")
            lines += [f"    {p}" for p in v.problems]
        lines += self.details
        if not self.ok and self.base is not None:
            lines.append(f"member logs kept in {self.base}")
        return "\n".join(lines)


def _current_revision(cluster: nemesis.ChaosCluster) -> int:
    for n in cluster.nodes:
        try:
            with grpc.insecure_channel(n.target) as ch:
                return rpc.KVStub(ch).Range(pb.RangeRequest(key=b"chaos-probe"),
                                            timeout=5).header.revision
        except grpc.RpcError:
            continue
    raise RuntimeError("no member answers a read")


def _fault_phase(cfg: Config, cluster: nemesis.ChaosCluster, rnd: random.Random,
                 report: Report, t0: float) -> None:
    end = time.monotonic() + cfg.seconds
    while time.monotonic() < end:
        time.sleep(rnd.uniform(*cfg.quiet))
        picks = [rnd.choice(cfg.nemeses)]
        others = [n for n in cfg.nemeses if n not in picks and n != "crash-all"]
        if picks[0] != "crash-all" and others and rnd.random() < cfg.combine:
            picks.append(rnd.choice(others))
        heals = []
        for name in picks:
            desc, heal = nemesis.FAULTS[name](cluster, rnd)
            report.faults.append(f"{time.monotonic() - t0:6.1f}s {desc}")
            heals.append(heal)
        time.sleep(rnd.uniform(*cfg.hold))
        # reverse order; a membership heal (re-adding a member needs a quorum) goes last
        for heal in sorted(reversed(heals), key=lambda h: getattr(h, "late", False)):
            heal()
        for note in cluster.notes:
            report.faults.append(f"{time.monotonic() - t0:6.1f}s   heal: {note}")
        cluster.notes.clear()
        if not cluster.wait_healthy(HEAL_TIMEOUT):
            report.verdicts.append(Verdict("liveness", False, problems=[
                f"not serving {HEAL_TIMEOUT:.0f}s after healing {picks}"]))
            return


def _count(report: Report, clients: list[RegisterClient]) -> None:
    report.ops = sum(sum(c.counts.values()) for c in clients)
    for c in clients:
        for k, n in c.counts.items():
            report.counts[k] = report.counts.get(k, 0) + n


def _crashes(cluster: nemesis.ChaosCluster) -> Verdict:
    """Member processes that died on their own during the faults (not killed by a nemesis)."""
    v = Verdict("no member crashed", True, len(cluster.nodes))
    for n in cluster.nodes:
        n.note_exit()
        for rc in n.exits:
            how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
            v.add(f"{n.name} died on its own ({how}); see {n.log_path.name}")
    return v


def _log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _catch_up(watchers: list[Watcher], final: int, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    nudged = time.monotonic()
    while time.monotonic() < deadline:
        if all(w.last_revision >= final or not w.is_alive() for w in watchers):
            return
        if time.monotonic() - nudged > 8:  # a stream stuck on a member: move to the next one
            for w in watchers:
                if w.last_revision < final:
                    w.reconnect()
            nudged = time.monotonic()
        time.sleep(0.1)


def _reference(cluster: nemesis.ChaosCluster, start: int, final: int,
               source: nemesis.ChaosNode) -> list:
    w = Watcher(0, [source.target], start)
    w.start()
    _catch_up([w], final)
    w.stop()
    w.join(10)
    return [e for e in w.events if e.mod_revision <= final]


def run(cfg: Config) -> Report:
    """Run one chaos scenario and check it. Never raises on a violation: see Report.ok."""
    t0 = time.monotonic()
    rnd = random.Random(cfg.seed)
    base = cfg.base or Path(tempfile.mkdtemp(prefix="shardkv-chaos-"))
    report = Report(cfg, base=base)
    extra = [] if cfg.snapshot_count is None else ["--snapshot-count", str(cfg.snapshot_count)]
    cluster = nemesis.start_cluster(base, cfg.members, extra=extra)
    stop = threading.Event()
    clients: list[RegisterClient] = []
    watchers: list[Watcher] = []
    try:
        start = _current_revision(cluster) + 1
        watchers = [Watcher(i, cluster.targets, start) for i in range(cfg.watchers)]
        shared = SharedState()
        keys = [f"r{i}" for i in range(cfg.keys)]
        clients = [RegisterClient(i, cluster.targets, keys, shared, stop, cfg.seed * 1000 + i,
                                  cfg.serializable_reads) for i in range(cfg.clients)]
        leases = LeaseClient(cluster.targets, stop)
        lockers = [LockClient(i, cluster.targets, stop, cfg.seed * 1000 + 500 + 10 * k + i,
                              fenced=not cfg.unfenced_locks, kind=kind)
                   for k, kind in enumerate(["v3lock", "mutex"]) for i in range(cfg.lockers)]
        for t in [*watchers, *clients, leases, *lockers]:
            t.start()
        _fault_phase(cfg, cluster, rnd, report, t0)
        time.sleep(1.0)  # some healthy traffic after the last fault
        stop.set()
        for c in [*clients, leases, *lockers]:
            c.join(4 * OP_TIMEOUT + 15)
        report.verdicts.append(_crashes(cluster))
        _count(report, clients)
        if any(v.name == "liveness" for v in report.verdicts):
            return report
        if "membership" in cfg.nemeses:  # the checks assume the original members
            members = Verdict("membership (voters)", True,
                              len(cluster.nodes))
            for problem in nemesis.membership_problems(cluster):
                members.add(problem)
            report.verdicts.append(members)
        final = _current_revision(cluster)
        _catch_up(watchers, final)
        for w in watchers:
            w.stop()
            w.join(10)
        # durability: kill -9 every member, restart, everything acknowledged must be there
        desc, heal = nemesis.crash_all(cluster, rnd)
        report.faults.append(f"{time.monotonic() - t0:6.1f}s {desc} (final)")
        heal()
        if cluster.leader(HEAL_TIMEOUT) is None or not cluster.wait_healthy(HEAL_TIMEOUT):
            report.verdicts.append(Verdict("liveness", False, problems=[
                "cluster does not serve after the final whole-cluster restart"]))
            return report
        after = _current_revision(cluster)
        # read the history back from a member that was wiped and re-added, if any: all it
        # has came from the leader's log or a snapshot of it
        source = max(cluster.nodes, key=lambda n: n.rejoins)
        reference = _reference(cluster, start, max(final, after), source)
        if source.rejoins:
            report.details.append(f"history read back from {source.name} (wiped and re-added "
                                  f"{source.rejoins} times)")
        _check_all(report, source.target, clients, watchers, reference, start,
                   final, after, lockers)
        report.verdicts.append(check_leases(source.target, leases))
        for kind in ["v3lock", "mutex"]:
            mine = [lk for lk in lockers if lk.kind == kind]
            fencing, info = check_locks(reference, [t for lk in mine for t in lk.tenures],
                                        sum(lk.stalls for lk in mine), kind)
            for lk in mine:
                if lk.crashed:
                    fencing.add(f"lock client {lk.cid} crashed: {lk.crashed}")
            report.verdicts.append(fencing)
            report.details.append(info)
        return report
    finally:
        stop.set()
        for w in watchers:
            w.stop()
        cluster.close()
        report.elapsed = time.monotonic() - t0
        if report.ok and cfg.base is None:
            shutil.rmtree(base, ignore_errors=True)


def _check_all(report: Report, target: str, clients: list[RegisterClient], watchers: list[Watcher],
               reference: list, start: int, final: int, after: int,
               lockers: list[LockClient] = ()) -> None:
    ops = [op for c in clients for op in c.ops]
    (report.base / "history.pickle").write_bytes(pickle.dumps(ops))
    _log(f"checking {len(ops)} register operations")
    lin = check(ops)
    _log("linearizability checked")
    if lin.inconclusive:  # the search gave up: no violation found, none ruled out; not a failure
        report.verdicts.append(Verdict("linearizable registers (INCONCLUSIVE)", True,
                                       lin.ops_checked, describe(lin).splitlines()))
    else:
        report.verdicts.append(Verdict("linearizable registers", lin.ok, lin.ops_checked,
                                       [] if lin.ok else describe(lin).splitlines()))
        if not lin.ok:  # shrink the failure to a history a person can read
            small = reduce(ops, lin)
            (report.base / "reduced.pickle").write_bytes(pickle.dumps(small))
            report.details.append(f"reduced failing history ({len(small)} of {len(ops)} "
                                  f"operations, key {lin.key!r}; reduced.pickle):")
            report.details.append(describe_history(small))
    ref = check_reference(reference, start, after)
    if after < final:
        ref.add(f"revision went back from {final} to {after} across the restart")
    report.verdicts.append(ref)
    for i, w in enumerate(watchers):
        events = [e for e in w.events if e.mod_revision <= final]
        report.verdicts.append(check_watch(f"watch {i} ({w.reconnects} resumes)", events,
                                           reference, start, final, w.errors))
    acked = [a for c in [*clients, *lockers] for a in c.acked]
    report.verdicts.append(check_durability(target, acked, reference))
