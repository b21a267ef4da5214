"""etcd's KV service: reads served locally after ReadIndex (or at once when serializable),
writes replicated through Raft.

``execute`` runs one request against the member; ``KVService`` is the gRPC face and talks to a
backend with that one method: ``LocalKV`` in the member's own process, or
``intake.RemoteKV`` in a client intake process (see intake.py), which batches requests to the
member over ZeroMQ so that gRPC's per-call cost is paid on another core."""
from __future__ import annotations

from typing import Any, Protocol

import grpc

from shardkv.api import errors
from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc
from shardkv.mvcc import kv
from shardkv.mvcc.store import is_readonly_txn
from shardkv.mvcc.validate import validate
from shardkv.node.member import Member, to_api_error
from shardkv.node.services import convert
from shardkv.trace import tr

KVRequest = kv.RangeRequest | kv.PutRequest | kv.DeleteRangeRequest | kv.TxnRequest | \
    kv.CompactionRequest


class KVBackend(Protocol):
    async def execute(self, request: Any) -> Any: ...


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


async def execute(m: Member, req: KVRequest) -> Any:
    """One KV request as etcd serves it; the response's header is the member's (cluster, member,
    revision, term). Raises ``EtcdError``."""
    tr("exec")
    if isinstance(req, kv.CompactionRequest):
        resp = await m.propose(req)
    else:
        checked(m, req)
        if isinstance(req, kv.RangeRequest):
            if not req.serializable:
                await m.linearizable_barrier()
            elif m.unsettled:
                await m.settled()
            resp = local(m.store.range, req)
        elif isinstance(req, kv.TxnRequest) and is_readonly_txn(req):
            if not _all_serializable(req):
                await m.linearizable_barrier()
            elif m.unsettled:
                await m.settled()
            resp = local(m.store.txn_readonly, req)
        else:
            resp = await m.propose(req, early=True)
    tr("exec-done")
    resp.header = m.header(resp.header.revision)
    return resp


class LocalKV:
    """The backend inside the member's process."""

    def __init__(self, member: Member) -> None:
        self.m = member

    async def execute(self, request: Any) -> Any:
        return await execute(self.m, request)


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, backend: KVBackend) -> None:
        self.b = backend

    @errors.etcd_errors
    async def Range(self, request: pb.RangeRequest, context: grpc.aio.ServicerContext):
        resp = await self.b.execute(convert.range_request(request))
        return convert.range_response(resp, convert.header(resp.header))

    @errors.etcd_errors
    async def Put(self, request: pb.PutRequest, context: grpc.aio.ServicerContext):
        resp = await self.b.execute(convert.put_request(request))
        return convert.put_response(resp, convert.header(resp.header))

    @errors.etcd_errors
    async def DeleteRange(self, request: pb.DeleteRangeRequest, context):
        resp = await self.b.execute(convert.delete_request(request))
        return convert.delete_response(resp, convert.header(resp.header))

    @errors.etcd_errors
    async def Txn(self, request: pb.TxnRequest, context):
        resp = await self.b.execute(convert.txn_request(request))
        return convert.txn_response(resp, convert.header(resp.header))

    @errors.etcd_errors
    async def Compact(self, request: pb.CompactionRequest, context):
        resp = await self.b.execute(kv.CompactionRequest(revision=request.revision,
                                                         physical=request.physical))
        return pb.CompactionResponse(header=convert.header(resp.header))


def _all_serializable(req: kv.TxnRequest) -> bool:
    """etcd serves a read-only txn locally only if every range in it is serializable."""
    ops = [*req.success, *req.failure]
    return bool(ops) and all(op.request_range is not None and op.request_range.serializable
                             for op in ops)
