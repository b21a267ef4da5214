"""Cluster membership as etcd shows it (names, peer and client URLs, learner flag), its ids
derived like etcd's, and its on-disk record.

The Raft configuration (who votes) lives in the Raft log; this registry holds what etcd keeps
next to it. It changes only by applying log entries (conf changes carry the member record in
their context; a member publishes its client URLs with an attribute entry), and it is saved
with the index of the last entry applied to it, so a replay after restart skips what it has.
"""
from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import msgspec


class MemberRecord(msgspec.Struct):
    id: int
    name: str = ""
    peer_urls: list[str] = msgspec.field(default_factory=list)
    client_urls: list[str] = msgspec.field(default_factory=list)
    is_learner: bool = False


class Registry(msgspec.Struct):
    cluster_id: int = 0
    members: dict[int, MemberRecord] = msgspec.field(default_factory=dict)
    removed: list[int] = msgspec.field(default_factory=list)
    applied: int = 0


def member_id(peer_urls: list[str], token: str) -> int:
    """etcd's NewMember: sha1 over the sorted peer URLs and the cluster token, first 8 bytes."""
    data = "".join(sorted(peer_urls)).encode() + token.encode()
    return int.from_bytes(hashlib.sha1(data).digest()[:8], "big") or 1


def cluster_id(member_ids: list[int]) -> int:
    """etcd's genID: sha1 over the sorted member ids (8 bytes big endian each)."""
    data = b"".join(struct.pack(">Q", m) for m in sorted(member_ids))
    return int.from_bytes(hashlib.sha1(data).digest()[:8], "big")


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Registry).decode


def load(path: Path) -> Registry | None:
    try:
        return _decode(path.read_bytes())
    except FileNotFoundError:
        return None


def save(path: Path, registry: Registry) -> None:
    """Write-then-rename with fsyncs: a crash leaves the old or the new record, never half."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(_encode(registry))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode(registry: Registry) -> bytes:
    return _encode(registry)


def decode(data: bytes) -> Registry:
    return _decode(data)
