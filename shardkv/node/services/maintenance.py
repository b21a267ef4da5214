"""etcd's Maintenance service."""
from __future__ import annotations

import asyncio

from shardkv.api import errors
from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc
from shardkv.mvcc import kv
from shardkv.mvcc import etcd_db
from shardkv.mvcc.errors import EtcdError
from shardkv.mvcc.validate import validate
from shardkv.node.member import Member, to_api_error
from shardkv.node.services import convert

VERSION = "3.4.23"  # the etcd version whose API this member speaks


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, member: Member) -> None:
        self.m = member

    def _header(self, revision: int | None = None) -> pb.ResponseHeader:
        return convert.header(self.m.header(revision))

    @errors.etcd_errors
    async def Alarm(self, request: pb.AlarmRequest, context):
        req = kv.AlarmRequest(action=request.action, memberID=request.memberID,
                              alarm=request.alarm)
        try:
            validate(req)
        except EtcdError as exc:
            raise to_api_error(exc) from None
        if request.action == kv.AlarmAction.GET:
            alarms = self.m.store.alarms(request.alarm)
        else:
            alarms = (await self.m.propose(req)).alarms
        return pb.AlarmResponse(header=self._header(), alarms=[
            pb.AlarmMember(memberID=a.memberID, alarm=a.alarm) for a in alarms])

    @errors.etcd_errors
    async def Status(self, request: pb.StatusRequest, context):
        m = self.m
        record = m.registry.members.get(m.id)
        size = m.store.size()
        return pb.StatusResponse(
            header=self._header(), version=VERSION, dbSize=size, dbSizeInUse=size,
            leader=m.leader, raftIndex=m.node.raft.log.last_index(), raftTerm=m.term,
            raftAppliedIndex=m.applied, isLearner=bool(record and record.is_learner))

    @errors.etcd_errors
    async def Defragment(self, request: pb.DefragmentRequest, context):
        # On the loop thread (swapping the LMDB env must not race reads this loop serves) and
        # between applies (which run in a thread).
        async with self.m.apply_lock:
            self.m.store.defragment()
        return pb.DefragmentResponse(header=self._header())

    @errors.etcd_errors
    async def Hash(self, request: pb.HashRequest, context):
        resp = self.m.store.hash()
        return pb.HashResponse(header=self._header(resp.header.revision), hash=resp.hash)

    @errors.etcd_errors
    async def HashKV(self, request: pb.HashKVRequest, context):
        try:
            resp = self.m.store.hash_kv(request.revision)
        except Exception as exc:
            raise to_api_error(exc) from None
        return pb.HashKVResponse(header=self._header(resp.header.revision), hash=resp.hash,
                                 compact_revision=resp.compact_revision)

    async def Snapshot(self, request: pb.SnapshotRequest, context):
        """The database image in chunks with a sha256 trailer, as etcd streams its bolt db."""
        loop = asyncio.get_running_loop()
        # etcd's own backend file (bbolt + sha256): `etcdctl snapshot status/restore` read it.
        # remaining_bytes as etcd sends it: what is left of the file after this chunk (clients
        # draw progress from it), 0 on the sha256 trailer.
        chunks = etcd_db.snapshot_stream(self.m.store, cluster=self.m.registry)
        try:
            while True:
                item = await loop.run_in_executor(None, next, chunks, None)
                if item is None:
                    return
                blob, remaining = item
                yield pb.SnapshotResponse(header=self._header(), remaining_bytes=remaining,
                                          blob=blob)
        finally:
            chunks.close()

    @errors.etcd_errors
    async def MoveLeader(self, request: pb.MoveLeaderRequest, context):
        if not self.m.is_leader:
            raise errors.ErrNotLeader
        if request.targetID not in self.m.node.raft.conf.voters or request.targetID == self.m.id:
            raise errors.ErrBadLeaderTransferee
        if not await self.m.transfer_leadership(request.targetID):
            raise errors.ErrTimeoutDueToLeaderFail
        return pb.MoveLeaderResponse(header=self._header())
