"""Hostile HTTP/2 clients against shardkv.grpcwire.Server (issue 14, part 3): each attack gets
its stream or connection error as RFC 9113 says, what the server holds for it stays bounded,
and other connections keep being served. Frames are written by hand (grpcwire.http2)."""
from __future__ import annotations

import asyncio
import errno
import logging
import shutil
import socket
import struct
import subprocess
import tracemalloc
from typing import Any, Awaitable, Callable

import grpc
import pytest

from shardkv import rejected
from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc
from shardkv.grpcwire import Server
from shardkv.grpcwire import http2 as h2
from shardkv.grpcwire import server as wire

PUT = b"/etcdserverpb.KV/Put"
WATCH = b"/etcdserverpb.Watch/Watch"


class KV(rpc_pb2_grpc.KVServicer):
    def __init__(self) -> None:
        self.running = self.peak = 0  # Put handlers running now, at most

    async def Put(self, request: pb.PutRequest, context) -> pb.PutResponse:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if request.key == b"stubborn":  # takes a while to notice it was cancelled
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    await asyncio.sleep(0.3)
                    raise
        finally:
            self.running -= 1
        return pb.PutResponse(header=pb.ResponseHeader(revision=len(request.value)))

    async def Range(self, request: pb.RangeRequest, context) -> pb.RangeResponse:
        return pb.RangeResponse(kvs=[pb.KeyValue(key=b"k", value=b"v" * request.limit)])


class Watch(rpc_pb2_grpc.WatchServicer):
    async def Watch(self, request_iterator, context):
        """Never reads its requests: the client's stream window must stay shut."""
        await asyncio.sleep(30)
        yield pb.WatchResponse()


Scenario = Callable[[Server, int], Awaitable[None]]


