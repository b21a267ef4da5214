"""Request and response types of the storage engine.

Field names mirror etcd v3.4's protobuf messages exactly (including etcd's own spellings such as
``ID``, ``TTL``, ``memberID`` and ``grantedTTL``) so the node layer can map protobuf <-> these
structs 1:1. Enum values equal the protobuf enum numbers.
"""
from __future__ import annotations

import enum

import msgspec


class SortOrder(enum.IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(enum.IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


class CompareResult(enum.IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


class CompareTarget(enum.IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


class EventType(enum.IntEnum):
    PUT = 0
    DELETE = 1


class FilterType(enum.IntEnum):
    NOPUT = 0
    NODELETE = 1


class AlarmType(enum.IntEnum):
    NONE = 0
    NOSPACE = 1
    CORRUPT = 2


class AlarmAction(enum.IntEnum):
    GET = 0
    ACTIVATE = 1
    DEACTIVATE = 2


class ResponseHeader(msgspec.Struct):
    cluster_id: int = 0
    member_id: int = 0
    revision: int = 0
    raft_term: int = 0


class KeyValue(msgspec.Struct, array_like=True):
    key: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    value: bytes = b""
    lease: int = 0


class RangeRequest(msgspec.Struct, kw_only=True):
    key: bytes = b""
    range_end: bytes = b""
    limit: int = 0
    revision: int = 0
    sort_order: int = SortOrder.NONE
    sort_target: int = SortTarget.KEY
    serializable: bool = False
    keys_only: bool = False
    count_only: bool = False
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


class RangeResponse(msgspec.Struct, kw_only=True):
    header: ResponseHeader = msgspec.field(default_factory=ResponseHeader)
    kvs: list[KeyValue] = msgspec.field(default_factory=list)
    more: bool = False
    count: int = 0


class PutRequest(msgspec.Struct, kw_only=True):
    key: bytes = b""
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


class PutResponse(msgspec.Struct, kw_only=True):
    header: ResponseHeader = msgspec.field(default_factory=ResponseHeader)
    prev_kv: KeyValue | None = None


class DeleteRangeRequest(msgspec.Struct, kw_only=True):
    key: bytes = b""
    range_end: bytes = b""
    prev_kv: bool = False


class DeleteRangeResponse(msgspec.Struct, kw_only=True):
    header: ResponseHeader = msgspec.field(default_factory=ResponseHeader)
    deleted: int = 0
    prev_kvs: list[KeyValue] = msgspec.field(default_factory=list)


class Compare(msgspec.Struct, kw_only=True):
    """etcd's Compare; the ``target_union`` oneof is flattened: the field named by ``target`` is
    the one compared (``version``, ``create_revision``, ``mod_revision``, ``value``, ``lease``)."""

    result: int = CompareResult.EQUAL
    target: int = CompareTarget.VERSION
    key: bytes = b""
    version: int = 0
    create_revision: int = 0
    mod_revision: int = 0
    value: bytes = b""
    lease: int = 0
    range_end: bytes = b""


class RequestOp(msgspec.Struct, kw_only=True):
    """Exactly one field should be set (protobuf oneof ``request``); none set is etcd's
    "empty op" and is rejected with ``etcdserver: key not found``."""

    request_range: RangeRequest | None = None
    request_put: PutRequest | None = None
    request_delete_range: DeleteRangeRequest | None = None
    request_txn: TxnRequest | None = None


class TxnRequest(msgspec.Struct, kw_only=True):
    compare: list[Compare] = msgspec.field(default_factory=list)
    success: list[RequestOp] = msgspec.field(default_factory=list)
    failure: list[RequestOp] = msgspec.field(default_factory=list)


class ResponseOp(msgspec.Struct, kw_only=True):
    response_range: RangeResponse | None = None
    response_put: PutResponse | None = None
    response_delete_range: DeleteRangeResponse | None = None
    response_txn: TxnResponse | None = None


class TxnResponse(msgspec.Struct, kw_only=True):
    header: ResponseHeader = msgspec.field(default_factory=ResponseHeader)
    succeeded: bool = False
    responses: list[ResponseOp] = msgspec.field(default_factory=list)


class CompactionRequest(msgspec.Struct, kw_only=True):
    revision: int = 0
    physical: bool = False


class CompactionResponse(msgspec.Struct, kw_only=True):
    header: ResponseHeader = msgspec.field(default_factory=ResponseHeader)


class LeaseGrantRequest(msgspec.Struct, kw_only=True):
    TTL: int = 0
    ID: int = 0


class LeaseGrantResponse(msgspec.Struct, kw_only=True):
    header: ResponseHeader = msgspec.field(default_factory=ResponseHeader)
    ID: int = 0
    TTL: int = 0
    error: str = ""


class LeaseRevokeRequest(msgspec.Struct, kw_only=True):
    ID: int = 0


class LeaseRevokeResponse(msgspec.Struct, kw_only=True):
    header: ResponseHeader = msgspec.field(default_factory=ResponseHeader)


class LeaseKeepAliveResponse(msgspec.Struct, kw_only=True):
    header: ResponseHeader = msgspec.field(default_factory=ResponseHeader)
    ID: int = 0
    TTL: int = 0


class LeaseTimeToLiveRequest(msgspec.Struct, kw_only=True):
    ID: int = 0
    keys: bool = False


class LeaseTimeToLiveResponse(msgspec.Struct, kw_only=True):
    header: ResponseHeader = msgspec.field(default_factory=ResponseHeader)
    ID: int = 0
    TTL: int = 0
    grantedTTL: int = 0
    keys: list[bytes] = msgspec.field(default_factory=list)


class LeaseStatus(msgspec.Struct, kw_only=True):
    ID: int = 0


class LeaseLeasesResponse(msgspec.Struct, kw_only=True):
    header: ResponseHeader = msgspec.field(default_factory=ResponseHeader)
    leases: list[LeaseStatus] = msgspec.field(default_factory=list)


class AlarmMember(msgspec.Struct, kw_only=True):
    memberID: int = 0
    alarm: int = AlarmType.NONE


class AlarmRequest(msgspec.Struct, kw_only=True):
    action: int = AlarmAction.GET
    memberID: int = 0
    alarm: int = AlarmType.NONE


class AlarmResponse(msgspec.Struct, kw_only=True):
    header: ResponseHeader = msgspec.field(default_factory=ResponseHeader)
    alarms: list[AlarmMember] = msgspec.field(default_factory=list)


class HashResponse(msgspec.Struct, kw_only=True):
    header: ResponseHeader = msgspec.field(default_factory=ResponseHeader)
    hash: int = 0


class HashKVResponse(msgspec.Struct, kw_only=True):
    header: ResponseHeader = msgspec.field(default_factory=ResponseHeader)
    hash: int = 0
    compact_revision: int = 0


class Event(msgspec.Struct, kw_only=True):
    type: int = EventType.PUT
    kv: KeyValue = msgspec.field(default_factory=KeyValue)
    prev_kv: KeyValue | None = None


class WatchCreateRequest(msgspec.Struct, kw_only=True):
    key: bytes = b""
    range_end: bytes = b""
    start_revision: int = 0
    progress_notify: bool = False
    filters: list[int] = msgspec.field(default_factory=list)
    prev_kv: bool = False
    watch_id: int = 0  # 0 asks the hub to choose (etcd's AutoWatchID)
    fragment: bool = False


class WatchResponse(msgspec.Struct, kw_only=True):
    header: ResponseHeader = msgspec.field(default_factory=ResponseHeader)
    watch_id: int = 0
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    fragment: bool = False
    events: list[Event] = msgspec.field(default_factory=list)


# Requests ``Store.apply`` takes from the Raft log: those that change the state machine, plus
# RangeRequest for a read the node chooses to serialize through the log.
WriteRequest = (
    RangeRequest
    | PutRequest
    | DeleteRangeRequest
    | TxnRequest
    | CompactionRequest
    | LeaseGrantRequest
    | LeaseRevokeRequest
    | AlarmRequest
)
