"""Hypothesis strategies for random etcd request sequences, shared by the property test (store
vs. reference model) and the differential test (store vs. a real etcd)."""
from __future__ import annotations

from hypothesis import strategies as st

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


BY_KIND = {
    "put": puts,
    "delete": deletes,
    "range": ranges,
    "txn": txns(1),
    "compact": st.builds(CompactionRequest, revision=revs),
    "grant": st.builds(LeaseGrantRequest, ID=st.sampled_from([0, 1, 2, 3]), TTL=st.sampled_from([1, 5])),
    "revoke": st.builds(LeaseRevokeRequest, ID=st.sampled_from([1, 2, 3, 4])),
}
WEIGHTS = ["put"] * 5 + ["delete"] + ["range"] * 4 + ["txn"] * 3 + ["compact", "grant", "revoke"]
requests = st.sampled_from(WEIGHTS).flatmap(BY_KIND.__getitem__)
# Every example starts from the same small populated history so reads have something to find.
SEED = [PutRequest(key=k, value=b"v%d" % i) for i, k in enumerate(KEYS)] + [
    LeaseGrantRequest(ID=1, TTL=5), PutRequest(key=b"ab", value=b"w", lease=1),
    PutRequest(key=b"c", value=b"w"), DeleteRangeRequest(key=b"abc"),
]
