"""Property tests: random request sequences against the Store and the reference model agree on
every response field (and on every error), including reads of every retained revision."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model import Model
from shardkv.mvcc.errors import EtcdError
from shardkv.mvcc.kv import (
    CompactionRequest,
    Compare,
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)
from shardkv.mvcc.store import Store, is_readonly_txn

settings.register_profile(
    "mvcc", max_examples=200, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MVCC = settings.get_profile("mvcc")

KEYS = [b"a", b"ab", b"abc", b"b", b"c", b"c\x00", b"d"]
keys = st.sampled_from(KEYS)
values = st.sampled_from([b"", b"x", b"y", b"zz"])
revs = st.integers(min_value=-1, max_value=12)
small_revs = st.sampled_from([0] * 12 + list(range(1, 13)))
leases = st.sampled_from([0] * 6 + [1, 2, 3])

ranges = st.builds(
    RangeRequest, key=st.sampled_from([b"a", b"a", b"\x00", b"ab", b"b", b"c", b""]),
    range_end=st.sampled_from([b"", b"\x00", b"\x00", b"b", b"c", b"ac", b"e", b"d"]),
    limit=st.sampled_from([0, 1, 2, 3]), revision=st.sampled_from([0, 0]) | revs,
    sort_order=st.integers(0, 2), sort_target=st.integers(0, 4),
    keys_only=st.booleans(), count_only=st.sampled_from([False, False, False, True]),
    min_mod_revision=small_revs, max_mod_revision=small_revs,
    min_create_revision=small_revs, max_create_revision=small_revs,
)
puts = st.builds(
    PutRequest, key=keys, value=st.sampled_from([b"x", b"y", b"zz", b"", b"x"]), lease=leases, prev_kv=st.booleans(),
    ignore_value=st.sampled_from([False] * 6 + [True]),
    ignore_lease=st.sampled_from([False] * 6 + [True]),
)
deletes = st.builds(
    DeleteRangeRequest, key=keys, range_end=st.sampled_from([b"", b"", b"", b"\x00", b"ac", b"c"]),
    prev_kv=st.booleans(),
)
compares = st.builds(
    Compare, result=st.integers(0, 3), target=st.integers(0, 4),
    key=st.sampled_from([*KEYS, b"zz", b"abc"]),
    range_end=st.sampled_from([b"", b"", b"\x00", b"c"]),
    version=st.integers(0, 3), create_revision=revs, mod_revision=revs,
    value=values, lease=leases,
)


def ops(depth: int) -> st.SearchStrategy[RequestOp]:
    base = [
        st.builds(RequestOp, request_range=ranges.map(lambda r: _no_bad_rev(r))),
        st.builds(RequestOp, request_put=puts),
        st.builds(RequestOp, request_delete_range=deletes),
    ]
    if depth > 0:
        base.append(st.builds(RequestOp, request_txn=txns(depth - 1)))
    return st.one_of(*base)


def _no_bad_rev(r: RangeRequest) -> RangeRequest:
    # Keep most in-txn ranges valid so txns get past their checks often.
    if r.revision > 3:
        r.revision = 0
    if not r.key:
        r.key = b"a"
    return r


def txns(depth: int) -> st.SearchStrategy[TxnRequest]:
    return st.builds(
        TxnRequest,
        compare=st.lists(compares, max_size=2),
        success=st.lists(ops(depth), max_size=3),
        failure=st.lists(ops(depth), max_size=3),
    )


_BY_KIND = {
    "put": puts,
    "delete": deletes,
    "range": ranges,
    "txn": txns(1),
    "compact": st.builds(CompactionRequest, revision=revs),
    "grant": st.builds(LeaseGrantRequest, ID=st.sampled_from([0, 1, 2, 3]), TTL=st.sampled_from([1, 5])),
    "revoke": st.builds(LeaseRevokeRequest, ID=st.sampled_from([1, 2, 3, 4])),
}
_WEIGHTS = ["put"] * 5 + ["delete"] + ["range"] * 4 + ["txn"] * 3 + ["compact", "grant", "revoke"]
requests = st.sampled_from(_WEIGHTS).flatmap(_BY_KIND.__getitem__)
# Every example starts from the same small populated history so reads have something to find.
SEED = [PutRequest(key=k, value=b"v%d" % i) for i, k in enumerate(KEYS)] + [
    LeaseGrantRequest(ID=1, TTL=5), PutRequest(key=b"ab", value=b"w", lease=1),
    PutRequest(key=b"c", value=b"w"), DeleteRangeRequest(key=b"abc"),
]


def _outcome(call, *args):
    try:
        return call(*args)
    except EtcdError as err:
        return err


def _same(got: object, want: object) -> None:
    if isinstance(want, EtcdError):
        assert type(got) is type(want), (got, want)
        assert str(got) == str(want)
    else:
        assert got == want


def _is_read(req: object) -> bool:
    return isinstance(req, RangeRequest) or (isinstance(req, TxnRequest) and is_readonly_txn(req))


@MVCC
@given(seq=st.lists(st.tuples(requests, st.booleans()), min_size=3, max_size=40))
def test_store_matches_model(tmp_path_factory, seq) -> None:
    model = Model()
    with Store(tmp_path_factory.mktemp("prop")) as store, \
            Store(tmp_path_factory.mktemp("replica"), durable=False) as replica:
        pending: list[tuple[object, object]] = [(r, model.write(r)) for r in SEED]
        index = 0

        def flush() -> None:
            nonlocal index
            batch = []
            for req, _ in pending:
                index += 1
                batch.append((index, req))
                replica.apply([(index, req)])  # same log, one entry per batch
            result = store.apply(batch)
            for got, (_, want) in zip(result.results, pending):
                _same(got, want)
            pending.clear()

        for req, flush_now in seq:
            if _is_read(req):
                flush()
                want = model.read(req)
                got = _outcome(store.range if isinstance(req, RangeRequest) else store.txn_readonly, req)
                _same(got, want)
                continue
            pending.append((req, model.write(req)))
            if flush_now:
                flush()
        flush()
        assert store.current_revision == model.rev
        assert store.consistent_index == index
        assert store.hash() == replica.hash()  # replicas agree byte for byte
        assert store.hash_kv(0) == replica.hash_kv(0)
        for rev in range(max(model.compact, 1), model.rev + 1):
            req = RangeRequest(key=b"\x00", range_end=b"\x00", revision=rev)
            _same(_outcome(store.range, req), model.read(req))
