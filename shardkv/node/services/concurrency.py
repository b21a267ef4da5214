"""etcd's v3lock and v3election services, built like etcd's (clientv3/concurrency run inside
the server): a lock or election is a key prefix; each contender puts ``prefix/<lease hex>``
attached to its lease; the contender with the lowest create revision holds it, the others wait
until every key created before theirs is gone.

Waiting is on this member's applied state: once our key is applied here, every key created
before it is applied here too, so the local store decides correctly."""
from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from shardkv.api import errors
from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.v3electionpb import v3election_pb2 as epb
from shardkv.api.v3electionpb import v3election_pb2_grpc
from shardkv.api.v3lockpb import v3lock_pb2 as lpb
from shardkv.api.v3lockpb import v3lock_pb2_grpc
from shardkv.mvcc import kv
from shardkv.mvcc.errors import EtcdError
from shardkv.mvcc.validate import validate
from shardkv.node.member import Member, to_api_error
from shardkv.node.services import convert


def _client_errors(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """etcd's v3lock and v3election servers call etcd through a clientv3 client, whose errors
    reach gRPC as plain Go errors: a client sees every one of them as UNKNOWN, with etcd's
    text. Decorates a unary servicer method (in place of ``errors.etcd_errors``)."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except errors.EtcdError as exc:
            await context.abort(grpc.StatusCode.UNKNOWN, exc.message)

    return wrapper


async def _propose(m: Member, request: kv.PutRequest | kv.DeleteRangeRequest | kv.TxnRequest):
    """Propose a KV request built from a client's fields, after etcd's KV checks (etcd's
    v3lock/v3election run a clientv3 client against the KV service, which checks them): a bad
    one is refused before it reaches the log."""
    try:
        validate(request, m.cfg.max_txn_ops)
    except EtcdError as exc:
        raise to_api_error(exc) from None
    return await m.propose(request)


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1]) if prefix and prefix[-1] < 0xFF else b"\0"


async def _claim(m: Member, prefix: bytes, lease: int, value: bytes) -> kv.KeyValue:
    """Put our key under ``prefix`` if absent (a txn, like concurrency.Mutex); return it."""
    key = prefix + b"%x" % lease
    txn = kv.TxnRequest(
        compare=[kv.Compare(result=kv.CompareResult.EQUAL, target=kv.CompareTarget.CREATE,
                            key=key, create_revision=0)],
        success=[kv.RequestOp(request_put=kv.PutRequest(key=key, value=value, lease=lease))],
        failure=[kv.RequestOp(request_range=kv.RangeRequest(key=key))])
    await _propose(m, txn)
    kvs = m.store.range(kv.RangeRequest(key=key)).kvs
    if not kvs:  # the lease expired between put and read
        raise errors.ErrLeaseNotFound
    return kvs[0]


def _owner(m: Member, prefix: bytes) -> kv.KeyValue | None:
    try:
        resp = m.store.range(kv.RangeRequest(key=prefix, range_end=prefix_end(prefix), limit=1,
                                             sort_order=kv.SortOrder.ASCEND,
                                             sort_target=kv.SortTarget.CREATE))
    except EtcdError as exc:  # e.g. a name too long to be a key
        raise to_api_error(exc) from None
    return resp.kvs[0] if resp.kvs else None


async def _wait_turn(m: Member, prefix: bytes, mine: kv.KeyValue) -> None:
    """Until our key is the oldest under the prefix (raise if our key disappeared)."""
    with m.client_waiting():
        while True:
            changed = m.applied_changed()
            owner = _owner(m, prefix)
            if owner is None or owner.key == mine.key:
                if not m.store.range(kv.RangeRequest(key=mine.key)).kvs:
                    raise errors.ErrLeaseNotFound
                return
            await changed.wait()


async def _delete(m: Member, key: bytes) -> int:
    resp = await _propose(m, kv.DeleteRangeRequest(key=key))
    return resp.header.revision


class LockService(v3lock_pb2_grpc.LockServicer):
    def __init__(self, member: Member) -> None:
        self.m = member

    @_client_errors
    async def Lock(self, request: lpb.LockRequest, context):
        prefix = request.name + b"/"
        mine = await _claim(self.m, prefix, request.lease, b"")
        try:
            await _wait_turn(self.m, prefix, mine)
        except asyncio.CancelledError:
            await asyncio.shield(_delete(self.m, mine.key))  # client gave up: leave no key
            raise
        return lpb.LockResponse(header=convert.header(self.m.header()), key=mine.key)

    @_client_errors
    async def Unlock(self, request: lpb.UnlockRequest, context):
        rev = await _delete(self.m, request.key)
        return lpb.UnlockResponse(header=convert.header(self.m.header(rev)))


class ElectionService(v3election_pb2_grpc.ElectionServicer):
    def __init__(self, member: Member) -> None:
        self.m = member

    def _header(self, revision: int | None = None) -> pb.ResponseHeader:
        return convert.header(self.m.header(revision))

    @_client_errors
    async def Campaign(self, request: epb.CampaignRequest, context):
        prefix = request.name + b"/"
        mine = await _claim(self.m, prefix, request.lease, request.value)
        if mine.value != request.value:  # re-campaign with the same lease: update the value
            await _propose(self.m, kv.PutRequest(key=mine.key, value=request.value,
                                               lease=request.lease))
        try:
            await _wait_turn(self.m, prefix, mine)
        except asyncio.CancelledError:
            await asyncio.shield(_delete(self.m, mine.key))
            raise
        leader = epb.LeaderKey(name=request.name, key=mine.key, rev=mine.create_revision,
                               lease=request.lease)
        return epb.CampaignResponse(header=self._header(), leader=leader)

    @_client_errors
    async def Proclaim(self, request: epb.ProclaimRequest, context):
        if not request.HasField("leader"):
            raise errors.ErrMissingLeaderKey
        lk = request.leader
        put = kv.PutRequest(key=lk.key, value=request.value, lease=lk.lease)
        txn = _if_still_leader(lk, kv.RequestOp(request_put=put))
        resp = await _propose(self.m, txn)
        if not resp.succeeded:
            raise errors.ErrElectionNotLeader
        return epb.ProclaimResponse(header=self._header(resp.header.revision))

    @_client_errors
    async def Leader(self, request: epb.LeaderRequest, context):
        await self.m.linearizable_barrier()
        owner = _owner(self.m, request.name + b"/")
        if owner is None:
            raise errors.ErrElectionNoLeader
        return epb.LeaderResponse(header=self._header(), kv=convert.key_value(owner))

    async def Observe(self, request: epb.LeaderRequest, context):
        """Stream the leader's key each time it (or its value) changes."""
        prefix = request.name + b"/"
        last = None
        with self.m.client_waiting():
            while True:
                changed = self.m.applied_changed()
                try:
                    owner = _owner(self.m, prefix)
                except errors.EtcdError as exc:  # as _client_errors answers a unary call
                    await context.abort(grpc.StatusCode.UNKNOWN, exc.message)
                if owner is not None and (last is None or owner.mod_revision != last.mod_revision
                                          or owner.key != last.key):
                    last = owner
                    yield epb.LeaderResponse(header=self._header(), kv=convert.key_value(owner))
                await changed.wait()

    @_client_errors
    async def Resign(self, request: epb.ResignRequest, context):
        if not request.HasField("leader"):
            raise errors.ErrMissingLeaderKey
        lk = request.leader
        txn = _if_still_leader(lk, kv.RequestOp(request_delete_range=kv.DeleteRangeRequest(key=lk.key)))
        resp = await _propose(self.m, txn)
        return epb.ResignResponse(header=self._header(resp.header.revision))


def _if_still_leader(lk: epb.LeaderKey, op: kv.RequestOp) -> kv.TxnRequest:
    """A txn that runs ``op`` only while ``lk``'s key is the one created at ``lk.rev`` (the
    campaign that made this caller leader has not been replaced)."""
    return kv.TxnRequest(
        compare=[kv.Compare(result=kv.CompareResult.EQUAL, target=kv.CompareTarget.CREATE,
                            key=lk.key, create_revision=lk.rev)],
        success=[op],
    )
