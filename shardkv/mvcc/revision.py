"""Revisions and the seam through which new main revisions are drawn.

A revision is ``(main, sub)``: ``main`` is bumped once per state-changing request (an etcd
"transaction"), ``sub`` numbers the changes inside it. On disk a revision is 16 big-endian bytes
so LMDB's byte order is revision order; a tombstone appends the marker byte ``t`` (as etcd does).
"""
from __future__ import annotations

import struct
from typing import Protocol

_REV = struct.Struct(">QQ")
TOMBSTONE_MARK = b"t"
REV_BYTES_LEN = _REV.size


def rev_to_bytes(main: int, sub: int, tombstone: bool = False) -> bytes:
    raw = _REV.pack(main, sub)
    return raw + TOMBSTONE_MARK if tombstone else raw


def bytes_to_rev(raw: bytes) -> tuple[int, int, bool]:
    """Returns ``(main, sub, is_tombstone)``."""
    main, sub = _REV.unpack_from(raw)
    return main, sub, len(raw) > REV_BYTES_LEN


class RevisionSource(Protocol):
    """Chooses the main revision of the next state-changing request.

    Must return a value strictly greater than ``current``, and the same value for the same
    ``current`` on every replica and on a retry (``Store.apply`` re-runs a batch after growing
    the LMDB map), so anything it draws on must come from the Raft log. It is asked only when a
    request actually changes something. Single-group mode counts locally; sharded mode will draw
    revisions from a global order (gaps are allowed: reads at a revision inside a gap see the
    state of the latest revision below it)."""

    def next_revision(self, current: int) -> int: ...


class LocalRevisions:
    """etcd's behaviour: the next revision is the current one plus one."""

    def next_revision(self, current: int) -> int:
        return current + 1
