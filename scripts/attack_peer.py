"""Send hostile messages to a member's peer port and print what they did to it (issue 14 §2).

Each attack goes to one member (a follower by default) over a fresh ZeroMQ PUSH socket, as a
stranger would send it (the cluster id and member ids are public: any client's response
header and MemberList carry them), while a writer puts keys through every member. Per attack:
whether the target survived, its peak RSS, leader changes, and the change of
``shardkv_rejected_input_total{source="peer"}`` on its /metrics. At the end every write the
cluster acknowledged must be readable on every member.

    # a fresh 3-member cluster from a source tree (e.g. the code before the fix):
    python3 scripts/attack_peer.py --tree /work/base
    python3 scripts/attack_peer.py --tree .
    # or a running cluster (metrics URL optional):
    python3 scripts/attack_peer.py --client-urls http://127.0.0.1:2379,... \\
        --target-peer-url http://127.0.0.1:2380 --target-client-url http://127.0.0.1:2379

A member an attack stopped is restarted (--tree only) before the next attack; the run ends
at an attack after which it does not come back.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "node"))

import harness  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2 as pb  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc  # noqa: E402
from shardkv.raft.types import (  # noqa: E402
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
    encode,
)

HEAD = __import__("struct").Struct(">QQc")
LINGER_MS = 2000  # a member that died meanwhile gets what is left when it restarts: wait it out


@dataclass
class Target:
    peer_url: str
    client_url: str
    metrics_url: str | None
    node: harness.Node | None = None  # when this script started it


@dataclass
class ClusterView:
    cluster_id: int
    target_id: int
    other_id: int  # a member of the configuration other than the target
    term: int
    index: int


def status(client_url: str) -> pb.StatusResponse:
    with grpc.insecure_channel(client_url.split("://")[1]) as ch:
        return rpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=2)


def view(client_urls: list[str], target: Target) -> ClusterView:
    st = status(target.client_url)
    with grpc.insecure_channel(target.client_url.split("://")[1]) as ch:
        members = rpc.ClusterStub(ch).MemberList(pb.MemberListRequest(), timeout=2).members
    other = next(m.ID for m in members if m.ID != st.header.member_id)
    return ClusterView(st.header.cluster_id, st.header.member_id, other, st.raftTerm,
                       st.raftIndex)


def push(peer_url: str, frames: list[bytes]) -> None:
    """One multipart message to the peer port; wait (bounded) until it left."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.connect("tcp://" + peer_url.split("://")[1])
    sock.send_multipart(frames)
    sock.close()  # lingers until sent (or LINGER_MS)


def head(v: ClusterView, kind: bytes, sender: int | None = None) -> bytes:
    return HEAD.pack(v.cluster_id, v.other_id if sender is None else sender, kind)


# ---------------------------------------------------------------------- the attacks

def removed_notice(v: ClusterView, t: Target) -> None:
    """The 17-byte "you were removed" notice, claimed from another member."""
    push(t.peer_url, [head(v, b"R")])


def garbage_msgpack(v: ClusterView, t: Target) -> None:
    """Malformed msgpack in message batches, while the writer runs."""
    rnd = __import__("random").Random(14)
    for i in range(40):
        push(t.peer_url, [head(v, b"M") + bytes(rnd.randrange(256) for _ in range(64))])
        time.sleep(0.02)


def big_frame(v: ClusterView, t: Target) -> None:
    """Three 100 MB frames (of an unknown kind, so only their size matters)."""
    for _ in range(3):
        push(t.peer_url, [head(v, b"X") + b"\x00" * (100 * 1024 * 1024)])


def garbage_snapshot(v: ClusterView, t: Target) -> None:
    """A snapshot message ahead of the target's log with a garbage registry and store image."""
    snap = Snapshot(SnapshotMeta(v.index + 1000, v.term, ConfState((v.target_id, v.other_id))))
    msg = Message(MessageType.SNAPSHOT, v.target_id, v.other_id, term=v.term, snapshot=snap)
    push(t.peer_url, [head(v, b"S") + encode(msg), b"not a registry", b"x" * 4096, b"y" * 32])


