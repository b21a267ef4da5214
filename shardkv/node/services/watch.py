"""etcd's Watch service: one bidirectional stream carries many watches. A reader task turns
requests into hub calls; the handler itself sends whatever the stream's watchers buffered."""
from __future__ import annotations

import asyncio
from typing import Callable

import grpc

from shardkv.api import errors
from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc
from shardkv.mvcc import kv
from shardkv.mvcc.watch import Watcher
from shardkv.node.member import Member
from shardkv.node.services import convert
from shardkv.raft import NONE

PROGRESS_WATCH_ID = -1  # etcd 3.4: a progress response is broadcast to every watch channel


class WatchService(rpc_pb2_grpc.WatchServicer):
    def __init__(self, member: Member) -> None:
        self.m = member

    async def Watch(self, request_iterator, context: grpc.aio.ServicerContext):
        require_leader = _requires_leader(context)
        if require_leader and self.m.leader == NONE:
            await context.abort(errors.ErrNoLeader.code, errors.ErrNoLeader.message)
        # With shardkv.grpcwire, responses are pushed from a loop callback as soon as watchers
        # have events (no task switch per stream: one applied put may reach thousands of
        # watchers); this task then only waits out a slow client. grpc.aio: yielded here.
        push = getattr(context, "push", None)
        stream = _Stream(self.m, push)
        reader = asyncio.create_task(stream.read(request_iterator))
        check_every = self.m.cfg.election_ms / 1000
        try:
            while True:
                try:
                    await asyncio.wait_for(stream.ready.wait(), check_every)
                except asyncio.TimeoutError:
                    # etcd's monitorLeader: streams that require a leader end once the member
                    # has been without one for three election timeouts
                    if require_leader and self.m.leaderless_for > 3 * check_every:
                        await context.abort(errors.ErrNoLeader.code, errors.ErrNoLeader.message)
                    continue
                stream.ready.clear()
                if push is None:
                    for resp in stream.drain():
                        yield resp
                else:
                    await context.drained()
                    stream.blocked = False
                    stream.flush()
                if reader.done():
                    return
        finally:
            reader.cancel()
            stream.close()


def _requires_leader(context: grpc.aio.ServicerContext) -> bool:
    """clientv3.WithRequireLeader (etcdctl watch sets it): metadata hasleader=true."""
    return any(k == errors.METADATA_REQUIRE_LEADER_KEY and v == errors.METADATA_HAS_LEADER
               for k, v in context.invocation_metadata() or ())


class _Stream:
    def __init__(self, member: Member, push: Callable[[bytes], bool] | None = None) -> None:
        self.m = member
        self.ready = asyncio.Event()  # the handler task has something to do
        self.push = push
        self.flush_scheduled = False
        self.blocked = False  # pushing waits until the client has read what is queued
        self.closed = False
        self.watchers: dict[int, Watcher] = {}
        self.control: list[pb.WatchResponse] = []
        self.fragmented: set[int] = set()  # watch ids created with fragment=true

    async def read(self, request_iterator) -> None:
        try:
            async for req in request_iterator:
                if self.m.unsettled and req.HasField("create_request"):
                    await self.m.settled()  # a watch from "now" starts after writes answered
                self._handle(req)
        finally:
            self.ready.set()

    def _handle(self, req: pb.WatchRequest) -> None:
        which = req.WhichOneof("request_union")
        if which == "create_request":
            self._create(req.create_request)
        elif which == "cancel_request":
            watch_id = req.cancel_request.watch_id
            if watch_id in self.watchers:
                self.m.hub.cancel(watch_id)  # the hub queues the canceled response
        elif which == "progress_request":
            self.control.append(pb.WatchResponse(header=convert.header(self.m.header()),
                                                 watch_id=PROGRESS_WATCH_ID))
            self.wake()

    def _create(self, c: pb.WatchCreateRequest) -> None:
        create = kv.WatchCreateRequest(key=c.key, range_end=c.range_end,
                                       start_revision=c.start_revision,
                                       progress_notify=c.progress_notify,
                                       filters=list(c.filters), prev_kv=c.prev_kv,
                                       watch_id=c.watch_id, fragment=c.fragment)
        try:
            watcher = self.m.hub.watch(create, on_ready=self.wake)
        except ValueError:
            # etcd: a create for a watch id in use answers created+canceled
            self.control.append(pb.WatchResponse(header=convert.header(self.m.header()),
                                                 watch_id=c.watch_id, created=True,
                                                 canceled=True,
                                                 cancel_reason="etcdserver: duplicate watch ID"))
            self.wake()
            return
        self.watchers[watcher.id] = watcher
        if c.fragment:
            self.fragmented.add(watcher.id)
        self.wake()

    def wake(self) -> None:
        """Responses are waiting: push them from a loop callback, or wake the handler task."""
        if self.push is None or self.blocked:
            self.ready.set()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Push every waiting response; if the client falls behind, the handler task waits
        for it and flushes again."""
        self.flush_scheduled = False
        if self.closed or self.blocked:
            return
        for resp in self.drain():
            if not self.push(resp.SerializeToString()):
                self.blocked = True
        if self.blocked:
            self.ready.set()

    def drain(self) -> list[pb.WatchResponse]:
        out, self.control = self.control, []
        header = convert.header(self.m.header())
        for watch_id, watcher in list(self.watchers.items()):
            for resp in watcher.take():
                h = pb.ResponseHeader()
                h.CopyFrom(header)
                h.revision = resp.header.revision or h.revision
                msg = convert.watch_response(resp, h)
                if watch_id in self.fragmented:
                    out.extend(fragments(msg, self.m.cfg.max_request_bytes))
                else:
                    out.append(msg)
                if resp.canceled:
                    self.watchers.pop(watch_id, None)
                    self.fragmented.discard(watch_id)
        self.m.hub.sync_unsynced()  # drained buffers may let unsynced watchers catch up
        return out

    def close(self) -> None:
        self.closed = True
        for watch_id in list(self.watchers):
            self.m.hub.cancel(watch_id)
        self.watchers.clear()


def fragments(msg: pb.WatchResponse, limit: int) -> list[pb.WatchResponse]:
    """etcd's watch fragmentation: a response larger than --max-request-bytes is split into
    several, each with at least one event; all but the last have fragment=true."""
    if msg.ByteSize() <= limit or len(msg.events) <= 1:
        return [msg]
    out: list[pb.WatchResponse] = []
    part = _empty_like(msg)
    for event in msg.events:
        if part.events and part.ByteSize() + event.ByteSize() > limit:
            part.fragment = True
            out.append(part)
            part = _empty_like(msg)
        part.events.append(event)
    out.append(part)
    return out


def _empty_like(msg: pb.WatchResponse) -> pb.WatchResponse:
    part = pb.WatchResponse()
    part.CopyFrom(msg)
    del part.events[:]
    return part
