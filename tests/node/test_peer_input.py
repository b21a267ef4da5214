"""Hostile input on the peer port (issue 14 §2): malformed, truncated, oversized, forged or
unexpected messages are dropped and counted; none stops the Raft loop or the member.

The fuzz tests drive a member's receive path in-process (Member._on_frames, then the Raft steps
the Raft loop would take); the live test sends the attacks of scripts/attack_peer.py to a
running 3-member cluster's peer port while a writer runs.
"""
from __future__ import annotations

import asyncio
import hashlib
import struct
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import msgspec
import pytest
import zmq
from harness import free_ports, make_cluster, wait_ready, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardkv import rejected
from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc
from shardkv.node import membership, peerwire
from shardkv.node.member import Member, MemberConfig
from shardkv.node.transport import KIND_MESSAGES, KIND_REMOVAL_QUERY, KIND_REMOVED, KIND_SNAPSHOT
from shardkv.raft import Message, MessageType, Snapshot
from shardkv.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    SnapshotMeta,
    encode,
)

HEAD = struct.Struct(">QQc")
U64 = st.integers(0, 2**64 - 1)
ANY_INT = st.one_of(st.integers(-3, 12), st.integers(-2**63, 2**64 - 1))


# ------------------------------------------------------------------ packing

def test_pack_cuts_big_batches_into_bounded_frames_and_unpack_restores_them():
    budget = peerwire.frame_budget(64 * 1024, 64 * 1024, 1024)
    big = [Message(MessageType.APP, 2, 1, term=3, index=i, log_term=3,
                   entries=(Entry(3, i + 1, EntryType.NORMAL, b"x" * 50_000),))
           for i in range(40)]
    prop = Message(MessageType.PROP, 1, 2, entries=tuple(
        Entry(0, 0, EntryType.NORMAL, b"p%d" % i + b"y" * 30_000) for i in range(20)))
    small = [Message(MessageType.HEARTBEAT_RESP, 1, 2, term=3)] * 3000
    for batch in (big, [prop], small, big[:1]):
        frames = peerwire.pack(batch, budget)
        assert all(len(f) <= budget for f in frames)
        got, reason = peerwire.unpack(frames)
        assert reason is None
        if batch == [prop]:  # cut into several proposals, entries in order
            assert len(frames) > 1 and len(got) > 1
            assert [e for m in got for e in m.entries] == list(prop.entries)
        else:
            assert got == batch
    assert len(peerwire.pack(small, budget)) >= 3  # at most MAX_MESSAGES_PER_FRAME each


def test_unpack_reads_the_message_count_before_decoding():
    header = b"\xdd" + (2**31).to_bytes(4, "big")  # "two billion messages follow"
    assert peerwire.unpack([header + b"\x90"]) == ([], "too_many_messages")
    assert peerwire.unpack([b""]) == ([], "malformed")
    assert peerwire.unpack([b"\xc1"]) == ([], "malformed")
    assert peerwire.unpack([encode([1, 2])]) == ([], "malformed")


# ------------------------------------------------------------------ fuzzing the receive path

class FuzzMember:
    """A member of a 3-member cluster (ids of the other two known), opened but not started:
    frames go to its _on_frames, and what it queues is stepped into its Raft as the Raft loop
    would, Readys advanced without disk."""

    def __init__(self, tmp) -> None:
        ports = free_ports(3)
        urls = {f"n{i}": [f"http://127.0.0.1:{p}"] for i, p in enumerate(ports)}
        self.loop = asyncio.new_event_loop()
        self.m = Member(MemberConfig(name="n0", data_dir=str(tmp), advertise_client_urls=[],
                                     listen_peer_urls=urls["n0"],
                                     initial_advertise_peer_urls=urls["n0"],
                                     initial_cluster=urls))
        self.m.open()
        self.others = [i for i in self.m.registry.members if i != self.m.id]

    def feed(self, kind: bytes, frames: list[bytes], sender: int) -> None:
        async def run() -> None:
            self.m._on_frames(self.m.cluster_id, sender, kind, frames)
            while self.m._tasks:  # a snapshot being received
                await asyncio.sleep(0.001)
        self.loop.run_until_complete(run())
        self.step_queued()

    def step_queued(self) -> None:
        node = self.m.node
        incoming, self.m._incoming = self.m._incoming, []
        for msg in incoming:
            node.step(msg)
        while node.has_ready():
            rd = node.ready()
            if rd.snapshot is not None:
                assert self.m._incoming_snapshot is not None  # Raft took only verified data
                assert self.m._incoming_snapshot[2] >= rd.snapshot.meta.index
                self.m._incoming_snapshot = None
            node.advance(rd)

    def check_invariants(self) -> None:
        log = self.m.node.raft.log
        assert all(e.index == log.offset + 1 + i for i, e in enumerate(log.entries))
        assert log.offset <= log.committed <= log.last_index()
        assert not self.m.stopped.is_set()

    def close(self) -> None:
        self.m.transport.close()
        self.m.store.close()
        self.m.raftlog.close()
        self.loop.close()


