"""Real shardkv-node clusters on loopback and the faults the chaos harness injects into them.

A ``ChaosCluster`` wraps ``tests/node/harness.py``: every member gets its own fault file
(``SHARDKV_TEST_FAULTS``: peer ids whose outgoing messages the transport drops), so a partition
is written as files and healed by emptying them (a one-way partition is a file on one side
only), and its own disk-delay file (``SHARDKV_TEST_DISK_DELAY``: milliseconds every Raft log
save waits, as a slow fsync). Membership changes go through etcd's Cluster API. Every wait is
bounded; ``close`` kills every process started here.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "node"))

import harness  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2 as pb  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc  # noqa: E402

NEMESES = ("kill", "kill-leader", "pause", "partition", "partition-oneway", "bridge",
           "move-leader", "membership", "slow-disk", "crash-all")


@dataclass
class ChaosNode(harness.Node):
    faults_path: Path | None = None
    disk_path: Path | None = None
    paused: bool = False
    learner_next: bool = False  # a re-add after removal joins as a learner first
    rejoins: int = 0  # times wiped and added back as a new member
    exits: list[int] = field(default_factory=list)  # exit codes of deaths the harness did not cause

    def note_exit(self) -> None:
        """Record an exit the harness did not cause (it clears ``proc`` when it kills, and
        kills a removed member that stopped itself): a crash, e.g. -11 for SIGSEGV."""
        if self.proc is not None and self.proc.poll() is not None:
            self.exits.append(self.proc.returncode)
            self.proc = None

    def start(self) -> None:
        self.note_exit()
        env = dict(os.environ, SHARDKV_TEST_FAULTS=str(self.faults_path),
                   SHARDKV_TEST_DISK_DELAY=str(self.disk_path))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shardkv.node.cli", *self.args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.starts += 1
        self.paused = False

    def signal(self, sig: int) -> None:
        if self.alive:
            self.proc.send_signal(sig)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.client_port}"


@dataclass
class ChaosCluster:
    nodes: list[ChaosNode]
    ids: dict[str, int] = field(default_factory=dict)  # member name -> member id
    token: str = ""
    notes: list[str] = field(default_factory=list)  # what heals did (the runner shows them)

    @property
    def targets(self) -> list[str]:
        return [n.target for n in self.nodes]

    def close(self) -> None:
        for n in self.nodes:
            if n.paused:
                n.signal(signal.SIGCONT)
            n.kill()

    def status(self, node: ChaosNode, timeout: float = 1.0) -> pb.StatusResponse | None:
        if not node.alive or node.paused:
            return None
        try:
            with grpc.insecure_channel(node.target) as ch:
                return rpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=timeout)
        except grpc.RpcError:
            return None

    def leader(self, timeout: float = 10.0) -> ChaosNode | None:
        """The member that reports itself leader (bounded wait), or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for n in self.nodes:
                st = self.status(n)
                if st is not None and st.leader and st.leader == st.header.member_id:
                    return n
            time.sleep(0.1)
        return None

    def serves(self, node: ChaosNode, timeout: float = 2.0) -> bool:
        """A linearizable read through ``node`` succeeds."""
        try:
            with grpc.insecure_channel(node.target) as ch:
                rpc.KVStub(ch).Range(pb.RangeRequest(key=b"chaos-probe"), timeout=timeout)
            return True
        except grpc.RpcError:
            return False

    def wait_healthy(self, timeout: float = 45.0) -> bool:
        """Every live, unpaused member serves a linearizable read (bounded wait)."""
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            while n.alive and not n.paused and not self.serves(n):
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.2)
        return True

    def learn_ids(self) -> None:
        for n in self.nodes:
            st = self.status(n, timeout=3)
            if st is None:
                raise RuntimeError(f"{n.name} does not answer Status")
            self.ids[n.name] = st.header.member_id

    def block(self, node: ChaosNode, peers: list[ChaosNode]) -> None:
        node.faults_path.write_text("\n".join(str(self.ids[p.name]) for p in peers))

    def partition(self, sides: list[list[ChaosNode]]) -> None:
        """Cut every link between different sides (both directions)."""
        for side in sides:
            others = [p for p in self.nodes if p not in side]
            for n in side:
                self.block(n, others)

    def heal_network(self) -> None:
        for n in self.nodes:
            n.faults_path.write_text("")

    def heal_disks(self) -> None:
        for n in self.nodes:
            n.disk_path.write_text("0")

    def cluster_call(self, method: str, request, timeout: float = 5.0,
                     exclude: ChaosNode | None = None):
        """A Cluster API call through the leader if known, else any live member."""
        leader = self.leader(3)
        order = ([leader] if leader is not None else []) + [n for n in self.nodes
                                                             if n is not leader]
        last: Exception | None = None
        for n in order:
            if n is exclude or not n.alive or n.paused:
                continue
            try:
                with grpc.insecure_channel(n.target) as ch:
                    return getattr(rpc.ClusterStub(ch), method)(request, timeout=timeout)
            except grpc.RpcError as exc:
                last = exc
        raise last or RuntimeError("no member to ask")

    def members(self) -> list[pb.Member]:
        return list(self.cluster_call("MemberList", pb.MemberListRequest())
                    .members)


