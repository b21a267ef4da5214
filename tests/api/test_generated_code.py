"""The committed generated modules are current and need no grpcio-tools at runtime."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = [
    "shardkv/api/mvccpb/kv.proto",
    "shardkv/api/authpb/auth.proto",
    "shardkv/api/etcdserverpb/rpc.proto",
    "shardkv/api/v3lockpb/v3lock.proto",
    "shardkv/api/v3electionpb/v3election.proto",
]


def _clear_json_names(fdp) -> None:
    def walk(msgs):
        for m in msgs:
            for f in m.field:
                f.ClearField("json_name")
            walk(m.nested_type)

    walk(fdp.message_type)


def test_imports_without_grpc_tools():
    code = (
        "import sys; sys.modules['grpc_tools'] = None\n"
        "import shardkv.api.etcdserverpb.rpc_pb2_grpc, shardkv.api.v3lockpb.v3lock_pb2_grpc\n"
        "import shardkv.api.v3electionpb.v3election_pb2_grpc, shardkv.api.errors\n"
        "assert 'grpc_tools.protoc' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_committed_code_matches_protos(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", f"--python_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", *PROTOS],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    # Semantic check (independent of the generator version): the descriptors
    # embedded in the committed modules equal those protoc builds from the .proto.
    ds = tmp_path / "ours.pb"
    proc = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I.", f"--descriptor_set_out={ds}", *PROTOS],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(ds.read_bytes())
    fresh_files = {f.name: f for f in fds.file}
    for proto in PROTOS:
        mod = importlib.import_module(proto[: -len(".proto")].replace("/", ".") + "_pb2")
        committed = descriptor_pb2.FileDescriptorProto.FromString(mod.DESCRIPTOR.serialized_pb)
        fresh = fresh_files[proto]
        for fdp in (committed, fresh):
            _clear_json_names(fdp)
        assert committed == fresh, f"{proto}: committed modules are stale; run scripts/gen_protos.sh"

    # Byte check, only when the installed generator is the one that made the files.
    stale = []
    version_line = re.compile(rb"^# Protobuf Python Version: .*$", re.M)
    for proto in PROTOS:
        base = proto[: -len(".proto")]
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            fresh = (tmp_path / (base + suffix)).read_bytes()
            committed = (ROOT / (base + suffix)).read_bytes()
            if suffix == "_pb2.py" and version_line.search(fresh).group() != version_line.search(
                    committed).group():
                pytest.skip("installed grpcio-tools differs from the one that generated the "
                            "committed code; descriptors were compared instead")
            if fresh != committed:
                stale.append(base + suffix)
    assert not stale, f"regenerate with scripts/gen_protos.sh: {stale}"
