"""The one piece of protobuf's wire format that shardkv writes by hand: the base-128 varint
(a watch response's envelope, etcd's lease and snapshot records). Any room may import this."""
from __future__ import annotations


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint; a negative int64 as its 64-bit two's complement."""
    if 0 <= value < 0x80:
        return bytes((value,))
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
