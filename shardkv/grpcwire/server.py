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
(answered UNIMPLEMENTED), TLS (the caller keeps grpcio for that)."""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from typing import Any, AsyncIterator

import grpc

from shardkv.grpcwire import http2 as h2
from shardkv.grpcwire.hpack_decode import Decoder, HPACKError
from shardkv.trace import tr

log = logging.getLogger(__name__)

STREAM_WINDOW = 1 << 24  # what a client may send on one stream before we ack it
CONN_WINDOW = 1 << 30
SEND_HIGH_WATER = 256 * 1024  # a streaming handler waits while more than this is unsent
_HEADER_CACHE_MAX = 512
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
                 "requests", "request_ended", "headers_sent", "send_window", "pending",
                 "trailers", "drained", "reset", "expired", "recv_unacked")

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
        self.request_ended = False
        self.headers_sent = False
        self.send_window = conn.peer_initial_window
        self.pending = bytearray()
        self.trailers: bytes | None = None
        self.drained: asyncio.Event | None = None
        self.reset = False  # the client reset the stream or the connection went away
        self.expired = False  # the call's deadline passed
        self.recv_unacked = 0

    def send_unary(self, payload: bytes) -> None:
        """Headers, the one response message and OK trailers, in one go when windows allow."""
        tr("reply")
        if self.reset:
            return  # the client gave up on the call
        conn = self.conn
        n = 5 + len(payload)
        if not self.pending and n <= self.send_window and n <= conn.send_window \
                and n <= conn.peer_max_frame:
            self.send_window -= n
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
        self.flush_scheduled = False
        self.receiving = False  # in data_received: what it queues is flushed after its calls
        self.send_window = h2.DEFAULT_WINDOW
        self.peer_initial_window = h2.DEFAULT_WINDOW
        self.peer_max_frame = h2.DEFAULT_MAX_FRAME
        self.recv_unacked = 0
        self.blocked: dict[int, Stream] = {}
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = False

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            family = "ipv6" if ":" in peer[0] else "ipv4"
            self.peer = f"{family}:{peer[0]}:{peer[1]}"
        self.server.connections.add(self)
        self.queue(h2.settings([(h2.SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
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

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        tr("rx")
        # What the frames make us queue (PING and SETTINGS acks, window updates, errors) is
        # flushed two loop steps after they are all parsed: after the calls they started have
        # run their first step and the work that woke (a proposal's Raft turn). grpc-go pings
        # along with most requests, and that ack's socket write otherwise came first, on the
        # path of the request.
        self.receiving = True
        try:
            self._receive(data)
        finally:
            self.receiving = False
            if self.out and not self.flush_scheduled:
                self.flush_scheduled = True
                self.loop.call_soon(self.loop.call_soon, self._flush)

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
                self._fail(h2.PROTOCOL_ERROR)
                return
            self.preface_seen = True
            pos = len(h2.PREFACE)
        n = len(buf)
        handlers = self._frame_handlers
        while n - pos >= 9 and not self.closed:
            length, kind, flags, sid = h2.parse_head(buf, pos)
            end = pos + 9 + length
            if end > n:
                break
            payload = buf[pos + 9:end]
            pos = end
            if self.continuation is not None and kind != h2.CONTINUATION:
                self._fail(h2.PROTOCOL_ERROR)
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
        self.recv_unacked += len(payload)
        if self.recv_unacked >= CONN_WINDOW // 2:
            self.queue(h2.window_update(0, self.recv_unacked))
            self.recv_unacked = 0
        stream = self.streams.get(sid)
        if stream is None or stream.request_ended:
            return
        stream.recv_unacked += len(payload)  # padding counts against the window too
        if flags & h2.PADDED:
            payload = h2.strip_padding(flags, payload)
        stream.data += payload
        if stream.requests is None and len(stream.data) > self.server.max_receive + 5:
            self._too_large(stream)
            return
        if stream.recv_unacked >= STREAM_WINDOW // 2 and not flags & h2.END_STREAM:
            self.queue(h2.window_update(sid, stream.recv_unacked))
            stream.recv_unacked = 0
        if stream.requests is not None:
            self._feed_requests(stream)
        if flags & h2.END_STREAM:
            self._end_of_request(stream)

    def _on_headers(self, flags: int, sid: int, payload: bytes) -> None:
        if flags & h2.PADDED:
            payload = h2.strip_padding(flags, payload)
        if flags & h2.PRIORITY_FLAG:
            payload = payload[5:]
        if flags & h2.END_HEADERS:
            self._on_header_block(flags, sid, bytes(payload))
        else:
            self.continuation = [sid, flags, bytearray(payload)]

    def _on_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        cont = self.continuation
        if cont is None or cont[0] != sid:
            self._fail(h2.PROTOCOL_ERROR)
            return
        cont[2] += payload
        if flags & h2.END_HEADERS:
            self.continuation = None
            self._on_header_block(cont[1], sid, bytes(cont[2]))

    def _on_rst_stream(self, flags: int, sid: int, payload: bytes) -> None:
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self.blocked.pop(sid, None)
            self._cancel(stream)

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if flags & h2.ACK:
            return
        for key, value in h2.parse_settings(payload):
            if key == h2.SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == h2.SETTINGS_MAX_FRAME_SIZE:
                self.peer_max_frame = value
        self.queue(h2.frame(h2.SETTINGS, h2.ACK, 0))
        self._unblock()

    def _on_ping(self, flags: int, sid: int, payload: bytes) -> None:
        if not flags & h2.ACK:
            self.queue(h2.frame(h2.PING, h2.ACK, 0, payload))

    def _on_goaway(self, flags: int, sid: int, payload: bytes) -> None:
        pass  # the client closes the connection when its calls are done

    def _on_window_update(self, flags: int, sid: int, payload: bytes) -> None:
        increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        if sid == 0:
            self.send_window += increment
            self._unblock()
            return
        stream = self.streams.get(sid)
        if stream is not None:
            stream.send_window += increment
            if self.blocked.pop(sid, None) is not None:
                self.flush_stream(stream)

    _frame_handlers = {h2.DATA: _on_data, h2.HEADERS: _on_headers,
                       h2.CONTINUATION: _on_continuation, h2.RST_STREAM: _on_rst_stream,
                       h2.SETTINGS: _on_settings, h2.PING: _on_ping, h2.GOAWAY: _on_goaway,
                       h2.WINDOW_UPDATE: _on_window_update}

    # --- calls ----------------------------------------------------------------------------

    def _on_header_block(self, flags: int, sid: int, block: bytes) -> None:
        tr("hdr0")
        try:
            path, metadata, timeout = self._decode(block)
        except HPACKError:
            self._fail(h2.COMPRESSION_ERROR)
            return
        tr("hdr1")
        stream = self.streams.get(sid)
        if stream is not None:  # request trailers
            if flags & h2.END_STREAM:
                self._end_of_request(stream)
            return
        if sid <= self.last_stream_id or sid % 2 == 0:
            self._fail(h2.PROTOCOL_ERROR)
            return
        self.last_stream_id = sid
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
        generation = self.decoder.generation
        path, timeout, metadata = "", None, []
        for name, value in self.decoder.decode(block):
            if name == b":path":
                path = value.decode()
            elif name == b"grpc-timeout":
                timeout = h2.grpc_timeout(value.decode())
            elif not name.startswith(b":"):
                metadata.append((name.decode(), value.decode("latin-1")))
        result = (path, tuple(metadata), timeout)
        if self.decoder.generation != generation:
            self.header_cache.clear()  # indexes now point elsewhere
        else:  # the timeout is relative to the call's arrival: cacheable too
            if len(self.header_cache) >= _HEADER_CACHE_MAX:
                self.header_cache.clear()
            self.header_cache[block] = result
        return result

    def _end_of_request(self, stream: Stream) -> None:
        stream.request_ended = True
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
                stream.requests.put_nowait(deserialize(message))
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
            yield item

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
            if stream.timer is not None:
                stream.timer.cancel()
        stream.finish(context.code.value[0], context.details)

    async def _streaming(self, stream: Stream, handler: Any, request: Any) -> None:
        context = Context(stream)
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
        if stream.timer is not None:
            stream.timer.cancel()
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        if stream.drained is not None:
            stream.drained.set()

    # --- output ---------------------------------------------------------------------------

    def queue(self, data: bytes) -> None:
        self.out.append(data)
        if not self.flush_scheduled and not self.receiving:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        out, self.out = self.out, []
        if not self.closed and self.transport is not None:
            self.transport.write(b"".join(out))
            tr("write")

    def flush_stream(self, stream: Stream) -> None:
        """Send what the windows allow of a stream's unsent data, then its trailers."""
        pending = stream.pending
        while pending:
            n = min(len(pending), stream.send_window, self.send_window, self.peer_max_frame)
            if n <= 0:
                self.blocked[stream.id] = stream
                return
            chunk = bytes(pending[:n])
            del pending[:n]
            stream.send_window -= n
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
        if stream.requests is not None and not stream.request_ended:
            stream.request_ended = True
            stream.requests.put_nowait(_END)

    def _unblock(self) -> None:
        for sid in list(self.blocked):
            stream = self.blocked.pop(sid)
            self.flush_stream(stream)
            if self.send_window <= 0:
                break

    def _fail(self, code: int) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.out) + h2.goaway(self.last_stream_id, code))
            self.out = []
            self.transport.close()
        self.closed = True

    def shutdown(self) -> None:
        """Server stop: tell the client, drop the connection, cancel its calls."""
        self._fail(h2.NO_ERROR)
        self.connection_lost(None)


class _CallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str, metadata: tuple) -> None:
        self.method = method
        self.invocation_metadata = metadata


class Server:
    """The subset of ``grpc.aio.Server`` that generated code and the node use."""

    def __init__(self, max_receive_message_length: int = 4 * 1024 * 1024,
                 max_send_message_length: int = 2**31 - 1) -> None:
        self.max_receive = max_receive_message_length
        self.max_send = max_send_message_length
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
        for sock in self._sockets:
            sock.listen(1024)
            sock.setblocking(False)
            self._listeners.append(
                await loop.create_server(lambda: Connection(self), sock=sock))

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
