"""Store behaviours pinned to etcd v3.4's observable answers, one scenario per test."""
from __future__ import annotations

import pytest

from shardkv.mvcc import errors as E
from shardkv.mvcc.kv import (
    AlarmAction,
    AlarmMember,
    AlarmRequest,
    AlarmType,
    CompactionRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)
from applier import Applier
from shardkv.mvcc.store import Store
from shardkv.mvcc.validate import validate



@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "db") as s:
        yield s


def put(key: bytes, value: bytes = b"v", **kw) -> PutRequest:
    return PutRequest(key=key, value=value, **kw)


def op_put(key: bytes) -> RequestOp:
    return RequestOp(request_put=put(key))


def op_del(key: bytes, end: bytes = b"") -> RequestOp:
    return RequestOp(request_delete_range=DeleteRangeRequest(key=key, range_end=end))


def test_empty_store_is_at_revision_one_and_first_put_gets_two(store):
    assert store.range(RangeRequest(key=b"a")).header.revision == 1
    (resp,) = Applier(store)(put(b"a"))
    assert resp.header.revision == 2


def test_delete_of_nothing_does_not_bump_revision(store):
    apply = Applier(store)
    apply(put(b"a"))
    (resp,) = apply(DeleteRangeRequest(key=b"zz"))
    assert (resp.deleted, resp.header.revision) == (0, 2)
    assert store.current_revision == 2


def test_version_resets_after_delete_and_create_revision_moves(store):
    apply = Applier(store)
    apply(put(b"k"), put(b"k"), DeleteRangeRequest(key=b"k"), put(b"k"))
    (kv,) = store.range(RangeRequest(key=b"k")).kvs
    assert (kv.create_revision, kv.mod_revision, kv.version) == (5, 5, 1)
    (old,) = store.range(RangeRequest(key=b"k", revision=3)).kvs
    assert (old.create_revision, old.mod_revision, old.version) == (2, 3, 2)
    assert store.range(RangeRequest(key=b"k", revision=4)).kvs == []


def test_range_errors_for_future_and_compacted_revisions(store):
    apply = Applier(store)
    apply(put(b"a"), put(b"a"), put(b"a"), CompactionRequest(revision=3))
    with pytest.raises(E.FutureRevisionError, match="required revision is a future revision"):
        store.range(RangeRequest(key=b"a", revision=5))
    with pytest.raises(E.CompactedError, match="required revision has been compacted"):
        store.range(RangeRequest(key=b"a", revision=2))
    assert store.range(RangeRequest(key=b"a", revision=3)).kvs[0].mod_revision == 3


def test_compact_errors(store):
    apply = Applier(store)
    apply(put(b"a"), put(b"a"))
    assert isinstance(apply(CompactionRequest(revision=9))[0], E.FutureRevisionError)
    apply(CompactionRequest(revision=2))
    assert isinstance(apply(CompactionRequest(revision=2))[0], E.CompactedError)
    assert store.compact_revision == 2


def test_ignore_value_and_lease_errors(store):
    apply = Applier(store)
    assert isinstance(apply(put(b"a", b"", ignore_value=True))[0], E.KeyNotFoundError)
    assert isinstance(apply(put(b"a", b"x", ignore_value=True))[0], E.ValueProvidedError)
    assert isinstance(apply(put(b"a", b"", lease=5, ignore_lease=True))[0], E.LeaseProvidedError)
    assert isinstance(apply(put(b"a", lease=5))[0], E.LeaseNotFoundError)
    apply(put(b"a", b"keep"))
    apply(put(b"a", b"", ignore_value=True))
    (kv,) = store.range(RangeRequest(key=b"a")).kvs
    assert (kv.value, kv.version) == (b"keep", 2)


def test_txn_duplicate_keys_follow_etcd_check_intervals():
    def dup(*ops: RequestOp, failure: tuple = ()) -> bool:
        try:
            validate(TxnRequest(success=list(ops), failure=list(failure)))
        except E.DuplicateKeyError:
            return True
        return False

    nested = lambda s, f=(): RequestOp(request_txn=TxnRequest(success=list(s), failure=list(f)))
    assert dup(op_put(b"a"), op_put(b"a"))
    assert dup(op_put(b"b"), op_del(b"a", b"c"))
    assert dup(op_del(b"a"), nested([op_put(b"a")]))
    assert dup(op_put(b"a"), nested([op_put(b"a")]))
    assert not dup(op_del(b"a", b"c"), op_del(b"b"))  # deletes may overlap deletes
    assert not dup(nested([op_put(b"a")], [op_put(b"a")]))  # then/else are exclusive
    assert not dup(op_put(b"a"), failure=(op_put(b"a"),))  # top-level branches are separate
    assert not dup(op_put(b"b"), op_del(b"a", b"\x00"))  # etcd's from-key quirk