def run(scenario: Scenario, **server_options: Any) -> None:
    async def main() -> None:
        server = Server(**server_options)
        server.kv = KV()  # type: ignore[attr-defined]
        rpc_pb2_grpc.add_KVServicer_to_server(server.kv, server)
        rpc_pb2_grpc.add_WatchServicer_to_server(Watch(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            await asyncio.wait_for(scenario(server, port), 60)
        finally:
            await server.stop(0)
    asyncio.run(main())


async def served(port: int) -> None:
    """A well-behaved client on a connection of its own still gets its answer."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        resp = await rpc_pb2_grpc.KVStub(channel).Put(pb.PutRequest(key=b"k", value=b"abc"),
                                                      timeout=10)
        assert resp.header.revision == 3


def peak_memory(scenario: Scenario) -> int:
    """Run ``scenario`` against a server; the peak of Python memory allocated meanwhile."""
    tracemalloc.start()
    try:
        run(scenario)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def request_block(path: bytes) -> bytes:
    return b"".join(h2.literal(name, value) for name, value in (
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
        (b":authority", b"x"), (b"content-type", b"application/grpc"), (b"te", b"trailers")))


def message(payload: bytes) -> bytes:
    return struct.pack(">BI", 0, len(payload)) + payload


def put_request(value: bytes = b"") -> bytes:
    return message(pb.PutRequest(key=b"k", value=value).SerializeToString())


class Raw:
    """One hand-driven client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = b""
        self.frames: list[tuple[int, int, int, bytes]] = []  # (type, flags, stream, payload)

    @classmethod
    async def open(cls, port: int, settings: list[tuple[int, int]] = ()) -> "Raw":
        raw = cls(*await asyncio.open_connection("127.0.0.1", port))
        raw.send(h2.PREFACE + h2.settings(list(settings)))
        return raw

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def call(self, sid: int, path: bytes, body: bytes, end: bool = True) -> None:
        """HEADERS, then ``body`` in DATA frames of 16 KiB at most."""
        frames = [h2.frame(h2.HEADERS, h2.END_HEADERS, sid, request_block(path))]
        for i in range(0, len(body), 16384):
            last = i + 16384 >= len(body)
            frames.append(h2.frame(h2.DATA, h2.END_STREAM if end and last else 0, sid,
                                   body[i:i + 16384]))
        self.send(b"".join(frames))

    async def until(self, found: Callable[[tuple[int, int, int, bytes]], bool]
                    ) -> tuple[int, int, int, bytes]:
        """Read frames until one matches (or the connection ends: AssertionError)."""
        while True:
            for f in self.frames:
                if found(f):
                    return f
            data = await asyncio.wait_for(self.reader.read(1 << 16), 20)
            assert data, f"connection closed; frames seen: {[f[:3] for f in self.frames]}"
            self.buf += data
            while len(self.buf) >= 9:
                length, kind, flags, sid = h2.parse_head(self.buf, 0)
                if len(self.buf) < 9 + length:
                    break
                self.frames.append((kind, flags, sid, self.buf[9:9 + length]))
                self.buf = self.buf[9 + length:]

    async def goaway(self) -> int:
        """The error code of the server's GOAWAY; the connection then ends."""
        frame = await self.until(lambda f: f[0] == h2.GOAWAY)
        while await asyncio.wait_for(self.reader.read(1 << 16), 20):
            pass
        return struct.unpack(">II", frame[3])[1]

    async def rst(self, sid: int) -> int:
        frame = await self.until(lambda f: f[0] == h2.RST_STREAM and f[2] == sid)
        return struct.unpack(">I", frame[3])[0]

    async def answered(self, sid: int) -> None:
        """The call on ``sid`` ended with grpc-status 0."""
        frame = await self.until(lambda f: f[0] == h2.HEADERS and f[2] == sid
                                 and f[1] & h2.END_STREAM)
        assert b"grpc-status\x010" in frame[3]

    def close(self) -> None:
        self.writer.close()


def connection(server: Server) -> wire.Connection:
    [conn] = server.connections
    return conn


# --- frames and SETTINGS --------------------------------------------------------------------


def test_server_advertises_its_limits() -> None:
    async def scenario(server: Server, port: int) -> None:
        raw = await Raw.open(port)
        kind, flags, _, payload = await raw.until(lambda f: f[0] == h2.SETTINGS and not f[1])
        assert h2.parse_settings(payload) == {
            h2.SETTINGS_MAX_CONCURRENT_STREAMS: 7,
            h2.SETTINGS_MAX_HEADER_LIST_SIZE: wire.MAX_HEADER_LIST_SIZE,
            h2.SETTINGS_ENABLE_PUSH: 0}
        raw.close()
    run(scenario, max_concurrent_streams=7)


def test_frame_longer_than_our_max_frame_size_is_refused_at_its_header() -> None:
    async def scenario(server: Server, port: int) -> None:
        raw = await Raw.open(port)
        # a 16 MiB DATA frame announced, 64 KiB of it sent: refused without waiting for more
        raw.send(struct.pack(">BHBBI", 0xFF, 0xFFFF, h2.DATA, 0, 1) + b"x" * 65536)
        assert await raw.goaway() == h2.FRAME_SIZE_ERROR
        await served(port)
    run(scenario)


@pytest.mark.parametrize("setting, value, code", [
    (h2.SETTINGS_MAX_FRAME_SIZE, 0, h2.PROTOCOL_ERROR),
    (h2.SETTINGS_MAX_FRAME_SIZE, 1, h2.PROTOCOL_ERROR),
    (h2.SETTINGS_MAX_FRAME_SIZE, 16383, h2.PROTOCOL_ERROR),
    (h2.SETTINGS_MAX_FRAME_SIZE, 1 << 24, h2.PROTOCOL_ERROR),
    (h2.SETTINGS_INITIAL_WINDOW_SIZE, 1 << 31, h2.FLOW_CONTROL_ERROR),
    (h2.SETTINGS_ENABLE_PUSH, 2, h2.PROTOCOL_ERROR),
])
def test_settings_outside_the_rfc_are_a_connection_error(setting: int, value: int,
                                                         code: int) -> None:
    async def scenario(server: Server, port: int) -> None:
        raw = await Raw.open(port, [(setting, value)])
        assert await raw.goaway() == code
        await served(port)
    run(scenario)


def test_malformed_settings_frames() -> None:
    async def scenario(server: Server, port: int) -> None:
        for frame, code in ((h2.frame(h2.SETTINGS, 0, 0, b"12345"), h2.FRAME_SIZE_ERROR),
                            (h2.frame(h2.SETTINGS, h2.ACK, 0, b"123456"), h2.FRAME_SIZE_ERROR),
                            (h2.frame(h2.SETTINGS, 0, 1, b""), h2.PROTOCOL_ERROR)):
            raw = await Raw.open(port)
            raw.send(frame)
            assert await raw.goaway() == code
    run(scenario)


def test_a_settings_frame_costs_one_step_per_distinct_setting() -> None:
    """2,730 settings in one frame (as many as 16 KiB holds), 100 streams open: the last value
    of each identifier applies, once; the frame is acked once."""
    async def scenario(server: Server, port: int) -> None:
        raw = await Raw.open(port)
        for i in range(100):
            raw.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 2 * i + 1, request_block(PUT)))
        pairs = [(h2.SETTINGS_INITIAL_WINDOW_SIZE, i) for i in range(2729)]
        raw.send(h2.settings(pairs + [(h2.SETTINGS_MAX_FRAME_SIZE, 20000)]))
        raw.send(h2.frame(h2.PING, 0, 0, b"8 bytes!"))
        await raw.until(lambda f: f[0] == h2.PING and f[1] & h2.ACK)
        conn = connection(server)
        assert (conn.peer_initial_window, conn.peer_max_frame) == (2728, 20000)
        assert len(conn.streams) == 100
        assert all(conn.peer_initial_window + s.send_credit == 2728
                   for s in conn.streams.values())
        # one ACK for the opening SETTINGS, one for this one
        assert sum(1 for f in raw.frames if f[0] == h2.SETTINGS and f[1] & h2.ACK) == 2
        raw.close()
    run(scenario)


