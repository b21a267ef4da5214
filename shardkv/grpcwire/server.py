"""A gRPC server on asyncio's Protocol API: HTTP/2 parsed in Python, no grpcio on the serving
path.

Why: under kvbench on this project's 2-core machine a bare ``grpc.aio`` server costs ~300 µs of
CPU per unary call before any work is done, more than etcd spends on a whole replicated put.
Here a connection is one ``asyncio.Protocol``: every frame that one ``data_received`` brings is
parsed in one pass, each call becomes one task, and every response frame queued in one loop
iteration leaves in one ``write``.

It is a drop-in for the part of ``grpc.aio.Server`` that generated ``add_*Servicer_to_server``
functions and our servicers use: handlers are grpcio's ``RpcMethodHandler`` objects (unary and
streaming both ways), and the context offers ``abort``, ``set_code``, ``set_details``,
``invocation_metadata``, ``time_remaining`` and ``peer``. Not supported: message compression
(answered UNIMPLEMENTED), TLS (the caller keeps grpcio for that).

Every client is hostile until proven otherwise, so what one connection may hold is bounded, and
so is the work one read of its socket makes (RFC 9113's rules, grpc-go's limits):
- a frame longer than our SETTINGS_MAX_FRAME_SIZE is refused at its 9-byte header;
- a header block (HEADERS and its CONTINUATIONs) larger than MAX_HEADER_LIST_SIZE, or one
  that decodes to more than that, ends the connection (the size is counted as decoding goes,
  so an HPACK bomb never expands; grpc-go decodes such a block to its end and resets only the
  stream, which costs Python ~0.3 s per 60 KB block: RFC 9113 10.5.1 allows either);
- MAX_CONCURRENT_STREAMS streams at most (a stream reset by the client counts until its
  handler has returned, so HEADERS + RST_STREAM cannot start calls without end);
- the receive windows are enforced; a streaming call's window is only reopened while its
  handler keeps up with the messages already received;
- SETTINGS values outside the RFC's ranges end the connection; applying a SETTINGS frame costs
  one step per distinct setting, whatever the number of streams;
- while more than OUT_HIGH_WATER bytes of output wait for a client, nothing more is read from
  it (a PING or SETTINGS flood from a client that never reads stops there), and a client that
  reads nothing for ``write_stall_timeout`` seconds is disconnected."""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from typing import Any, AsyncIterator

import grpc

from shardkv import rejected
from shardkv.grpcwire import http2 as h2
from shardkv.grpcwire.hpack_decode import Decoder, HeaderListTooLarge, HPACKError
from shardkv.trace import tr

log = logging.getLogger(__name__)

# Receive windows. A stream starts with the RFC's 64 KiB (what most requests need at most);
# past that, its window is widened to STREAM_WINDOW (1 MiB: a 1.5 MiB Put needs one more window
# update on its way). A streaming call's window is reopened only while its handler keeps up
# with the messages received; a unary request's (taken whole, refused beyond max_receive) while
# the connection holds less than CONN_REQUEST_BUDGET of requests still arriving, or for its
# oldest such request (so one always completes, however a client interleaves its requests).
# A connection so holds at most CONN_REQUEST_BUDGET + 64 KiB per stream + one request.
STREAM_WINDOW = 1 << 20
CONN_REQUEST_BUDGET = 32 << 20
# What a client may send on the connection before we reopen its window (reopened as data
# arrives: what a connection holds is bounded per stream, see above).
CONN_WINDOW = 1 << 24
# The default of etcd's --max-concurrent-streams here. etcd's is unlimited (math.MaxUint32);
# RFC 9113 6.5.2 asks for no less than 100. Clients queue calls beyond it (etcd's clientv3
# multiplexes its watches on one stream).
MAX_CONCURRENT_STREAMS = 100
# SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 6.5.2), also the most a header block may take before
# it is decoded. grpc-go allows 16 MiB, grpc's C core 8-16 KiB; etcd's clients send well under
# 1 KiB (an auth token is the largest field).
MAX_HEADER_LIST_SIZE = 64 * 1024
MAX_FRAME_SIZE = h2.DEFAULT_MAX_FRAME  # what we read (we advertise none: the RFC's default)
OUT_HIGH_WATER = 1 << 20  # stop reading a client while more output than this waits for it
WRITE_STALL_TIMEOUT = 60.0  # disconnect a client whose output has not moved for this long
# Client connections at most (etcd has no limit; a member at its file descriptor limit stops
# serving every client): connections beyond it are closed at once.
MAX_CONNECTIONS = 10_000
SEND_HIGH_WATER = 256 * 1024  # a streaming handler waits while more than this is unsent
LISTEN_BACKLOG = 1024
GOAWAY_LINGER = 1.0  # seconds a connection we ended is still read (see Connection._fail)
_HEADER_CACHE_MAX = 512
_HEADER_CACHE_BLOCK_MAX = 4096  # larger blocks are not cached (512 of them: 2 MiB at most)
# Header block bytes decoded (not found in the cache) per read before the rest of the read
# waits for a later loop step: a 64 KiB block of Huffman-coded text costs ~50 ms to decode.
HEADER_BYTES_PER_READ = 64 * 1024
_MSG_PREFIX = struct.Struct(">BI")
_OK_TRAILERS = h2.status_block(0, "")
_END = object()  # end of a client's request stream


