"""The v3 API through gRPC stubs against one member: watch streams (many watches, cancel,
progress, prev_kv, filters, history, compaction), errors, election, request limits."""
import queue
import threading

import grpc
import pytest

from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc
from shardkv.api.v3electionpb import v3election_pb2 as epb
from shardkv.api.v3electionpb import v3election_pb2_grpc as erpc

TIMEOUT = 10


@pytest.fixture(scope="module")
def channel(tmp_path_factory):
    import harness
    c = harness.make_cluster(tmp_path_factory.mktemp("grpc"), 1, ["--max-request-bytes=4096"])
    try:
        c.nodes[0].start()
        harness.wait_ready(c)
        with grpc.insecure_channel(f"127.0.0.1:{c.nodes[0].client_port}") as ch:
            yield ch
    finally:
        c.close()


class WatchStream:
    """A watch stream with a request queue and a response queue (bounded waits)."""

    def __init__(self, channel):
        self.requests: queue.Queue = queue.Queue()
        self.responses: queue.Queue = queue.Queue()
        self.call = rpc.WatchStub(channel).Watch(iter(self.requests.get, None))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for resp in self.call:
                self.responses.put(resp)
        except grpc.RpcError:
            pass

    def send(self, **kw):
        self.requests.put(pb.WatchRequest(**kw))

    def next(self) -> pb.WatchResponse:
        return self.responses.get(timeout=TIMEOUT)

    def close(self):
        self.requests.put(None)
        self.call.cancel()


def put(channel, key, value, **kw):
    return rpc.KVStub(channel).Put(pb.PutRequest(key=key, value=value, **kw), timeout=TIMEOUT)


def test_many_watches_on_one_stream_cancel_and_progress(channel):
    w = WatchStream(channel)
    try:
        w.send(create_request=pb.WatchCreateRequest(key=b"wa"))
        w.send(create_request=pb.WatchCreateRequest(key=b"wb", prev_kv=True))
        created = [w.next(), w.next()]
        assert all(r.created for r in created)
        ida, idb = (r.watch_id for r in created)
        assert ida != idb and created[0].header.cluster_id and created[0].header.raft_term
        put(channel, b"wb", b"1")
        put(channel, b"wb", b"2")
        put(channel, b"wa", b"x")
        got = [w.next() for _ in range(3)]
        assert [(r.watch_id, r.events[0].kv.value) for r in got] == [
            (idb, b"1"), (idb, b"2"), (ida, b"x")]
        assert got[1].events[0].prev_kv.value == b"1"
        w.send(cancel_request=pb.WatchCancelRequest(watch_id=ida))
        cancel = w.next()
        assert cancel.canceled and cancel.watch_id == ida
        w.send(progress_request=pb.WatchProgressRequest())
        progress = w.next()
        assert progress.watch_id == -1 and not progress.events
        assert progress.header.revision == got[2].header.revision
    finally:
        w.close()


def test_history_filters_and_compacted(channel):
    first = put(channel, b"h", b"1").header.revision
    put(channel, b"h", b"2")
    rpc.KVStub(channel).DeleteRange(pb.DeleteRangeRequest(key=b"h"), timeout=TIMEOUT)
    w = WatchStream(channel)
    try:
        w.send(create_request=pb.WatchCreateRequest(
            key=b"h", start_revision=first,
            filters=[pb.WatchCreateRequest.NODELETE]))
        assert w.next().created
        events = []
        while len(events) < 2:
            events += w.next().events
        assert [e.kv.value for e in events] == [b"1", b"2"]
        rpc.KVStub(channel).Compact(pb.CompactionRequest(revision=first + 1), timeout=TIMEOUT)
        w.send(create_request=pb.WatchCreateRequest(key=b"h", start_revision=first))
        assert w.next().created
        canceled = w.next()
        assert canceled.canceled and canceled.compact_revision == first + 1
    finally:
        w.close()


def test_errors_have_etcd_codes_and_messages(channel):
    kv = rpc.KVStub(channel)
    with pytest.raises(grpc.RpcError) as e:
        kv.Put(pb.PutRequest(key=b"", value=b"v"), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "etcdserver: key is not provided"
    with pytest.raises(grpc.RpcError) as e:
        kv.Put(pb.PutRequest(key=b"big", value=b"x" * 5000), timeout=TIMEOUT)
    assert e.value.details() == "etcdserver: request is too large"
    with pytest.raises(grpc.RpcError) as e:
        kv.Range(pb.RangeRequest(key=b"a", revision=10**9), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(grpc.RpcError) as e:
        rpc.LeaseStub(channel).LeaseRevoke(pb.LeaseRevokeRequest(ID=12345), timeout=TIMEOUT)
    assert e.value.details() == "etcdserver: requested lease not found"


def test_election_campaign_proclaim_leader_resign(channel):
    lease = rpc.LeaseStub(channel).LeaseGrant(pb.LeaseGrantRequest(TTL=30), timeout=TIMEOUT).ID
    el = erpc.ElectionStub(channel)
    won = el.Campaign(epb.CampaignRequest(name=b"el", lease=lease, value=b"me"), timeout=TIMEOUT)
    assert won.leader.key.startswith(b"el/")
    assert el.Leader(epb.LeaderRequest(name=b"el"), timeout=TIMEOUT).kv.value == b"me"
    el.Proclaim(epb.ProclaimRequest(leader=won.leader, value=b"again"), timeout=TIMEOUT)
    assert el.Leader(epb.LeaderRequest(name=b"el"), timeout=TIMEOUT).kv.value == b"again"
    el.Resign(epb.ResignRequest(leader=won.leader), timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as e:
        el.Leader(epb.LeaderRequest(name=b"el"), timeout=TIMEOUT)
    assert e.value.details() == "election: no leader"


def test_hash_and_status(channel):
    m = rpc.MaintenanceStub(channel)
    status = m.Status(pb.StatusRequest(), timeout=TIMEOUT)
    assert status.leader == status.header.member_id and status.raftIndex >= status.raftAppliedIndex - 1
    assert m.HashKV(pb.HashKVRequest(), timeout=TIMEOUT).header.revision >= 1
    m.Defragment(pb.DefragmentRequest(), timeout=TIMEOUT)
    assert put(channel, b"after-defrag", b"1").header.revision > 1


def test_watch_fragments_large_responses():
    from shardkv.api.mvccpb import kv_pb2
    from shardkv.node.services.watch import fragments
    events = [kv_pb2.Event(kv=kv_pb2.KeyValue(key=b"k%d" % i, value=b"x" * 1000))
              for i in range(10)]
    msg = pb.WatchResponse(watch_id=7, events=events)
    parts = fragments(msg, 2500)
    assert [len(p.events) for p in parts] == [2, 2, 2, 2, 2]
    assert [p.fragment for p in parts] == [True, True, True, True, False]
    assert all(p.watch_id == 7 for p in parts)
    assert fragments(msg, 10**6) == [msg]
