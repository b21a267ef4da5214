"""HPACK (RFC 7541) header block decoding, lean: the `hpack` package's Decoder costs ~30-90 µs
per gRPC request here, because clients send a new grpc-timeout value (a new, Huffman-coded,
indexed literal) with every call. Static table and Huffman code come from `hpack`; the
dynamic table and the representations are decoded here."""
from __future__ import annotations

from collections import deque

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

STATIC = HeaderTable.STATIC_TABLE
_ENTRY_OVERHEAD = 32  # RFC 7541 4.1


class HPACKError(Exception):
    """A malformed header block: the connection must end (COMPRESSION_ERROR)."""


class HeaderListTooLarge(HPACKError):
    """The decoded header list is larger than the limit. Decoding stopped there (the rest of
    a block of small references to a large entry costs ~5 µs a byte), so the dynamic table is
    out of step with the peer's: the connection must end too."""


class Decoder:
    def __init__(self, max_table_size: int = 4096) -> None:
        self.max_allowed = max_table_size  # what our SETTINGS allow (the default)
        self.max_size = max_table_size
        self.size = 0
        self.dynamic: deque[tuple[bytes, bytes]] = deque()
        self.generation = 0  # bumped whenever the dynamic table changes

    def decode(self, block: bytes, max_list_size: int) -> list[tuple[bytes, bytes]]:
        """The fields of a header block. Raises HeaderListTooLarge as soon as their size (RFC
        9113 6.5.2: name, value and 32 bytes per field) passes ``max_list_size``: a block of
        small references to a large table entry (an "HPACK bomb") never makes more than the
        limit's worth of fields, nor costs more than that to decode."""
        fields = []
        room = max_list_size
        pos, end = 0, len(block)
        try:
            while pos < end:
                b = block[pos]
                if b & 0x80:  # indexed field
                    index, pos = _integer(block, pos, 7)
                    field = self._get(index)
                elif b & 0x40:  # literal with incremental indexing
                    name, value, pos = self._literal(block, pos, 6)
                    field = (name, value)
                    self._add(name, value)
                elif b & 0x20:  # dynamic table size update
                    if room != max_list_size:  # RFC 7541 4.2: only at the start of a block
                        raise HPACKError("table size update after a header field")
                    size, pos = _integer(block, pos, 5)
                    if size > self.max_allowed:
                        raise HPACKError("table size update above the allowed maximum")
                    self.max_size = size
                    self._evict()
                    self.generation += 1
                    continue
                else:  # literal without indexing (0000) or never indexed (0001)
                    name, value, pos = self._literal(block, pos, 4)
                    field = (name, value)
                room -= len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
                if room < 0:
                    raise HeaderListTooLarge(f"header list larger than {max_list_size} bytes")
                fields.append(field)
        except IndexError:
            raise HPACKError("truncated header block") from None
        return fields

    def _get(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= len(STATIC):
            return STATIC[index - 1]
        index -= len(STATIC) + 1
        if 0 <= index < len(self.dynamic):
            return self.dynamic[index]
        raise HPACKError("header index out of range")

    def _literal(self, block: bytes, pos: int, prefix: int) -> tuple[bytes, bytes, int]:
        index, pos = _integer(block, pos, prefix)
        if index:
            name = self._get(index)[0]
        else:
            name, pos = _string(block, pos)
        value, pos = _string(block, pos)
        return name, value, pos

    def _add(self, name: bytes, value: bytes) -> None:
        self.generation += 1
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        if size > self.max_size:  # RFC 7541 4.4: the table empties
            self.dynamic.clear()
            self.size = 0
            return
        self.dynamic.appendleft((name, value))
        self.size += size
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size:
            name, value = self.dynamic.pop()
            self.size -= len(name) + len(value) + _ENTRY_OVERHEAD


def _integer(block: bytes, pos: int, prefix: int) -> tuple[int, int]:
    limit = (1 << prefix) - 1
    value = block[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        b = block[pos]
        pos += 1
        value += (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HPACKError("integer too large")


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    huffman = block[pos] & 0x80
    length, pos = _integer(block, pos, 7)
    end = pos + length
    if end > len(block):
        raise HPACKError("string runs past the block")
    raw = block[pos:end]
    if huffman:
        try:
            raw = decode_huffman(raw)
        except Exception as exc:
            raise HPACKError(f"bad Huffman string: {exc}") from None
    return bytes(raw), end