def test_txn_too_many_ops_counts_nested_budget():
    ops = [op_put(b"k%d" % i) for i in range(129)]
    with pytest.raises(E.TooManyOpsError, match="too many operations in txn request"):
        validate(TxnRequest(success=ops))
    validate(TxnRequest(success=ops[:128]))
    inner = RequestOp(request_txn=TxnRequest(success=[op_put(b"x"), op_put(b"y")]))
    outer = TxnRequest(success=[inner] + [op_put(b"k%d" % i) for i in range(126)])
    with pytest.raises(E.TooManyOpsError):
        validate(outer)  # 127 at the top leaves a budget of 1 for the nested txn


def test_txn_compares_see_state_before_writes_and_nested_headers_are_zero(store):
    apply = Applier(store)
    apply(put(b"a", b"1"))
    cmp = Compare(key=b"a", target=CompareTarget.VALUE, result=CompareResult.EQUAL, value=b"1")
    inner = TxnRequest(compare=[cmp], success=[op_put(b"b")], failure=[op_put(b"c")])
    txn = TxnRequest(success=[RequestOp(request_put=put(b"a", b"2")), RequestOp(request_txn=inner)])
    (resp,) = apply(txn)
    assert resp.succeeded and resp.header.revision == 3
    nested = resp.responses[1].response_txn
    assert nested.succeeded and nested.header.revision == 0
    assert [kv.key for kv in store.range(RangeRequest(key=b"a", range_end=b"z")).kvs] == [b"a", b"b"]


def test_value_compare_on_missing_key_always_fails(store):
    cmp = Compare(key=b"nope", target=CompareTarget.VALUE, result=CompareResult.NOT_EQUAL, value=b"x")
    assert not store.txn_readonly(TxnRequest(compare=[cmp])).succeeded
    cmp = Compare(key=b"nope", target=CompareTarget.VERSION, result=CompareResult.EQUAL, version=0)
    assert store.txn_readonly(TxnRequest(compare=[cmp])).succeeded


def test_batch_skips_applied_entries_and_persists_index(tmp_path):
    with Store(tmp_path / "db") as s:
        res = s.apply([(1, put(b"a")), (2, None), (3, put(b"b"))])
        assert res.results[1] is None and res.revision == 3
        assert [e.kv.key for e in res.events] == [b"a", b"b"]
    with Store(tmp_path / "db") as s:
        assert (s.consistent_index, s.current_revision) == (3, 3)
        res = s.apply([(2, put(b"x")), (3, put(b"y")), (4, put(b"c"))])
        assert res.results[:2] == [None, None]
        assert s.range(RangeRequest(key=b"x")).kvs == []
        assert s.current_revision == 4