def make_cluster(base: Path, size: int, extra: list[str] | None = None) -> ChaosCluster:
    plain = harness.make_cluster(base, size, extra, token=f"chaos-{os.getpid()}")
    nodes = [ChaosNode(n.name, n.client_port, n.peer_port, n.data_dir, n.log_path, n.args,
                       faults_path=base / f"{n.name}.faults",
                       disk_path=base / f"{n.name}.disk") for n in plain.nodes]
    for n in nodes:
        n.faults_path.write_text("")
        n.disk_path.write_text("0")
    return ChaosCluster(nodes, token=f"chaos-{os.getpid()}")


def start_cluster(base: Path, size: int, timeout: float = 60.0,
                  extra: list[str] | None = None) -> ChaosCluster:
    cluster = make_cluster(base, size, extra)
    try:
        for n in cluster.nodes:
            n.start()
        if cluster.leader(timeout) is None or not cluster.wait_healthy(timeout):
            raise RuntimeError("cluster did not come up")
        cluster.learn_ids()
    except BaseException:
        cluster.close()
        raise
    return cluster


# --- faults: each applies itself and returns (description, heal) ---------------------------

Heal = Callable[[], None]


def _restart(nodes: list[ChaosNode]) -> Heal:
    def heal() -> None:
        for n in nodes:
            if not n.alive:
                n.start()
    return heal


def kill(c: ChaosCluster, rnd: random.Random) -> tuple[str, Heal]:
    victim = rnd.choice([n for n in c.nodes if n.alive and not n.paused])
    victim.kill(signal.SIGKILL)
    return f"kill -9 {victim.name}", _restart([victim])


def kill_leader(c: ChaosCluster, rnd: random.Random) -> tuple[str, Heal]:
    leader = c.leader(5)
    if leader is None:
        return kill(c, rnd)
    leader.kill(signal.SIGKILL)
    return f"kill -9 leader {leader.name}", _restart([leader])


def pause(c: ChaosCluster, rnd: random.Random) -> tuple[str, Heal]:
    victim = c.leader(5) or rnd.choice(c.nodes)
    if not victim.alive:
        return "pause (nothing alive to pause)", lambda: None
    victim.signal(signal.SIGSTOP)
    victim.paused = True

    def heal() -> None:
        victim.signal(signal.SIGCONT)
        victim.paused = False
    return f"SIGSTOP {victim.name}", heal


