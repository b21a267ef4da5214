"""Applying committed entries is total: whatever request sits in the Raft log, ``Store.apply``
answers it with its result or an error result and goes on with the batch; only disk errors
escape. Inputs etcd 3.4 accepts (negative lease IDs, unknown compare enums, unknown sort orders)
work as they do in etcd."""
from __future__ import annotations

import lmdb
import pytest

from shardkv.mvcc import errors as E
from shardkv.mvcc.kv import (
    AlarmAction,
    AlarmMember,
    AlarmRequest,
    Compare,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    LeaseTimeToLiveRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    SortOrder,
    TxnRequest,
)
from applier import Applier
from shardkv.mvcc.store import Store
from shardkv.mvcc.validate import validate



@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "db") as s:
        yield s


def value_of(store: Store, key: bytes) -> bytes | None:
    kvs = store.range(RangeRequest(key=key)).kvs
    return kvs[0].value if kvs else None


def test_put_with_a_negative_lease_that_does_not_exist_is_lease_not_found(store):
    apply = Applier(store)
    txn = TxnRequest(success=[RequestOp(request_put=PutRequest(key=b"k", value=b"v", lease=-5))])
    results = apply(PutRequest(key=b"k", value=b"v", lease=-5), txn,
                    PutRequest(key=b"after", value=b"v"))
    assert isinstance(results[0], E.LeaseNotFoundError)
    assert isinstance(results[1], E.LeaseNotFoundError)
    assert value_of(store, b"after") == b"v"  # the batch went on


def test_negative_lease_ids_work_as_in_etcd(tmp_path):
    with Store(tmp_path / "db") as store:
        apply = Applier(store)
        grant, put = apply(LeaseGrantRequest(ID=-5, TTL=30),
                           PutRequest(key=b"k", value=b"v", lease=-5))
        assert grant.ID == -5 and put.header.revision == 2
        assert store.range(RangeRequest(key=b"k")).kvs[0].lease == -5
        assert store.lease_time_to_live(LeaseTimeToLiveRequest(ID=-5, keys=True)).keys == [b"k"]
    with Store(tmp_path / "db") as store:  # reopened: the lease is read back as -5
        assert store.lessor.ids() == [-5]
        apply = Applier(store)
        assert isinstance(apply(LeaseRevokeRequest(ID=-7))[0], E.LeaseNotFoundError)
        apply(LeaseRevokeRequest(ID=-5))
        assert value_of(store, b"k") is None and store.lessor.ids() == []


def test_ids_beyond_int64_in_the_log_give_an_error_result(store):
    """Not from a client (protobuf bounds them), but a log entry may hold anything msgpack can."""
    apply = Applier(store)
    results = apply(LeaseGrantRequest(ID=2**63, TTL=30), PutRequest(key=b"k", lease=2**64 - 1),
                    LeaseRevokeRequest(ID=2**63), PutRequest(key=b"after", value=b"v"))
    assert all(isinstance(r, E.ApplyFailedError) for r in results[:2])
    assert isinstance(results[2], E.ApplyFailedError)
    assert value_of(store, b"after") == b"v" and value_of(store, b"k") is None
    assert store.current_revision == 2


@pytest.mark.parametrize("target,result,succeeded", [
    (9, 9, True),  # etcd: an unknown target compares equal, an unknown result holds
    (9, 0, True),
    (9, 2, False),  # LESS on "equal"
    (0, 9, True),
])
def test_compare_with_unknown_enums_is_etcds(store, target, result, succeeded):
    apply = Applier(store)
    txn = TxnRequest(compare=[Compare(key=b"k", target=target, result=result)],
                     success=[RequestOp(request_put=PutRequest(key=b"t", value=b"1"))])
    (resp,) = apply(txn)
    assert resp.succeeded is succeeded
    assert (value_of(store, b"t") == b"1") is succeeded


def test_unknown_sort_target_is_refused_and_unknown_sort_order_ignored(store):
    apply = Applier(store)
    apply(PutRequest(key=b"b", value=b"1"), PutRequest(key=b"a", value=b"2"))
    with pytest.raises(E.SortTargetError):
        validate(RangeRequest(key=b"a", range_end=b"\0", sort_target=9))
    txn = TxnRequest(success=[RequestOp(request_range=RangeRequest(key=b"a", range_end=b"\0",
                                                                   sort_target=9))])
    assert isinstance(apply(txn)[0], E.SortTargetError)  # in the log: the same error
    resp = store.range(RangeRequest(key=b"a", range_end=b"\0", sort_order=9, sort_target=9))
    assert [kv.key for kv in resp.kvs] == [b"a", b"b"]  # etcd: no sort
    resp = store.range(RangeRequest(key=b"a", range_end=b"\0", sort_order=SortOrder.DESCEND))
    assert [kv.key for kv in resp.kvs] == [b"b", b"a"]


