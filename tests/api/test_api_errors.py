"""shardkv.api.errors must carry etcd 3.4's exact codes and messages."""

from __future__ import annotations

import asyncio
import os
import pickle
import re
from pathlib import Path

import grpc
import pytest

from shardkv.api import errors
from shardkv.api.errors import EtcdError

ERROR_GO = Path(os.environ.get("ETCD_GO_SRC", "/usr/share/gocode/src/go.etcd.io/etcd")) / (
    "etcdserver/api/v3rpc/rpctypes/error.go"
)

# Go server-side name -> our constant, where the plain "drop GRPC" rule differs.
_RENAMES = {
    "ErrGRPCRequestTooManyRequests": "ErrTooManyRequests",
    "ErrGPRCNotSupportedForLearner": "ErrNotSupportedForLearner",  # sic in etcd
}


def _py_code(go_code: str) -> grpc.StatusCode:
    if go_code == "Canceled":
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode[re.sub(r"(?<!^)(?=[A-Z])", "_", go_code).upper()]


def test_spot_checks():
    assert errors.ErrCompacted == EtcdError(
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
    assert errors.ErrEmptyKey.code == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.ErrLeaseNotFound.code == grpc.StatusCode.NOT_FOUND
    assert errors.ErrNoLeader.message == "etcdserver: no leader"
    assert errors.ErrTimeout.code == grpc.StatusCode.UNAVAILABLE
    assert errors.ErrNoSpace.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert errors.ErrInvalidAuthToken.code == grpc.StatusCode.UNAUTHENTICATED
    assert errors.from_message("etcdserver: request is too large") is errors.ErrRequestTooLarge
    assert errors.from_message("nope") is None
    assert errors.to_status(errors.ErrTooManyOps) == (
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
    assert errors.to_status(ValueError("boom")) == (grpc.StatusCode.UNKNOWN, "boom")
    assert str(errors.ErrDuplicateKey) == "etcdserver: duplicate key given in txn request"
    assert pickle.loads(pickle.dumps(errors.ErrCorrupt)) == errors.ErrCorrupt
    assert len({errors.ErrCompacted, EtcdError(errors.ErrCompacted.code, errors.ErrCompacted.message)}) == 1


@pytest.mark.skipif(not ERROR_GO.is_file(), reason=f"{ERROR_GO} not found "
                    "(apt-get install golang-etcd-server-dev)")
def test_table_matches_etcd_error_go():
    src = ERROR_GO.read_text()
    found = re.findall(
        r'^\s*(Err\w+)\s*=\s*status\.New\(codes\.(\w+),\s*"((?:[^"\\]|\\.)*)"\)\.Err\(\)',
        src, flags=re.M)
    assert len(found) == src.count("status.New(codes."), found
    problems = []
    for go_name, go_code, msg in found:
        py_name = _RENAMES.get(go_name, go_name.replace("ErrGRPC", "Err", 1))
        ours = getattr(errors, py_name, None)
        want = EtcdError(_py_code(go_code), msg)
        if ours != want:
            problems.append(f"{go_name} -> {py_name}: want {want!r}, have {ours!r}")
        if errors.from_message(msg) != want:
            problems.append(f"ERRORS[{msg!r}] missing or wrong")
    assert not problems, "\n".join(problems)


def _run_server(servicer_factory):
    """Start an in-process grpc.aio KV server; returns (loop, server, port)."""
    from shardkv.api.etcdserverpb import rpc_pb2_grpc

    async def start():
        server = grpc.aio.server()
        rpc_pb2_grpc.add_KVServicer_to_server(servicer_factory(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    return start


def test_abort_helpers_over_grpc():
    from shardkv.api.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    class KV(rpc_pb2_grpc.KVServicer):
        async def Range(self, request, context):
            await errors.abort(context, errors.ErrCompacted)

        @errors.etcd_errors
        async def Put(self, request, context):
            raise errors.ErrNoSpace

        async def DeleteRange(self, request, context):
            await errors.ErrLeaseNotFound.abort(context)

        async def Txn(self, request, context):
            await errors.abort(context, RuntimeError("some internal thing"))

    async def main():
        server, port = await _run_server(KV)()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = rpc_pb2_grpc.KVStub(ch)
                cases = [
                    (stub.Range(rpc_pb2.RangeRequest(key=b"a")), errors.ErrCompacted),
                    (stub.Put(rpc_pb2.PutRequest(key=b"a")), errors.ErrNoSpace),
                    (stub.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"a")), errors.ErrLeaseNotFound),
                ]
                for call, want in cases:
                    with pytest.raises(grpc.aio.AioRpcError) as ei:
                        await call
                    assert ei.value.code() == want.code
                    assert ei.value.details() == want.message
                    assert errors.from_rpc_error(ei.value) == want
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await stub.Txn(rpc_pb2.TxnRequest())
                assert ei.value.code() == grpc.StatusCode.UNKNOWN
                assert ei.value.details() == "some internal thing"
                assert errors.from_rpc_error(ei.value) is None
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), 20))


def test_etcd_errors_decorator_on_async_generator():
    from shardkv.api.v3electionpb import v3election_pb2, v3election_pb2_grpc

    class Election(v3election_pb2_grpc.ElectionServicer):
        @errors.etcd_errors
        async def Observe(self, request, context):
            yield v3election_pb2.LeaderResponse()
            raise errors.ErrElectionNoLeader

    async def main():
        server = grpc.aio.server()
        v3election_pb2_grpc.add_ElectionServicer_to_server(Election(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = v3election_pb2_grpc.ElectionStub(ch)
                got = []
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    async for resp in stub.Observe(v3election_pb2.LeaderRequest(name=b"e")):
                        got.append(resp)
                assert len(got) == 1
                assert ei.value.code() == grpc.StatusCode.UNKNOWN
                assert ei.value.details() == "election: no leader"
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), 20))


def test_decorator_rejects_sync_functions():
    with pytest.raises(TypeError):
        errors.etcd_errors(lambda self, req, ctx: None)