def _same(message: bytes) -> bytes:
    return message


class _Abort(Exception):
    """Raised by ``Context.abort``: the call ends with the context's status."""


class Context:
    """The servicer context of one call (the subset of ``grpc.aio.ServicerContext`` we use)."""

    __slots__ = ("_stream", "code", "details")

    def __init__(self, stream: "Stream") -> None:
        self._stream = stream
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._stream.metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        self.code, self.details = code, details
        raise _Abort()

    def time_remaining(self) -> float | None:
        deadline = self._stream.deadline
        if deadline is None:
            return None
        return max(0.0, deadline - asyncio.get_running_loop().time())

    def peer(self) -> str:
        return self._stream.conn.peer

    def cancelled(self) -> bool:
        return self._stream.reset

    def push(self, payload: bytes) -> bool:
        """Queue one serialized message of a streaming response at once, from any callback,
        without a task switch (a watch fan-out reaches many streams in one loop step). False
        once the client is behind: the caller then awaits ``drained()`` before pushing more."""
        stream = self._stream
        if stream.reset:
            return False
        stream.append(payload)
        return stream.can_take()

    async def drained(self) -> None:
        """Wait until the client has taken what was pushed (or the call is gone)."""
        await self._stream.drain()


class Stream:
    """One call: its request bytes or messages, its send window and what is still unsent."""

    __slots__ = ("conn", "id", "handler", "metadata", "deadline", "timer", "task", "data",
                 "requests", "queued", "request_ended", "headers_sent", "send_credit",
                 "pending", "trailers", "drained", "reset", "expired", "recv_window", "granted")

    def __init__(self, conn: "Connection", stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.handler: Any = None
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None
        self.data = bytearray()
        self.requests: asyncio.Queue | None = None
        self.queued = 0  # bytes of the request messages its handler has not taken yet
        self.request_ended = False
        self.headers_sent = False
        # The stream's send window is conn.peer_initial_window + send_credit: a change of the
        # client's initial window (SETTINGS) then costs nothing per stream.
        self.send_credit = 0
        self.pending = bytearray()
        self.trailers: bytes | None = None
        self.drained: asyncio.Event | None = None
        self.reset = False  # the client reset the stream or the connection went away
        self.expired = False  # the call's deadline passed
        self.recv_window = h2.DEFAULT_WINDOW
        self.granted = 0  # window given to a unary request past the first 64 KiB

    def send_unary(self, payload: bytes) -> None:
        """Headers, the one response message and OK trailers, in one go when windows allow."""
        tr("reply")
        if self.reset:
            return  # the client gave up on the call
        conn = self.conn
        n = 5 + len(payload)
        if not self.pending and n <= conn.peer_initial_window + self.send_credit \
                and n <= conn.send_window and n <= conn.peer_max_frame:
            self.send_credit -= n
            conn.send_window -= n
            sid = self.id
            conn.queue(h2.frame(h2.HEADERS, h2.END_HEADERS, sid, h2.RESPONSE_HEADERS)
                       + h2.frame(h2.DATA, 0, sid, _MSG_PREFIX.pack(0, len(payload)) + payload)
                       + h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, sid, _OK_TRAILERS))
            conn.close_stream(self)
            return
        self.append(payload)
        self.finish(0, "")

    async def send_message(self, payload: bytes) -> None:
        """One message of a streaming response; waits while the client is not reading."""
        self.append(payload)
        await self.drain()

    def can_take(self) -> bool:
        return len(self.pending) <= SEND_HIGH_WATER and self.conn.writable.is_set() \
            and not self.reset

    async def drain(self) -> None:
        while not self.can_take() and not self.reset:
            if len(self.pending) > SEND_HIGH_WATER:
                self.drained = asyncio.Event()
                await self.drained.wait()
            else:
                await self.conn.writable.wait()
        if self.reset:
            raise asyncio.CancelledError()

    def append(self, payload: bytes) -> None:
        if not self.headers_sent:
            self.headers_sent = True
            self.conn.queue(h2.frame(h2.HEADERS, h2.END_HEADERS, self.id, h2.RESPONSE_HEADERS))
        self.pending += _MSG_PREFIX.pack(0, len(payload))
        self.pending += payload
        self.conn.flush_stream(self)

    def finish(self, code: int, message: str) -> None:
        """End the call with a status (trailers, or a trailers-only response)."""
        if self.reset or self.trailers is not None:
            return
        if self.headers_sent:
            block = _OK_TRAILERS if code == 0 and not message else h2.status_block(code, message)
        else:
            self.headers_sent = True
            block = h2.RESPONSE_HEADERS + h2.status_block(code, message)
        self.trailers = h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, self.id, block)
        self.conn.flush_stream(self)


