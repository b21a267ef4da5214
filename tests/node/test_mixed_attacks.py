"""Every acknowledged write survives a run that mixes the hostile inputs of issue 14 with a
writer: poison requests, garbage on the peer port, HTTP/2 abuse on the client port and a watch
stream whose client never reads, all at once against a live 3-member cluster. At the end every
member is up, and every write that was acknowledged is readable, with its value, on every
member."""
from __future__ import annotations

import hashlib
import socket
import struct
import threading
import time

import grpc
import hpack
import pytest
import zmq

import harness
from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc

RUN_SECONDS = 15
TIMEOUT = 10
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, CONTINUATION = 0, 1, 4, 6, 9


def value_of(n: int) -> bytes:
    """Write n's value: 1 KB, every tenth 100 KB, derived from n so the check needs no copy."""
    size = 100_000 if n % 10 == 0 else 1_000
    return (hashlib.sha256(str(n).encode()).digest() * (size // 32 + 1))[:size]


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BHBBI", len(payload) >> 16, len(payload) & 0xFFFF, kind, flags,
                       sid) + payload


class Run:
    def __init__(self, cluster: harness.Cluster) -> None:
        self.cluster = cluster
        self.stop = threading.Event()
        self.acked: list[int] = []
        self.errors: list[str] = []
        ch = grpc.insecure_channel(f"127.0.0.1:{cluster.nodes[0].client_port}")
        members = rpc.ClusterStub(ch).MemberList(pb.MemberListRequest(), timeout=TIMEOUT)
        self.cluster_id = members.header.cluster_id
        ch.close()

    def loop(self, fn, *args) -> None:
        """Run one attack round after another until the run ends; an attack's own failure to
        connect or send is expected (the member may refuse it) and ignored."""
        while not self.stop.is_set():
            try:
                fn(*args)
            except (OSError, grpc.RpcError, zmq.ZMQError):
                time.sleep(0.05)

    # ---- the writer ------------------------------------------------------------------------

    def writer(self) -> None:
        channels = [grpc.insecure_channel(f"127.0.0.1:{n.client_port}")
                    for n in self.cluster.nodes]
        n = 0
        while not self.stop.is_set():
            n += 1
            kv = rpc.KVStub(channels[n % len(channels)])
            try:
                kv.Put(pb.PutRequest(key=b"acked/%d" % n, value=value_of(n)), timeout=TIMEOUT)
                self.acked.append(n)
            except grpc.RpcError:
                pass  # not acknowledged: the check does not count on it
        for ch in channels:
            ch.close()

    # ---- the attacks -----------------------------------------------------------------------

    def poison(self, node: harness.Node) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{node.client_port}") as ch:
            calls = [
                ("/etcdserverpb.KV/Put", pb.PutRequest(key=b"p", value=b"v", lease=-5)),
                ("/etcdserverpb.KV/Txn", pb.TxnRequest(compare=[pb.Compare(
                    key=b"p", target=9, result=9)])),
                ("/etcdserverpb.Lease/LeaseRevoke", pb.LeaseRevokeRequest(ID=-7)),
                ("/etcdserverpb.Cluster/MemberAdd", pb.MemberAddRequest(peerURLs=["http://"])),
                ("/etcdserverpb.Cluster/MemberUpdate",
                 pb.MemberUpdateRequest(ID=1, peerURLs=["garbage"])),
            ]
            for path, request in calls:
                try:
                    ch.unary_unary(path)(request.SerializeToString(), timeout=2)
                except grpc.RpcError:
                    pass
        time.sleep(0.05)

    def peer_garbage(self, node: harness.Node) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{node.peer_port}")
        head = struct.Struct(">QQc")
        stranger = 0x1234
        try:
            for _ in range(20):
                sock.send(head.pack(self.cluster_id, stranger, b"R"), zmq.NOBLOCK)
                sock.send(head.pack(self.cluster_id, stranger, b"M") + b"\x93\xff\x00\xc1",
                          zmq.NOBLOCK)
                sock.send(head.pack(self.cluster_id, stranger, b"S"), zmq.NOBLOCK)
                time.sleep(0.02)
            sock.send(head.pack(self.cluster_id, stranger, b"M") + b"\x00" * (20 << 20),
                      zmq.NOBLOCK)
        except zmq.Again:
            pass
        time.sleep(0.2)
        sock.close(0)

    def h2_abuse(self, node: harness.Node) -> None:
        with socket.create_connection(("127.0.0.1", node.client_port), timeout=2) as s:
            s.sendall(PREFACE + frame(SETTINGS, 0, 0))
            block = hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"),
                                            (":path", "/etcdserverpb.KV/Range"),
                                            (":authority", "x"),
                                            ("content-type", "application/grpc")])
            deadline = time.monotonic() + 1.5
            # a header block that never ends, PINGs nobody reads the answers to, and many
            # streams that send data and never finish
            s.sendall(frame(HEADERS, 0, 1, block))
            junk = frame(CONTINUATION, 0, 1, b"\x00" * 16_000)
            while time.monotonic() < deadline and not self.stop.is_set():
                s.sendall(junk * 8 + frame(PING, 0, 0, b"\x00" * 8) * 64)
        with socket.create_connection(("127.0.0.1", node.client_port), timeout=2) as s:
            s.sendall(PREFACE + frame(SETTINGS, 0, 0))
            for sid in range(1, 400, 2):
                s.sendall(frame(HEADERS, 4, sid, block) + frame(DATA, 0, sid, b"\x00" * 60_000))

    def slow_watcher(self, node: harness.Node) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{node.client_port}") as ch:
            requests = [pb.WatchRequest(create_request=pb.WatchCreateRequest(
                key=b"acked/", range_end=b"acked0")) for _ in range(300)]
            call = rpc.WatchStub(ch).Watch(iter(requests))  # its responses are never read
            self.stop.wait(5)
            call.cancel()

    # ---- the check -------------------------------------------------------------------------

    def check(self) -> None:
        for node in self.cluster.nodes:
            assert node.alive, f"{node.name} stopped:\n{node.log()[-3000:]}"
        assert self.acked, "the writer got no write acknowledged"
        acked = set(self.acked)
        for node in self.cluster.nodes:
            with grpc.insecure_channel(f"127.0.0.1:{node.client_port}") as ch:
                kv = rpc.KVStub(ch)
                kv.Range(pb.RangeRequest(key=b"barrier"), timeout=TIMEOUT)  # linearizable
                found: dict[int, bytes] = {}
                start = b"acked/"
                while True:
                    resp = kv.Range(pb.RangeRequest(key=start, range_end=b"acked0", limit=200,
                                                    serializable=True), timeout=TIMEOUT)
                    for item in resp.kvs:
                        found[int(item.key.split(b"/")[1])] = item.value
                    if not resp.more:
                        break
                    start = resp.kvs[-1].key + b"\x00"
                missing = sorted(acked - set(found))
                assert not missing, f"{node.name} lost acknowledged writes {missing[:20]}"
                wrong = [n for n in acked if found[n] != value_of(n)]
                assert not wrong, f"{node.name} holds wrong values for {wrong[:20]}"


@pytest.mark.etcdctl
def test_acknowledged_writes_survive_every_hostile_input_at_once(tmp_path):
    cluster = harness.make_cluster(tmp_path, 3)
    try:
        for node in cluster.nodes:
            node.start()
        harness.wait_ready(cluster)
        run = Run(cluster)
        a, b, c = cluster.nodes
        threads = [threading.Thread(target=run.writer, daemon=True)]
        for fn, node in [(run.poison, a), (run.peer_garbage, b), (run.h2_abuse, c),
                         (run.h2_abuse, a), (run.slow_watcher, b)]:
            threads.append(threading.Thread(target=run.loop, args=(fn, node), daemon=True))
        for t in threads:
            t.start()
        time.sleep(RUN_SECONDS)
        run.stop.set()
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "an attack or the writer did not stop"
        harness.wait_ready(cluster)
        run.check()
    finally:
        cluster.close()
