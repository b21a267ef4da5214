"""Issue 14, part 1: requests that once were committed and then stopped every member applying
them ("poison pills"), and their neighbours among the fields etcd checks.

Each one goes to a live 3-member cluster over gRPC and gets etcd 3.4's answer (its error, or its
success where etcd accepts the input: negative lease IDs, unknown compare enums, peer URLs etcd
cannot dial); afterwards every member is up and serves a put and a get. Then the applier itself:
entries that validation would refuse, placed in the Raft log anyway, give error results and the
member goes on, also when it replays them after a restart."""
from __future__ import annotations

import asyncio
import itertools
import shutil
from pathlib import Path

import grpc
import msgspec
import pytest
import zmq

import harness
from shardkv import rejected
from shardkv.api import errors as api_errors
from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc
from shardkv.api.v3electionpb import v3election_pb2 as epb
from shardkv.api.v3electionpb import v3election_pb2_grpc as erpc
from shardkv.api.v3lockpb import v3lock_pb2 as lpb
from shardkv.api.v3lockpb import v3lock_pb2_grpc as lrpc
from shardkv.mvcc.kv import (
    AlarmRequest,
    LeaseGrantRequest,
    PutRequest,
    PutResponse,
    RangeRequest,
)
from shardkv.node.member import (
    MAX_DIALED_PEER_URLS,
    ConfContext,
    Member,
    MemberConfig,
    Proposal,
    _dialable,
)
from shardkv.node import membership
from shardkv.node.intake import IntakeHub
from shardkv.node.membership import MemberRecord
from shardkv.raft import ConfChange, ConfChangeType
from shardkv.raft.types import encode

TIMEOUT = 10
MAX_TXN_OPS = 16
_probes = itertools.count()
_clusters = itertools.count()


