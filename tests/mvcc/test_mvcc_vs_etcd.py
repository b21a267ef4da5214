"""Differential test: the same random request sequence against a real etcd 3.4 (on loopback, its
own data directory) and against the Store must give the same responses, field by field, and the
same error texts. Also proves the struct field names map 1:1 onto etcd's protobuf messages.

Skips when the ``etcd`` binary is absent (apt-get install etcd-server).
"""
from __future__ import annotations

import copy
import queue
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mvcc_strategies import SEED, requests
from shardkv.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from shardkv.mvcc.errors import EtcdError
from shardkv.mvcc.kv import (
    CompactionRequest,
    Event,
    Compare,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    LeaseTimeToLiveRequest,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    ResponseHeader,
    ResponseOp,
    TxnRequest,
    TxnResponse,
    WatchCreateRequest,
)
from shardkv.mvcc.store import Store, is_readonly_txn
from shardkv.mvcc.watch import WatchHub

ETCD = shutil.which("etcd")
pytestmark = pytest.mark.skipif(ETCD is None, reason="etcd not on PATH (apt-get install etcd-server)")

LONG_TTL = 3600  # leases must not expire on the real etcd while a sequence runs

# Response field -> struct type of its elements, for converting etcd's protobuf answers.
NESTED = {
    "kv": KeyValue, "kvs": KeyValue, "prev_kvs": KeyValue, "prev_kv": KeyValue, "responses": ResponseOp,
    "response_range": RangeResponse, "response_put": PutResponse,
    "response_delete_range": DeleteRangeResponse, "response_txn": TxnResponse,
}
COMPARE_FIELD = {
    CompareTarget.VERSION: "version", CompareTarget.CREATE: "create_revision",
    CompareTarget.MOD: "mod_revision", CompareTarget.VALUE: "value", CompareTarget.LEASE: "lease",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def real_etcd(data_dir: Path) -> Iterator[tuple[object, object, object]]:
    client, peer = f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"
    proc = subprocess.Popen(
        [ETCD, "--name", "n1", "--data-dir", str(data_dir),
         "--listen-client-urls", client, "--advertise-client-urls", client,
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
         "--initial-cluster", f"n1={peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    channel = grpc.insecure_channel(client.removeprefix("http://"))
    try:
        kv, lease = rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.LeaseStub(channel)
        # Bounded wait for the child: the first read succeeds once it has elected itself.
        kv.Range(rpc_pb2.RangeRequest(key=b"probe"), timeout=60, wait_for_ready=True)
        yield kv, lease, rpc_pb2_grpc.WatchStub(channel)
    finally:
        channel.close()
        proc.terminate()
        proc.wait(timeout=30)


def to_pb(obj: object, pb_cls: type) -> object:
    msg = pb_cls()
    for name in obj.__struct_fields__:
        value = getattr(obj, name)
        if isinstance(obj, Compare) and name in COMPARE_FIELD.values():
            if name == COMPARE_FIELD[obj.target]:  # target_union is a oneof
                setattr(msg, name, value)
            continue
        field = pb_cls.DESCRIPTOR.fields_by_name[name]  # KeyError = a name that differs
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                getattr(msg, name).extend(value)
            else:
                setattr(msg, name, value)
        elif field.is_repeated:
            for item in value:
                getattr(msg, name).add().CopyFrom(to_pb(item, field.message_type._concrete_class))
        elif value is not None:
            getattr(msg, name).CopyFrom(to_pb(value, field.message_type._concrete_class))
    return msg


def from_pb(msg: object, cls: type) -> object:
    kwargs = {}
    for name in cls.__struct_fields__:
        value = getattr(msg, name)
        if name == "header":
            kwargs[name] = ResponseHeader(revision=value.revision)  # node fills the rest
        elif name in NESTED:
            if msg.DESCRIPTOR.fields_by_name[name].is_repeated:
                kwargs[name] = [from_pb(item, NESTED[name]) for item in value]
            else:
                kwargs[name] = from_pb(value, NESTED[name]) if msg.HasField(name) else None
        else:
            kwargs[name] = value
    return cls(**kwargs)


def ask_etcd(kv, lease, req: object) -> object:
    call = {
        RangeRequest: (kv.Range, rpc_pb2.RangeRequest, RangeResponse),
        PutRequest: (kv.Put, rpc_pb2.PutRequest, PutResponse),
        DeleteRangeRequest: (kv.DeleteRange, rpc_pb2.DeleteRangeRequest, DeleteRangeResponse),
        TxnRequest: (kv.Txn, rpc_pb2.TxnRequest, TxnResponse),
        CompactionRequest: (kv.Compact, rpc_pb2.CompactionRequest, None),
        LeaseGrantRequest: (lease.LeaseGrant, rpc_pb2.LeaseGrantRequest, None),
        LeaseRevokeRequest: (lease.LeaseRevoke, rpc_pb2.LeaseRevokeRequest, None),
    }
    method, pb_request, response_cls = call[type(req)]
    try:
        resp = method(to_pb(req, pb_request), timeout=30)
    except grpc.RpcError as err:
        return ("error", err.details())
    if response_cls is None:
        return ("ok", resp.header.revision)
    return from_pb(resp, response_cls)


def ask_store(store: Store, hub: WatchHub, req: object, index: int) -> object:
    try:
        if isinstance(req, RangeRequest):
            resp = store.range(req)
        elif isinstance(req, TxnRequest) and is_readonly_txn(req):
            resp = store.txn_readonly(req)
        else:
            result = store.apply([(index, req)])
            hub.notify(result.events)
            resp = result.results[0]
            if isinstance(resp, EtcdError):
                raise resp
    except EtcdError as err:
        return ("error", str(err))
    if isinstance(req, (CompactionRequest, LeaseGrantRequest, LeaseRevokeRequest)):
        return ("ok", resp.header.revision)
    return resp


def adapt(req: object, current: int) -> object:
    """Make a generated request meaningful on a long history: revisions are drawn small, so
    re-anchor them near the current revision; leases live long and have IDs (etcd would pick
    one for ID 0, which the node does before proposing); compactions are physical."""
    def near(rev: int) -> int:
        return max(1, current - 10 + rev) if rev > 0 else rev

    if isinstance(req, RangeRequest):
        req.revision = near(req.revision)
        for name in ("min_mod_revision", "max_mod_revision", "min_create_revision",
                     "max_create_revision"):
            setattr(req, name, near(getattr(req, name)))
    elif isinstance(req, CompactionRequest):
        # physical: etcd answers once history is gone (the store always compacts at once), so
        # a later watch replay cannot race etcd's background compaction.
        req.revision, req.physical = near(req.revision), True
    elif isinstance(req, LeaseGrantRequest):
        req.ID, req.TTL = req.ID or 4, LONG_TTL
    elif isinstance(req, TxnRequest):
        if _has_from_key_delete(req):
            _no_ignore_flags(req)
        for cmp in req.compare:
            cmp.create_revision, cmp.mod_revision = near(cmp.create_revision), near(cmp.mod_revision)
        for op in [*req.success, *req.failure]:
            for sub in (op.request_range, op.request_txn):
                if sub is not None:
                    adapt(sub, current)
    return req


def _ops(req: TxnRequest) -> list:
    return [*req.success, *req.failure]


def _has_from_key_delete(req: TxnRequest) -> bool:
    return any((op.request_delete_range is not None and op.request_delete_range.range_end == b"\x00")
               or (op.request_txn is not None and _has_from_key_delete(op.request_txn))
               for op in _ops(req))


def _no_ignore_flags(req: TxnRequest) -> None:
    """etcd 3.4 *panics* when a put with ignore_value/ignore_lease follows a from-key delete of
    its key in the same txn (its duplicate check misses from-key deletes); the store answers
    "etcdserver: key not found" instead. Keep such txns out of the comparison."""
    for op in _ops(req):
        if op.request_put is not None:
            op.request_put.ignore_value = op.request_put.ignore_lease = False
        if op.request_txn is not None:
            _no_ignore_flags(op.request_txn)


@settings(max_examples=3, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(seq=st.lists(requests, min_size=150, max_size=250))
def test_store_answers_like_etcd(tmp_path_factory, seq):
    base = tmp_path_factory.mktemp("diff")
    with real_etcd(base / "etcd") as (kv, lease, watch), Store(base / "store") as store:
        # A live watch on both sides from the start: same events as they happen.
        everything = WatchCreateRequest(key=b"\x00", range_end=b"\x00", prev_kv=True)
        hub = WatchHub(store)
        live_store, live_etcd = [], LiveEtcdWatch(watch, everything)
        watcher = hub.watch(everything)
        last = PutRequest(key=b"end", value=b"!")  # so the watch replay has a final event
        for step, req in enumerate([*SEED, *seq, last]):
            req = adapt(copy.deepcopy(req), store.current_revision)
            want = ask_etcd(kv, lease, req)
            got = ask_store(store, hub, req, step + 1)
            assert got == want, f"step {step}: {req}"
            live_store += [e for r in watcher.take() for e in r.events]
        assert live_etcd.events_through(store.current_revision) == live_store
        # Replaying the retained history through a watch gives the same events, prev_kv included.
        create = WatchCreateRequest(key=b"\x00", range_end=b"\x00", prev_kv=True,
                                    start_revision=max(store.compact_revision, 1))
        replay = hub_replay(store, create)
        assert etcd_watch_replay(watch, create, replay[-1].kv.mod_revision) == replay
        assert lease_view_of_etcd(lease) == lease_view_of_store(store)


def lease_view_of_etcd(lease) -> tuple:
    ids = sorted(s.ID for s in lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=30).leases)
    ttls = []
    for lid in range(1, 5):
        r = lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lid, keys=True), timeout=30)
        ttls.append((r.ID, r.TTL == -1, r.grantedTTL, sorted(r.keys)))
    return ids, ttls


def lease_view_of_store(store: Store) -> tuple:
    ids = [s.ID for s in store.lease_leases().leases]
    ttls = []
    for lid in range(1, 5):
        r = store.lease_time_to_live(LeaseTimeToLiveRequest(ID=lid, keys=True))
        ttls.append((r.ID, r.TTL == -1, r.grantedTTL, r.keys))
    return ids, ttls


class LiveEtcdWatch:
    """An etcd watch stream drained by a thread into a queue, so etcd never blocks on us."""

    def __init__(self, watch, create: WatchCreateRequest) -> None:
        request = rpc_pb2.WatchRequest(create_request=to_pb(create, rpc_pb2.WatchCreateRequest))
        self._stream = watch.Watch(iter([request]), timeout=300)
        self._responses: queue.Queue = queue.Queue()
        next(self._stream)  # the "created" response: the watch exists from here on
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        try:
            for resp in self._stream:
                self._responses.put(resp)
        except grpc.RpcError:
            pass  # cancelled by events_through

    def events_through(self, revision: int) -> list[Event]:
        events: list[Event] = []
        try:
            while not events or events[-1].kv.mod_revision < revision:
                resp = self._responses.get(timeout=30)  # bounded wait for the etcd child
                events += [from_pb(event, Event) for event in resp.events]
        finally:
            self._stream.cancel()
        return events


def hub_replay(store: Store, create: WatchCreateRequest) -> list[Event]:
    hub = WatchHub(store)
    watcher = hub.watch(create)
    while not hub.is_synced(watcher.id):
        hub.sync_unsynced()
    return [event for resp in watcher.take() for event in resp.events]


def etcd_watch_replay(watch, create: WatchCreateRequest, through: int) -> list[Event]:
    request = rpc_pb2.WatchRequest(create_request=to_pb(create, rpc_pb2.WatchCreateRequest))
    stream = watch.Watch(iter([request]), timeout=30)
    events: list[Event] = []
    try:
        for resp in stream:
            events += [from_pb(event, Event) for event in resp.events]
            if events and events[-1].kv.mod_revision >= through:
                break  # one revision's events arrive in one response
    finally:
        stream.cancel()
    return events