def checksummed_garbage_snapshot(v: ClusterView, t: Target) -> None:
    """A snapshot whose image is garbage with a correct sha256 (a checksum proves no origin)."""
    body = b"not an lmdb file" * 4096
    registry = ('{"cluster_id":%d,"members":{},"removed":[],"applied":0}' % v.cluster_id).encode()
    snap = Snapshot(SnapshotMeta(v.index + 1000, v.term, ConfState((v.target_id, v.other_id))))
    msg = Message(MessageType.SNAPSHOT, v.target_id, v.other_id, term=v.term, snapshot=snap)
    push(t.peer_url, [head(v, b"S") + encode(msg), registry, body, hashlib.sha256(body).digest()])


def snapshot_in_batch(v: ClusterView, t: Target) -> None:
    """A SNAPSHOT Raft message inside an ordinary batch (no store image comes with it)."""
    snap = Snapshot(SnapshotMeta(v.index + 1000, v.term, ConfState((v.target_id, v.other_id))))
    msg = Message(MessageType.SNAPSHOT, v.target_id, v.other_id, term=v.term, snapshot=snap)
    push(t.peer_url, [head(v, b"M") + encode([msg])])


def bad_conf_change_entry(v: ClusterView, t: Target) -> None:
    """Appends carrying a garbage conf change entry, claimed from another member, one for each
    index from the target's commit index on (one of them matches its log's end)."""
    st = status(t.client_url)
    term = st.raftTerm
    batch = [Message(MessageType.APP, v.target_id, v.other_id, term=term, log_term=term,
                     index=i, commit=i,
                     entries=(Entry(term, i + 1, EntryType.CONF_CHANGE, b"\xc1garbage"),))
             for i in range(st.raftIndex, st.raftIndex + 300)]
    push(t.peer_url, [head(v, b"M") + encode(batch)])


def multipart_flood(v: ClusterView, t: Target) -> None:
    """One message of 400 frames of 1 MiB (libzmq buffers a multipart message whole)."""
    push(t.peer_url, [head(v, b"M")] + [b"z" * (1 << 20)] * 400)


ATTACKS: dict[str, Callable[[ClusterView, Target], None]] = {
    "removed-notice": removed_notice,
    "garbage-msgpack": garbage_msgpack,
    "100MB-frames": big_frame,
    "garbage-snapshot": garbage_snapshot,
    "checksummed-garbage-snapshot": checksummed_garbage_snapshot,
    "snapshot-in-batch": snapshot_in_batch,
    "bad-append-entries": bad_conf_change_entry,
    "multipart-400MiB": multipart_flood,
}


# ---------------------------------------------------------------------- measuring

