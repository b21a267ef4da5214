"""Request checks etcd performs in its gRPC layer, before a request is proposed.

The node should call ``validate`` before proposing (to fail fast); ``Store.apply`` calls it again
so a request that skipped it still gets etcd's error, deterministically on every replica.
"""
from __future__ import annotations

from shardkv.mvcc.errors import (
    DuplicateKeyError,
    EmptyKeyError,
    KeyNotFoundError,
    LeaseProvidedError,
    TooManyOpsError,
    ValueProvidedError,
)
from shardkv.mvcc.kv import DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest


def validate(request: object, max_txn_ops: int = 128) -> None:
    """Raise etcd's error for a malformed Range/Put/DeleteRange/Txn request."""
    if isinstance(request, (RangeRequest, DeleteRangeRequest)):
        _check_key(request.key)
    elif isinstance(request, PutRequest):
        _check_put(request)
    elif isinstance(request, TxnRequest):
        _check_txn(request, max_txn_ops)
        _check_intervals(request.success)
        _check_intervals(request.failure)


def _check_key(key: bytes) -> None:
    if not key:
        raise EmptyKeyError()


def _check_put(req: PutRequest) -> None:
    _check_key(req.key)
    if req.ignore_value and req.value:
        raise ValueProvidedError()
    if req.ignore_lease and req.lease != 0:
        raise LeaseProvidedError()


def _check_txn(req: TxnRequest, max_txn_ops: int) -> None:
    # etcd counts the longest of compare/success/failure, and nested txns get what is left.
    ops = max(len(req.compare), len(req.success), len(req.failure))
    if ops > max_txn_ops:
        raise TooManyOpsError()
    for cmp in req.compare:
        _check_key(cmp.key)
    for op in [*req.success, *req.failure]:
        _check_op(op, max_txn_ops - ops)


def _check_op(op: RequestOp, max_txn_ops: int) -> None:
    if op.request_range is not None:
        _check_key(op.request_range.key)
    elif op.request_put is not None:
        _check_put(op.request_put)
    elif op.request_delete_range is not None:
        _check_key(op.request_delete_range.key)
    elif op.request_txn is not None:
        _check_txn(op.request_txn, max_txn_ops)
    else:
        raise KeyNotFoundError()  # etcd's answer to an empty RequestOp


_Interval = tuple[bytes, bytes | None]  # [begin, end); end None = single key


def _intersects(dels: list[_Interval], key: bytes) -> bool:
    # etcd compares range ends as plain strings, so a from-key delete (range_end "\0") covers
    # nothing here: that quirk is reproduced on purpose.
    for begin, end in dels:
        if end is None and key == begin:
            return True
        if end is not None and begin <= key < end:
            return True
    return False


def _check_intervals(ops: list[RequestOp]) -> tuple[set[bytes], list[_Interval]]:
    """etcd's checkIntervals: no key may be put twice or both put and deleted along one path.
    Deletes overlapping deletes are allowed; then/else branches of a nested txn may put the same
    key (only one runs). Returns (puts, deletes) for the enclosing level."""
    dels: list[_Interval] = []
    for op in ops:
        d = op.request_delete_range
        if d is not None:
            dels.append((d.key, d.range_end or None))
    puts: set[bytes] = set()
    for op in ops:
        if op.request_txn is None:
            continue
        puts_then, dels_then = _check_intervals(op.request_txn.success)
        puts_else, dels_else = _check_intervals(op.request_txn.failure)
        for key in puts_then:
            if key in puts or _intersects(dels, key):
                raise DuplicateKeyError()
            puts.add(key)
        for key in puts_else:
            if (key in puts and key not in puts_then) or _intersects(dels, key):
                raise DuplicateKeyError()
            puts.add(key)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in ops:
        p = op.request_put
        if p is None:
            continue
        if p.key in puts or _intersects(dels, p.key):
            raise DuplicateKeyError()
        puts.add(p.key)
    return puts, dels
