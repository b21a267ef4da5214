#!/usr/bin/env bash
# Regenerate the Python protobuf/gRPC modules of shardkv's etcd v3 API from
# shardkv/api/**/*.proto. Needs grpcio-tools (dev only); the generated
# *_pb2.py, *_pb2.pyi and *_pb2_grpc.py files are committed so the runtime
# needs only grpcio + protobuf.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOS=(
  shardkv/api/mvccpb/kv.proto
  shardkv/api/authpb/auth.proto
  shardkv/api/etcdserverpb/rpc.proto
  shardkv/api/v3lockpb/v3lock.proto
  shardkv/api/v3electionpb/v3election.proto
)

# Remove stale outputs so a deleted message/service cannot linger.
for p in "${PROTOS[@]}"; do
  base="${p%.proto}"
  rm -f "${base}_pb2.py" "${base}_pb2.pyi" "${base}_pb2_grpc.py"
done

python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. "${PROTOS[@]}"

# Sanity check: everything imports with the installed runtime.
python - <<'PY'
import importlib
for m in ("shardkv.api.mvccpb.kv_pb2", "shardkv.api.authpb.auth_pb2",
          "shardkv.api.etcdserverpb.rpc_pb2", "shardkv.api.etcdserverpb.rpc_pb2_grpc",
          "shardkv.api.v3lockpb.v3lock_pb2", "shardkv.api.v3lockpb.v3lock_pb2_grpc",
          "shardkv.api.v3electionpb.v3election_pb2", "shardkv.api.v3electionpb.v3election_pb2_grpc"):
    importlib.import_module(m)
print("generated modules import OK")
PY
