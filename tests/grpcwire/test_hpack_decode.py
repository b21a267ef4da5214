"""shardkv's HPACK decoder against the hpack package's encoder: every representation, Huffman
on and off, table evictions and size updates, and malformed blocks."""
from __future__ import annotations

import random

import hpack
import pytest

from shardkv.grpcwire.hpack_decode import Decoder, HeaderListTooLarge, HPACKError


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


def test_header_list_size_is_counted_as_decoding_goes() -> None:
    """RFC 9113 6.5.2: name + value + 32 per field. A block of one-byte references to a 4 KB
    entry stops at the limit, without making the fields past it."""
    entry = b"\x40\x06x-bomb\x7f" + bytes([(4000 - 127) & 0x7F | 0x80, (4000 - 127) >> 7])
    block = entry + b"b" * 4000
    fields = Decoder().decode(block + b"\xbe" * 14, 15 * (4006 + 32))
    assert fields == [(b"x-bomb", b"b" * 4000)] * 15
    with pytest.raises(HeaderListTooLarge):
        Decoder().decode(block + b"\xbe" * 15, 15 * (4006 + 32))
    with pytest.raises(HeaderListTooLarge):
        Decoder().decode(block + b"\xbe" * 60_000, 65_536)


def test_table_size_update_only_at_the_start_of_a_block() -> None:
    assert Decoder().decode(b"\x3f\xe1\x1f\x82", 1 << 20) == [(b":method", b"GET")]  # 4096
    with pytest.raises(HPACKError):
        Decoder().decode(b"\x82\x3f\xe1\x1f", 1 << 20)
