"""etcd's KV service: reads served locally after ReadIndex (or at once when serializable),
writes replicated through Raft."""
from __future__ import annotations

import grpc

from shardkv.api import errors
from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc
from shardkv.mvcc import kv
from shardkv.mvcc.store import is_readonly_txn
from shardkv.mvcc.validate import validate
from shardkv.node.member import Member, to_api_error
from shardkv.node.services import convert


def checked(member: Member, request: object) -> None:
    """etcd's gRPC-layer checks before proposing, as wire errors."""
    try:
        validate(request, member.cfg.max_txn_ops)
        if not isinstance(request, kv.RangeRequest):
            member.store.check_quota(request)
    except Exception as exc:
        raise to_api_error(exc) from None


def local(fn, *args):
    """Run a local store read, turning mvcc errors into wire errors."""
    try:
        return fn(*args)
    except Exception as exc:
        if isinstance(exc, errors.EtcdError):
            raise
        raise to_api_error(exc) from None


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, member: Member) -> None:
        self.m = member

    def _header(self, revision: int | None = None) -> pb.ResponseHeader:
        return convert.header(self.m.header(revision))

    @errors.etcd_errors
    async def Range(self, request: pb.RangeRequest, context: grpc.aio.ServicerContext):
        req = convert.range_request(request)
        checked(self.m, req)
        if not req.serializable:
            await self.m.linearizable_barrier()
        resp = local(self.m.store.range, req)
        return convert.range_response(resp, self._header(resp.header.revision))

    @errors.etcd_errors
    async def Put(self, request: pb.PutRequest, context: grpc.aio.ServicerContext):
        req = convert.put_request(request)
        checked(self.m, req)
        resp = await self.m.propose(req)
        return convert.put_response(resp, self._header(resp.header.revision))

    @errors.etcd_errors
    async def DeleteRange(self, request: pb.DeleteRangeRequest, context):
        req = convert.delete_request(request)
        checked(self.m, req)
        resp = await self.m.propose(req)
        return convert.delete_response(resp, self._header(resp.header.revision))

    @errors.etcd_errors
    async def Txn(self, request: pb.TxnRequest, context):
        req = convert.txn_request(request)
        checked(self.m, req)
        if is_readonly_txn(req):
            if not _all_serializable(req):
                await self.m.linearizable_barrier()
            resp = local(self.m.store.txn_readonly, req)
        else:
            resp = await self.m.propose(req)
        return convert.txn_response(resp, self._header(resp.header.revision))

    @errors.etcd_errors
    async def Compact(self, request: pb.CompactionRequest, context):
        req = kv.CompactionRequest(revision=request.revision, physical=request.physical)
        resp = await self.m.propose(req)
        return pb.CompactionResponse(header=self._header(resp.header.revision))


def _all_serializable(req: kv.TxnRequest) -> bool:
    """etcd serves a read-only txn locally only if every range in it is serializable."""
    ops = [*req.success, *req.failure]
    return bool(ops) and all(op.request_range is not None and op.request_range.serializable
                             for op in ops)
