"""shardkv's HPACK decoder against the hpack package's encoder: every representation, Huffman
on and off, table evictions and size updates, and malformed blocks."""
from __future__ import annotations

import random

import hpack
import pytest

from shardkv.grpcwire.hpack_decode import Decoder, HPACKError


def _headers(rng: random.Random, i: int) -> list[tuple[bytes, bytes]]:
    fields = [(b":method", b"POST"), (b":scheme", b"http"),
              (b":path", rng.choice([b"/etcdserverpb.KV/Put", b"/etcdserverpb.KV/Range"])),
              (b":authority", b"127.0.0.1:2379"), (b"content-type", b"application/grpc"),
              (b"te", b"trailers"), (b"grpc-timeout", b"%du" % (4_999_000 + i))]
    for _ in range(rng.randrange(4)):
        name = b"x-%d" % rng.randrange(50)
        fields.append((name, bytes(rng.randrange(32, 127) for _ in range(rng.randrange(300)))))
    return fields


@pytest.mark.parametrize("huffman", [True, False])
def test_decodes_what_hpack_encodes_over_a_long_connection(huffman: bool) -> None:
    rng = random.Random(7)
    encoder, decoder = hpack.Encoder(), Decoder()
    for i in range(3000):
        fields = _headers(rng, i)
        if i % 500 == 250:
            encoder.header_table_size = rng.choice([0, 256, 4096])  # emits a size update
        sensitive = [hpack.NeverIndexedHeaderTuple(b"token", b"secret")] if i % 7 == 0 else []
        block = encoder.encode(fields + sensitive, huffman=huffman)
        assert decoder.decode(block, 1 << 20) == fields + [(b"token", b"secret")] * len(sensitive)


def test_malformed_blocks_are_errors() -> None:
    for block in (b"\xff", b"\xbf\x00", b"\x40\x85ab", b"\x00\x05abc", b"\x20" + b"\xff" * 8):
        with pytest.raises(HPACKError):
            Decoder().decode(block, 1 << 20)
    with pytest.raises(HPACKError):  # a size update above what SETTINGS allowed
        Decoder(max_table_size=4096).decode(b"\x3f\xe2\x1f", 1 << 20)  # 4097