# --- header blocks ----------------------------------------------------------------------------


def test_endless_continuation_ends_the_connection_early() -> None:
    async def scenario(server: Server, port: int) -> None:
        raw = await Raw.open(port)
        raw.send(h2.frame(h2.HEADERS, 0, 1, request_block(PUT)))
        chunk = h2.frame(h2.CONTINUATION, 0, 1, b"\x00" * 16384)
        for _ in range(200):  # 3 MiB of header block, never ended
            raw.send(chunk)
        assert await raw.goaway() == h2.ENHANCE_YOUR_CALM
        await served(port)
    peak = peak_memory(scenario)
    assert peak < 16 * 1024 * 1024  # (it held a 64 KiB block at most; 3 MiB were sent)


def hpack_bomb(sid: int) -> bytes:
    """One 4 KiB header in the dynamic table, then 16,000 one-byte references to it: 64 MiB
    of header list from 20 KiB of frames."""
    block = b"\x40" + h2.literal(b"x-bomb", b"b" * 4000)[1:]  # literal, incremental indexing
    refs = b"\xbe" * 16000  # index 62: the newest dynamic table entry
    return (h2.frame(h2.HEADERS, 0, sid, request_block(PUT) + block)
            + h2.frame(h2.CONTINUATION, h2.END_HEADERS, sid, refs))


def test_hpack_bomb_ends_the_connection_before_it_expands() -> None:
    async def scenario(server: Server, port: int) -> None:
        raw = await Raw.open(port)
        raw.send(hpack_bomb(1))
        assert await raw.goaway() == h2.ENHANCE_YOUR_CALM
        await served(port)
    peak = peak_memory(scenario)
    assert peak < 16 * 1024 * 1024  # (64 MiB of fields if they had been made)


def test_header_list_within_the_limit_is_served() -> None:
    async def scenario(server: Server, port: int) -> None:
        raw = await Raw.open(port)
        token = h2.literal(b"token", b"t" * 60_000)
        raw.send(h2.frame(h2.HEADERS, 0, 1, request_block(PUT))
                 + b"".join(h2.frame(h2.CONTINUATION, h2.END_HEADERS if i + 16384 >= len(token)
                                     else 0, 1, token[i:i + 16384])
                            for i in range(0, len(token), 16384))
                 + h2.frame(h2.DATA, h2.END_STREAM, 1, put_request(b"ab")))
        await raw.answered(1)
        raw.close()
    run(scenario)