def partition(c: ChaosCluster, rnd: random.Random) -> tuple[str, Heal]:
    nodes = list(c.nodes)
    leader = c.leader(3)
    if leader is not None and rnd.random() < 0.5:
        minority = [leader]
        how = "isolate leader"
    else:
        rnd.shuffle(nodes)
        minority = nodes[:len(nodes) // 2] or nodes[:1]
        how = "split"
    majority = [n for n in c.nodes if n not in minority]
    c.partition([minority, majority])
    names = lambda side: "+".join(n.name for n in side)  # noqa: E731
    return f"partition ({how}) {names(minority)} | {names(majority)}", c.heal_network


def partition_oneway(c: ChaosCluster, rnd: random.Random) -> tuple[str, Heal]:
    """One direction only: ``node``'s messages to ``peers`` are dropped while theirs still reach
    it ("mute"), or the other way round ("deaf"). The node is the leader half the time."""
    leader = c.leader(3)
    node = leader if leader is not None and rnd.random() < 0.5 else rnd.choice(c.nodes)
    others = [n for n in c.nodes if n is not node]
    peers = others if rnd.random() < 0.5 else rnd.sample(others, rnd.randint(1, len(others)))
    names = "+".join(p.name for p in peers)
    if rnd.random() < 0.5:
        c.block(node, peers)
        how = f"{node.name} -> {names} dropped ({node.name} mute)"
    else:
        for p in peers:
            c.block(p, [node])
        how = f"{names} -> {node.name} dropped ({node.name} deaf)"
    role = " (leader)" if node is leader else ""
    return f"one-way partition{role}: {how}", c.heal_network


def bridge(c: ChaosCluster, rnd: random.Random) -> tuple[str, Heal]:
    """Two halves that cannot talk to each other, both connected to one bridge node: two
    overlapping majorities (half + bridge), as Jepsen's bridge partition."""
    nodes = list(c.nodes)
    rnd.shuffle(nodes)
    middle, rest = nodes[0], nodes[1:]
    left, right = rest[:len(rest) // 2], rest[len(rest) // 2:]
    for n in left:
        c.block(n, right)
    for n in right:
        c.block(n, left)
    names = lambda side: "+".join(n.name for n in side)  # noqa: E731
    return (f"bridge {names(left)} | {middle.name} | {names(right)} "
            f"(only {middle.name} talks to both)"), c.heal_network


def slow_disk(c: ChaosCluster, rnd: random.Random) -> tuple[str, Heal]:
    """Every Raft log save of the leader (or a random member, or all) waits ``ms`` first."""
    ms = rnd.choice([20, 100, 300, 1000])
    leader = c.leader(3)
    roll = rnd.random()
    victims = ([leader] if leader is not None and roll < 0.4 else
               list(c.nodes) if roll > 0.8 else [rnd.choice(c.nodes)])
    for n in victims:
        n.disk_path.write_text(str(ms))
    names = "+".join(n.name for n in victims)
    return f"slow disk {names}: every Raft log save +{ms} ms", c.heal_disks


# --- membership: remove a member, wipe it, add it back as a fresh member ------------------

def _peer_urls(m: pb.Member) -> set[str]:
    return set(m.peerURLs)


def _promote(c: ChaosCluster, node: ChaosNode, mid: int, deadline: float) -> str:
    """MemberPromote until the learner is in sync (bounded by ``deadline``)."""
    while True:
        try:
            c.cluster_call("MemberPromote", pb.MemberPromoteRequest(ID=mid), exclude=node)
            return "promoted"
        except grpc.RpcError as exc:
            if time.monotonic() > deadline:
                return f"NOT promoted ({exc.code().name}: {exc.details()})"
            time.sleep(0.5)


def _rejoin(c: ChaosCluster, node: ChaosNode, learner: bool, deadline: float) -> str:
    """``node`` is not a member: kill it, wipe its data dir, add it under a new peer URL (the
    member id derives from the peer URLs, and a removed id can never come back), start it with
    ``--initial-cluster-state existing``; a learner is promoted once in sync. Its flags are
    set before MemberAdd, so if the add's answer is lost but it took effect, the next
    ``ensure_members`` finds it listed and just starts it."""
    node.kill(signal.SIGKILL)
    shutil.rmtree(node.data_dir, ignore_errors=True)
    node.faults_path.write_text("")
    node.disk_path.write_text("0")
    node.peer_port = harness.free_ports(1)[0]
    value = {a: node.args[i + 1] for i, a in enumerate(node.args[:-1]) if a.startswith("--")}
    value.update({
        "--listen-peer-urls": node.peer_url, "--initial-advertise-peer-urls": node.peer_url,
        "--initial-cluster": ",".join(f"{n.name}={n.peer_url}" for n in c.nodes),
        "--initial-cluster-state": "existing"})
    node.args = [x for kv in value.items() for x in kv]
    resp = c.cluster_call("MemberAdd", pb.MemberAddRequest(peerURLs=[node.peer_url],
                                                           isLearner=learner), timeout=10)
    c.ids[node.name] = resp.member.ID
    node.start()
    node.rejoins += 1
    what = f"re-added {node.name} as {'learner' if learner else 'voter'} {resp.member.ID:x}"
    if learner:
        return what + ", " + _promote(c, node, resp.member.ID, deadline)
    return what


def ensure_members(c: ChaosCluster, timeout: float = 60.0) -> None:
    """Reconcile: every node of ``c`` is a voting member with a running process (re-adding the
    ones that were removed, promoting learners). What it did goes to ``c.notes``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            members = c.members()
            break
        except (grpc.RpcError, RuntimeError) as exc:
            if time.monotonic() > deadline:
                c.notes.append(f"membership heal: no member list ({exc})")
                return
            time.sleep(0.5)
    for node in c.nodes:
        mine = [m for m in members if node.peer_url in _peer_urls(m)]
        try:
            if not mine:
                c.notes.append(_rejoin(c, node, node.learner_next, deadline))
                continue
            c.ids[node.name] = mine[0].ID
            if not node.alive and not node.paused:
                node.start()
            if mine[0].isLearner:
                c.notes.append(f"learner {node.name}: " + _promote(c, node, mine[0].ID, deadline))
        except grpc.RpcError as exc:
            c.notes.append(f"membership heal of {node.name} failed: {exc.code().name} "
                           f"{exc.details()}")


def membership_problems(c: ChaosCluster) -> list[str]:
    """The run must end with its original members: one voter per node, and nothing else."""
    try:
        members = c.members()
    except (grpc.RpcError, RuntimeError) as exc:
        return [f"no member list: {exc}"]
    problems = []
    for node in c.nodes:
        mine = [m for m in members if node.peer_url in _peer_urls(m)]
        if len(mine) != 1 or mine[0].isLearner:
            problems.append(f"{node.name} ({node.peer_url}) is listed as {mine}")
    if len(members) != len(c.nodes):
        problems.append(f"{len(members)} members listed, the run has {len(c.nodes)}")
    return problems


def membership(c: ChaosCluster, rnd: random.Random) -> tuple[str, Heal]:
    """MemberRemove a random live follower, or one time in four the leader itself (it
    commits its own removal, steps down and stops; it is killed if it does not stop); the heal
    wipes its data dir and adds it back as a new member (a voter, or a learner then promoted),
    which catches up from the leader's log or a snapshot of it."""
    leader = c.leader(5)
    followers = [n for n in c.nodes if n is not leader and n.alive and not n.paused]
    if leader is None or not followers:
        heal = lambda: ensure_members(c)  # noqa: E731
        heal.late = True
        return "membership (no leader)", heal
    victim = leader if rnd.random() < 0.25 else rnd.choice(followers)
    victim.learner_next = rnd.random() < 0.5
    mid = c.ids[victim.name]
    try:
        try:
            c.cluster_call("MemberRemove", pb.MemberRemoveRequest(ID=mid), timeout=10,
                           exclude=victim)
        except grpc.RpcError as exc:  # e.g. the leader just changed: once more
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise
            time.sleep(1.0)
            c.cluster_call("MemberRemove", pb.MemberRemoveRequest(ID=mid), timeout=10,
                           exclude=victim)
        outcome = "ok"
        deadline = time.monotonic() + 10
        while victim.alive and time.monotonic() < deadline:
            time.sleep(0.1)
        outcome += ", it stopped" if not victim.alive else ", still running: killed"
        victim.kill(signal.SIGKILL)
    except grpc.RpcError as exc:
        outcome = f"error {exc.code().name} {exc.details()!r} (the heal re-adds it if it went)"

    def heal() -> None:
        ensure_members(c)
    heal.late = True  # after every other heal: re-adding needs a quorum
    role = " (leader)" if victim is leader else ""
    return f"member remove{role} {victim.name} ({mid:x}): {outcome}", heal


def move_leader(c: ChaosCluster, rnd: random.Random) -> tuple[str, Heal]:
    leader = c.leader(5)
    followers = [n for n in c.nodes if n is not leader and n.alive and not n.paused]
    if leader is None or not followers:
        return "move-leader (no leader)", lambda: None
    target = rnd.choice(followers)
    try:
        with grpc.insecure_channel(leader.target) as ch:
            rpc.MaintenanceStub(ch).MoveLeader(
                pb.MoveLeaderRequest(targetID=c.ids[target.name]), timeout=5)
        outcome = "ok"
    except grpc.RpcError as exc:
        outcome = f"error {exc.code().name}"
    return f"move-leader {leader.name} -> {target.name}: {outcome}", lambda: None


def crash_all(c: ChaosCluster, rnd: random.Random) -> tuple[str, Heal]:
    for n in c.nodes:
        if n.paused:
            n.signal(signal.SIGCONT)
            n.paused = False
        n.kill(signal.SIGKILL)
    return "kill -9 every member", _restart(list(c.nodes))


FAULTS: dict[str, Callable[[ChaosCluster, random.Random], tuple[str, Heal]]] = {
    "kill": kill, "kill-leader": kill_leader, "pause": pause, "partition": partition,
    "partition-oneway": partition_oneway, "bridge": bridge, "move-leader": move_leader,
    "membership": membership, "slow-disk": slow_disk, "crash-all": crash_all,
}