class Connection(asyncio.Protocol):
    """One client connection: frames in, calls out."""

    def __init__(self, server: "Server") -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buf = bytearray()
        self.preface_seen = False
        self.streams: dict[int, Stream] = {}
        self.last_stream_id = 0
        self.decoder = Decoder()
        self.header_cache: dict[bytes, tuple] = {}
        self.continuation: list | None = None  # [stream id, flags, block so far]
        self.out: list[bytes] = []
        self.out_size = 0  # bytes in ``out``
        self.flush_scheduled = False
        self.receiving = False  # in data_received: what it queues is flushed after its calls
        # Parsing stops at the next frame (output over OUT_HIGH_WATER, or this read decoded
        # HEADER_BYTES_PER_READ); what is left waits in ``buf`` (``backlog``) for _continue.
        self.yield_now = False
        self.header_budget = HEADER_BYTES_PER_READ
        self.backlog = False
        self.send_window = h2.DEFAULT_WINDOW
        self.peer_initial_window = h2.DEFAULT_WINDOW
        self.peer_max_frame = h2.DEFAULT_MAX_FRAME
        self.recv_window = CONN_WINDOW
        self.granted = 0  # what the streams in ``growing`` were granted (CONN_REQUEST_BUDGET)
        self.growing: dict[int, Stream] = {}  # unary requests past 64 KiB, oldest first
        self.running = 0  # handler tasks not yet returned (reset streams' too)
        self.blocked: dict[int, Stream] = {}
        self.writable = asyncio.Event()
        self.writable.set()
        self.close_timer: asyncio.TimerHandle | None = None  # drops the connection when due
        self.closed = False

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            family = "ipv6" if ":" in peer[0] else "ipv4"
            self.peer = f"{family}:{peer[0]}:{peer[1]}"
        if len(self.server.connections) >= self.server.max_connections:
            rejected.count("http2", "too many connections", log,
                           f"{self.peer}: {self.server.max_connections} client connections open")
            self.closed = True
            transport.abort()
            return
        self.server.connections.add(self)
        self.queue(h2.settings([(h2.SETTINGS_MAX_CONCURRENT_STREAMS, self.server.max_streams),
                                (h2.SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_SIZE),
                                (h2.SETTINGS_ENABLE_PUSH, 0)])
                   + h2.window_update(0, CONN_WINDOW - h2.DEFAULT_WINDOW))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for stream in list(self.streams.values()):
            self._cancel(stream)
        self.streams.clear()
        self.blocked.clear()
        self.writable.set()
        if self.close_timer is not None:
            self.close_timer.cancel()

    def pause_writing(self) -> None:
        """The client is not taking our output: read nothing more from it until it does (what
        it sends could only add output), and give up on it after write_stall_timeout."""
        if self.closed:
            return
        self.writable.clear()
        self.transport.pause_reading()
        self.close_timer = self.loop.call_later(self.server.write_stall_timeout,
                                                self._write_stalled)

    def resume_writing(self) -> None:
        self.writable.set()
        if self.closed:
            return
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        if self.backlog:
            self.loop.call_soon(self._continue)
        else:
            self.transport.resume_reading()

    def _write_stalled(self) -> None:
        rejected.count("http2", "client not reading", log,
                       f"{self.peer}: no output taken for {self.server.write_stall_timeout} s")
        self.closed = True
        self.transport.abort()

    def _continue(self) -> None:
        """Parse the frames left in ``buf`` (see ``yield_now``)."""
        if self.closed or not self.backlog or not self.writable.is_set():
            return
        self.backlog = self.yield_now = False
        self.transport.resume_reading()
        self.data_received(b"")

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return  # after our GOAWAY: read and dropped until the connection ends
        tr("rx")
        # What the frames make us queue (PING and SETTINGS acks, window updates, errors) is
        # flushed two loop steps after they are all parsed: after the calls they started have
        # run their first step and the work that woke (a proposal's Raft turn). grpc-go pings
        # along with most requests, and that ack's socket write otherwise came first, on the
        # path of the request.
        self.receiving = True
        self.header_budget = HEADER_BYTES_PER_READ
        try:
            self._receive(data)
        finally:
            self.receiving = False
            if self.out and not self.flush_scheduled:
                self.flush_scheduled = True
                self.loop.call_soon(self.loop.call_soon, self._flush)
            elif self.backlog and not self.out:
                self.loop.call_soon(self._continue)  # (else the flush continues)

    def _receive(self, data: bytes) -> None:
        # Frames are parsed straight from ``data``; only a partial frame left at its end is
        # kept, in a bytearray that the next reads extend.
        if self.buf:
            self.buf += data
            buf: bytes | bytearray = self.buf
        else:
            buf = data
        pos = 0
        if not self.preface_seen:
            if len(buf) < len(h2.PREFACE):
                self.buf = bytearray(buf)
                return
            if not buf.startswith(h2.PREFACE):
                self._fail(h2.PROTOCOL_ERROR, "no HTTP/2 preface")
                return
            self.preface_seen = True
            pos = len(h2.PREFACE)
        n = len(buf)
        handlers = self._frame_handlers
        while n - pos >= 9 and not self.closed:
            if self.yield_now:
                # What the frames made us queue has not left yet (the client does not read,
                # or it floods us with frames that each want an answer), or this read has
                # had its share of the loop: stop here, read no more until the rest is done.
                self.backlog = True
                self.transport.pause_reading()
                break
            length, kind, flags, sid = h2.parse_head(buf, pos)
            if length > MAX_FRAME_SIZE:
                self._fail(h2.FRAME_SIZE_ERROR, "frame too large", f"{length} bytes")
                return
            end = pos + 9 + length
            if end > n:
                break
            payload = buf[pos + 9:end]
            pos = end
            if self.continuation is not None and kind != h2.CONTINUATION:
                self._fail(h2.PROTOCOL_ERROR, "header block interrupted")
                return
            handler = handlers.get(kind)
            if handler is not None:
                handler(self, flags, sid, payload)
        if buf is data:
            if pos < n:
                self.buf = bytearray(data[pos:])
        else:
            del buf[:pos]

    # --- frames ---------------------------------------------------------------------------

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        size = len(payload)  # padding counts against the windows too
        self.recv_window -= size
        if self.recv_window <= CONN_WINDOW // 2:
            if self.recv_window < 0:
                self._fail(h2.FLOW_CONTROL_ERROR, "data beyond the connection window")
                return
            self.queue(h2.window_update(0, CONN_WINDOW - self.recv_window))
            self.recv_window = CONN_WINDOW
        stream = self.streams.get(sid)
        if stream is None or stream.request_ended:
            if sid == 0 or sid > self.last_stream_id:
                self._fail(h2.PROTOCOL_ERROR, "DATA on an idle stream", f"stream {sid}")
            return  # a stream we closed: what was in flight
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._reset(stream, h2.FLOW_CONTROL_ERROR, "data beyond the stream window")
            return
        if flags & h2.PADDED:
            payload = h2.strip_padding(flags, payload)
            if payload is None:
                self._fail(h2.PROTOCOL_ERROR, "padding longer than the frame")
                return
        data = stream.data
        data += payload
        if stream.requests is None:
            # Refused as soon as the message's length is known, not once it is all here
            # (a complete request is checked by _end_of_request).
            if not flags & h2.END_STREAM and len(data) >= 5 and (
                    len(data) > self.server.max_receive + 5
                    or _MSG_PREFIX.unpack_from(data, 0)[1] > self.server.max_receive):
                self._too_large(stream)
                return
        else:
            self._feed_requests(stream)
            if stream.reset:
                return
        if flags & h2.END_STREAM:
            self._end_of_request(stream)
        elif stream.recv_window <= STREAM_WINDOW // 2:
            if stream.requests is None:
                self._grow(stream)
            elif stream.queued < STREAM_WINDOW:
                self._reopen(stream)

    def _reopen(self, stream: Stream) -> None:
        """Give the client back the stream window it used."""
        self.queue(h2.window_update(stream.id, STREAM_WINDOW - stream.recv_window))
        stream.recv_window = STREAM_WINDOW

    def _grow(self, stream: Stream) -> None:
        """Reopen a unary request's window within CONN_REQUEST_BUDGET; past it, only the
        oldest growing request's (the others wait in ``growing`` for _release)."""
        growing = self.growing
        if stream.id not in growing:
            growing[stream.id] = stream
        increment = STREAM_WINDOW - stream.recv_window
        if self.granted + increment > CONN_REQUEST_BUDGET and next(iter(growing)) != stream.id:
            return
        self.granted += increment
        stream.granted += increment
        self._reopen(stream)

    def _release(self, stream: Stream) -> None:
        """A unary request no longer arriving gives its grant back to those waiting."""
        if self.growing.pop(stream.id, None) is None:
            return
        self.granted -= stream.granted
        stream.granted = 0
        for waiting in list(self.growing.values()):
            if waiting.recv_window <= STREAM_WINDOW // 2:
                self._grow(waiting)

    def _on_headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            self._fail(h2.PROTOCOL_ERROR, "HEADERS on stream 0")
            return
        if flags & h2.PADDED:
            payload = h2.strip_padding(flags, payload)
            if payload is None:
                self._fail(h2.PROTOCOL_ERROR, "padding longer than the frame")
                return
        if flags & h2.PRIORITY_FLAG:
            payload = payload[5:]
        if flags & h2.END_HEADERS:
            self._on_header_block(flags, sid, bytes(payload))
        else:
            self.continuation = [sid, flags, bytearray(payload)]

    def _on_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        cont = self.continuation
        if cont is None or cont[0] != sid:
            self._fail(h2.PROTOCOL_ERROR, "CONTINUATION out of place")
            return
        cont[2] += payload
        if len(cont[2]) > MAX_HEADER_LIST_SIZE:
            # Not decoded, so the HPACK state is lost: the connection ends (RFC 9113 10.5.1).
            self._fail(h2.ENHANCE_YOUR_CALM, "header block too large",
                       f"over {MAX_HEADER_LIST_SIZE} bytes")
            return
        if flags & h2.END_HEADERS:
            self.continuation = None
            self._on_header_block(cont[1], sid, bytes(cont[2]))

    def _on_rst_stream(self, flags: int, sid: int, payload: bytes) -> None:
        if len(payload) != 4 or sid == 0:
            self._fail(h2.FRAME_SIZE_ERROR if sid else h2.PROTOCOL_ERROR, "bad RST_STREAM")
            return
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self.blocked.pop(sid, None)
            self._cancel(stream)

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            self._fail(h2.PROTOCOL_ERROR, "SETTINGS on a stream")
            return
        if flags & h2.ACK:
            if payload:
                self._fail(h2.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            self._fail(h2.FRAME_SIZE_ERROR, "SETTINGS of a bad length")
            return
        # At most MAX_FRAME_SIZE / 6 settings; the last value of each is the one that counts.
        settings = h2.parse_settings(payload)
        push = settings.get(h2.SETTINGS_ENABLE_PUSH, 0)
        window = settings.get(h2.SETTINGS_INITIAL_WINDOW_SIZE, self.peer_initial_window)
        frame_size = settings.get(h2.SETTINGS_MAX_FRAME_SIZE, self.peer_max_frame)
        if push > 1:
            self._fail(h2.PROTOCOL_ERROR, "bad SETTINGS value", f"ENABLE_PUSH {push}")
            return
        if window > h2.MAX_WINDOW:
            self._fail(h2.FLOW_CONTROL_ERROR, "bad SETTINGS value",
                       f"INITIAL_WINDOW_SIZE {window}")
            return
        if not h2.DEFAULT_MAX_FRAME <= frame_size <= h2.MAX_FRAME_LIMIT:
            self._fail(h2.PROTOCOL_ERROR, "bad SETTINGS value", f"MAX_FRAME_SIZE {frame_size}")
            return
        grew = window > self.peer_initial_window
        self.peer_initial_window = window
        self.peer_max_frame = frame_size
        self.queue(h2.frame(h2.SETTINGS, h2.ACK, 0))
        if grew:
            self._unblock()

    def _on_ping(self, flags: int, sid: int, payload: bytes) -> None:
        if len(payload) != 8 or sid != 0:
            self._fail(h2.FRAME_SIZE_ERROR if sid == 0 else h2.PROTOCOL_ERROR, "bad PING")
            return
        if not flags & h2.ACK:
            self.queue(h2.frame(h2.PING, h2.ACK, 0, payload))

    def _on_goaway(self, flags: int, sid: int, payload: bytes) -> None:
        pass  # the client closes the connection when its calls are done

    def _on_window_update(self, flags: int, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            self._fail(h2.FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
            return
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if sid == 0:
            self.send_window += increment
            if increment == 0 or self.send_window > h2.MAX_WINDOW:
                self._fail(h2.PROTOCOL_ERROR if increment == 0 else h2.FLOW_CONTROL_ERROR,
                           "bad WINDOW_UPDATE", f"connection, increment {increment}")
                return
            self._unblock()
            return
        stream = self.streams.get(sid)
        if stream is not None:
            stream.send_credit += increment
            if increment == 0 or self.peer_initial_window + stream.send_credit > h2.MAX_WINDOW:
                self._reset(stream, h2.PROTOCOL_ERROR if increment == 0
                            else h2.FLOW_CONTROL_ERROR, "bad WINDOW_UPDATE")
                return
            if self.blocked.pop(sid, None) is not None:
                self.flush_stream(stream)

    def _on_push_promise(self, flags: int, sid: int, payload: bytes) -> None:
        self._fail(h2.PROTOCOL_ERROR, "PUSH_PROMISE from a client")

    _frame_handlers = {h2.DATA: _on_data, h2.HEADERS: _on_headers,
                       h2.CONTINUATION: _on_continuation, h2.RST_STREAM: _on_rst_stream,
                       h2.SETTINGS: _on_settings, h2.PING: _on_ping, h2.GOAWAY: _on_goaway,
                       h2.WINDOW_UPDATE: _on_window_update, h2.PUSH_PROMISE: _on_push_promise}

    # --- calls ----------------------------------------------------------------------------

    def _on_header_block(self, flags: int, sid: int, block: bytes) -> None:
        tr("hdr0")
        try:
            path, metadata, timeout = self._decode(block)
        except HeaderListTooLarge as exc:
            self._fail(h2.ENHANCE_YOUR_CALM, "header list too large", str(exc))
            return
        except HPACKError as exc:
            self._fail(h2.COMPRESSION_ERROR, "bad header block", str(exc))
            return
        tr("hdr1")
        stream = self.streams.get(sid)
        if stream is not None:  # request trailers
            if flags & h2.END_STREAM:
                self._end_of_request(stream)
            return
        if sid <= self.last_stream_id or sid % 2 == 0:
            self._fail(h2.PROTOCOL_ERROR, "bad stream id",
                       f"HEADERS on {sid}, last {self.last_stream_id}")
            return
        self.last_stream_id = sid
        limit = self.server.max_streams
        if len(self.streams) >= limit or self.running >= limit:
            self._refuse(sid, h2.REFUSED_STREAM, "too many streams",
                         f"more than {limit} concurrent streams")
            return
        stream = Stream(self, sid)
        self.streams[sid] = stream
        stream.metadata = metadata
        handler = self.server.lookup(path, metadata)
        if handler is None:
            stream.request_ended = bool(flags & h2.END_STREAM)
            stream.finish(grpc.StatusCode.UNIMPLEMENTED.value[0], f"unknown method {path}")
            return
        if self.server.stopping:
            stream.request_ended = bool(flags & h2.END_STREAM)
            stream.finish(grpc.StatusCode.UNAVAILABLE.value[0], "server is shutting down")
            return
        stream.handler = handler
        if timeout is not None:
            stream.deadline = self.loop.time() + timeout
            stream.timer = self.loop.call_later(timeout, self._expire, stream)
        if handler.request_streaming:
            stream.requests = asyncio.Queue()
            self._start(stream, self._requests(stream))
        if flags & h2.END_STREAM:
            self._end_of_request(stream)

    def _decode(self, block: bytes) -> tuple[str, tuple[tuple[str, str], ...], float | None]:
        """(path, metadata, timeout) of a request header block. A block that leaves the
        decoder's dynamic table as it was decodes the same way next time, so it is cached
        until the table changes (clients send the same few blocks over and over)."""
        cached = self.header_cache.get(block)
        if cached is not None:
            return cached
        self.header_budget -= len(block)
        if self.header_budget < 0:
            self.yield_now = True
        generation = self.decoder.generation
        path, timeout, metadata = "", None, []
        for name, value in self.decoder.decode(block, MAX_HEADER_LIST_SIZE):
            # latin-1 never fails: a path or name that is not ASCII finds no method
            if name == b":path":
                path = value.decode("latin-1")
            elif name == b"grpc-timeout":
                timeout = h2.grpc_timeout(value.decode("latin-1"))
            elif not name.startswith(b":"):
                metadata.append((name.decode("latin-1"), value.decode("latin-1")))
        result = (path, tuple(metadata), timeout)
        if self.decoder.generation != generation:
            self.header_cache.clear()  # indexes now point elsewhere
        elif len(block) <= _HEADER_CACHE_BLOCK_MAX:
            # the timeout is relative to the call's arrival: cacheable too
            if len(self.header_cache) >= _HEADER_CACHE_MAX:
                self.header_cache.clear()
            self.header_cache[block] = result
        return result

    def _end_of_request(self, stream: Stream) -> None:
        stream.request_ended = True
        if self.growing:
            self._release(stream)
        if stream.requests is not None:
            stream.requests.put_nowait(_END)
            return
        if stream.handler is None:
            return
        data = stream.data
        if len(data) < 5:
            stream.finish(grpc.StatusCode.INTERNAL.value[0], "grpc: no request message")
            return
        compressed, length = _MSG_PREFIX.unpack_from(data, 0)
        if compressed:
            stream.finish(grpc.StatusCode.UNIMPLEMENTED.value[0],
                          "grpc: compressed messages are not supported")
            return
        if length > self.server.max_receive:
            self._too_large(stream)
            return
        self._start(stream, bytes(data[5:5 + length]))

    def _feed_requests(self, stream: Stream) -> None:
        """Move every complete message of a streaming request onto its queue."""
        data = stream.data
        pos = 0
        deserialize = stream.handler.request_deserializer
        while len(data) - pos >= 5:
            compressed, length = _MSG_PREFIX.unpack_from(data, pos)
            if length > self.server.max_receive:
                self._too_large(stream)
                return
            if len(data) - pos - 5 < length:
                break
            message = bytes(data[pos + 5:pos + 5 + length])
            pos += 5 + length
            try:
                stream.requests.put_nowait((5 + length, deserialize(message)))
                stream.queued += 5 + length
            except Exception:
                stream.finish(grpc.StatusCode.INTERNAL.value[0],
                              "Exception deserializing request!")
                self._cancel(stream)
                return
        if pos:
            del data[:pos]

    async def _requests(self, stream: Stream) -> AsyncIterator[Any]:
        queue = stream.requests
        while True:
            item = await queue.get()
            if item is _END:
                return
            size, request = item
            stream.queued -= size
            # The window stays shut while the handler is behind (see _on_data).
            if stream.recv_window <= STREAM_WINDOW // 2 and stream.queued < STREAM_WINDOW \
                    and not stream.request_ended and not stream.reset:
                self._reopen(stream)
            yield request

    def _start(self, stream: Stream, request: Any) -> None:
        handler = stream.handler
        if handler.request_deserializer is None or handler.response_serializer is None:
            # a raw-bytes handler (generic relays): messages pass as they are
            stream.handler = handler = handler._replace(
                request_deserializer=handler.request_deserializer or _same,
                response_serializer=handler.response_serializer or _same)
        stream.data = bytearray()
        if handler.response_streaming:
            stream.task = self.loop.create_task(self._streaming(stream, handler, request))
        else:
            stream.task = self.loop.create_task(self._unary(stream, handler, request))

    async def _unary(self, stream: Stream, handler: Any, request: Any) -> None:
        tr("task")
        context = Context(stream)
        # Counted from the task's first step to its end, reset or not (see _on_header_block);
        # a task cancelled before its first step never runs, nor is counted.
        self.running += 1
        try:
            if handler.request_streaming:
                response = await handler.stream_unary(request, context)
            else:
                response = await handler.unary_unary(handler.request_deserializer(request),
                                                     context)
            if context.code is None or context.code == grpc.StatusCode.OK:
                payload = handler.response_serializer(response)
                if len(payload) > self.server.max_send:
                    raise ValueError("response larger than grpc.max_send_message_length")
                stream.send_unary(payload)
                return
        except _Abort:
            pass
        except asyncio.CancelledError:
            if not stream.expired:
                raise
            context.code, context.details = grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"
        except Exception as exc:
            log.exception("Exception calling application: %s", exc)
            context.code = grpc.StatusCode.UNKNOWN
            context.details = f"Unexpected {type(exc)}: {exc}"
        finally:
            self.running -= 1
            if stream.timer is not None:
                stream.timer.cancel()
        stream.finish(context.code.value[0], context.details)

    async def _streaming(self, stream: Stream, handler: Any, request: Any) -> None:
        context = Context(stream)
        self.running += 1  # as in _unary
        try:
            if handler.request_streaming:
                responses = handler.stream_stream(request, context)
            else:
                responses = handler.unary_stream(handler.request_deserializer(request), context)
            serialize = handler.response_serializer
            async for response in responses:
                await stream.send_message(serialize(response))
            code = context.code or grpc.StatusCode.OK
            stream.finish(code.value[0], context.details)
        except _Abort:
            stream.finish(context.code.value[0], context.details)
        except asyncio.CancelledError:
            if not stream.expired:
                raise
            stream.finish(grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded")
        except Exception as exc:
            log.exception("Exception iterating responses: %s", exc)
            stream.finish(grpc.StatusCode.UNKNOWN.value[0], f"Unexpected {type(exc)}: {exc}")
        finally:
            self.running -= 1
            if stream.timer is not None:
                stream.timer.cancel()

    def _expire(self, stream: Stream) -> None:
        stream.expired = True
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        elif stream.task is None:
            stream.finish(grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded")

    def _too_large(self, stream: Stream) -> None:
        size = len(stream.data) - 5
        if len(stream.data) >= 5:
            size = _MSG_PREFIX.unpack_from(stream.data, 0)[1]
        stream.finish(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                      f"grpc: received message larger than max ({size} vs. "
                      f"{self.server.max_receive})")
        self._cancel(stream)

    def _cancel(self, stream: Stream) -> None:
        stream.reset = True
        if self.growing:
            self._release(stream)
        if stream.timer is not None:
            stream.timer.cancel()
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        if stream.drained is not None:
            stream.drained.set()

    # --- output ---------------------------------------------------------------------------

    def queue(self, data: bytes) -> None:
        self.out.append(data)
        self.out_size += len(data)
        if self.out_size > OUT_HIGH_WATER:
            self.yield_now = True
        if not self.flush_scheduled and not self.receiving:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        out, self.out = self.out, []
        self.out_size = 0
        self.yield_now = False
        if not self.closed and self.transport is not None:
            self.transport.write(b"".join(out))
            tr("write")
            if self.backlog:
                self.loop.call_soon(self._continue)

    def flush_stream(self, stream: Stream) -> None:
        """Send what the windows allow of a stream's unsent data, then its trailers."""
        pending = stream.pending
        while pending:
            n = min(len(pending), self.peer_initial_window + stream.send_credit,
                    self.send_window, self.peer_max_frame)
            if n <= 0:
                self.blocked[stream.id] = stream
                return
            chunk = bytes(pending[:n])
            del pending[:n]
            stream.send_credit -= n
            self.send_window -= n
            self.queue(h2.frame(h2.DATA, 0, stream.id, chunk))
        if stream.drained is not None:
            stream.drained.set()
        if stream.trailers is not None:
            self.queue(stream.trailers)
            self.close_stream(stream)

    def close_stream(self, stream: Stream) -> None:
        """The response is complete; a client still sending is told to stop (as grpc-go)."""
        if self.streams.pop(stream.id, None) is not None and not stream.request_ended:
            self.queue(h2.rst_stream(stream.id, h2.NO_ERROR))
            if self.growing:
                self._release(stream)
        if stream.requests is not None and not stream.request_ended:
            stream.request_ended = True
            stream.requests.put_nowait(_END)

    def _unblock(self) -> None:
        for sid in list(self.blocked):
            stream = self.blocked.pop(sid)
            self.flush_stream(stream)
            if self.send_window <= 0:
                break

    def _reset(self, stream: Stream, code: int, reason: str) -> None:
        """A stream error (RFC 9113 5.4.2): the call ends, the connection lives on."""
        rejected.count("http2", reason, log, self.peer)
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        self._cancel(stream)
        self.queue(h2.rst_stream(stream.id, code))

    def _refuse(self, sid: int, code: int, reason: str, detail: str) -> None:
        """A new stream refused before anything was started for it."""
        rejected.count("http2", reason, log, f"{self.peer}: {detail}")
        self.queue(h2.rst_stream(sid, code))

    def _fail(self, code: int, reason: str, detail: str = "") -> None:
        """A connection error (RFC 9113 5.4.1): GOAWAY, then the connection closes. Closing a
        socket with unread input resets it, and the client would likely lose the GOAWAY: so
        our side is shut first, and what still comes is read and dropped for GOAWAY_LINGER."""
        rejected.count("http2", reason, log, f"{self.peer} {detail}")
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.out) + h2.goaway(self.last_stream_id, code))
            self.out = []
            self.out_size = 0
            self.transport.write_eof()
            self.transport.resume_reading()
            if self.close_timer is not None:
                self.close_timer.cancel()
            self.close_timer = self.loop.call_later(GOAWAY_LINGER, self.transport.abort)
        self.closed = True

    def shutdown(self) -> None:
        """Server stop: tell the client, drop the connection, cancel its calls."""
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.out) + h2.goaway(self.last_stream_id, h2.NO_ERROR))
            self.transport.close()
        self.closed = True
        self.connection_lost(None)


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Out of file descriptors, asyncio logs a traceback for every failed accept() (and tries
    again a second later): count them and log one line per 10 s instead. Other errors go to the
    handler that was there before."""
    previous = loop.get_exception_handler()
    if getattr(previous, "quiet_accept_errors", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and context.get("message", "").startswith("socket.accept()"):
            rejected.count("http2", "accept failed", log, str(exc))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.quiet_accept_errors = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


class _CallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str, metadata: tuple) -> None:
        self.method = method
        self.invocation_metadata = metadata


class Server:
    """The subset of ``grpc.aio.Server`` that generated code and the node use."""

    def __init__(self, max_receive_message_length: int = 4 * 1024 * 1024,
                 max_send_message_length: int = 2**31 - 1,
                 max_concurrent_streams: int = MAX_CONCURRENT_STREAMS,
                 max_connections: int = MAX_CONNECTIONS,
                 write_stall_timeout: float = WRITE_STALL_TIMEOUT) -> None:
        self.max_receive = max_receive_message_length
        self.max_send = max_send_message_length
        self.max_streams = max_concurrent_streams
        self.max_connections = max_connections
        self.write_stall_timeout = write_stall_timeout
        self._registered: dict[str, Any] = {}
        self._generic: list[Any] = []
        self._sockets: list[socket.socket] = []
        self._listeners: list[asyncio.AbstractServer] = []
        self.connections: set[Connection] = set()
        self.stopping = False
        self._stopped = asyncio.Event()

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for name, handler in handlers.items():
            self._registered[f"/{service}/{name}"] = handler

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._generic.extend(handlers)

    def lookup(self, path: str, metadata: tuple) -> Any:
        handler = self._registered.get(path)
        if handler is None:
            for generic in self._generic:
                handler = generic.service(_CallDetails(path, metadata))
                if handler is not None:
                    break
        return handler

    def add_insecure_port(self, address: str) -> int:
        """Bind (not yet listen) every address ``host:port`` resolves to; returns the port.
        Raises OSError (etcd's wording for a port in use)."""
        host, _, port_text = address.rpartition(":")
        host = host.strip("[]") or None
        port = int(port_text)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        bound: list[socket.socket] = []
        seen = set()
        for family, kind, proto, _, sockaddr in infos:
            if (family, sockaddr[0]) in seen:
                continue
            seen.add((family, sockaddr[0]))
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((sockaddr[0], port) + tuple(sockaddr[2:]))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    for s in bound:
                        s.close()
                    raise OSError(errno.EADDRINUSE,
                                  f"listen tcp {address}: bind: address already in use") from None
                if family == socket.AF_INET6 and (bound or len(infos) > 1):
                    continue  # no IPv6 on this host: the IPv4 address is enough
                raise
            port = sock.getsockname()[1]
            bound.append(sock)
        self._sockets.extend(bound)
        return port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        _quiet_accept_errors(loop)
        for sock in self._sockets:
            sock.setblocking(False)
            # create_server listens again, with its own backlog (100) unless told
            self._listeners.append(await loop.create_server(
                lambda: Connection(self), sock=sock, backlog=LISTEN_BACKLOG))

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting; let calls in flight finish for up to ``grace`` seconds; then close
        every connection, cancelling what still runs."""
        self.stopping = True
        for listener in self._listeners:
            listener.close()
        if grace:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            while loop.time() < deadline and any(
                    s.task is not None and not s.handler.response_streaming
                    for c in self.connections for s in c.streams.values()):
                await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.shutdown()
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        self._stopped.set()

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()
