"""The watch delivery fast path, in one process: an applied put's events through the hub and
the Watch service to serialized response bytes, as the gRPC server would push them.

    PYTHONPATH=. python3 scripts/bench_watch_fanout.py
    PYTHONPATH=/work/base python3 scripts/bench_watch_fanout.py     # older code, same figures

For each case (watchers, streams, value size): microseconds per put from ``hub.notify`` until
every stream has pushed its responses (store writes not counted; catch-up steps for watchers
that found their stream's queue full are), and per delivered response. Every push is accepted
(a client that keeps up). Older code has no ``hub_stream``: it pushes everything at once.
Then history replays: watchers from revision 1 over stored puts, with the longest catch-up
step and the longest flush (each holds the member's event loop while it runs).
"""
from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from types import SimpleNamespace

from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.mvcc.kv import PutRequest, ResponseHeader
from shardkv.mvcc.store import Store
from shardkv.mvcc.watch import WatchHub
from shardkv.node.services import watch as service

CASES = [  # watchers, streams, value bytes, puts
    (1, 1, 256, 3000),
    (100, 100, 256, 300),
    (1000, 1, 256, 100),
    (1000, 10, 256, 100),
    (100, 1, 100 * 1024, 50),
]


class FakeMember:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.hub = WatchHub(store)
        self.cfg = SimpleNamespace(max_request_bytes=1_572_864)
        self.unsettled = False

    def header(self) -> ResponseHeader:
        return ResponseHeader(cluster_id=1, member_id=2, revision=self.store.current_revision,
                              raft_term=3)


async def idle(member: FakeMember, streams: list) -> None:
    """Run the flush callbacks (and any they schedule) and, as the member's watch loop does,
    catch-up steps for watchers that found their stream full, until all is sent."""
    while True:
        for _ in range(3):
            await asyncio.sleep(0)
        behind = [h for h in (getattr(s, "hub_stream", None) for s in streams)
                  if h is not None and (h.behind or len(h))]
        if not behind:
            return
        member.hub.sync_unsynced()


async def case(watchers: int, streams: int, value_bytes: int, puts: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp, Store(tmp) as store:
        member = FakeMember(store)
        pushed = [0]

        def push(payload: bytes) -> bool:
            pushed[0] += 1
            return True

        all_streams = [service._Stream(member, push) for _ in range(streams)]
        for i in range(watchers):
            all_streams[i % streams]._create(pb.WatchCreateRequest(key=b"k"))
        await idle(member, all_streams)
        pushed[0] = 0
        value = b"v" * value_bytes
        took = []
        for i in range(puts):
            result = store.apply([(store.consistent_index + 1, PutRequest(key=b"k", value=value))])
            t = time.perf_counter()
            member.hub.notify(result.events)
            await idle(member, all_streams)
            took.append(time.perf_counter() - t)
        assert pushed[0] == watchers * puts, (pushed[0], watchers * puts)
        per_put = statistics.median(took) * 1e6
        return per_put, per_put / watchers


async def replay(watchers: int, revisions: int, value_bytes: int) -> tuple[float, float, float]:
    """``watchers`` watches from revision 1 on one stream over ``revisions`` stored puts, a
    client that keeps up, catch-up steps run back to back (as the member's watch loop when
    nothing else waits): (seconds until all are synced and sent, longest catch-up step,
    longest flush) -- each step and flush runs on the member's event loop in one go."""
    with tempfile.TemporaryDirectory() as tmp, Store(tmp) as store:
        for first in range(0, revisions, 100):
            store.apply([(store.consistent_index + 1 + j,
                          PutRequest(key=b"h/%d" % (j % 10), value=b"h" * value_bytes))
                         for j in range(min(100, revisions - first))])
        member = FakeMember(store)
        stream = service._Stream(member, lambda payload: True)
        flushes, steps = [0.0], [0.0]
        flush = stream.flush

        def timed_flush() -> None:
            t = time.perf_counter()
            flush()
            flushes.append(time.perf_counter() - t)

        stream.flush = timed_flush
        for _ in range(watchers):
            stream._create(pb.WatchCreateRequest(key=b"h/", range_end=b"h0", start_revision=1))
        ids = list(stream.watchers)
        began = time.perf_counter()
        while not all(member.hub.is_synced(i) for i in ids):
            for _ in range(3):
                await asyncio.sleep(0)
            t = time.perf_counter()
            member.hub.sync_unsynced()
            steps.append(time.perf_counter() - t)
        for _ in range(3):
            await asyncio.sleep(0)
        return time.perf_counter() - began, max(steps), max(flushes)


async def main() -> None:
    print("watchers streams value_bytes  us/put  us/response")
    for watchers, streams, value_bytes, puts in CASES:
        per_put, per_resp = await case(watchers, streams, value_bytes, puts)
        print(f"{watchers:8d} {streams:7d} {value_bytes:11d} {per_put:8.1f} {per_resp:10.2f}")
    print("replay: watchers revisions value_bytes  total_s  longest_step_ms  longest_flush_ms")
    for watchers, revisions, value_bytes in [(500, 2000, 1000), (50, 200, 100 * 1024)]:
        total, step, flush = await replay(watchers, revisions, value_bytes)
        print(f"        {watchers:8d} {revisions:9d} {value_bytes:11d} {total:8.2f} "
              f"{step * 1e3:16.1f} {flush * 1e3:17.1f}")


if __name__ == "__main__":
    asyncio.run(main())
