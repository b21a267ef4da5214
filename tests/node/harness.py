"""Start and stop real shardkv-node processes on free ports, and drive them with etcdctl.

Every wait is bounded; every process started here is killed by ``Cluster.close``.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ETCDCTL = shutil.which("etcdctl")


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n: int) -> list[int]:
    """n distinct ports free right now, chosen below the kernel's ephemeral range: a port the
    kernel hands out for ``bind(0)`` (ZeroMQ's random ports, a member's private gRPC port, any
    other test's) can be taken between this pick and the member's bind, and was (a restored
    cluster's member failed with "address already in use" under a parallel CI run)."""
    low, high = 10000, max(10000 + 1000, _ephemeral_start())
    socks, ports = [], []
    try:
        while len(ports) < n:
            port = random.randrange(low, high)
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class Node:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    args: list[str]
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shardkv.node.cli", *self.args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.starts += 1

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 15) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Cluster:
    nodes: list[Node] = field(default_factory=list)

    @property
    def endpoints(self) -> str:
        return ",".join(n.client_url for n in self.nodes)

    def close(self) -> None:
        for n in self.nodes:
            n.kill()


def make_cluster(base: Path, size: int, extra: list[str] | None = None,
                 token: str = "test-cluster") -> Cluster:
    base.mkdir(parents=True, exist_ok=True)
    ports = free_ports(2 * size)
    nodes = []
    names = [f"n{i}" for i in range(size)]
    initial = ",".join(f"{nm}=http://127.0.0.1:{ports[2 * i + 1]}" for i, nm in enumerate(names))
    for i, name in enumerate(names):
        cp, pp = ports[2 * i], ports[2 * i + 1]
        data = base / name
        args = [
            "--name", name, "--data-dir", str(data),
            "--listen-client-urls", f"http://127.0.0.1:{cp}",
            "--advertise-client-urls", f"http://127.0.0.1:{cp}",
            "--listen-peer-urls", f"http://127.0.0.1:{pp}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
            "--initial-cluster", initial, "--initial-cluster-token", token,
            "--heartbeat-interval", "50", "--election-timeout", "500",
            *(extra or []),
        ]
        nodes.append(Node(name, cp, pp, data, base / f"{name}.log", args))
    return Cluster(nodes)


def etcdctl(endpoints: str, *args: str, input: str | None = None,
            timeout: float = 20) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return subprocess.run([ETCDCTL, "--endpoints=" + endpoints, "--dial-timeout=2s",
                           "--command-timeout=10s", *args], input=input, capture_output=True,
                          text=True, env=env, timeout=timeout)


def wait_until(pred, timeout: float = 20, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def wait_ready(cluster: Cluster, timeout: float = 30) -> None:
    """Every live member answers a linearizable get and has published itself (counting the
    announcements since its latest start)."""
    for n in cluster.nodes:
        if n.alive:
            wait_until(lambda n=n: etcdctl(n.client_url, "get", "ready-probe").returncode == 0,
                       timeout, 0.2, f"{n.name} to serve")
            wait_until(lambda n=n: n.log().count("ready to serve client requests") >= n.starts,
                       timeout, 0.1, f"{n.name} to publish itself")


def joining_node(cluster: Cluster, base: Path, name: str) -> Node:
    """A node (not started) for a member to be added to ``cluster`` with etcdctl member add:
    same flags as the cluster's, --initial-cluster-state existing, itself in --initial-cluster."""
    cp, pp = free_ports(2)
    template = cluster.nodes[0]
    args = list(template.args)
    value = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}
    value.update({
        "--name": name, "--data-dir": str(base / name),
        "--listen-client-urls": f"http://127.0.0.1:{cp}",
        "--advertise-client-urls": f"http://127.0.0.1:{cp}",
        "--listen-peer-urls": f"http://127.0.0.1:{pp}",
        "--initial-advertise-peer-urls": f"http://127.0.0.1:{pp}",
        "--initial-cluster": value["--initial-cluster"] + f",{name}=http://127.0.0.1:{pp}",
        "--initial-cluster-state": "existing",
    })
    flat = [x for kv in value.items() for x in kv]
    return Node(name, cp, pp, base / name, base / f"{name}.log", flat)
