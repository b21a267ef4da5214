"""etcd's Watch service: one bidirectional stream carries many watches. A reader task turns
requests into hub calls; the handler itself sends whatever the stream's watchers buffered."""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

import grpc

from shardkv.api import errors
from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc
from shardkv.mvcc import kv
from shardkv.mvcc.watch import Events, Watcher
from shardkv.node.member import Member
from shardkv.node.services import convert
from shardkv.protowire import varint
from shardkv.raft import NONE

PROGRESS_WATCH_ID = -1  # etcd 3.4: a progress response is broadcast to every watch channel
CTRL_STREAM_BUF_LEN = 16  # etcd's ctrlStreamBufLen


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
    """One Watch call: its hub stream (the watchers' queued responses, bounded by the hub) and
    the service's own responses (progress, duplicate ids), sent in order of queueing per
    watcher. Responses go out only while the client keeps up: the rest stays queued in the hub,
    whose watchers fall back to catching up from storage when the queue is full."""

    def __init__(self, member: Member, push: Callable[[bytes], bool] | None = None) -> None:
        self.m = member
        self.ready = asyncio.Event()  # the handler task has something to do
        self.room = asyncio.Event()  # the reader may take the next request
        self.room.set()
        self.push = push
        self.flush_scheduled = False
        self.blocked = False  # pushing waits until the client has read what is queued
        self.closed = False
        self.hub_stream = member.hub.new_stream(on_ready=self.wake)
        self.control: deque[pb.WatchResponse] = deque()
        self.fragmented: set[int] = set()  # watch ids created with fragment=true

    @property
    def watchers(self) -> dict[int, Watcher]:
        return self.hub_stream.watchers

    def backlogged(self) -> bool:
        """etcd's ctrlStream holds 16 responses; while it is full, etcd reads no more requests
        of the stream: a client that does not read cannot pile up created/canceled responses."""
        return len(self.control) + self.hub_stream.control >= CTRL_STREAM_BUF_LEN

    async def read(self, request_iterator) -> None:
        try:
            async for req in request_iterator:
                while self.backlogged() and not self.closed:
                    self.room.clear()
                    await self.room.wait()
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
            watcher = self.m.hub.watch(create, stream=self.hub_stream)
        except ValueError:
            # etcd: a create for a watch id in use answers created+canceled
            self.control.append(pb.WatchResponse(header=convert.header(self.m.header()),
                                                 watch_id=c.watch_id, created=True,
                                                 canceled=True,
                                                 cancel_reason="etcdserver: duplicate watch ID"))
            self.wake()
            return
        if c.fragment:
            self.fragmented.add(watcher.id)

    def wake(self) -> None:
        """Responses are waiting: push them from a loop callback, or wake the handler task."""
        if self.push is None or self.blocked:
            self.ready.set()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Push waiting responses until the client falls behind; the handler task then waits
        for it and flushes again."""
        self.flush_scheduled = False
        if self.closed or self.blocked:
            return
        encoder = _Encoder(self.m)
        while not self.blocked:
            payloads = self._next(encoder)
            if payloads is None:
                break
            for payload in payloads:
                if not self.push(payload):
                    self.blocked = True
        if self.blocked:
            self.ready.set()
        if not self.backlogged():
            self.room.set()

    def drain(self) -> list[pb.WatchResponse]:
        """Everything waiting, as messages (for grpc.aio, which sends what the handler yields
        and waits while the client is behind)."""
        encoder = _Encoder(self.m)
        out = []
        while (payloads := self._next(encoder)) is not None:
            out.extend(pb.WatchResponse.FromString(p) for p in payloads)
        self.room.set()
        return out

    def _next(self, encoder: _Encoder) -> list[bytes] | None:
        """The next waiting response, encoded (several messages if fragmented), or None."""
        if self.control:
            return [self.control.popleft().SerializeToString()]
        resp = self.hub_stream.pop()
        if resp is None:
            return None
        payload = encoder.encode(resp)
        if resp.canceled:
            self.fragmented.discard(resp.watch_id)
        elif resp.watch_id in self.fragmented and len(payload) > self.m.cfg.max_request_bytes:
            msg = pb.WatchResponse.FromString(payload)
            return [f.SerializeToString() for f in fragments(msg, self.m.cfg.max_request_bytes)]
        return [payload]

    def close(self) -> None:
        self.closed = True
        self.room.set()
        self.m.hub.close_stream(self.hub_stream)


class _Encoder:
    """WatchResponse bytes from the hub's responses. The events are encoded once per shared
    ``Events`` list (every watcher that selected them gets the same bytes) and appended to each
    watcher's own envelope: concatenated protobuf messages merge, repeated fields append. The
    envelope (header, watch id, flags) is written by hand: building a message per response
    would cost more than the rest of a small response's delivery."""

    def __init__(self, member: Member) -> None:
        self.base = member.header()
        self.headers: dict[int, bytes] = {}  # revision -> header field, for this flush

    def encode(self, resp: kv.WatchResponse) -> bytes:
        rev = resp.header.revision or self.base.revision
        header = self.headers.get(rev)
        if header is None:
            b = self.base
            raw = pb.ResponseHeader(cluster_id=b.cluster_id, member_id=b.member_id,
                                    revision=rev, raft_term=b.raft_term).SerializeToString()
            header = self.headers[rev] = b"\x0a" + varint(len(raw)) + raw  # field 1
        out = header
        if resp.watch_id:
            out += b"\x10" + varint(resp.watch_id)  # field 2, int64
        if resp.created:
            out += b"\x18\x01"  # field 3
        if resp.canceled:
            out += b"\x20\x01"  # field 4
        if resp.compact_revision:
            out += b"\x28" + varint(resp.compact_revision)  # field 5, int64
        if resp.cancel_reason:
            reason = resp.cancel_reason.encode()
            out += b"\x32" + varint(len(reason)) + reason  # field 6
        events: Events = resp.events  # the hub's responses with events carry an Events list
        if not events:
            return out
        if events.encoded is None:  # repeated field 11
            events.encoded = pb.WatchResponse(events=[convert.event(e) for e in events]) \
                .SerializeToString()
        return out + events.encoded




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
