"""The floor under every shardkv request: a bare grpc.aio (or sync grpc) KV server that answers
Put with a constant PutResponse, loaded by kvbench; prints qps and server CPU µs per call.

    python3 scripts/bench_grpc_floor.py              # grpc.aio, shardkv.grpcwire, sync grpc (16 threads)
    python3 scripts/bench_grpc_floor.py native       # one of them
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from shardkv.api.etcdserverpb import rpc_pb2 as pb  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2_grpc  # noqa: E402

KVBENCH = REPO.parent / "shared" / "bench" / "bin" / "kvbench"
RESPONSE = pb.PutResponse(header=pb.ResponseHeader(cluster_id=1, member_id=2, revision=3,
                                                   raft_term=4))


class AsyncKV(rpc_pb2_grpc.KVServicer):
    async def Put(self, request, context):
        return RESPONSE


class SyncKV(rpc_pb2_grpc.KVServicer):
    def Put(self, request, context):
        return RESPONSE


def serve(mode: str, port: int) -> None:
    if mode in ("aio", "native"):
        async def main() -> None:
            from shardkv.grpcwire import Server
            server = grpc.aio.server() if mode == "aio" else Server()
            rpc_pb2_grpc.add_KVServicer_to_server(AsyncKV(), server)
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            await server.wait_for_termination()
        asyncio.run(main())
    else:
        server = grpc.server(ThreadPoolExecutor(16))
        rpc_pb2_grpc.add_KVServicer_to_server(SyncKV(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()


def measure(mode: str, total: int) -> None:
    sys.path.insert(0, str(REPO / "tests" / "node"))
    import harness
    [port] = harness.free_ports(1)
    proc = subprocess.Popen([sys.executable, __file__, "--serve", mode, str(port)])
    try:
        time.sleep(1.5)
        p = psutil.Process(proc.pid)
        before = sum(p.cpu_times()[:2])
        out = subprocess.run([str(KVBENCH), "--endpoints", f"127.0.0.1:{port}", "--conns", "10",
                              "--clients", "100", "--total", str(total), "put"],
                             capture_output=True, text=True, check=True, timeout=300).stdout
        cpu = sum(p.cpu_times()[:2]) - before
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{mode:>5}: {r['qps']:8.0f} calls/s   {cpu * 1e6 / r['ops']:5.0f} µs CPU per call "
              f"(100 clients / 10 conns)")
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        for mode in sys.argv[1:] or ("aio", "native", "sync"):
            measure(mode, 20000)
