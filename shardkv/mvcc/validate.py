"""Request checks etcd performs in its gRPC layer, before a request is proposed.

The node should call ``validate`` before proposing (to fail fast); ``Store.apply`` calls it again
so a request that skipped it still gets etcd's error, deterministically on every replica.

Where etcd accepts a value, so does this (negative lease IDs and revisions, unknown compare
enums, unknown sort orders: the store gives them etcd's meaning). It refuses only what etcd
refuses, plus the few inputs that make etcd 3.4 itself crash (an unknown sort target or alarm
action), which get shardkv's own errors.
"""
from __future__ import annotations

from shardkv.mvcc.errors import (
    AlarmActionError,
    AlarmTypeError,
    DuplicateKeyError,
    EmptyKeyError,
    KeyNotFoundError,
    KeyTooLargeError,
    LeaseProvidedError,
    SortTargetError,
    TooManyOpsError,
    ValueProvidedError,
)
from shardkv.mvcc.kv import (
    AlarmAction,
    AlarmRequest,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    SortOrder,
    SortTarget,
    TxnRequest,
)

_SORT_TARGETS = frozenset(SortTarget)
_SORT_ORDERS = frozenset(SortOrder)
_ALARM_ACTIONS = frozenset(AlarmAction)
ALARM_TYPE_MAX = 255  # the store keeps an alarm's type in one byte
# The longest key the store can index: LMDB's 511-byte key limit, less the 8-byte lease ID that
# the lease index puts before a key. (etcd takes longer keys; see KeyTooLargeError.)
MAX_KEY_BYTES = 511 - 8


def validate(request: object, max_txn_ops: int = 128) -> None:
    """Raise etcd's error for a malformed Range/Put/DeleteRange/Txn/Alarm request."""
    if isinstance(request, PutRequest):
        _check_put(request)
    elif isinstance(request, RangeRequest):
        _check_range(request)
    elif isinstance(request, DeleteRangeRequest):
        _check_key(request.key)
    elif isinstance(request, TxnRequest):
        _check_txn(request, max_txn_ops)
        _check_intervals(request.success)
        _check_intervals(request.failure)
    elif isinstance(request, AlarmRequest):
        _check_alarm(request)


def _check_key(key: bytes) -> None:
    if not key:
        raise EmptyKeyError()
    if len(key) > MAX_KEY_BYTES:
        raise KeyTooLargeError()


def _check_range(req: RangeRequest) -> None:
    _check_key(req.key)
    # etcd sorts on any known order (NONE becomes ASCEND for a non-KEY target) and ignores an
    # unknown order; only a sort it would run on an unknown target is refused. (KEY, 0, is
    # the common case: tested first.)
    if req.sort_target and req.sort_target not in _SORT_TARGETS and \
            req.sort_order in _SORT_ORDERS:
        raise SortTargetError()


def _check_alarm(req: AlarmRequest) -> None:
    if req.action not in _ALARM_ACTIONS:
        raise AlarmActionError()
    # etcd stores any alarm type it is asked to activate (and lists it); the store's byte holds
    # more than etcd's three. A GET only filters, so any type is fine there.
    if req.action != AlarmAction.GET and not 0 <= req.alarm <= ALARM_TYPE_MAX:
        raise AlarmTypeError()


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
        _check_range(op.request_range)
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
