"""shardkv.grpcwire.Server against grpcio's own client: unary and streaming calls, flow control
both ways, status codes, deadlines, cancellation, limits and shutdown. (etcdctl, a Go client,
drives it through the node's conformance tests.)"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import grpc
import pytest

from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc
from shardkv.grpcwire import Server

BIG = 3 * 1024 * 1024  # well past every default HTTP/2 window


class KV(rpc_pb2_grpc.KVServicer):
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def Put(self, request: pb.PutRequest, context) -> pb.PutResponse:
        key = request.key
        if key == b"abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nein: 100% ü")
        if key == b"boom":
            raise RuntimeError("boom")
        if key == b"code":
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details("not here")
            return pb.PutResponse()
        if key == b"slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if key == b"metadata":
            md = dict(context.invocation_metadata())
            return _kv_response(md.get("x-test", "").encode())
        if key == b"deadline":
            remaining = context.time_remaining()
            return _kv_response(b"none" if remaining is None else b"%d" % round(remaining))
        return _kv_response(request.value, revision=len(request.value))

    async def Range(self, request: pb.RangeRequest, context) -> pb.RangeResponse:
        n = request.limit
        resp = pb.RangeResponse(count=n)
        for i in range(n):
            kv = resp.kvs.add()
            kv.key = b"k%08d" % i
            kv.value = b"v" * 1000
        return resp


def _kv_response(value: bytes, revision: int = 0) -> pb.PutResponse:
    resp = pb.PutResponse()
    resp.header.revision = revision
    resp.prev_kv.key = value
    return resp


class Watch(rpc_pb2_grpc.WatchServicer):
    def __init__(self) -> None:
        self.ended = asyncio.Event()

    async def Watch(self, request_iterator, context):
        """Answers each request with a response carrying its watch id; a progress request asks
        for 40 responses of 100 KiB (a server push past the client's window)."""
        try:
            async for req in request_iterator:
                if req.HasField("progress_request"):
                    for i in range(40):
                        resp = pb.WatchResponse(watch_id=i, cancel_reason="x" * 100_000)
                        yield resp
                else:
                    yield pb.WatchResponse(watch_id=req.create_request.watch_id)
        finally:
            self.ended.set()


class Maintenance(rpc_pb2_grpc.MaintenanceServicer):
    async def Snapshot(self, request, context):
        for i in range(64):
            yield pb.SnapshotResponse(remaining_bytes=63 - i, blob=bytes([i]) * 65_536)


Scenario = Callable[[Any, dict[str, Any]], Awaitable[None]]


def run(scenario: Scenario, max_receive: int = 4 * 1024 * 1024,
        generic: grpc.GenericRpcHandler | None = None) -> None:
    async def main() -> None:
        server = Server(max_receive_message_length=max_receive)
        if generic is not None:
            server.add_generic_rpc_handlers([generic])
        services = {"kv": KV(), "watch": Watch()}
        rpc_pb2_grpc.add_KVServicer_to_server(services["kv"], server)
        rpc_pb2_grpc.add_WatchServicer_to_server(services["watch"], server)
        rpc_pb2_grpc.add_MaintenanceServicer_to_server(Maintenance(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        services["server"], services["port"] = server, port
        try:
            async with grpc.aio.insecure_channel(
                    f"127.0.0.1:{port}",
                    options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]) as channel:
                await asyncio.wait_for(scenario(channel, services), 30)
        finally:
            await server.stop(0)
    asyncio.run(main())


def test_unary_calls_many_at_once_on_one_connection() -> None:
    async def scenario(channel, services) -> None:
        kv = rpc_pb2_grpc.KVStub(channel)
        resps = await asyncio.gather(*(kv.Put(pb.PutRequest(key=b"k", value=b"x" * i))
                                       for i in range(300)))
        assert [r.header.revision for r in resps] == list(range(300))
    run(scenario)


def test_large_request_and_large_response_pass_the_flow_control_windows() -> None:
    async def scenario(channel, services) -> None:
        kv = rpc_pb2_grpc.KVStub(channel)
        resp = await kv.Put(pb.PutRequest(key=b"k", value=b"v" * BIG))
        assert resp.header.revision == BIG
        resps = await asyncio.gather(*(kv.Range(pb.RangeRequest(key=b"a", limit=3000))
                                       for _ in range(3)))
        for r in resps:
            assert len(r.kvs) == 3000 and r.kvs[-1].key == b"k00002999"
    run(scenario)


def test_request_over_the_limit_is_refused_and_the_connection_lives_on() -> None:
    async def scenario(channel, services) -> None:
        kv = rpc_pb2_grpc.KVStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await kv.Put(pb.PutRequest(key=b"k", value=b"v" * 200_000))
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "received message larger than max" in exc.value.details()
        assert (await kv.Put(pb.PutRequest(key=b"k", value=b"ok"))).header.revision == 2
    run(scenario, max_receive=100_000)


def test_status_codes_details_and_metadata() -> None:
    async def scenario(channel, services) -> None:
        kv = rpc_pb2_grpc.KVStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await kv.Put(pb.PutRequest(key=b"abort"))
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert exc.value.details() == "nein: 100% ü"
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await kv.Put(pb.PutRequest(key=b"boom"))
        assert exc.value.code() == grpc.StatusCode.UNKNOWN
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await kv.Put(pb.PutRequest(key=b"code"))
        assert (exc.value.code(), exc.value.details()) == (grpc.StatusCode.NOT_FOUND, "not here")
        resp = await kv.Put(pb.PutRequest(key=b"metadata"), metadata=[("x-test", "hello")])
        assert resp.prev_kv.key == b"hello"
        assert (await kv.Put(pb.PutRequest(key=b"deadline"), timeout=20)).prev_kv.key == b"20"
        assert (await kv.Put(pb.PutRequest(key=b"deadline"))).prev_kv.key == b"none"
        auth = rpc_pb2_grpc.AuthStub(channel)  # not registered
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await auth.AuthEnable(pb.AuthEnableRequest())
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    run(scenario)


def test_deadline_cancels_the_handler() -> None:
    async def scenario(channel, services) -> None:
        kv = rpc_pb2_grpc.KVStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await kv.Put(pb.PutRequest(key=b"slow"), timeout=0.3)
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(services["kv"].cancelled.wait(), 5)
    run(scenario)


def test_client_cancel_cancels_the_handler() -> None:
    async def scenario(channel, services) -> None:
        kv = rpc_pb2_grpc.KVStub(channel)
        call = kv.Put(pb.PutRequest(key=b"slow"))
        await asyncio.sleep(0.3)
        call.cancel()
        await asyncio.wait_for(services["kv"].cancelled.wait(), 5)
    run(scenario)


def test_bidirectional_stream_in_order_with_pushes_past_the_window() -> None:
    async def scenario(channel, services) -> None:
        call = rpc_pb2_grpc.WatchStub(channel).Watch()
        for i in range(200):
            await call.write(pb.WatchRequest(
                create_request=pb.WatchCreateRequest(key=b"k", watch_id=i)))
        assert [(await call.read()).watch_id for _ in range(200)] == list(range(200))
        await call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
        pushed = [await call.read() for _ in range(40)]
        assert [r.watch_id for r in pushed] == list(range(40))
        assert all(len(r.cancel_reason) == 100_000 for r in pushed)
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
        await asyncio.wait_for(services["watch"].ended.wait(), 5)
    run(scenario)


async def open_watch(channel, watch_id: int):
    """A Watch stream whose first request has been answered."""
    call = rpc_pb2_grpc.WatchStub(channel).Watch()
    await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(watch_id=watch_id)))
    assert (await call.read()).watch_id == watch_id
    return call


