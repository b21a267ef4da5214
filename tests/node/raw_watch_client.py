"""A gRPC Watch call over a bare socket, for slow-consumer tests and scripts/attack_watch.py.

Unlike a grpcio client, whose transport keeps reading into its own buffers, this one reads
nothing at all until ``responses`` is called: the member's writes back up to TCP, as with a
client that is stuck or hostile. It offers the largest HTTP/2 windows, so nothing but the
member's own bounds holds what it sends.
"""
from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import hpack

from shardkv.api.etcdserverpb import rpc_pb2 as pb

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME = struct.Struct(">I")  # 24-bit length after a zero byte, then type, flags, stream id
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
MAX_WINDOW = 2**31 - 1
STREAM = 1


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return _FRAME.pack(len(payload))[1:] + bytes([kind, flags]) + _FRAME.pack(stream) + payload


class RawWatchClient:
    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        headers = hpack.Encoder().encode([
            (":method", "POST"), (":scheme", "http"), (":path", "/etcdserverpb.Watch/Watch"),
            (":authority", f"{host}:{port}"), ("content-type", "application/grpc"),
            ("te", "trailers")])
        settings = struct.pack(">HI", 0x4, MAX_WINDOW)  # SETTINGS_INITIAL_WINDOW_SIZE
        self.sock.sendall(
            _PREFACE + _frame(SETTINGS, 0, 0, settings)
            + _frame(WINDOW_UPDATE, 0, 0, _FRAME.pack(MAX_WINDOW - 65535))
            + _frame(HEADERS, END_HEADERS, STREAM, headers))
        self._buf = bytearray()
        self._messages = bytearray()
        self.ended = False

    def send(self, *requests: pb.WatchRequest) -> None:
        out = bytearray()
        for req in requests:
            body = req.SerializeToString()
            out += _frame(DATA, 0, STREAM, b"\0" + _FRAME.pack(len(body)) + body)
        self.sock.sendall(out)

    def responses(self) -> Iterator[pb.WatchResponse]:
        """Read and yield responses until the call ends (or the socket times out). Consumed
        bytes are handed back as window updates, so the member may send on."""
        while not self.ended:
            yield from self._parse_messages()
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return
            self._buf += chunk
            self._parse_frames()
        yield from self._parse_messages()

    def _parse_frames(self) -> None:
        buf, pos, acks, consumed = self._buf, 0, bytearray(), 0
        while len(buf) - pos >= 9:
            length = _FRAME.unpack_from(b"\0" + bytes(buf[pos:pos + 3]))[0]
            if len(buf) - pos < 9 + length:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            stream = _FRAME.unpack_from(buf, pos + 5)[0] & 0x7FFFFFFF
            payload = buf[pos + 9:pos + 9 + length]
            pos += 9 + length
            if kind == DATA and stream == STREAM:
                self._messages += payload
                consumed += length
            elif kind == SETTINGS and not flags & ACK:
                acks += _frame(SETTINGS, ACK, 0, b"")
            elif kind == PING and not flags & ACK:
                acks += _frame(PING, ACK, 0, bytes(payload))
            if (kind in (HEADERS, DATA) and flags & END_STREAM and stream == STREAM) or \
                    (kind == RST_STREAM and stream == STREAM) or kind == GOAWAY:
                self.ended = True
        del buf[:pos]
        if consumed:
            acks += _frame(WINDOW_UPDATE, 0, 0, _FRAME.pack(consumed))
            acks += _frame(WINDOW_UPDATE, 0, STREAM, _FRAME.pack(consumed))
        if acks:
            self.sock.sendall(acks)

    def _parse_messages(self) -> Iterator[pb.WatchResponse]:
        msgs, pos = self._messages, 0
        out = []
        while len(msgs) - pos >= 5:
            length = _FRAME.unpack_from(msgs, pos + 1)[0]
            if len(msgs) - pos < 5 + length:
                break
            out.append(pb.WatchResponse.FromString(bytes(msgs[pos + 5:pos + 5 + length])))
            pos += 5 + length
        del msgs[:pos]
        yield from out

    def close(self) -> None:
        self.sock.close()
