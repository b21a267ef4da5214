"""Put throughput and latency of a local shardkv-node cluster (started here, on free ports).

    python3 scripts/bench_node.py --members 3 --clients 64 --seconds 5

Clients are grpc.aio coroutines in this process, spread over every member's client URL (so
followers forward their writes through Raft).
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "node"))

import harness  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2 as pb  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc  # noqa: E402


async def client(url: str, n: int, until: float, lat: list[float], value: bytes) -> int:
    done = 0
    async with grpc.aio.insecure_channel(url.split("://")[1]) as ch:
        kv = rpc.KVStub(ch)
        while time.monotonic() < until:
            t = time.monotonic()
            await kv.Put(pb.PutRequest(key=b"bench/%d/%d" % (n, done), value=value), timeout=10)
            lat.append(time.monotonic() - t)
            done += 1
    return done


async def bench(urls: list[str], clients: int, seconds: float, size: int) -> None:
    lat: list[float] = []
    until = time.monotonic() + seconds
    counts = await asyncio.gather(*(client(urls[i % len(urls)], i, until, lat, b"x" * size)
                                    for i in range(clients)))
    lat.sort()
    print(f"{sum(counts) / seconds:8.0f} puts/s  p50 {statistics.median(lat) * 1000:6.1f} ms  "
          f"p99 {lat[int(len(lat) * 0.99)] * 1000:6.1f} ms  ({clients} clients, {size} B values)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--value-size", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        c = harness.make_cluster(Path(tmp), args.members)
        try:
            for n in c.nodes:
                n.start()
            harness.wait_ready(c)
            asyncio.run(bench([n.client_url for n in c.nodes], args.clients, args.seconds,
                              args.value_size))
        finally:
            c.close()


if __name__ == "__main__":
    main()