def test_header_blocks_decoded_per_read_are_bounded(monkeypatch) -> None:
    """Many large header blocks that the cache cannot answer: one read decodes its share
    (HEADER_BYTES_PER_READ, plus the block that crossed it), the rest waits for a later loop
    step; every call is still answered."""
    most = []
    receive = wire.Connection.data_received

    def data_received(self: wire.Connection, data: bytes) -> None:
        receive(self, data)
        most.append(wire.HEADER_BYTES_PER_READ - self.header_budget)

    monkeypatch.setattr(wire.Connection, "data_received", data_received)

    async def scenario(server: Server, port: int) -> None:
        raw = await Raw.open(port)
        calls = []
        for i in range(40):  # 40 blocks of 12 KB, each different
            sid = 2 * i + 1
            calls.append(h2.frame(h2.HEADERS, h2.END_HEADERS, sid, request_block(PUT)
                                  + h2.literal(b"x-pad", b"%05d" % i * 2400))
                         + h2.frame(h2.DATA, h2.END_STREAM, sid, put_request()))
        raw.send(b"".join(calls))
        for i in range(40):
            await raw.answered(2 * i + 1)
        raw.close()
    run(scenario)
    assert max(most) <= wire.HEADER_BYTES_PER_READ + 16384
    assert len(most) > 480_000 // (wire.HEADER_BYTES_PER_READ + 16384)


# --- streams and flow control -----------------------------------------------------------------


def test_streams_beyond_max_concurrent_streams_are_refused() -> None:
    async def scenario(server: Server, port: int) -> None:
        raw = await Raw.open(port)
        for i in range(12):  # requests never ended: each stream stays open
            raw.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 2 * i + 1, request_block(PUT)))
        assert await raw.rst(21) == h2.REFUSED_STREAM
        assert await raw.rst(23) == h2.REFUSED_STREAM
        assert len(connection(server).streams) == 10
        raw.send(h2.frame(h2.DATA, h2.END_STREAM, 1, put_request(b"abcd")))
        await raw.answered(1)  # one ends: room for another
        raw.call(25, PUT, put_request())
        await raw.answered(25)
        raw.close()
    run(scenario, max_concurrent_streams=10)


def test_reset_streams_count_until_their_handler_returns() -> None:
    """Calls reset by the client ("rapid reset") count against MAX_CONCURRENT_STREAMS until
    their handlers have returned: resetting them cannot start more calls at once."""
    async def scenario(server: Server, port: int) -> None:
        raw = await Raw.open(port)
        stubborn = message(pb.PutRequest(key=b"stubborn").SerializeToString())
        sid = 1
        for _ in range(5):
            batch = list(range(sid, sid + 20, 2))
            sid += 20
            for s in batch:
                raw.call(s, PUT, stubborn)
            await asyncio.sleep(0.05)  # their handlers start
            raw.send(b"".join(h2.rst_stream(s, h2.CANCEL) for s in batch))
        assert await raw.rst(sid - 2) == h2.REFUSED_STREAM
        assert server.kv.peak == 10
        while server.kv.running:  # once the reset calls have returned, there is room again
            await asyncio.sleep(0.05)
        raw.call(sid, PUT, put_request())
        await raw.answered(sid)
        raw.close()
    run(scenario, max_concurrent_streams=10)


