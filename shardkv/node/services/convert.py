"""protobuf <-> shardkv.mvcc.kv structs. Field names are identical on both sides (the mvcc
structs were named after etcd's protobuf fields), so flat messages copy field by field; only
oneofs and nested messages need code."""
from __future__ import annotations

from typing import Any

from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.mvccpb import kv_pb2
from shardkv.mvcc import kv


def copy_in(cls: type, msg: Any) -> Any:
    """A flat protobuf message as the mvcc struct ``cls``."""
    return cls(**{name: getattr(msg, name) for name in cls.__struct_fields__})


def header(h: kv.ResponseHeader) -> pb.ResponseHeader:
    return pb.ResponseHeader(cluster_id=h.cluster_id, member_id=h.member_id,
                             revision=h.revision, raft_term=h.raft_term)


def key_value(k: kv.KeyValue) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(key=k.key, create_revision=k.create_revision,
                           mod_revision=k.mod_revision, version=k.version, value=k.value,
                           lease=k.lease)


def event(e: kv.Event) -> kv_pb2.Event:
    out = kv_pb2.Event(type=e.type, kv=key_value(e.kv))
    if e.prev_kv is not None:
        out.prev_kv.CopyFrom(key_value(e.prev_kv))
    return out


# ---- requests in

def range_request(m: pb.RangeRequest) -> kv.RangeRequest:
    return copy_in(kv.RangeRequest, m)


def put_request(m: pb.PutRequest) -> kv.PutRequest:
    return copy_in(kv.PutRequest, m)


def delete_request(m: pb.DeleteRangeRequest) -> kv.DeleteRangeRequest:
    return copy_in(kv.DeleteRangeRequest, m)


def compare(m: pb.Compare) -> kv.Compare:
    return copy_in(kv.Compare, m)


def request_op(m: pb.RequestOp) -> kv.RequestOp:
    which = m.WhichOneof("request")
    if which == "request_range":
        return kv.RequestOp(request_range=range_request(m.request_range))
    if which == "request_put":
        return kv.RequestOp(request_put=put_request(m.request_put))
    if which == "request_delete_range":
        return kv.RequestOp(request_delete_range=delete_request(m.request_delete_range))
    if which == "request_txn":
        return kv.RequestOp(request_txn=txn_request(m.request_txn))
    return kv.RequestOp()


def txn_request(m: pb.TxnRequest) -> kv.TxnRequest:
    return kv.TxnRequest(compare=[compare(c) for c in m.compare],
                         success=[request_op(o) for o in m.success],
                         failure=[request_op(o) for o in m.failure])


# ---- responses out

def range_response(r: kv.RangeResponse, h: pb.ResponseHeader) -> pb.RangeResponse:
    return pb.RangeResponse(header=h, kvs=[key_value(k) for k in r.kvs], more=r.more,
                            count=r.count)


def put_response(r: kv.PutResponse, h: pb.ResponseHeader) -> pb.PutResponse:
    out = pb.PutResponse(header=h)
    if r.prev_kv is not None:
        out.prev_kv.CopyFrom(key_value(r.prev_kv))
    return out


def delete_response(r: kv.DeleteRangeResponse, h: pb.ResponseHeader) -> pb.DeleteRangeResponse:
    return pb.DeleteRangeResponse(header=h, deleted=r.deleted,
                                  prev_kvs=[key_value(k) for k in r.prev_kvs])


def _response_op(r: kv.ResponseOp) -> pb.ResponseOp:
    """A txn's inner response: etcd gives it a header holding only the revision."""
    if r.response_range is not None:
        h = pb.ResponseHeader(revision=r.response_range.header.revision)
        return pb.ResponseOp(response_range=range_response(r.response_range, h))
    if r.response_put is not None:
        h = pb.ResponseHeader(revision=r.response_put.header.revision)
        return pb.ResponseOp(response_put=put_response(r.response_put, h))
    if r.response_delete_range is not None:
        h = pb.ResponseHeader(revision=r.response_delete_range.header.revision)
        return pb.ResponseOp(response_delete_range=delete_response(r.response_delete_range, h))
    if r.response_txn is not None:
        h = pb.ResponseHeader(revision=r.response_txn.header.revision)
        return pb.ResponseOp(response_txn=txn_response(r.response_txn, h))
    return pb.ResponseOp()


def txn_response(r: kv.TxnResponse, h: pb.ResponseHeader) -> pb.TxnResponse:
    return pb.TxnResponse(header=h, succeeded=r.succeeded,
                          responses=[_response_op(o) for o in r.responses])
