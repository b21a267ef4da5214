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
import re
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


PEER_URL_SCHEMES = ("http", "https", "unix", "unixs")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
# ASCII characters Go's net/url lets into a host unescaped (shouldEscape, encodeHost)
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                        "-_.~!$&'()*+,;=:[]<>\"")
_PORT = re.compile(r"(:[0-9]*)?")
# in a host, Go allows %-escapes of non-ASCII bytes only, and %25 (RFC 6874 zone ids)
_ESCAPE = re.compile(r"%(?:[89A-Fa-f][0-9A-Fa-f]|25)")


def peer_url_problem(url: str) -> str | None:
    """Why etcd 3.4 would refuse ``url`` as a member's peer URL (types.NewURLs: Go's url.Parse,
    a scheme of http, https, unix or unixs, a "host:port" address, no path), or None when it
    accepts it. Note that etcd accepts ports it cannot dial (":99999", ":"): so does this."""
    s = url.strip()
    if any(c < " " or c == "\x7f" for c in s):
        return f"invalid control character in URL: {url!r}"
    m = _SCHEME.match(s)
    if m is None or m.group(1).lower() not in PEER_URL_SCHEMES:
        return f"URL scheme must be http, https, unix, or unixs: {url!r}"
    rest = s[m.end():].split("#", 1)[0].split("?", 1)[0]
    host, path = "", rest
    if rest.startswith("//"):
        authority, slash, tail = rest[2:].partition("/")
        host, path = authority.rpartition("@")[2], slash + tail
    problem = _host_problem(host)
    if problem:
        return f"{problem}: {url!r}"
    if path:
        return f"URL must not contain a path: {url!r}"
    return None


def _host_problem(host: str) -> str | None:
    """Go's url.parseHost, then net.SplitHostPort (which wants exactly one port)."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return "missing ']' in host"
        name, after = host[1:end], host[end + 1:]
        if not after.startswith(":") or ":" in after[1:] or "[" in name:
            return 'URL address does not have the form "host:port"'
    else:
        name, colon, after = host.rpartition(":")
        if not colon or ":" in name or "[" in name or "]" in name:
            return 'URL address does not have the form "host:port"'
        after = ":" + after
    if not _PORT.fullmatch(after):
        return f"invalid port {after!r} after host"
    if any(c < "\x80" and c not in _HOST_CHARS and c != "%" for c in name) or \
            "%" in _ESCAPE.sub("", name):
        return "invalid character in host name"
    return None


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