def test_request_data_held_per_connection_is_bounded() -> None:
    """Many streams, each sent most of a request and never ended: the connection holds at most
    max_concurrent_streams requests, each at most max_receive; a request that announces more
    is refused at its first 5 bytes."""
    async def scenario(server: Server, port: int) -> None:
        raw = await Raw.open(port)
        raw.call(1, PUT, struct.pack(">BI", 0, 300_000), end=False)
        frame = await raw.until(lambda f: f[0] == h2.HEADERS and f[2] == 1)
        assert b"received message larger than max" in frame[3]
        body = put_request(b"v" * 200_000)
        for i in range(50):
            raw.call(2 * i + 3, PUT, body[:150_000], end=False)
        raw.send(h2.frame(h2.PING, 0, 0, b"8 bytes!"))
        await raw.until(lambda f: f[0] == h2.PING)
        conn = connection(server)
        held = sum(len(s.data) for s in conn.streams.values())
        assert len(conn.streams) == 20 and held <= 20 * (250_000 + 5)
        raw.close()
        await served(port)
    run(scenario, max_concurrent_streams=20, max_receive_message_length=250_000)


def test_unary_requests_still_arriving_share_a_budget_per_connection(monkeypatch) -> None:
    """Windows past the first 64 KiB are granted within CONN_REQUEST_BUDGET (always to the
    oldest request, so concurrent large requests on one connection all complete); a client
    sending past its window has that stream reset."""
    monkeypatch.setattr(wire, "CONN_REQUEST_BUDGET", 2 << 20)
    most = []
    grow = wire.Connection._grow

    def watched(self: wire.Connection, stream: wire.Stream) -> None:
        grow(self, stream)
        most.append(self.granted)

    monkeypatch.setattr(wire.Connection, "_grow", watched)

    async def scenario(server: Server, port: int) -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            kv = rpc_pb2_grpc.KVStub(channel)
            value = b"v" * 1_500_000
            resps = await asyncio.gather(*(kv.Put(pb.PutRequest(key=b"k", value=value),
                                                  timeout=30) for _ in range(12)))
            assert all(r.header.revision == len(value) for r in resps)
        # the budget, plus the oldest request, which always grows (up to its whole length)
        assert max(most) <= (2 << 20) + len(value) + wire.STREAM_WINDOW
        raw = await Raw.open(port)  # ignores its windows
        body = put_request(b"v" * 1_000_000)
        for i in range(30):
            raw.call(2 * i + 1, PUT, body, end=False)
        raw.send(h2.frame(h2.PING, 0, 0, b"8 bytes!"))
        await raw.until(lambda f: f[0] == h2.PING)
        assert await raw.rst(59) == h2.FLOW_CONTROL_ERROR
        conn = connection(server)
        held = sum(len(s.data) for s in conn.streams.values())
        assert held <= (2 << 20) + 30 * h2.DEFAULT_WINDOW + wire.STREAM_WINDOW
        raw.close()
    run(scenario, max_receive_message_length=4 << 20)


def test_data_beyond_a_shut_stream_window_resets_the_stream() -> None:
    """A streaming call whose handler takes nothing: its window is not reopened, and a client
    sending past it gets FLOW_CONTROL_ERROR on that stream."""
    async def scenario(server: Server, port: int) -> None:
        raw = await Raw.open(port)
        raw.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, request_block(WATCH)))
        req = message(pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=b"k" * 16000)).SerializeToString())
        for _ in range(3 * wire.STREAM_WINDOW // len(req)):
            raw.send(h2.frame(h2.DATA, 0, 1, req))
        assert await raw.rst(1) == h2.FLOW_CONTROL_ERROR
        assert not connection(server).streams
        raw.call(3, PUT, put_request())  # the connection lives on
        await raw.answered(3)
        raw.close()
    run(scenario)


def test_window_update_errors() -> None:
    async def scenario(server: Server, port: int) -> None:
        raw = await Raw.open(port)
        raw.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, request_block(PUT))
                 + h2.window_update(1, 0))
        assert await raw.rst(1) == h2.PROTOCOL_ERROR
        raw.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 3, request_block(PUT))
                 + h2.window_update(3, h2.MAX_WINDOW))
        assert await raw.rst(3) == h2.FLOW_CONTROL_ERROR
        raw.send(h2.window_update(0, h2.MAX_WINDOW))
        assert await raw.goaway() == h2.FLOW_CONTROL_ERROR
    run(scenario)


# --- output to a client that does not read ------------------------------------------------------


