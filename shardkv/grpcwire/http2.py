"""HTTP/2 framing (RFC 9113) and the little HPACK (RFC 7541) encoding a gRPC server needs.

Decoding request header blocks is left to the ``hpack`` package; encoding is done here with
literal fields that never touch the dynamic table, so the encoder has no state to keep."""
from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)

# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# settings
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

# error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384  # also the smallest SETTINGS_MAX_FRAME_SIZE allowed (RFC 9113 6.5.2)
MAX_FRAME_LIMIT = (1 << 24) - 1  # the largest one
MAX_WINDOW = (1 << 31) - 1  # the largest flow-control window (RFC 9113 6.9.1)

_HEAD = struct.Struct(">BHBBI")
_SETTING = struct.Struct(">HI")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEAD.pack(n >> 16, n & 0xFFFF, kind, flags, stream_id) + payload


def parse_head(buf: bytes | bytearray, pos: int) -> tuple[int, int, int, int]:
    """(length, type, flags, stream id) of the frame header at ``pos``."""
    hi, lo, kind, flags, sid = _HEAD.unpack_from(buf, pos)
    return (hi << 16) | lo, kind, flags, sid & 0x7FFFFFFF


def settings(pairs: list[tuple[int, int]]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in pairs))


def parse_settings(payload: bytes) -> dict[int, int]:
    """Identifier -> value; a repeated identifier keeps its last value (RFC 9113 6.5.3 applies
    them in order), so applying the result costs one step per distinct identifier."""
    return dict(_SETTING.unpack_from(payload, i) for i in range(0, len(payload) - 5, 6))


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def goaway(last_stream_id: int, code: int) -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, code))


def strip_padding(flags: int, payload: bytes) -> bytes | None:
    """The payload without its padding; None when the padding is as long as the frame or
    longer (a PROTOCOL_ERROR, RFC 9113 6.1)."""
    if flags & PADDED:
        if not payload or payload[0] >= len(payload):
            return None
        return payload[1:len(payload) - payload[0]]
    return payload


# --- HPACK encoding: literal header fields without indexing, no Huffman -------------------


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header field, literal without indexing, with a literal name."""
    return b"\x00" + _integer(len(name), 7, 0) + name + _integer(len(value), 7, 0) + value


STATUS_200 = b"\x88"  # static table index 8: ":status: 200"
# "content-type" is static table index 31, encoded as a literal with an indexed name
CONTENT_TYPE_GRPC = b"\x0f\x10" + _integer(16, 7, 0) + b"application/grpc"
RESPONSE_HEADERS = STATUS_200 + CONTENT_TYPE_GRPC


def percent_encode(message: str) -> bytes:
    """gRPC's grpc-message encoding: printable ASCII but '%' as is, the rest %XX."""
    out = bytearray()
    for b in message.encode():
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def status_block(code: int, message: str) -> bytes:
    block = literal(b"grpc-status", str(code).encode())
    if message:
        block += literal(b"grpc-message", percent_encode(message))
    return block


def grpc_timeout(value: str) -> float | None:
    """Seconds in a grpc-timeout header ("100m", "5S", ...), None when unparseable."""
    unit = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}.get(value[-1:])
    if unit is None or not value[:-1].isdigit():
        return None
    return int(value[:-1]) * unit
