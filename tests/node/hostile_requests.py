"""Hostile protobuf requests for every RPC a member serves, as raw wire bytes.

The requests are built from the services' descriptors and encoded here, not by the protobuf
library, so that they can carry what a well-behaved client library never sends: invalid UTF-8
in string fields, enum values the .proto does not name, integers at and past every boundary,
empty and huge repeated fields, unknown fields. A hypothesis strategy draws (method, bytes)."""
from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from hypothesis import strategies as st

from shardkv.api.etcdserverpb import rpc_pb2
from shardkv.api.v3electionpb import v3election_pb2
from shardkv.api.v3lockpb import v3lock_pb2
from shardkv.protowire import varint

F = FieldDescriptor
_INT64 = (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64)
_UINT64 = (F.TYPE_UINT64, F.TYPE_FIXED64)
_INT32 = (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32)
_UINT32 = (F.TYPE_UINT32, F.TYPE_FIXED32)

# Keys the check after each batch also uses, so requests collide with real data.
KEYS = [b"k", b"k1", b"k2", b"fuzz/a", b"fuzz/b", b"\x00", b"\xff\xff", b"lock", b"election"]
URLS = [b"http://", b"http://127.0.0.1:99999", b"garbage", b"", b"unix://x", b"http://[::1",
        b"http://127.0.0.1:-1", b"\xff\xfe", b"http://127.0.0.1:0", b"https://h:1/path?q#f",
        b"http://" + b"a" * 300 + b":1"]
EDGE_INTS = [0, 1, -1, -5, 2**31 - 1, -2**31, 2**32, 2**63 - 1, -2**63, 2**53 + 1]
EDGE_UINTS = [0, 1, 2**32 - 1, 2**63, 2**64 - 1]


class Method:
    """One RPC: its gRPC path and descriptor (a plain class: failing examples show its path)."""

    def __init__(self, path: str, method: MethodDescriptor) -> None:
        self.path = path
        self.method = method

    def __repr__(self) -> str:
        return self.path

    @property
    def client_streaming(self) -> bool:
        return self.method.client_streaming

    @property
    def server_streaming(self) -> bool:
        return self.method.server_streaming


def methods() -> list[Method]:
    """Every RPC of etcd's v3 API, v3lock and v3election."""
    out = []
    for module in (rpc_pb2, v3lock_pb2, v3election_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                out.append(Method(f"/{service.full_name}/{m.name}", m))
    return out


# ---- the wire format, written by hand -------------------------------------------------------



def _key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def _field(fd: FieldDescriptor, value: object) -> bytes:
    t = fd.type
    if t in (F.TYPE_MESSAGE, F.TYPE_BYTES, F.TYPE_STRING):
        data = value if isinstance(value, bytes) else bytes(value)  # type: ignore[arg-type]
        return _key(fd.number, 2) + varint(len(data)) + data
    if t in (F.TYPE_FIXED64, F.TYPE_SFIXED64, F.TYPE_DOUBLE):
        return _key(fd.number, 1) + (int(value) & (2**64 - 1)).to_bytes(8, "little")
    if t in (F.TYPE_FIXED32, F.TYPE_SFIXED32, F.TYPE_FLOAT):
        return _key(fd.number, 5) + (int(value) & (2**32 - 1)).to_bytes(4, "little")
    return _key(fd.number, 0) + varint(int(value))  # ints, bools, enums


# ---- strategies --------------------------------------------------------------------------------

def _scalar(fd: FieldDescriptor, big: bool) -> st.SearchStrategy:
    t = fd.type
    name = fd.name.lower()
    if t in _INT64:
        return st.one_of(st.sampled_from(EDGE_INTS), st.integers(-2**63, 2**63 - 1),
                         st.integers(-3, 40))
    if t in _UINT64:
        return st.one_of(st.sampled_from(EDGE_UINTS), st.integers(0, 2**64 - 1))
    if t in _INT32 or t in _UINT32:
        return st.one_of(st.sampled_from(EDGE_INTS), st.integers(-2**31, 2**32 - 1))
    if t == F.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in fd.enum_type.values]),
                         st.sampled_from([-1, 9, 100, 2**31 - 1, -2**31]))
    if t == F.TYPE_BOOL:
        return st.one_of(st.booleans(), st.just(2))
    if "url" in name:
        return st.sampled_from(URLS)
    if t == F.TYPE_STRING:  # raw bytes: invalid UTF-8 included
        return st.one_of(st.sampled_from([b"", b"n", b"\xff\xfe\xfd", b"\xc3\x28", b"a" * 1000]),
                         st.binary(max_size=24))
    if t == F.TYPE_BYTES:
        small = st.one_of(st.sampled_from(KEYS), st.binary(max_size=24))
        return st.one_of(small, st.just(b"v" * 100_000)) if big else small
    return st.just(0)


def _message(desc: Descriptor, depth: int, big: bool = True) -> st.SearchStrategy[bytes]:
    """A message's bytes; ``big``: may hold a 100 KB value (not inside a huge list, so that a
    request stays within a few MB)."""
    parts = []
    for fd in desc.fields:
        if fd.type == F.TYPE_MESSAGE:
            if depth >= 3:
                continue
            one = st.deferred(lambda fd=fd: _message(fd.message_type, depth + 1, big))
            small = st.deferred(lambda fd=fd: _message(fd.message_type, depth + 1, False))
        else:
            one, small = _scalar(fd, big), _scalar(fd, False)
        if fd.is_repeated:
            # a huge list repeats one small element: hundreds of ops, a few hundred KB at most
            huge = st.tuples(st.sampled_from([129, 1000]), small).map(lambda t: [t[1]] * t[0])
            values = st.lists(one, max_size=3)
            if depth == 0:
                values = st.one_of(values, huge)
            parts.append(values.map(lambda vs, fd=fd: b"".join(_field(fd, v) for v in vs)))
        else:
            parts.append(st.one_of(st.just(b""), one.map(lambda v, fd=fd: _field(fd, v))))
    unknown = st.one_of(st.just(b""), st.just(_key(999, 0) + varint(7)))
    return st.tuples(*parts, unknown).map(b"".join)


def requests(method: Method) -> st.SearchStrategy[bytes]:
    """The raw bytes of one hostile request for ``method`` (one message of a stream)."""
    return _message(method.method.input_type, 0)


class Wire:
    """One request message's bytes, shown short in a failing example (values reach 100 KB)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        head = self.data[:48]
        return f"Wire({head!r}{'...' if len(self.data) > 48 else ''} {len(self.data)} bytes)"

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # what hypothesis's printer calls
        printer.text(repr(self))


def method_calls(candidates: list[Method]) -> st.SearchStrategy[tuple[Method, list[Wire]]]:
    """(method, request messages): one message for a unary call, up to four for a stream."""
    def for_method(m: Method) -> st.SearchStrategy[tuple[Method, list[Wire]]]:
        count = st.integers(1, 4) if m.client_streaming else st.just(1)
        messages = count.flatmap(lambda n: st.lists(requests(m).map(Wire), min_size=n,
                                                    max_size=n))
        return st.tuples(st.just(m), messages)
    return st.sampled_from(candidates).flatmap(for_method)