@pytest.fixture
def fuzz_member(tmp_path):
    fm = FuzzMember(tmp_path)
    yield fm
    fm.close()


def entries(index: int) -> st.SearchStrategy[tuple[Entry, ...]]:
    """Random entries, or entries that follow ``index`` as a leader's would (of any type, with
    garbage or real conf changes)."""
    conf = st.builds(lambda t, n: encode(ConfChange(t, n)), st.integers(-1, 4), U64)
    data = st.one_of(st.binary(max_size=40), conf)
    entry = st.builds(Entry, ANY_INT, ANY_INT, st.integers(-1, 3), data)
    follow = st.lists(st.tuples(st.integers(0, 8), st.integers(-1, 2), data), max_size=4).map(
        lambda xs: tuple(Entry(t, index + 1 + i, ty, d) for i, (t, ty, d) in enumerate(xs)))
    return st.one_of(st.lists(entry, max_size=4).map(tuple), follow, follow)


@st.composite
def messages(draw, fm: FuzzMember, sender: int) -> Message:
    """A message shaped like one a peer sends in the member's current Raft state (its term, the
    log term at an index near its log's end, the sender as ``frm``), so that it gets past
    Raft's own term and log-matching checks, with one field or more then made wild; or a
    wholly random one."""
    me, others, raft = fm.m.id, fm.others, fm.m.node.raft
    log = raft.log
    term = min(raft.term + draw(st.integers(0, 1)), 2**64 - 1)
    at = draw(st.sampled_from(sorted({log.committed, log.last_index()})))
    shape = draw(st.sampled_from(["append", "append", "snapshot", "vote", "answer", "forward",
                                  "other", "wild"]))
    if shape == "append":
        m = Message(MessageType.APP, me, sender, term=term, log_term=log.term(at) or 0, index=at,
                    entries=draw(entries(at)), commit=draw(st.integers(0, at + 4)))
    elif shape == "snapshot":
        m = Message(MessageType.SNAPSHOT, me, sender, term=term, snapshot=Snapshot(SnapshotMeta(
            log.last_index() + draw(st.integers(1, 5)), max(term, 1), ConfState((me, *others)))))
    elif shape == "vote":
        m = Message(draw(st.sampled_from([MessageType.VOTE, MessageType.PRE_VOTE,
                                          MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP])),
                    me, sender, term=term, index=at, log_term=log.term(at) or 0,
                    reject=draw(st.booleans()), force=draw(st.booleans()))
    elif shape == "answer":
        m = Message(draw(st.sampled_from([MessageType.APP_RESP, MessageType.HEARTBEAT_RESP,
                                          MessageType.HEARTBEAT, MessageType.READ_INDEX_RESP,
                                          MessageType.TIMEOUT_NOW])),
                    me, sender, term=term, index=draw(st.integers(0, at + 3)),
                    reject=draw(st.booleans()), reject_hint=draw(st.integers(0, at + 3)),
                    log_term=draw(st.integers(0, term)), commit=draw(st.integers(0, at + 3)),
                    context=draw(st.binary(max_size=9)))
    elif shape == "forward":
        m = Message(draw(st.sampled_from([MessageType.PROP, MessageType.READ_INDEX,
                                          MessageType.TRANSFER_LEADER])), me, sender,
                    entries=draw(st.lists(st.builds(Entry, st.just(0), st.just(0), st.just(0),
                                                    st.binary(max_size=20)),
                                          max_size=3).map(tuple)),
                    index=draw(st.sampled_from([me, *others, 0])),
                    context=draw(st.binary(max_size=9)))
    else:
        m = Message(draw(st.integers(-1, 20)), me, sender, term=term)
    wild = {
        "type": st.one_of(st.sampled_from(list(MessageType)), st.integers(-1, 20)),
        "to": st.sampled_from([*others, 0, 12345]),
        "frm": st.sampled_from([me, *others, 0, 12345]),
        "term": ANY_INT, "log_term": ANY_INT, "index": ANY_INT, "commit": ANY_INT,
        "reject_hint": ANY_INT, "entries": entries(at), "context": st.binary(max_size=70),
        "snapshot": st.none() | st.builds(Snapshot, st.builds(SnapshotMeta, ANY_INT, ANY_INT,
                                          st.builds(ConfState, st.lists(U64, max_size=3).map(
                                              tuple), st.lists(U64, max_size=2).map(tuple))),
                                          st.binary(max_size=4)),
    }
    n_wild = len(wild) if shape == "wild" else draw(st.integers(0, 2))
    for name in draw(st.lists(st.sampled_from(sorted(wild)), min_size=n_wild,
                              max_size=n_wild, unique=True)):
        m = msgspec.structs.replace(m, **{name: draw(wild[name])})
    return m


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """``data`` as sent, or cut short, or with a byte changed, or with garbage after it."""
    how = draw(st.sampled_from(["same", "same", "truncate", "flip", "extend"]))
    if how == "truncate" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        return data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]
    if how == "extend":
        return data + draw(st.binary(min_size=1, max_size=20))
    return data