def test_cancelled_stream_ends_the_handler() -> None:
    async def scenario(channel, services) -> None:
        call = await open_watch(channel, 7)
        call.cancel()
        await asyncio.wait_for(services["watch"].ended.wait(), 5)
    run(scenario)


def test_server_stream_of_four_mebibytes() -> None:
    async def scenario(channel, services) -> None:
        stream = rpc_pb2_grpc.MaintenanceStub(channel).Snapshot(pb.SnapshotRequest())
        blobs = [r.blob async for r in stream]
        assert len(blobs) == 64 and all(b == bytes([i]) * 65_536 for i, b in enumerate(blobs))
    run(scenario)


def test_stop_ends_open_streams() -> None:
    async def scenario(channel, services) -> None:
        call = await open_watch(channel, 1)
        await services["server"].stop(0.1)
        await asyncio.wait_for(services["watch"].ended.wait(), 5)
        with pytest.raises(grpc.aio.AioRpcError):
            await call.read()
    run(scenario)


def test_port_in_use_is_refused_with_etcds_words() -> None:
    async def scenario(channel, services) -> None:
        with pytest.raises(OSError, match="bind: address already in use"):
            Server().add_insecure_port(f"127.0.0.1:{services['port']}")
    run(scenario)


def test_request_larger_than_the_stream_window() -> None:
    async def scenario(channel, services) -> None:
        kv = rpc_pb2_grpc.KVStub(channel)
        resp = await kv.Put(pb.PutRequest(key=b"k", value=b"v" * (20 * 1024 * 1024)))
        assert resp.header.revision == 20 * 1024 * 1024
    run(scenario, max_receive=40 * 1024 * 1024)


def test_generic_raw_bytes_handler_serves_any_method() -> None:
    """A generic handler without (de)serializers sees and returns message bytes (the shape of
    the intake processes' relay)."""
    class Echo(grpc.GenericRpcHandler):
        def service(self, details):
            async def echo(requests, context):
                async for raw in requests:
                    yield raw[::-1]
            return grpc.stream_stream_rpc_method_handler(echo)

    async def scenario(channel, services) -> None:
        call = channel.unary_unary("/any.Service/Method")
        assert await call(b"abc", timeout=10) == b"cba"
    run(scenario, generic=Echo())


def test_ping_and_settings_are_acked_without_any_call() -> None:
    """Control frames a read queues are flushed after the calls it started; with none started
    they must still go out (a keepalive PING on an idle connection)."""
    from shardkv.grpcwire import http2 as h2

    async def scenario(channel, services) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", services["port"])
        writer.write(h2.PREFACE + h2.settings([])
                     + h2.frame(h2.PING, 0, 0, b"12345678"))
        got: list[tuple[int, int, bytes]] = []
        buf = b""
        while not any(k == h2.PING for k, _, _ in got):
            buf += await asyncio.wait_for(reader.read(65536), 10)
            while len(buf) >= 9:
                length, kind, flags, _ = h2.parse_head(buf, 0)
                if len(buf) < 9 + length:
                    break
                got.append((kind, flags, buf[9:9 + length]))
                buf = buf[9 + length:]
        assert (h2.PING, h2.ACK, b"12345678") in got
        assert any(k == h2.SETTINGS and f & h2.ACK for k, f, _ in got)
        writer.close()
    run(scenario)