async def flood(server: Server, raw: Raw, frame: bytes, total: int) -> int:
    """Send up to ``total`` bytes of ``frame`` copies, never reading; stops once the server
    has stopped reading the connection. Returns what was sent."""
    chunk = frame * (65536 // len(frame))
    sent = 0
    while sent < total:
        raw.send(chunk)
        sent += len(chunk)
        try:
            await asyncio.wait_for(raw.writer.drain(), 0.2)
        except asyncio.TimeoutError:
            if not connection(server).transport.is_reading():
                break
    return sent


def test_ping_flood_from_a_client_that_never_reads_is_throttled_then_dropped() -> None:
    async def scenario(server: Server, port: int) -> None:
        raw = await Raw.open(port)
        raw.writer.transport.set_write_buffer_limits(high=1 << 20)
        sent = await flood(server, raw, h2.frame(h2.PING, 0, 0, b"12345678"),
                           200 * 1024 * 1024)
        assert sent < 200 * 1024 * 1024  # the server stopped reading
        conn = connection(server)
        assert not conn.transport.is_reading()
        buffered = conn.transport.get_write_buffer_size() + conn.out_size + len(conn.buf)
        assert buffered <= 2 * wire.OUT_HIGH_WATER + (1 << 20)
        await served(port)  # others are served meanwhile
        # and after write_stall_timeout the client is let go
        while server.connections:
            await asyncio.sleep(0.05)
        assert conn.closed
        raw.writer.transport.abort()
    run(scenario, write_stall_timeout=3.0)


def test_settings_flood_with_open_streams_stays_bounded() -> None:
    """SETTINGS frames (each wants an ACK) with 100 streams open, from a client that never
    reads: reading stops at the high-water mark."""
    async def scenario(server: Server, port: int) -> None:
        raw = await Raw.open(port)
        for i in range(100):
            raw.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 2 * i + 1, request_block(PUT)))
        frame = (h2.settings([(h2.SETTINGS_INITIAL_WINDOW_SIZE, 0)])
                 + h2.settings([(h2.SETTINGS_INITIAL_WINDOW_SIZE, 1)]))
        sent = await flood(server, raw, frame, 100 * 1024 * 1024)
        assert sent < 100 * 1024 * 1024
        conn = connection(server)
        buffered = conn.transport.get_write_buffer_size() + conn.out_size + len(conn.buf)
        assert buffered <= 2 * wire.OUT_HIGH_WATER + (1 << 20)
        await served(port)
        raw.writer.transport.abort()
    run(scenario)


# --- connections --------------------------------------------------------------------------------


def test_connections_beyond_the_limit_are_closed_at_once() -> None:
    async def scenario(server: Server, port: int) -> None:
        raws = [await Raw.open(port) for _ in range(3)]
        for raw in raws:
            await raw.until(lambda f: f[0] == h2.SETTINGS)
        extra = await Raw.open(port)
        with pytest.raises((AssertionError, ConnectionError)):
            await extra.until(lambda f: f[0] == h2.SETTINGS)
        raws[0].writer.transport.abort()
        while len(server.connections) > 2:
            await asyncio.sleep(0.01)
        await served(port)
        for raw in raws[1:]:
            raw.close()
    before = rejected.value("http2", "too many connections")
    run(scenario, max_connections=3)
    assert rejected.value("http2", "too many connections") == before + 1


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_listen_backlog_is_1024() -> None:
    async def scenario(server: Server, port: int) -> None:
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                             text=True, check=True).stdout
        assert out.split()[2] == "1024"  # a listening socket's Send-Q is its backlog
    run(scenario)


def test_accept_failures_out_of_descriptors_are_counted_not_each_logged(caplog) -> None:
    async def scenario(server: Server, port: int) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        try:
            for _ in range(1000):
                loop.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"), "socket": sock})
        finally:
            sock.close()
    before = rejected.value("http2", "accept failed")
    with caplog.at_level(logging.WARNING):
        run(scenario)
    assert rejected.value("http2", "accept failed") == before + 1000
    assert len([r for r in caplog.records if "accept" in r.getMessage()]) <= 1
