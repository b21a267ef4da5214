"""Local topologies from a TOML file: start every member as a detached shardkv-node process,
record their pids, stop exactly those pids later."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import grpc

from shardkv.admin.client import AdminError, Client
from shardkv.admin.endpoints import check_health
from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc


@dataclass
class MemberSpec:
    name: str
    client_url: str
    peer_url: str


@dataclass
class Topology:
    token: str
    data_root: Path
    members: list[MemberSpec]
    flags: list[str]

    @property
    def endpoints(self) -> str:
        return ",".join(m.client_url for m in self.members)

    @property
    def pid_file(self) -> Path:
        return self.data_root / "pids.json"

    def args(self, m: MemberSpec) -> list[str]:
        initial = ",".join(f"{o.name}={o.peer_url}" for o in self.members)
        return ["--name", m.name, "--data-dir", str(self.data_root / m.name),
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial, "--initial-cluster-token", self.token,
                *self.flags]


def load(path: str | os.PathLike[str]) -> Topology:
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    cluster = doc.get("cluster", {})
    members = [MemberSpec(m["name"], m["client_url"], m["peer_url"]) for m in doc["member"]]
    flags = [f"--heartbeat-interval={cluster.get('heartbeat_interval', 100)}",
             f"--election-timeout={cluster.get('election_timeout', 1000)}",
             *cluster.get("extra_flags", [])]
    return Topology(cluster.get("token", "etcd-cluster"), Path(cluster["data_root"]), members,
                    flags)


def up(topo: Topology, timeout: float = 30) -> dict[str, int]:
    """Start every member (detached, logging to <data_root>/<name>.log); wait until each
    answers Status with a leader. Returns name -> pid."""
    if topo.pid_file.exists():
        raise RuntimeError(f"{topo.pid_file} exists: the topology is up (run cluster down)")
    topo.data_root.mkdir(parents=True, exist_ok=True)
    pids = {}
    for m in topo.members:
        with open(topo.data_root / f"{m.name}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "shardkv.node.cli", *topo.args(m)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        pids[m.name] = proc.pid
    topo.pid_file.write_text(json.dumps(pids))
    deadline = time.monotonic() + timeout
    for m in topo.members:
        _wait_healthy(m, deadline)
    return pids


def _wait_healthy(m: MemberSpec, deadline: float) -> None:
    target = m.client_url.split("://", 1)[-1]
    with grpc.insecure_channel(target) as ch:
        stub = rpc.MaintenanceStub(ch)
        while True:
            try:
                if stub.Status(pb.StatusRequest(), timeout=1).leader:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{m.name} ({m.client_url}) did not become healthy; see its log")
            time.sleep(0.2)


def down(topo: Topology, timeout: float = 15) -> list[str]:
    """SIGTERM the recorded pids (only if they still run shardkv-node), SIGKILL any left after
    ``timeout``. Returns the names stopped."""
    if not topo.pid_file.exists():
        return []
    pids = json.loads(topo.pid_file.read_text())
    live = {name: pid for name, pid in pids.items() if _is_our_node(pid)}
    for pid in live.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_is_our_node(p) for p in live.values()):
        time.sleep(0.1)
    for pid in live.values():
        if _is_our_node(pid):
            os.kill(pid, signal.SIGKILL)
    topo.pid_file.unlink()
    return sorted(live)


def _is_our_node(pid: int) -> bool:
    """Still alive (not a zombie) and still a shardkv-node (the pid was not reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"shardkv.node.cli" in cmdline and state != "Z"


@dataclass
class MemberState:
    """What `cluster status` reports of one member of a topology."""

    name: str
    endpoint: str
    pid: int | None  # recorded by `cluster up`; None when the topology is not up
    alive: bool  # that pid still runs shardkv-node
    healthy: bool  # it commits a read through Raft
    is_leader: bool = False
    raft_term: int = 0
    raft_index: int = 0
    error: str = ""

    @property
    def up(self) -> bool:
        return self.alive and self.healthy

    def as_json(self) -> dict:
        out = {"name": self.name, "endpoint": self.endpoint, "pid": self.pid,
               "alive": self.alive, "health": self.healthy, "isLeader": self.is_leader,
               "raftTerm": self.raft_term, "raftIndex": self.raft_index}
        if self.error:
            out["error"] = self.error
        return out


def status(topo: Topology, dial_timeout: float, command_timeout: float) -> list[MemberState]:
    """Each member's pid, liveness, health (etcdctl's check), leadership and Raft index."""
    pids = json.loads(topo.pid_file.read_text()) if topo.pid_file.exists() else {}
    states = []
    for m in topo.members:
        pid = pids.get(m.name)
        alive = pid is not None and _is_our_node(pid)
        client = Client([m.client_url], dial_timeout, command_timeout)
        health = check_health(m.client_url, client)
        state = MemberState(m.name, m.client_url, pid, alive, health.health, error=health.error)
        if health.health:
            try:
                s = client.call("Maintenance", "Status", pb.StatusRequest())
                state.is_leader = s.leader == s.header.member_id
                state.raft_term, state.raft_index = s.raftTerm, s.raftIndex
            except AdminError as exc:
                state.error = exc.message
            finally:
                client.close()
        states.append(state)
    return states
