"""The committed protos must match etcd 3.4's on the wire.

etcd's own .proto files (from Debian's golang-etcd-server-dev, under
/usr/share/gocode/src/go.etcd.io/etcd) are stripped of their gogoproto and
google.api.http options, compiled with grpc_tools.protoc into a descriptor set,
and compared, message by message and field by field, with the descriptors of
our committed generated modules. Skips when the etcd sources or grpcio-tools
are absent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ETCD_SRC = Path(os.environ.get("ETCD_GO_SRC", "/usr/share/gocode/src/go.etcd.io/etcd"))

# etcd source path -> the import path etcd's own protos use for it.
ETCD_PROTOS = {
    "mvcc/mvccpb/kv.proto": "etcd/mvcc/mvccpb/kv.proto",
    "auth/authpb/auth.proto": "etcd/auth/authpb/auth.proto",
    "etcdserver/etcdserverpb/rpc.proto": "etcd/etcdserver/etcdserverpb/rpc.proto",
    "etcdserver/api/v3lock/v3lockpb/v3lock.proto": "etcd/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
    "etcdserver/api/v3election/v3electionpb/v3election.proto": (
        "etcd/etcdserver/api/v3election/v3electionpb/v3election.proto"
    ),
}

needs_etcd_sources = pytest.mark.skipif(
    not all((ETCD_SRC / p).is_file() for p in ETCD_PROTOS),
    reason=f"etcd 3.4 .proto sources not found under {ETCD_SRC} "
    "(apt-get install golang-etcd-server-dev)",
)


def _remove_option_blocks(text: str, marker: str) -> str:
    """Remove every `option (marker) = { ... };` statement (nested braces)."""
    out = []
    i = 0
    pat = re.compile(r"option\s*\(" + re.escape(marker) + r"\)\s*=\s*\{")
    while True:
        m = pat.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i : m.start()])
        depth, j = 1, m.end()
        while depth:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
            j += 1
        while text[j] in " \t\r\n":
            j += 1
        if text[j] == ";":
            j += 1
        i = j


def strip_etcd_proto(text: str) -> str:
    text = re.sub(r'^\s*import\s+"gogoproto/gogo\.proto";\s*$', "", text, flags=re.M)
    text = re.sub(r'^\s*import\s+"google/api/annotations\.proto";\s*$', "", text, flags=re.M)
    text = re.sub(r"^\s*option\s*\(gogoproto\.[^)]*\)\s*=[^;]*;\s*$", "", text, flags=re.M)
    text = re.sub(r"\s*\[\s*\(gogoproto\.[^\]]*\]", "", text)
    return _remove_option_blocks(text, "google.api.http")


def _etcd_descriptor_set(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    grpc_tools = pytest.importorskip("grpc_tools", reason="grpcio-tools not installed")
    del grpc_tools
    root = tmp_path / "etcdprotos"
    for src, dst in ETCD_PROTOS.items():
        out = root / dst
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(strip_etcd_proto((ETCD_SRC / src).read_text()))
    ds = tmp_path / "etcd.pb"
    proc = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{root}", f"--descriptor_set_out={ds}",
         "--include_imports", *ETCD_PROTOS.values()],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(ds.read_bytes())
    return fds


def _our_files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    from shardkv.api.authpb import auth_pb2
    from shardkv.api.etcdserverpb import rpc_pb2
    from shardkv.api.mvccpb import kv_pb2
    from shardkv.api.v3electionpb import v3election_pb2
    from shardkv.api.v3lockpb import v3lock_pb2

    files = {}
    for mod in (kv_pb2, auth_pb2, rpc_pb2, v3lock_pb2, v3election_pb2):
        fdp = descriptor_pb2.FileDescriptorProto()
        mod.DESCRIPTOR.CopyToProto(fdp)
        files[fdp.package] = fdp
    return files


def _default_json_name(name: str) -> str:
    """protoc's default JSON name (ToJsonName): drop '_' and upper-case the next char.

    The Python generator does not serialize default json_names, so an absent
    one is filled in before comparing."""
    out, upper = [], False
    for ch in name:
        if ch == "_":
            upper = True
        elif upper:
            out.append(ch.upper())
            upper = False
        else:
            out.append(ch)
    return "".join(out)


def _field_sig(msg: descriptor_pb2.DescriptorProto, f: descriptor_pb2.FieldDescriptorProto):
    oneof = msg.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None
    return {
        "name": f.name,
        "json_name": f.json_name or _default_json_name(f.name),
        "type": descriptor_pb2.FieldDescriptorProto.Type.Name(f.type),
        "type_name": f.type_name,
        "label": descriptor_pb2.FieldDescriptorProto.Label.Name(f.label),
        "oneof": oneof,
        "proto3_optional": f.proto3_optional,
        "packed": f.options.packed if f.options.HasField("packed") else None,
        "default": f.default_value,
    }


def _flatten(fdp: descriptor_pb2.FileDescriptorProto) -> dict[str, object]:
    """Everything wire-relevant in one file, keyed by fully-qualified name."""
    out: dict[str, object] = {}
    pkg = "." + fdp.package

    def enum(prefix: str, e: descriptor_pb2.EnumDescriptorProto) -> None:
        out[f"enum {prefix}.{e.name}"] = sorted((v.name, v.number) for v in e.value)

    def message(prefix: str, m: descriptor_pb2.DescriptorProto) -> None:
        full = f"{prefix}.{m.name}"
        out[f"message {full}"] = {
            "oneofs": [o.name for o in m.oneof_decl],
            "reserved_ranges": [(r.start, r.end) for r in m.reserved_range],
            "reserved_names": list(m.reserved_name),
            "field_numbers": sorted(f.number for f in m.field),
        }
        for f in m.field:
            out[f"field {full}#{f.number}"] = _field_sig(m, f)
        for e in m.enum_type:
            enum(full, e)
        for n in m.nested_type:
            message(full, n)

    for m in fdp.message_type:
        message(pkg, m)
    for e in fdp.enum_type:
        enum(pkg, e)
    for s in fdp.service:
        out[f"service {pkg}.{s.name}"] = sorted(mm.name for mm in s.method)
        for mm in s.method:
            out[f"rpc /{fdp.package}.{s.name}/{mm.name}"] = (
                mm.input_type, mm.output_type, mm.client_streaming, mm.server_streaming,
            )
    return out


def test_stripper_removes_nested_http_options():
    src = (
        'service S {\n  rpc A(X) returns (Y) {\n    option (google.api.http) = {\n'
        '      post: "/a"\n      body: "*"\n      additional_bindings { post: "/b" body: "*" }\n'
        '    };\n  }\n}\n'
    )
    got = strip_etcd_proto(src)
    assert "google" not in got and "additional_bindings" not in got
    assert re.search(r"rpc A\(X\) returns \(Y\) \{\s*\}", got)


@needs_etcd_sources
def test_descriptors_match_etcd_34(tmp_path):
    etcd = {f.package: f for f in _etcd_descriptor_set(tmp_path).file}
    ours = _our_files()
    packages = ["mvccpb", "authpb", "etcdserverpb", "v3lockpb", "v3electionpb"]
    assert set(packages) <= set(etcd), sorted(etcd)
    assert set(ours) == set(packages)

    diffs = []
    for pkg in packages:
        theirs_flat, ours_flat = _flatten(etcd[pkg]), _flatten(ours[pkg])
        for key in sorted(set(theirs_flat) | set(ours_flat)):
            t, o = theirs_flat.get(key), ours_flat.get(key)
            if t != o:
                diffs.append(f"{key}:\n    etcd: {t}\n    ours: {o}")
        if etcd[pkg].syntax != ours[pkg].syntax:
            diffs.append(f"{pkg} syntax: etcd {etcd[pkg].syntax!r} ours {ours[pkg].syntax!r}")
    assert not diffs, f"{len(diffs)} wire differences:\n" + "\n".join(diffs)


def test_every_etcd_rpc_path_is_served_by_our_stubs():
    """The generated servicers register the exact gRPC method paths etcd uses."""
    from shardkv.api.etcdserverpb import rpc_pb2
    from shardkv.api.v3electionpb import v3election_pb2
    from shardkv.api.v3lockpb import v3lock_pb2

    paths = set()
    for mod in (rpc_pb2, v3lock_pb2, v3election_pb2):
        for svc in mod.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                paths.add(f"/{svc.full_name}/{m.name}")
    for p in ("/etcdserverpb.KV/Range", "/etcdserverpb.Watch/Watch",
              "/etcdserverpb.Lease/LeaseKeepAlive", "/etcdserverpb.Cluster/MemberList",
              "/etcdserverpb.Cluster/MemberPromote", "/etcdserverpb.Lease/LeaseLeases",
              "/etcdserverpb.Maintenance/Status", "/etcdserverpb.Auth/RoleRevokePermission",
              "/v3lockpb.Lock/Lock", "/v3electionpb.Election/Campaign",
              "/v3electionpb.Election/Observe"):
        assert p in paths
    # 5 KV + 1 Watch + 5 Lease + 5 Cluster + 7 Maintenance + 16 Auth + 2 Lock + 5 Election
    assert len(paths) == 46
