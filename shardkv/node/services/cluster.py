"""etcd's Cluster service. Membership changes are Raft conf changes proposed by the leader;
a follower forwards them to the leader's client URL."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from shardkv.api import errors
from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc
from shardkv.node import membership
from shardkv.node.member import Member
from shardkv.node.membership import MemberRecord
from shardkv.node.services import convert
from shardkv.node.services.lease import LeaderChannels
from shardkv.raft import ConfChangeType

log = logging.getLogger("shardkv.cluster")


def member_pb(r: MemberRecord) -> pb.Member:
    return pb.Member(ID=r.id, name=r.name, peerURLs=r.peer_urls, clientURLs=r.client_urls,
                     isLearner=r.is_learner)


def checked_peer_urls(urls: Iterable[str]) -> list[str]:
    """``urls`` as etcd stores them (trimmed) if etcd's types.NewURLs accepts them all, else
    etcd's ErrGRPCMemberBadURLs."""
    out = [u.strip() for u in urls]
    if not out:
        raise errors.ErrMemberBadURLs
    for url in out:
        problem = membership.peer_url_problem(url)
        if problem is not None:
            log.info("refused member peer URLs: %s", problem)
            raise errors.ErrMemberBadURLs
    return out


class _NotUtf8:
    """A MemberAdd/MemberUpdate whose peer URLs are not UTF-8 (proto3 strings must be)."""


NOT_UTF8 = _NotUtf8()


def _peer_urls_request(cls: type) -> Callable[[bytes], Any]:
    """``cls.FromString``, except that a request protobuf refuses for a string that is not
    UTF-8 comes through as NOT_UTF8, so it gets etcd's ErrGRPCMemberBadURLs (etcd's Go
    protobuf takes the bytes as they are, and its URL check refuses them)."""

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            if "UTF-8" not in str(exc):
                raise
            return NOT_UTF8

    return parse


def add_to_server(service: ClusterService, server: Any) -> None:
    """``rpc_pb2_grpc.add_ClusterServicer_to_server`` with the deserializers above."""
    methods = {
        "MemberAdd": (_peer_urls_request(pb.MemberAddRequest), pb.MemberAddResponse),
        "MemberRemove": (pb.MemberRemoveRequest.FromString, pb.MemberRemoveResponse),
        "MemberUpdate": (_peer_urls_request(pb.MemberUpdateRequest), pb.MemberUpdateResponse),
        "MemberList": (pb.MemberListRequest.FromString, pb.MemberListResponse),
        "MemberPromote": (pb.MemberPromoteRequest.FromString, pb.MemberPromoteResponse),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(service, name), request_deserializer=parse,
            response_serializer=resp.SerializeToString)
        for name, (parse, resp) in methods.items()
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("etcdserverpb.Cluster", handlers),))
    server.add_registered_method_handlers("etcdserverpb.Cluster", handlers)


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, member: Member, channels: LeaderChannels) -> None:
        self.m = member
        self.channels = channels

    def _members(self) -> list[pb.Member]:
        return [member_pb(r) for r in sorted(self.m.registry.members.values(), key=lambda r: r.id)]

    def _header(self) -> pb.ResponseHeader:
        return convert.header(self.m.header())

    async def _forward(self, method: str, request):
        cluster = rpc_pb2_grpc.ClusterStub(await self.channels.leader_channel())
        with self.m.client_waiting():  # a member list here next must show the change
            try:
                return await getattr(cluster, method)(request, timeout=self.m.cfg.request_timeout)
            except grpc.aio.AioRpcError as exc:
                raise errors.from_rpc_error(exc) or errors.ErrTimeout from None

    @errors.etcd_errors
    async def MemberList(self, request: pb.MemberListRequest, context):
        if getattr(request, "linearizable", False):
            await self.m.linearizable_barrier()
        return pb.MemberListResponse(header=self._header(), members=self._members())

    @errors.etcd_errors
    async def MemberAdd(self, request: pb.MemberAddRequest | _NotUtf8, context):
        if request is NOT_UTF8:
            raise errors.ErrMemberBadURLs
        urls = checked_peer_urls(request.peerURLs)
        if not self.m.is_leader:
            return await self._forward("MemberAdd", request)
        for r in self.m.registry.members.values():
            if set(r.peer_urls) & set(urls):
                raise errors.ErrPeerURLExist
        # etcd mixes the current time in and the joiner fetches its id from the cluster; here
        # the joiner derives it from its own flags, so the id must be deterministic.
        new_id = membership.member_id(urls, self.m.cfg.token)
        if new_id in self.m.registry.members:
            raise errors.ErrMemberExist
        record = MemberRecord(id=new_id, peer_urls=urls, is_learner=request.isLearner)
        kind = ConfChangeType.ADD_LEARNER if request.isLearner else ConfChangeType.ADD_NODE
        await self.m.conf_change(kind, record)
        return pb.MemberAddResponse(header=self._header(), member=member_pb(record),
                                    members=self._members())

    @errors.etcd_errors
    async def MemberRemove(self, request: pb.MemberRemoveRequest, context):
        if not self.m.is_leader:
            return await self._forward("MemberRemove", request)
        record = self.m.registry.members.get(request.ID)
        if record is None:
            raise errors.ErrMemberNotFound
        await self.m.conf_change(ConfChangeType.REMOVE_NODE, record)
        return pb.MemberRemoveResponse(header=self._header(), members=self._members())

    @errors.etcd_errors
    async def MemberUpdate(self, request: pb.MemberUpdateRequest | _NotUtf8, context):
        if request is NOT_UTF8:
            raise errors.ErrMemberBadURLs
        # etcd 3.4 does not check these, and every other member then panics applying the
        # change (rafthttp UpdatePeer: "failed NewURLs"): refuse them as MemberAdd does.
        urls = checked_peer_urls(request.peerURLs)
        if not self.m.is_leader:
            return await self._forward("MemberUpdate", request)
        record = self.m.registry.members.get(request.ID)
        if record is None:
            raise errors.ErrMemberNotFound
        for r in self.m.registry.members.values():
            if r.id != record.id and set(r.peer_urls) & set(urls):
                raise errors.ErrPeerURLExist
        updated = MemberRecord(id=record.id, name=record.name, peer_urls=urls,
                               client_urls=record.client_urls, is_learner=record.is_learner)
        kind = ConfChangeType.ADD_LEARNER if record.is_learner else ConfChangeType.ADD_NODE
        await self.m.conf_change(kind, updated)
        return pb.MemberUpdateResponse(header=self._header(), members=self._members())

    @errors.etcd_errors
    async def MemberPromote(self, request: pb.MemberPromoteRequest, context):
        if not self.m.is_leader:
            return await self._forward("MemberPromote", request)
        record = self.m.registry.members.get(request.ID)
        if record is None:
            raise errors.ErrMemberNotFound
        if not record.is_learner:
            raise errors.ErrMemberNotLearner
        match = self.m.progress_of(record.id) or 0
        # etcd: a learner is ready once it has 90% of the leader's log
        if match < 0.9 * self.m.node.raft.log.last_index():
            raise errors.ErrMemberLearnerNotReady
        await self.m.conf_change(ConfChangeType.ADD_NODE, record)
        return pb.MemberPromoteResponse(header=self._header(), members=self._members())