@st.composite
def inputs(draw, fm: FuzzMember) -> tuple[str, object]:
    me, others = fm.m.id, fm.others
    what = draw(st.sampled_from(["M", "M", "M", "M", "S", "R", "Q", "other", "tick"]))
    if what == "tick":
        return "tick", draw(st.integers(1, 12))
    sender = draw(st.sampled_from([*others, *others, me, 0, 777]))
    if what == "M":
        batch = draw(st.lists(messages(fm, sender), min_size=1, max_size=4))
        frames = [draw(mutated(encode(batch)))]
        return "frames", (KIND_MESSAGES, frames, sender)
    if what == "S":
        msg = draw(messages(fm, sender))
        registry = draw(st.sampled_from([membership.encode(fm.m.registry), b"{}", b"\x00"]))
        body = draw(st.binary(max_size=64))
        tail = draw(st.sampled_from([hashlib.sha256(body).digest(), b"", b"x" * 32]))
        frames = [draw(mutated(encode(msg))), registry, body + tail][: draw(st.integers(1, 3))]
        return "frames", (KIND_SNAPSHOT, frames, sender)
    payload = draw(st.binary(max_size=20))
    kind = {"R": KIND_REMOVED, "Q": KIND_REMOVAL_QUERY}.get(what) or draw(
        st.binary(min_size=1, max_size=1))
    return "frames", (kind, [payload], sender)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_fuzzed_peer_input_never_raises_or_stops_the_member(data):
    """Random and mutated frames of every kind, in sequences with ticks (so the member also
    campaigns and leads), to a fresh member each time (what is drawn depends on its state):
    _on_frames never raises, Raft never raises on what it queued, the log stays contiguous,
    and the member does not stop."""
    with tempfile.TemporaryDirectory(prefix="peer-fuzz-") as tmp:
        fm = FuzzMember(Path(tmp))
        try:
            for _ in range(data.draw(st.integers(1, 8))):
                what, arg = data.draw(inputs(fm))
                if what == "tick":
                    for _ in range(arg):
                        fm.m.node.tick()
                    fm.step_queued()
                else:
                    fm.feed(*arg)
                fm.check_invariants()
        finally:
            fm.close()


def test_messages_known_to_break_raft_are_refused(fuzz_member):
    """Each of these made step() raise, or would have made the member stop, before the checks."""
    fm = fuzz_member
    me, leader = fm.m.id, fm.others[0]
    raft = fm.m.node.raft
    at, term = raft.log.committed, max(raft.term, 1)
    snap = Snapshot(SnapshotMeta(at + 100, term, ConfState((me, leader))))
    cases = {
        "bad_entries": Message(MessageType.APP, me, leader, term=term, index=at, log_term=0,
                               entries=(Entry(term, at + 1), Entry(term, at + 5))),
        "bad_conf_change": Message(MessageType.APP, me, leader, term=term, index=at,
                                   entries=(Entry(term, at + 1, EntryType.CONF_CHANGE, b"\xc1"),)),
        "bad_snapshot": Message(MessageType.SNAPSHOT, me, leader, term=term),
        "snapshot_without_data": Message(MessageType.SNAPSHOT, me, leader, term=term,
                                         snapshot=snap),
        "bad_term": Message(MessageType.APP, me, leader, term=0, index=at),
        "wrong_sender": Message(MessageType.HEARTBEAT, me, fm.others[1], term=term),
        "wrong_recipient": Message(MessageType.HEARTBEAT, leader, leader, term=term),
        "bad_number": Message(MessageType.HEARTBEAT, me, leader, term=2**64 - 1),
        "bad_type": Message(99, me, leader, term=term),
    }
    for reason, msg in cases.items():
        before = rejected.value("peer", reason)
        fm.feed(KIND_MESSAGES, [encode([msg])], leader)
        assert rejected.value("peer", reason) == before + 1, reason
    fm.check_invariants()


