"""Real shardkv-node clusters on loopback and the faults the chaos harness injects into them.

A ``ChaosCluster`` wraps ``tests/node/harness.py``: every member gets its own fault file
(``SHARDKV_TEST_FAULTS``: peer ids whose outgoing messages the transport drops), so a partition
is written as files and healed by emptying them. Every wait is bounded; ``close`` kills every
process started here.
"""
from __future__ import annotations

import os
import random
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

NEMESES = ("kill", "kill-leader", "pause", "partition", "move-leader", "crash-all")


@dataclass
class ChaosNode(harness.Node):
    faults_path: Path | None = None
    paused: bool = False

    def start(self) -> None:
        env = dict(os.environ, SHARDKV_TEST_FAULTS=str(self.faults_path))
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


def make_cluster(base: Path, size: int) -> ChaosCluster:
    plain = harness.make_cluster(base, size, token=f"chaos-{os.getpid()}")
    nodes = [ChaosNode(n.name, n.client_port, n.peer_port, n.data_dir, n.log_path, n.args,
                       faults_path=base / f"{n.name}.faults") for n in plain.nodes]
    for n in nodes:
        n.faults_path.write_text("")
    return ChaosCluster(nodes)


def start_cluster(base: Path, size: int, timeout: float = 60.0) -> ChaosCluster:
    cluster = make_cluster(base, size)
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
    "move-leader": move_leader, "crash-all": crash_all,
}
