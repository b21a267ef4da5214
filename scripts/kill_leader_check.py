"""Acknowledged writes survive leader kills: writers put unique keys through every member while
the leader is SIGKILLed and restarted a few times; at the end every member must hold every
acknowledged key with its value.

    python3 scripts/kill_leader_check.py --rounds 3 --clients 16
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "node"))

import harness  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2 as pb  # noqa: E402
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc  # noqa: E402


async def writer(url: str, n: int, stop: asyncio.Event, acked: dict[bytes, bytes]) -> None:
    i = 0
    async with grpc.aio.insecure_channel(url.split("://")[1]) as ch:
        kv = rpc.KVStub(ch)
        while not stop.is_set():
            key, value = b"w%d/%d" % (n, i), b"v%d" % i
            i += 1
            try:
                await kv.Put(pb.PutRequest(key=key, value=value), timeout=3)
                acked[key] = value
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)  # no leader / member down: an unacknowledged write


async def leader_of(c: harness.Cluster) -> harness.Node:
    for _ in range(100):
        for n in c.nodes:
            if not n.alive:
                continue
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{n.client_port}") as ch:
                    st = await rpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=1)
                if st.leader and st.leader == st.header.member_id:
                    return n
            except grpc.aio.AioRpcError:
                pass
        await asyncio.sleep(0.1)
    raise RuntimeError("no leader")


async def check(c: harness.Cluster, acked: dict[bytes, bytes]) -> int:
    missing = 0
    for n in c.nodes:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{n.client_port}") as ch:
            kv = rpc.KVStub(ch)
            await kv.Range(pb.RangeRequest(key=b"sync"), timeout=10)  # linearizable barrier
            resp = await kv.Range(pb.RangeRequest(key=b"w", range_end=b"x", serializable=True),
                                  timeout=30)
            have = {kvp.key: kvp.value for kvp in resp.kvs}
            lost = [k for k, v in acked.items() if have.get(k) != v]
            print(f"{n.name}: {len(have)} keys, {len(lost)} acknowledged writes missing")
            missing += len(lost)
    return missing


async def run(c: harness.Cluster, rounds: int, clients: int) -> int:
    acked: dict[bytes, bytes] = {}
    stop = asyncio.Event()
    urls = [n.client_url for n in c.nodes]
    tasks = [asyncio.create_task(writer(urls[i % len(urls)], i, stop, acked))
             for i in range(clients)]
    for r in range(rounds):
        await asyncio.sleep(1.5)
        victim = await leader_of(c)
        print(f"round {r}: SIGKILL leader {victim.name} ({len(acked)} acked so far)")
        victim.kill(signal.SIGKILL)
        await asyncio.sleep(1.5)
        victim.start()
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.gather(*tasks)
    await asyncio.to_thread(harness.wait_ready, c)
    print(f"{len(acked)} writes acknowledged")
    return await check(c, acked)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kill-leader-") as tmp:
        c = harness.make_cluster(Path(tmp), 3, ["--snapshot-count", "500"])
        try:
            for n in c.nodes:
                n.start()
            harness.wait_ready(c)
            started = time.monotonic()
            missing = asyncio.run(run(c, args.rounds, args.clients))
            print(f"{'OK' if missing == 0 else 'LOST WRITES'} in {time.monotonic() - started:.1f}s")
            sys.exit(1 if missing else 0)
        finally:
            c.close()


if __name__ == "__main__":
    main()
