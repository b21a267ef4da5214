"""The Watch service writes response envelopes by hand and appends events encoded once per
shared list: the bytes must parse to the same message protobuf would have built."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.mvcc.kv import Event, EventType, KeyValue, ResponseHeader, WatchResponse
from shardkv.mvcc.watch import Events
from shardkv.node.services import convert
from shardkv.node.services.watch import _Encoder

HEADER = ResponseHeader(cluster_id=2**63 + 5, member_id=7, revision=42, raft_term=3)
KV = KeyValue(key=b"k", create_revision=2, mod_revision=9, version=3, value=b"v" * 300, lease=-1)
EVENTS = [Event(type=EventType.PUT, kv=KV, prev_kv=KeyValue(key=b"k", value=b"old")),
          Event(type=EventType.DELETE, kv=KeyValue(key=b"\xff" * 200, mod_revision=2**40))]


@pytest.mark.parametrize("resp", [
    WatchResponse(watch_id=0, created=True),
    WatchResponse(watch_id=-1, canceled=True, compact_revision=2**62,
                  cancel_reason="etcdserver: mvcc: required revision has been compacted ü"),
    WatchResponse(header=ResponseHeader(revision=300), watch_id=2**63 - 1,
                  events=Events(EVENTS, 1)),
    WatchResponse(watch_id=127, events=Events(EVENTS[:1], 1)),
])
def test_encoded_response_parses_as_protobuf_would_build_it(resp):
    encoder = _Encoder(SimpleNamespace(header=lambda: HEADER))
    got = pb.WatchResponse.FromString(encoder.encode(resp))
    want = pb.WatchResponse(
        header=pb.ResponseHeader(cluster_id=HEADER.cluster_id, member_id=HEADER.member_id,
                                 revision=resp.header.revision or HEADER.revision,
                                 raft_term=HEADER.raft_term),
        watch_id=resp.watch_id, created=resp.created, canceled=resp.canceled,
        compact_revision=resp.compact_revision, cancel_reason=resp.cancel_reason,
        events=[convert.event(e) for e in resp.events])
    assert got == want
    if resp.events:  # encoded once, reused for the next watcher sharing the list
        assert resp.events.encoded is not None
        again = WatchResponse(watch_id=5, events=resp.events)
        assert list(pb.WatchResponse.FromString(encoder.encode(again)).events) == \
            list(want.events)
