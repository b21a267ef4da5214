"""etcd's Lease service. Grant and revoke go through Raft; keep-alive and time-to-live are the
leader's business (lease deadlines live only in the leader's memory, as in etcd), so a follower
forwards them to the leader's client URL over gRPC."""
from __future__ import annotations

import asyncio

import grpc

from shardkv.api import errors
from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc
from shardkv.mvcc import kv
from shardkv.mvcc.errors import LeaseNotFoundError, NotPrimaryError
from shardkv.mvcc.lease import new_lease_id
from shardkv.node.member import Member, to_api_error
from shardkv.node.services import convert


class LeaderChannels:
    """gRPC channels to other members' client URLs, for requests only the leader answers."""

    def __init__(self, member: Member) -> None:
        self.m = member
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def leader_channel(self) -> grpc.aio.Channel:
        deadline = asyncio.get_running_loop().time() + self.m.cfg.request_timeout
        while True:
            leader = self.m.registry.members.get(self.m.leader)
            if leader is not None and leader.client_urls:
                target = leader.client_urls[0].split("://", 1)[-1]
                if target not in self._channels:
                    self._channels[target] = grpc.aio.insecure_channel(target)
                return self._channels[target]
            if asyncio.get_running_loop().time() > deadline:
                raise errors.ErrNoLeader
            await asyncio.sleep(self.m.cfg.heartbeat_ms / 1000)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, member: Member, channels: LeaderChannels) -> None:
        self.m = member
        self.channels = channels

    def _header(self, revision: int | None = None) -> pb.ResponseHeader:
        return convert.header(self.m.header(revision))

    @errors.etcd_errors
    async def LeaseGrant(self, request: pb.LeaseGrantRequest, context):
        req = kv.LeaseGrantRequest(TTL=request.TTL, ID=request.ID or new_lease_id())
        resp = await self.m.propose(req)
        return pb.LeaseGrantResponse(header=self._header(resp.header.revision), ID=resp.ID,
                                     TTL=resp.TTL, error=resp.error)

    @errors.etcd_errors
    async def LeaseRevoke(self, request: pb.LeaseRevokeRequest, context):
        resp = await self.m.propose(kv.LeaseRevokeRequest(ID=request.ID))
        return pb.LeaseRevokeResponse(header=self._header(resp.header.revision))

    async def LeaseKeepAlive(self, request_iterator, context: grpc.aio.ServicerContext):
        async for req in request_iterator:
            try:
                yield await self._keep_alive_once(req.ID)
            except errors.EtcdError as exc:
                await context.abort(exc.code, exc.message)

    async def _keep_alive_once(self, lease_id: int) -> pb.LeaseKeepAliveResponse:
        if not self.m.is_leader:
            return await self._forward_keep_alive(lease_id)
        try:
            async with self.m.apply_lock:
                resp = self.m.store.lease_keep_alive(lease_id)
        except LeaseNotFoundError:
            # etcd answers a keep-alive for an unknown lease with TTL 0, not an error
            return pb.LeaseKeepAliveResponse(header=self._header(), ID=lease_id, TTL=0)
        except NotPrimaryError:
            return await self._forward_keep_alive(lease_id)
        return pb.LeaseKeepAliveResponse(header=self._header(), ID=lease_id, TTL=resp.TTL)

    async def _forward_keep_alive(self, lease_id: int) -> pb.LeaseKeepAliveResponse:
        stub = rpc_pb2_grpc.LeaseStub(await self.channels.leader_channel())
        call = stub.LeaseKeepAlive(timeout=self.m.cfg.request_timeout)
        try:
            await call.write(pb.LeaseKeepAliveRequest(ID=lease_id))
            resp = await call.read()
        except grpc.aio.AioRpcError as exc:
            raise errors.from_rpc_error(exc) or errors.ErrTimeout from None
        finally:
            call.cancel()
        resp.header.CopyFrom(self._header())
        return resp

    @errors.etcd_errors
    async def LeaseTimeToLive(self, request: pb.LeaseTimeToLiveRequest, context):
        if not self.m.is_leader:
            stub = rpc_pb2_grpc.LeaseStub(await self.channels.leader_channel())
            try:
                return await stub.LeaseTimeToLive(request, timeout=self.m.cfg.request_timeout)
            except grpc.aio.AioRpcError as exc:
                raise errors.from_rpc_error(exc) or errors.ErrTimeout from None
        await self.m.linearizable_barrier()
        try:
            async with self.m.apply_lock:
                resp = self.m.store.lease_time_to_live(
                    kv.LeaseTimeToLiveRequest(ID=request.ID, keys=request.keys))
        except LeaseNotFoundError:
            # etcd 3.4 reports a missing lease as TTL -1 (etcdctl prints "already expired")
            return pb.LeaseTimeToLiveResponse(header=self._header(), ID=request.ID, TTL=-1)
        except Exception as exc:
            raise to_api_error(exc) from None
        return pb.LeaseTimeToLiveResponse(header=self._header(), ID=resp.ID, TTL=resp.TTL,
                                          grantedTTL=resp.grantedTTL, keys=resp.keys)

    @errors.etcd_errors
    async def LeaseLeases(self, request: pb.LeaseLeasesRequest, context):
        await self.m.linearizable_barrier()
        async with self.m.apply_lock:
            resp = self.m.store.lease_leases()
        return pb.LeaseLeasesResponse(header=self._header(),
                                      leases=[pb.LeaseStatus(ID=s.ID) for s in resp.leases])