def test_a_removed_notice_is_believed_only_as_the_answer_to_our_own_question(fuzz_member):
    fm = fuzz_member
    m, member = fm.m, fm.others[0]
    before = rejected.value("peer", "removed_notice_unconfirmed")
    fm.feed(KIND_REMOVED, [b""], member)  # a hint: ask the member (no answer comes here)
    fm.feed(KIND_REMOVED, [b"\x00" * 16], member)  # a guessed nonce
    fm.feed(KIND_REMOVED, [b""], 4242)  # from a stranger
    assert rejected.value("peer", "removed_notice_unconfirmed") == before + 2
    assert not m.stopped.is_set() and not m._removed
    nonce = m._removal_queries[member][0]
    fm.feed(KIND_REMOVED, [nonce], fm.others[1])  # our nonce, from another member
    assert not m.stopped.is_set()
    fm.feed(KIND_REMOVED, [nonce], member)  # the answer to our question
    assert m.stopped.is_set() and m._removed


# ------------------------------------------------------------------ a live cluster

def _push(peer_url: str, frames: list[bytes]) -> None:
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect("tcp://" + peer_url.split("://")[1])
    sock.send_multipart(frames)
    sock.close()


def _rejected(metrics_url: str) -> dict[str, float]:
    with urllib.request.urlopen(metrics_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith('shardkv_rejected_input_total{') and 'source="peer"' in line:
            reason = line.split('reason="')[1].split('"')[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


class Writer(threading.Thread):
    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls, self.acked, self.stop = urls, {}, threading.Event()

    def run(self) -> None:
        chans = [grpc.insecure_channel(u.split("://")[1]) for u in self.urls]
        i = 0
        while not self.stop.is_set():
            key, value = b"w/%06d" % i, b"v%d" % i
            try:
                rpc.KVStub(chans[i % len(chans)]).Put(pb.PutRequest(key=key, value=value),
                                                      timeout=3)
                self.acked[key] = value
            except grpc.RpcError:
                time.sleep(0.05)
            i += 1
        for ch in chans:
            ch.close()


@pytest.mark.etcdctl
def test_attacks_on_the_peer_port_leave_every_member_serving(tmp_path):
    """A 17-byte R, malformed msgpack while a writer runs, 100 MB frames, garbage and forged
    snapshots, a snapshot message without data, an append with a garbage conf change: every
    member stays up, every acknowledged write is readable on every member, and the target's
    rejected-input counter moved for each kind of fault."""
    metrics = free_ports(3)
    c = make_cluster(tmp_path, 3)
    for n, port in zip(c.nodes, metrics):
        n.args += ["--listen-metrics-urls", f"http://127.0.0.1:{port}"]
    writer = Writer([n.client_url for n in c.nodes])
    try:
        for n in c.nodes:
            n.start()
        wait_ready(c)
        target, metrics_url = c.nodes[1], f"http://127.0.0.1:{metrics[1]}"
        with grpc.insecure_channel(target.client_url.split("://")[1]) as ch:
            st_ = rpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=5)
            ids = [m.ID for m in rpc.ClusterStub(ch).MemberList(pb.MemberListRequest(),
                                                                 timeout=5).members]
        cid, me = st_.header.cluster_id, st_.header.member_id
        other = next(i for i in ids if i != me)
        term, index = st_.raftTerm, st_.raftIndex

        def head(kind: bytes) -> bytes:
            return HEAD.pack(cid, other, kind)

        snap = Snapshot(SnapshotMeta(index + 10_000, term, ConfState((me, other))))
        snap_msg = encode(Message(MessageType.SNAPSHOT, me, other, term=term, snapshot=snap))
        garbage = b"not an lmdb file" * 4096
        registry = msgspec.json.encode({"cluster_id": cid, "members": {}})
        writer.start()
        time.sleep(0.5)
        _push(target.peer_url, [head(b"R")])  # the 17-byte notice
        for i in range(30):
            _push(target.peer_url, [head(b"M") + hashlib.sha256(b"%d" % i).digest() * 2])
        _push(target.peer_url, [head(b"X") + bytes(100 * 1024 * 1024)])
        _push(target.peer_url, [head(b"S") + snap_msg, b"not a registry", b"x" * 64])
        _push(target.peer_url, [head(b"S") + snap_msg, registry, garbage,
                                hashlib.sha256(garbage).digest()])
        _push(target.peer_url, [head(b"M") + encode([Message(
            MessageType.SNAPSHOT, me, other, term=term, snapshot=snap)])])
        _push(target.peer_url, [head(b"M") + encode([Message(
            MessageType.APP, me, other, term=term, log_term=term, index=index, commit=index,
            entries=(Entry(term, index + 1, EntryType.CONF_CHANGE, b"\xc1"),))])])

        expected = {"removed_notice_unconfirmed", "malformed", "connection_dropped",
                    "bad_registry", "bad_snapshot_data", "snapshot_without_data"}
        wait_until(lambda: expected <= {r for r, v in _rejected(metrics_url).items() if v > 0},
                   30, 0.2, f"rejections {expected} counted")
        time.sleep(1.0)
        writer.stop.set()
        writer.join(timeout=30)
        assert all(n.alive for n in c.nodes)
        assert len(writer.acked) > 0
        for n in c.nodes:
            with grpc.insecure_channel(n.client_url.split("://")[1]) as ch:
                kv = rpc.KVStub(ch)
                kv.Range(pb.RangeRequest(key=b"sync"), timeout=10)  # linearizable: caught up
                resp = kv.Range(pb.RangeRequest(key=b"w/", range_end=b"w0", serializable=True),
                                timeout=10)
            have = {kv_.key: kv_.value for kv_ in resp.kvs}
            assert all(have.get(k) == v for k, v in writer.acked.items()), n.name
    finally:
        writer.stop.set()
        c.close()


@pytest.mark.etcdctl
def test_a_follower_catches_up_on_big_entries_through_bounded_frames(tmp_path):
    """Legitimate traffic stays within the frame limit: a follower that was down while 40
    values of 1 MiB were written catches up, though the leader's appends to it (many in one
    Ready) come to far more than the largest frame a member takes (they are cut into frames
    of the budget), and no connection to it was dropped for an oversized frame."""
    c = make_cluster(tmp_path, 3)
    metrics_port = free_ports(1)[0]
    c.nodes[2].args += ["--listen-metrics-urls", f"http://127.0.0.1:{metrics_port}"]
    try:
        for n in c.nodes:
            n.start()
        wait_ready(c)
        lagging = c.nodes[2]
        lagging.kill()
        value = bytes(1024 * 1024)
        with grpc.insecure_channel(c.nodes[0].client_url.split("://")[1]) as ch:
            for i in range(40):
                rpc.KVStub(ch).Put(pb.PutRequest(key=b"big/%02d" % i, value=value), timeout=10)
        lagging.start()

        def caught_up() -> bool:
            try:
                with grpc.insecure_channel(lagging.client_url.split("://")[1]) as ch:
                    resp = rpc.KVStub(ch).Range(pb.RangeRequest(
                        key=b"big/", range_end=b"big0", serializable=True, keys_only=True),
                        timeout=5)
                return len(resp.kvs) == 40
            except grpc.RpcError:
                return False
        wait_until(caught_up, 60, 0.5, "the lagging member to hold every value")
        assert _rejected(f"http://127.0.0.1:{metrics_port}").get("connection_dropped", 0) == 0
    finally:
        c.close()


@pytest.mark.etcdctl
def test_a_member_removed_while_down_learns_it_when_it_comes_back(tmp_path):
    """It missed the notice sent when its removal applied; its first messages to the others
    get it a new one (etcd: 410 Gone), which it confirms by asking, then it stops."""
    c = make_cluster(tmp_path, 3)
    try:
        for n in c.nodes:
            n.start()
        wait_ready(c)
        statuses = []
        for n in c.nodes:
            with grpc.insecure_channel(n.client_url.split("://")[1]) as ch:
                statuses.append(rpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=5))
        i = next(i for i, st_ in enumerate(statuses) if st_.header.member_id != st_.leader)
        gone, gone_id = c.nodes[i], statuses[i].header.member_id  # a follower
        gone.kill()
        with grpc.insecure_channel(c.nodes[i - 1].client_url.split("://")[1]) as ch:
            rpc.ClusterStub(ch).MemberRemove(pb.MemberRemoveRequest(ID=gone_id), timeout=10)
        gone.start()
        wait_until(lambda: not gone.alive, 30, 0.2, "the removed member to stop")
        assert "permanently removed" in gone.log()
    finally:
        c.close()