class Clusters:
    """One 3-member cluster shared by the tests, replaced by a fresh one after a test that left
    a member stopped or not serving (so that each test's verdict is its own)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.current: harness.Cluster | None = None
        self.suspect = False

    def healthy(self) -> harness.Cluster:
        if self.current is None or self.suspect:
            if self.current is not None:
                self.current.close()
            self.current = harness.make_cluster(self.base / f"c{next(_clusters)}", 3,
                                                [f"--max-txn-ops={MAX_TXN_OPS}"])
            for node in self.current.nodes:
                node.start()
            harness.wait_ready(self.current)
            self.suspect = False
        return self.current


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    made = Clusters(tmp_path_factory.mktemp("poison"))
    try:
        yield made
    finally:
        if made.current is not None:
            made.current.close()


@pytest.fixture
def ch(clusters):
    """A channel to the first member; after the test, every member must be up and serve."""
    cluster = clusters.healthy()
    clusters.suspect = True
    with grpc.insecure_channel(f"127.0.0.1:{cluster.nodes[0].client_port}") as channel:
        yield channel
    assert_all_serve(cluster)
    clusters.suspect = False


def assert_all_serve(cluster: harness.Cluster) -> None:
    for node in cluster.nodes:
        assert node.alive, f"{node.name} stopped:\n{node.log()[-3000:]}"
    for node in cluster.nodes:
        key, value = b"probe/%s" % node.name.encode(), b"%d" % next(_probes)
        with grpc.insecure_channel(f"127.0.0.1:{node.client_port}") as c:
            kv = rpc.KVStub(c)
            kv.Put(pb.PutRequest(key=key, value=value), timeout=TIMEOUT)
            assert kv.Range(pb.RangeRequest(key=key), timeout=TIMEOUT).kvs[0].value == value


def refused(call, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert (info.value.code(), info.value.details()) == (code, message)


LEASE_NOT_FOUND = "etcdserver: requested lease not found"
BAD_URLS = "etcdserver: given member URLs are invalid"


def _put_op(key: bytes, lease: int = 0) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=b"v", lease=lease))


# ---------------------------------------------------------------- the inputs


def test_put_with_negative_lease(ch):
    refused(lambda: rpc.KVStub(ch).Put(pb.PutRequest(key=b"k", value=b"v", lease=-5),
                                       timeout=TIMEOUT),
            grpc.StatusCode.NOT_FOUND, LEASE_NOT_FOUND)


def test_txn_put_with_negative_lease(ch):
    refused(lambda: rpc.KVStub(ch).Txn(pb.TxnRequest(success=[_put_op(b"k", -5)]),
                                       timeout=TIMEOUT),
            grpc.StatusCode.NOT_FOUND, LEASE_NOT_FOUND)


# etcd's v3lock/v3election answer every error as UNKNOWN (they run a clientv3 client inside)


def test_lock_with_negative_lease(ch):
    refused(lambda: lrpc.LockStub(ch).Lock(lpb.LockRequest(name=b"lock", lease=-5),
                                           timeout=TIMEOUT),
            grpc.StatusCode.UNKNOWN, LEASE_NOT_FOUND)


def test_campaign_with_negative_lease(ch):
    refused(lambda: erpc.ElectionStub(ch).Campaign(
        epb.CampaignRequest(name=b"e", lease=-5, value=b"x"), timeout=TIMEOUT),
        grpc.StatusCode.UNKNOWN, LEASE_NOT_FOUND)


def test_negative_lease_ids_are_legal_as_in_etcd(ch):
    lease, kv = rpc.LeaseStub(ch), rpc.KVStub(ch)
    granted = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60, ID=-5), timeout=TIMEOUT)
    assert (granted.ID, granted.TTL) == (-5, 60)
    kv.Put(pb.PutRequest(key=b"leased", value=b"v", lease=-5), timeout=TIMEOUT)
    ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=-5, keys=True), timeout=TIMEOUT)
    assert ttl.grantedTTL == 60 and list(ttl.keys) == [b"leased"]
    assert -5 in [s.ID for s in lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=TIMEOUT).leases]
    lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=-5), timeout=TIMEOUT)
    assert not kv.Range(pb.RangeRequest(key=b"leased"), timeout=TIMEOUT).kvs


def test_revoke_of_unknown_negative_lease(ch):
    refused(lambda: rpc.LeaseStub(ch).LeaseRevoke(pb.LeaseRevokeRequest(ID=-6), timeout=TIMEOUT),
            grpc.StatusCode.NOT_FOUND, LEASE_NOT_FOUND)


@pytest.mark.parametrize("target,result,succeeded", [(9, 9, True), (9, 2, False), (0, 9, True)])
def test_txn_compare_with_unknown_enums_is_etcds(ch, target, result, succeeded):
    resp = rpc.KVStub(ch).Txn(pb.TxnRequest(
        compare=[pb.Compare(key=b"k", target=target, result=result)],
        success=[_put_op(b"cmp")]), timeout=TIMEOUT)
    assert resp.succeeded is succeeded


def test_member_add_without_host(ch):
    refused(lambda: rpc.ClusterStub(ch).MemberAdd(pb.MemberAddRequest(peerURLs=["http://"]),
                                                  timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT, BAD_URLS)


def test_member_add_with_a_port_etcd_accepts_but_cannot_dial(ch):
    cl = rpc.ClusterStub(ch)
    added = cl.MemberAdd(pb.MemberAddRequest(peerURLs=["http://127.0.0.1:99999"]),
                         timeout=TIMEOUT).member
    assert list(added.peerURLs) == ["http://127.0.0.1:99999"]
    # a 4th voter that never answers: 3 of 4 still make a quorum; take it out again
    cl.MemberRemove(pb.MemberRemoveRequest(ID=added.ID), timeout=TIMEOUT)


def test_member_update_with_garbage_url(ch):
    """etcd 3.4 accepts it, and every other member panics applying it (rafthttp UpdatePeer):
    refused here as MemberAdd refuses it."""
    cl = rpc.ClusterStub(ch)
    target = cl.MemberList(pb.MemberListRequest(), timeout=TIMEOUT).members[1].ID
    refused(lambda: cl.MemberUpdate(pb.MemberUpdateRequest(ID=target, peerURLs=["garbage"]),
                                    timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT, BAD_URLS)


# ---------------------------------------------------------------- their neighbours


@pytest.mark.parametrize("urls", [[], ["http://127.0.0.1:1/path"], ["ftp://127.0.0.1:1"],
                                  ["http://127.0.0.1"], ["http://127.0.0.1:1a"],
                                  ["http://127.0.0.1:1", "http://a b:2"]])
def test_member_add_with_bad_urls(ch, urls):
    refused(lambda: rpc.ClusterStub(ch).MemberAdd(pb.MemberAddRequest(peerURLs=urls),
                                                  timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT, BAD_URLS)


@pytest.mark.parametrize("method", ["MemberAdd", "MemberUpdate"])
def test_peer_urls_that_are_not_utf8(ch, method):
    cls = getattr(pb, method + "Request")
    body = cls(peerURLs=["http://127.0.0.1:1234"]).SerializeToString().replace(b"1234", b"12\xff4")
    call = ch.unary_unary(f"/etcdserverpb.Cluster/{method}", request_serializer=None,
                          response_deserializer=getattr(pb, method + "Response").FromString)
    refused(lambda: call(body, timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT, BAD_URLS)


def test_member_add_with_a_thousand_urls(ch):
    cl = rpc.ClusterStub(ch)
    urls = [f"http://127.0.0.2:{20000 + i}" for i in range(1000)]
    added = cl.MemberAdd(pb.MemberAddRequest(peerURLs=urls, isLearner=True),
                         timeout=TIMEOUT).member
    assert len(added.peerURLs) == 1000
    cl.MemberRemove(pb.MemberRemoveRequest(ID=added.ID), timeout=TIMEOUT)


def test_txn_beyond_max_txn_ops(ch):
    ops = [_put_op(b"op/%d" % i) for i in range(MAX_TXN_OPS + 1)]
    refused(lambda: rpc.KVStub(ch).Txn(pb.TxnRequest(success=ops), timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")


def test_empty_request_op(ch):
    refused(lambda: rpc.KVStub(ch).Txn(pb.TxnRequest(success=[pb.RequestOp()]), timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key not found")


def test_range_sorts(ch):
    """etcd ignores an unknown sort order; a sort on an unknown target crashes etcd 3.4 (a nil
    sorter), so it is refused, in a Range and in a Txn."""
    kv = rpc.KVStub(ch)
    kv.Range(pb.RangeRequest(key=b"a", range_end=b"\0", sort_order=9, sort_target=9),
             timeout=TIMEOUT)
    message = "etcdserver: unknown sort target"
    refused(lambda: kv.Range(pb.RangeRequest(key=b"a", range_end=b"\0", sort_target=9),
                             timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT, message)
    op = pb.RequestOp(request_range=pb.RangeRequest(key=b"a", sort_order=2, sort_target=-1))
    refused(lambda: kv.Txn(pb.TxnRequest(success=[op, _put_op(b"x")]), timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT, message)


def test_range_with_extreme_integers(ch):
    kv = rpc.KVStub(ch)
    kv.Put(pb.PutRequest(key=b"int", value=b"v"), timeout=TIMEOUT)
    resp = kv.Range(pb.RangeRequest(key=b"int", limit=-(2**63), revision=-(2**63),
                                    min_mod_revision=-5, min_create_revision=-(2**63)),
                    timeout=TIMEOUT)
    assert [k.key for k in resp.kvs] == [b"int"]
    refused(lambda: kv.Range(pb.RangeRequest(key=b"int", revision=2**63 - 1), timeout=TIMEOUT),
            grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future "
            "revision")


@pytest.mark.parametrize("revision,message", [
    (-5, "etcdserver: mvcc: required revision has been compacted"),
    (-(2**63), "etcdserver: mvcc: required revision has been compacted"),
    (2**63 - 1, "etcdserver: mvcc: required revision is a future revision")])
def test_compact_with_extreme_revisions(ch, revision, message):
    refused(lambda: rpc.KVStub(ch).Compact(pb.CompactionRequest(revision=revision),
                                           timeout=TIMEOUT), grpc.StatusCode.OUT_OF_RANGE, message)


def test_lease_grant_with_extreme_ttls(ch):
    lease = rpc.LeaseStub(ch)
    refused(lambda: lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2**63 - 1), timeout=TIMEOUT),
            grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")
    granted = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=-(2**63), ID=-(2**63)), timeout=TIMEOUT)
    assert granted.ID == -(2**63) and granted.TTL > 0  # etcd: at least the minimum TTL
    lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=-(2**63)), timeout=TIMEOUT)


def test_alarms_with_unknown_enums(ch):
    mt = rpc.MaintenanceStub(ch)
    refused(lambda: mt.Alarm(pb.AlarmRequest(action=9, alarm=1), timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: unknown alarm action")
    refused(lambda: mt.Alarm(pb.AlarmRequest(action=1, alarm=300, memberID=1), timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: alarm type out of range")
    # etcd stores an alarm type it does not know (and it blocks nothing)
    assert [(a.memberID, a.alarm) for a in mt.Alarm(
        pb.AlarmRequest(action=1, alarm=9, memberID=7), timeout=TIMEOUT).alarms] == [(7, 9)]
    assert mt.Alarm(pb.AlarmRequest(action=0, alarm=-3), timeout=TIMEOUT).alarms == []
    mt.Alarm(pb.AlarmRequest(action=2, alarm=9, memberID=7), timeout=TIMEOUT)


def test_lock_and_election_fields(ch):
    lock, election = lrpc.LockStub(ch), erpc.ElectionStub(ch)
    no_key = "etcdserver: key is not provided"
    refused(lambda: lock.Unlock(lpb.UnlockRequest(key=b""), timeout=TIMEOUT),
            grpc.StatusCode.UNKNOWN, no_key)
    for call in (lambda: election.Resign(epb.ResignRequest(), timeout=TIMEOUT),
                 lambda: election.Proclaim(epb.ProclaimRequest(value=b"v"), timeout=TIMEOUT)):
        refused(call, grpc.StatusCode.UNKNOWN, '"leader" field must be provided')
    refused(lambda: election.Resign(epb.ResignRequest(leader=epb.LeaderKey(name=b"e")),
                                    timeout=TIMEOUT), grpc.StatusCode.UNKNOWN, no_key)
    refused(lambda: election.Proclaim(epb.ProclaimRequest(
        leader=epb.LeaderKey(name=b"e", key=b"e/x", rev=-(2**63), lease=-5), value=b"v"),
        timeout=TIMEOUT), grpc.StatusCode.UNKNOWN, "election: not leader")


def test_keys_too_long_for_the_store(ch):
    """Keys over 503 bytes (LMDB's limit less the lease index's ID) are refused wherever a key
    or an election name reaches the store, including the streaming Observe (the request
    fuzzer's finds: a 100 KB txn key stopped every member; a long Observe name escaped)."""
    too_long, message = b"k" * 504, "etcdserver: key is too large"
    kv, election = rpc.KVStub(ch), erpc.ElectionStub(ch)
    refused(lambda: kv.Put(pb.PutRequest(key=too_long, value=b"v"), timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT, message)
    refused(lambda: kv.Txn(pb.TxnRequest(success=[_put_op(b"x" * 100_000)]), timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT, message)
    refused(lambda: kv.Range(pb.RangeRequest(key=too_long), timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT, message)
    refused(lambda: election.Leader(epb.LeaderRequest(name=too_long), timeout=TIMEOUT),
            grpc.StatusCode.UNKNOWN, message)
    refused(lambda: next(election.Observe(epb.LeaderRequest(name=too_long), timeout=TIMEOUT)),
            grpc.StatusCode.UNKNOWN, message)
    longest = b"k" * 503
    kv.Put(pb.PutRequest(key=longest, value=b"v"), timeout=TIMEOUT)
    assert kv.Range(pb.RangeRequest(key=longest), timeout=TIMEOUT).kvs[0].value == b"v"


def test_member_ids_that_do_not_exist(ch):
    cl = rpc.ClusterStub(ch)
    for call in (lambda: cl.MemberRemove(pb.MemberRemoveRequest(ID=2**64 - 1), timeout=TIMEOUT),
                 lambda: cl.MemberPromote(pb.MemberPromoteRequest(ID=0), timeout=TIMEOUT),
                 lambda: cl.MemberUpdate(pb.MemberUpdateRequest(
                     ID=1, peerURLs=["http://127.0.0.1:1"]), timeout=TIMEOUT)):
        refused(call, grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")


def test_client_workers_validate_the_same_way(cluster_factory):
    """With --client-workers the KV service runs in intake processes; the member checks what
    they send with the same code (services.kv.execute) as its own KV service."""
    c = cluster_factory(3, ["--client-workers=1"])
    with grpc.insecure_channel(f"127.0.0.1:{c.nodes[0].client_port}") as channel:
        kv = rpc.KVStub(channel)
        refused(lambda: kv.Put(pb.PutRequest(key=b"k", value=b"v", lease=-5), timeout=TIMEOUT),
                grpc.StatusCode.NOT_FOUND, LEASE_NOT_FOUND)
        refused(lambda: kv.Range(pb.RangeRequest(key=b"a", sort_target=9), timeout=TIMEOUT),
                grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: unknown sort target")
        resp = kv.Txn(pb.TxnRequest(compare=[pb.Compare(key=b"k", target=9, result=9)],
                                    success=[_put_op(b"cmp")]), timeout=TIMEOUT)
        assert resp.succeeded
    assert_all_serve(c)


# etcd 3.4's answers (types.NewURLs), each checked against a real etcd 3.4.23 MemberAdd
@pytest.mark.parametrize("url,accepted", [
    ("http://127.0.0.1:2380", True), ("HTTPS://[::1]:2380", True), (" http://h:1 ", True),
    ("unix://sock:0", True), ("http://h:1?q#f", True), ("http://u@h:1", True),
    ("http://127.0.0.1:99999", True), ("http://h:", True),  # not dialable, still accepted
    ("http://", False), ("garbage", False), ("ftp://h:1", False), ("http://h", False),
    ("http://h:1/", False), ("http://h:1/path", False), ("http://h:1a", False),
    ("http://[::1]", False), ("http://::1:80", False), ("http://a b:1", False),
    ("http://h%zz:1", False), ("http://h\x00:1", False), ("http:h:1", False),
    ("http://h%41:1", False), ("http://h%c3%a9:1", True), ("http://hé:1", True),
    ("http://[h]:1", True), ("http://h]:1", False), ("http://h<:1", True),
    ("http://h:1:2", False)])
def test_peer_url_rules(url, accepted):
    assert (membership.peer_url_problem(url) is None) is accepted


def test_only_dialable_peer_urls_reach_the_transport():
    urls = ["http://127.0.0.1:99999", "http://h:", *(f"http://127.0.0.2:{p}" for p in
                                                      range(20000, 20100))]
    dialed = _dialable(MemberRecord(id=1, peer_urls=urls))
    assert dialed == urls[2:2 + MAX_DIALED_PEER_URLS]


# ---------------------------------------------------------------- the applier itself


def _member(tmp_path) -> Member:
    url = "http://127.0.0.1:%d" % harness.free_ports(1)[0]
    return Member(MemberConfig(name="n0", data_dir=str(tmp_path), advertise_client_urls=[url],
                               listen_peer_urls=[url], initial_advertise_peer_urls=[url],
                               initial_cluster={"n0": [url]}, heartbeat_ms=20, election_ms=200))


async def _raw_proposal(m: Member, kind: str, body: bytes) -> object:
    """Put a proposal of ``kind`` with ``body`` in the log, skipping every check; its result."""
    rid = next(m._rid)
    fut = asyncio.get_running_loop().create_future()
    m._waiters[rid] = fut
    m._proposals.append((rid, encode(Proposal(rid, kind, body))))
    m._wake.set()
    return await m._applied_result(rid, fut)


def test_poison_entries_in_the_log_give_error_results_and_survive_replay(tmp_path):
    """Validation skipped: what reaches the log anyway is answered with an error on the member
    that applies it, which goes on serving, and replays it after a restart without stopping."""
    failed = api_errors.ErrApplyFailed

    async def poison(m: Member) -> None:
        with pytest.raises(api_errors.EtcdError) as info:  # ints beyond int64
            await m.propose(PutRequest(key=b"k", value=b"v", lease=2**63))
        assert info.value == failed
        with pytest.raises(api_errors.EtcdError) as info:
            await m.propose(LeaseGrantRequest(ID=2**64 - 1, TTL=5))
        assert info.value == failed
        with pytest.raises(api_errors.EtcdError) as info:  # an alarm etcd itself crashes on
            await m.propose(AlarmRequest(action=9, alarm=1))
        assert info.value == api_errors.ErrUnknownAlarmAction
        with pytest.raises(api_errors.EtcdError) as info:  # a body that does not decode
            await _raw_proposal(m, "put", b"\xc1")
        assert info.value == failed
        with pytest.raises(api_errors.EtcdError) as info:  # a kind nobody knows
            await _raw_proposal(m, "no-such-kind", b"")
        assert info.value == failed
        m._proposals.append((next(m._rid), b"\xc1 not msgpack"))  # nobody to answer
        # conf changes with a context that does not decode, someone else's record, a type
        # Raft does not know: Raft applies (or ignores) them, the member list stays sane
        other = MemberRecord(id=999, peer_urls=["http://127.0.0.1:1"])
        for cc in (ConfChange(ConfChangeType.ADD_LEARNER, 555, b"\xc1"),
                   ConfChange(ConfChangeType.ADD_LEARNER, 556, encode(ConfContext(0, other))),
                   ConfChange(7, 557, b"")):
            m._conf_changes.append((cc, asyncio.get_running_loop().create_future()))
            m._wake.set()
            await asyncio.sleep(0.3)  # one conf change at a time (Raft refuses a second)
        await m.propose(PutRequest(key=b"after", value=b"ok"))

    async def serves(m: Member) -> None:
        await m.propose(PutRequest(key=b"again", value=b"ok"))
        assert m.store.range(RangeRequest(key=b"after")).kvs[0].value == b"ok"
        assert not m.stopped.is_set()
        members = m.registry.members
        assert members[555].peer_urls == [] and members[556].peer_urls == []
        assert 999 not in members and 557 not in members

    def forget_applied() -> None:
        """Make the next start apply the whole log again, poison included (as a member that
        stopped before its store committed it would)."""
        shutil.rmtree(tmp_path / "member" / "db")
        path = tmp_path / "member" / "cluster.json"
        registry = membership.load(path)
        registry.applied = 0
        membership.save(path, registry)

    async def main() -> None:
        for step in (poison, serves):
            m = _member(tmp_path)
            m.open()
            await m.start()
            try:
                await asyncio.wait_for(step(m), 30)
            finally:
                await m.stop()
            forget_applied()
    asyncio.run(asyncio.wait_for(main(), 90))


def test_intake_hub_drops_malformed_batches():
    """The member's ZeroMQ end for intake processes (loopback, but any local process can
    connect): what is not a batch is counted and dropped, and the next batch is served."""
    async def main() -> None:
        async def execute(request: object) -> PutResponse:
            assert request == PutRequest(key=b"k", value=b"v")
            return PutResponse()

        hub = IntakeHub(execute)
        hub.start(asyncio.get_running_loop())
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(hub.address)
        try:
            before = rejected.value("intake", "undecodable")
            sock.send(b"\xc1 not msgpack")
            sock.send_multipart([b"two", b"frames"])
            sock.send(msgspec.msgpack.encode([(7, "put", encode(PutRequest(key=b"k",
                                                                           value=b"v")))]))
            for _ in range(100):
                if sock.poll(0):
                    break
                await asyncio.sleep(0.05)
            [(rid, status, _)] = msgspec.msgpack.decode(sock.recv())
            assert (rid, status) == (7, 0)
            assert rejected.value("intake", "undecodable") == before + 2
        finally:
            sock.close(0)
            hub.close()
    asyncio.run(asyncio.wait_for(main(), 20))