def test_negative_limit_and_revisions_read_everything_current(store):
    apply = Applier(store)
    apply(PutRequest(key=b"a", value=b"1"), PutRequest(key=b"b", value=b"2"))
    resp = store.range(RangeRequest(key=b"a", range_end=b"\0", limit=-5, revision=-5,
                                    min_mod_revision=-5))
    assert [kv.key for kv in resp.kvs] == [b"a", b"b"] and resp.count == 2
    # etcd filters on a negative maximum as given: nothing passes (count is before filters)
    resp = store.range(RangeRequest(key=b"a", range_end=b"\0", max_create_revision=-3))
    assert resp.kvs == [] and resp.count == 2


def test_alarm_checks(store):
    apply = Applier(store)
    bad_action, bad_type, odd_type = apply(
        AlarmRequest(action=9, alarm=1, memberID=1),
        AlarmRequest(action=AlarmAction.ACTIVATE, alarm=300, memberID=1),
        AlarmRequest(action=AlarmAction.ACTIVATE, alarm=9, memberID=1))
    assert isinstance(bad_action, E.AlarmActionError)
    assert isinstance(bad_type, E.AlarmTypeError)
    assert odd_type.alarms == [AlarmMember(memberID=1, alarm=9)]  # etcd stores it too
    assert store.alarms(9) == [AlarmMember(memberID=1, alarm=9)]
    assert store.alarms(-3) == []


def test_a_request_the_store_does_not_know_gives_an_error_result(store):
    apply = Applier(store)
    results = apply(LeaseTimeToLiveRequest(ID=1), PutRequest(key=b"after", value=b"v"))
    assert isinstance(results[0], E.ApplyFailedError)
    assert value_of(store, b"after") == b"v"


def test_disk_errors_still_escape(store, monkeypatch):
    def broken(view, request):
        raise lmdb.DiskError("disk on fire")

    monkeypatch.setattr(store, "_apply_one", broken)
    with pytest.raises(lmdb.DiskError):
        Applier(store)(PutRequest(key=b"k"))
    assert store.consistent_index == 0


def test_keys_longer_than_the_store_can_index_are_refused_everywhere(store, monkeypatch):
    """LMDB indexes keys of at most 511 bytes (503 after the lease index's 8-byte ID): longer
    keys get KeyTooLargeError from the checks, and, should one reach the log unchecked, as an
    error result of its entry instead of stopping the member (found by
    tests/node/test_fuzz_requests.py: a 100 KB key in a txn put)."""
    from shardkv.mvcc.kv import Compare, RequestOp, TxnRequest
    from shardkv.mvcc.validate import MAX_KEY_BYTES

    longest, too_long = b"k" * MAX_KEY_BYTES, b"k" * (MAX_KEY_BYTES + 1)
    for request in (PutRequest(key=too_long), RangeRequest(key=too_long),
                    TxnRequest(compare=[Compare(key=too_long)]),
                    TxnRequest(success=[RequestOp(request_put=PutRequest(key=too_long))])):
        with pytest.raises(E.KeyTooLargeError):
            validate(request)
    with pytest.raises(E.KeyTooLargeError):
        store.range(RangeRequest(key=too_long))
    apply = Applier(store)
    results = apply(PutRequest(key=longest, value=b"v", lease=0),
                    PutRequest(key=b"after", value=b"v"))
    assert not isinstance(results[0], Exception) and value_of(store, longest) == b"v"
    # past the checks (a log written by an older version, a bug): an error result, no stop
    monkeypatch.setattr("shardkv.mvcc.store.validate", lambda *args, **kwargs: None)
    results = apply(TxnRequest(success=[RequestOp(request_put=PutRequest(
        key=b"x" * 100_000, value=b"v"))]), PutRequest(key=b"later", value=b"v"))
    assert isinstance(results[0], E.KeyTooLargeError)
    assert value_of(store, b"later") == b"v"