def rejected_total(metrics_url: str | None) -> float | None:
    if not metrics_url:
        return None
    try:
        with urllib.request.urlopen(metrics_url + "/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("shardkv_rejected_input_total{") and 'source="peer"' in line)


def pid_listening(port: int) -> int | None:
    for c in psutil.net_connections("tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid:
            return c.pid
    return None


class Watcher(threading.Thread):
    """Samples the target's RSS and every member's leader while an attack runs."""

    def __init__(self, pid: int | None, client_urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid) if pid else None
        self.urls = client_urls
        self.peak = 0
        self.leaders: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                if self.proc is not None:
                    self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                pass
            if i % 4 == 0:
                for url in self.urls:
                    try:
                        lead = status(url).leader
                    except grpc.RpcError:
                        continue
                    if lead and (not self.leaders or self.leaders[-1] != lead):
                        self.leaders.append(lead)
                    break
            i += 1
            time.sleep(0.05)


class Writer(threading.Thread):
    def __init__(self, client_urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls = client_urls
        self.acked: dict[bytes, bytes] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        chans = [grpc.insecure_channel(u.split("://")[1]) for u in self.urls]
        stubs = [rpc.KVStub(ch) for ch in chans]
        i = 0
        while not self.stop.is_set():
            key, value = b"attack/%06d" % i, b"v%d" % i
            try:
                stubs[i % len(stubs)].Put(pb.PutRequest(key=key, value=value), timeout=2)
                self.acked[key] = value
            except grpc.RpcError:
                time.sleep(0.05)
            i += 1
        for ch in chans:
            ch.close()


def check_acked(client_urls: list[str], acked: dict[bytes, bytes]) -> list[str]:
    out = []
    for url in client_urls:
        try:
            with grpc.insecure_channel(url.split("://")[1]) as ch:
                kv = rpc.KVStub(ch)
                kv.Range(pb.RangeRequest(key=b"sync"), timeout=10)  # linearizable: caught up
                resp = kv.Range(pb.RangeRequest(key=b"attack/", range_end=b"attack0",
                                                serializable=True), timeout=20)
            have = {x.key: x.value for x in resp.kvs}
            lost = sum(1 for k, val in acked.items() if have.get(k) != val)
            out.append(f"{url}: {lost} of {len(acked)} acknowledged writes missing")
        except grpc.RpcError as exc:
            out.append(f"{url}: unreachable ({exc.code().name})")
    return out


def alive(t: Target) -> bool:
    """The process runs and answers a status request within 15 s."""
    deadline = time.monotonic() + 15
    while t.node is None or t.node.alive:
        try:
            status(t.client_url)
            return True
        except grpc.RpcError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
    return False


def run(client_urls: list[str], target: Target, names: list[str],
        restart: Callable[[], bool] | None) -> None:
    """The attacks in order; stops at one after which the target does not come back."""
    writer = Writer(client_urls)
    writer.start()
    print(f"{'attack':30} {'target':>8} {'RSS before':>10} {'peak RSS':>9} {'leaders':>8} "
          f"{'rejected':>8}")
    for name in names:
        time.sleep(1.0)
        v = view(client_urls, target)
        pid = target.node.proc.pid if target.node and target.node.proc else \
            pid_listening(int(target.client_url.rsplit(":", 1)[1]))
        before_rss = psutil.Process(pid).memory_info().rss if pid else 0
        before_rej = rejected_total(target.metrics_url)
        w = Watcher(pid, client_urls)
        w.start()
        ATTACKS[name](v, target)
        time.sleep(3.0)  # let it land (and a member it kills stop)
        w.stop.set()
        w.join()
        ok = alive(target)
        after_rej = rejected_total(target.metrics_url)
        moved = "-" if before_rej is None or after_rej is None else f"+{after_rej - before_rej:g}"
        changes = max(0, len(w.leaders) - 1)
        print(f"{name:30} {'up' if ok else 'DOWN':>8} {before_rss / 2**20:8.0f}MB "
              f"{w.peak / 2**20:7.0f}MB {changes:>8} {moved:>8}", flush=True)
        if not ok and (restart is None or not restart()):
            break
    writer.stop.set()
    writer.join()
    for line in check_acked(client_urls, writer.acked):
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", help="start a 3-member cluster from this source tree")
    ap.add_argument("--client-urls", help="a running cluster's client URLs (comma-separated)")
    ap.add_argument("--target-peer-url")
    ap.add_argument("--target-client-url")
    ap.add_argument("--target-metrics-url")
    ap.add_argument("--workdir", help="data dirs and member logs here (kept); default: a "
                    "temporary directory")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated: "
                    + ", ".join(ATTACKS))
    args = ap.parse_args()
    names = args.attacks.split(",")
    if not args.tree:
        target = Target(args.target_peer_url, args.target_client_url, args.target_metrics_url)
        run(args.client_urls.split(","), target, names, None)
        return
    tree = Path(args.tree).resolve()
    os.environ["PYTHONPATH"] = str(tree)
    os.chdir(tree)  # `python -m` puts the working directory first on the members' sys.path
    with tempfile.TemporaryDirectory(prefix="attack-peer-") as tmp:
        if args.workdir:
            tmp = args.workdir
        metrics = harness.free_ports(3)
        c = harness.make_cluster(Path(tmp), 3)
        for n, port in zip(c.nodes, metrics):
            n.args += ["--listen-metrics-urls", f"http://127.0.0.1:{port}"]
        try:
            for n in c.nodes:
                n.start()
            harness.wait_ready(c)
            lead = status(c.nodes[0].client_url).leader
            node, port = next((n, p) for n, p in zip(c.nodes, metrics)
                              if status(n.client_url).header.member_id != lead)
            target = Target(node.peer_url, node.client_url, f"http://127.0.0.1:{port}", node)

            def restart() -> bool:
                time.sleep(LINGER_MS / 1000)
                node.kill()
                node.start()
                try:
                    harness.wait_ready(c, timeout=60)
                    harness.wait_until(lambda: alive(target), 60, 0.5, f"{node.name} to serve")
                except AssertionError:
                    print(f"{'':30} ({node.name} does not come back: see {node.log_path})")
                    return False
                print(f"{'':30} (restarted {node.name})")
                return True

            run([n.client_url for n in c.nodes], target, names, restart)
        finally:
            c.close()


if __name__ == "__main__":
    main()