def test_revision_source_seam_allows_gaps(tmp_path):
    class Tens:
        def next_revision(self, current: int) -> int:
            return (current // 10 + 1) * 10

    with Store(tmp_path / "db", revision_source=Tens()) as s:
        apply = Applier(s)
        assert apply(put(b"a", b"1"))[0].header.revision == 10
        assert apply(put(b"a", b"2"))[0].header.revision == 20
        assert s.range(RangeRequest(key=b"a", revision=15)).kvs[0].value == b"1"
        # a read-only request draws no revision
        assert apply(DeleteRangeRequest(key=b"zz"))[0].header.revision == 20


def test_map_grows_when_full(tmp_path):
    with Store(tmp_path / "db", map_size=256 * 1024) as s:
        apply = Applier(s)
        for i in range(20):
            apply(*[put(b"k%04d" % (i * 50 + j), b"x" * 1000) for j in range(50)])
        assert s.range(RangeRequest(key=b"\x00", range_end=b"\x00", count_only=True)).count == 1000


def test_nospace_alarm_blocks_puts_until_compact_defrag_disarm(tmp_path):
    with Store(tmp_path / "db", member_id=7, quota_bytes=400 * 1024) as s:
        apply = Applier(s)
        result = None
        while result is None or result.propose_alarm is None:
            result = s.apply([(s.consistent_index + 1 + j, put(b"k%03d" % j, b"x" * 2000))
                              for j in range(20)])
        assert isinstance(result.results[-1], E.NoSpaceError)  # applied, but answered NOSPACE
        assert s.range(RangeRequest(key=b"k019")).count == 1
        assert s.alarms() == []  # raising it is a Raft decision, proposed by the node:
        apply.index = s.consistent_index
        apply(result.propose_alarm)
        assert s.alarms() == [AlarmMember(memberID=7, alarm=AlarmType.NOSPACE)]
        (refused,) = apply(put(b"more"))
        assert isinstance(refused, E.NoSpaceError)
        assert str(refused) == "etcdserver: mvcc: database space exceeded"
        assert apply(DeleteRangeRequest(key=b"\x00", range_end=b"\x00"))[0].deleted == 20
        apply(CompactionRequest(revision=s.current_revision))
        s.defragment()
        assert s.size() < 400 * 1024
        assert s.alarms() == [AlarmMember(memberID=7, alarm=AlarmType.NOSPACE)]  # persisted
        (off,) = apply(AlarmRequest(action=AlarmAction.DEACTIVATE, memberID=7, alarm=AlarmType.NOSPACE))
        assert off.alarms == [AlarmMember(memberID=7, alarm=AlarmType.NOSPACE)]
        assert apply(put(b"more"))[0].header.revision == s.current_revision


def test_alarms_survive_restart(tmp_path):
    with Store(tmp_path / "db") as s:
        Applier(s)(AlarmRequest(action=AlarmAction.ACTIVATE, memberID=3, alarm=AlarmType.CORRUPT))
    with Store(tmp_path / "db") as s:
        assert s.alarms(AlarmType.CORRUPT) == [AlarmMember(memberID=3, alarm=AlarmType.CORRUPT)]
        assert isinstance(Applier(s)(put(b"a"))[0], E.CorruptError)


def test_hashes_agree_between_replicas_and_hash_kv_checks_revision(tmp_path):
    reqs = [put(b"a"), put(b"b"), DeleteRangeRequest(key=b"a"), put(b"c"), CompactionRequest(revision=3)]
    with Store(tmp_path / "r1") as r1, Store(tmp_path / "r2") as r2:
        Applier(r1)(*reqs)
        apply2 = Applier(r2)
        for req in reqs:  # different batching and Raft indexes must not matter
            apply2(None, req)
        assert r1.hash().hash == r2.hash().hash
        assert r1.hash_kv(0) == r2.hash_kv(0)
        assert r1.hash_kv(4).compact_revision == 3
        assert r1.hash_kv(4).hash != r1.hash_kv(5).hash
        with pytest.raises(E.CompactedError):
            r1.hash_kv(3)
        with pytest.raises(E.FutureRevisionError):
            r1.hash_kv(6)


def test_compaction_keeps_latest_revision_below_fence_and_drops_tombstones(store):
    apply = Applier(store)
    apply(put(b"a", b"1"), put(b"a", b"2"), put(b"b"), DeleteRangeRequest(key=b"b"), put(b"c"))
    apply(CompactionRequest(revision=5))
    assert [e.kv.mod_revision for e in store.events(0, 10)] == [3, 6]
    assert store.range(RangeRequest(key=b"a", revision=5)).kvs[0].value == b"2"


def test_lazy_meta_sync_mode_keeps_data_and_index_together(tmp_path):
    with Store(tmp_path / "db", durable=False) as s:
        Applier(s)(put(b"a"), put(b"b"))
        s.sync()
    with Store(tmp_path / "db", durable=False) as s:
        assert (s.consistent_index, s.current_revision) == (2, 3)
        assert s.range(RangeRequest(key=b"a", range_end=b"c", count_only=True)).count == 2


def test_range_through_the_log_reads_in_order(store):
    got = Applier(store)(put(b"a", b"1"), RangeRequest(key=b"a"), put(b"a", b"2"))
    assert got[1].kvs[0].value == b"1" and got[1].header.revision == 2


def test_ignore_value_put_after_same_txn_from_key_delete_fails_whole_txn(store):
    """etcd 3.4 panics here; the store refuses the txn and writes nothing."""
    apply = Applier(store)
    apply(put(b"ab", b"v"))
    txn = TxnRequest(success=[op_del(b"a", b"\x00"),
                              RequestOp(request_put=put(b"ab", b"", ignore_value=True))])
    (resp,) = apply(txn)
    assert isinstance(resp, E.KeyNotFoundError)
    assert store.current_revision == 2
    assert store.range(RangeRequest(key=b"ab")).kvs[0].value == b"v"


def test_hot_key_keeps_one_index_entry_and_every_old_revision(store):
    """A key rewritten many times: the newest-entry index holds one entry (a put costs the
    same on the 1st and the 3000th write), history still answers every old revision, and
    compaction keeps exactly etcd's readable set."""
    from shardkv.mvcc import index

    apply = Applier(store)
    for i in range(3000):
        apply(put(b"hot", b"v%d" % i))
    apply(DeleteRangeRequest(key=b"hot"), put(b"hot", b"again"))
    with store._env.begin() as txn:
        assert index.latest(txn, store._dbs, b"hot")[index.VERSION] == 1
        assert len(index.history(txn, store._dbs, b"hot")) == 3002
    for rev in (2, 3, 1500, 3001):
        kv = store.range(RangeRequest(key=b"hot", revision=rev)).kvs[0]
        assert (kv.value, kv.mod_revision, kv.version) == (b"v%d" % (rev - 2), rev, rev - 1)
    assert store.range(RangeRequest(key=b"hot", revision=3002)).kvs == []  # the delete
    apply(CompactionRequest(revision=2500))
    with store._env.begin() as txn:
        kept = index.history(txn, store._dbs, b"hot")
    assert [e[index.MAIN] for e in kept] == list(range(2500, 3004))
    assert store.range(RangeRequest(key=b"hot", revision=2500)).kvs[0].value == b"v2498"
    apply(CompactionRequest(revision=3002))  # the tombstone ends the old generation
    with store._env.begin() as txn:
        assert [e[index.MAIN] for e in index.history(txn, store._dbs, b"hot")] == [3003]
    apply(DeleteRangeRequest(key=b"hot"))
    apply(CompactionRequest(revision=store.current_revision))
    with store._env.begin() as txn:
        assert index.latest(txn, store._dbs, b"hot") is None  # no history left: out of the index


def test_old_index_layout_is_migrated_on_open(tmp_path):
    """A data dir written with the whole history in one index value opens with every revision
    still readable."""
    import msgspec

    with Store(tmp_path / "db") as s:
        apply = Applier(s)
        apply(put(b"a", b"1"), put(b"a", b"2"), put(b"b", b"x"))
        with s._env.begin(write=True) as txn:
            txn.drop(s._dbs.history, delete=False)
            txn.put(b"a", msgspec.msgpack.encode([[2, 0, 2, 1, 0], [3, 0, 2, 2, 0]]),
                    db=s._dbs.index)
            txn.put(b"b", msgspec.msgpack.encode([[4, 0, 4, 1, 0]]), db=s._dbs.index)
            txn.delete(b"index_layout", db=s._dbs.meta)
    with Store(tmp_path / "db") as s:
        assert s.range(RangeRequest(key=b"a", revision=2)).kvs[0].value == b"1"
        assert [kv.value for kv in s.range(RangeRequest(key=b"a", range_end=b"c")).kvs] == [
            b"2", b"x"]


def test_computed_results_come_before_the_commit_and_match_it(store):
    """The node answers KV writes from ``computed`` while the commit syncs: the results must
    be the committed ones, and the store must not show them yet."""
    seen = []

    def computed(results):
        seen.append((list(results), store.range(RangeRequest(key=b"k")).count))

    out = store.apply([(1, put(b"k")), (2, DeleteRangeRequest(key=b"nothing"))], computed)
    [(results, count_then)] = seen
    assert results == out.results and count_then == 0
    assert store.range(RangeRequest(key=b"k")).count == 1


def test_limited_range_counts_the_whole_range_at_any_revision(store):
    """A limited range builds only the keys it returns but counts them all (etcd 3.4), skipping
    deleted keys, and at an old revision counts what existed then."""
    def apply(*reqs):
        base = store.consistent_index
        store.apply([(base + i + 1, r) for i, r in enumerate(reqs)])

    apply(*[put(b"k%d" % i) for i in range(10)])  # revisions 2-11
    apply(DeleteRangeRequest(key=b"k3"), DeleteRangeRequest(key=b"k7"))  # 12, 13
    apply(put(b"k3", b"again"), put(b"z"))  # 14, 15
    every = RangeRequest(key=b"\x00", range_end=b"\x00")
    r = store.range(RangeRequest(key=b"k", range_end=b"l", limit=4))
    assert (r.count, [kv.key for kv in r.kvs], r.more) == (9, [b"k0", b"k1", b"k2", b"k3"], True)
    r = store.range(RangeRequest(key=b"k", range_end=b"l", limit=4, revision=12))
    assert (r.count, [kv.key for kv in r.kvs]) == (9, [b"k0", b"k1", b"k2", b"k4"])
    r = store.range(RangeRequest(key=b"k", range_end=b"l", limit=4, revision=13))
    assert r.count == 8
    assert store.range(RangeRequest(key=b"\x00", range_end=b"\x00", count_only=True)).count == 10
    r = store.range(RangeRequest(key=b"\x00", range_end=b"\x00", limit=10))
    assert (r.count, len(r.kvs), r.more) == (10, 10, False)
    assert store.range(every).count == 10
    r = store.range(RangeRequest(key=b"k3", limit=1))
    assert (r.count, r.kvs[0].value) == (1, b"again")
