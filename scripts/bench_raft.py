#!/usr/bin/env python3
"""CPU ceiling of the Raft core: entries committed per second by a 3-node group driven in
memory (no I/O, no encoding), at several proposal batch sizes.

    scripts/bench_raft.py [--seconds 3] [--batches 1,64,1024] [--payload 256]

Each round the leader takes one batch (one propose_batch call), then every node's Ready is
handled and messages are delivered until the batch is committed and applied everywhere, so
a round costs one replication round trip of the whole group.
"""
from __future__ import annotations

import argparse
import time

from shardkv.raft import Config, RawNode


def make_group(n: int = 3) -> dict[int, RawNode]:
    nodes = {i: RawNode(Config(id=i, voters=tuple(range(1, n + 1)), seed=i)) for i in range(1, n + 1)}
    nodes[1].campaign()
    pump(nodes)
    assert nodes[1].is_leader
    return nodes


def pump(nodes: dict[int, RawNode]) -> int:
    """Handle Readies and deliver messages until quiet; returns entries applied on node 1."""
    applied = 0
    while True:
        msgs = []
        for i, node in nodes.items():
            while node.has_ready():
                rd = node.ready()
                msgs.extend(rd.messages)
                if i == 1:
                    applied += sum(1 for e in rd.committed_entries if e.data)
                node.advance(rd)
        if not msgs:
            return applied
        for m in msgs:
            nodes[m.to].step(m)


def bench(batch: int, seconds: float, payload: int) -> tuple[float, int]:
    nodes = make_group()
    leader = nodes[1]
    data = [b"x" * payload] * batch
    committed = 0
    rounds = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        leader.propose_batch(data)
        committed += pump(nodes)
        rounds += 1
        if rounds % 64 == 0:  # keep memory flat, as the host's snapshots would
            for node in nodes.values():
                log = node.raft.log
                if log.applied > log.offset:
                    node.compact(log.applied, b"")
    elapsed = time.perf_counter() - start
    return committed / elapsed, rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batches", default="1,64,1024")
    ap.add_argument("--payload", type=int, default=256)
    args = ap.parse_args()
    print(f"{'batch':>6} {'entries/s':>12} {'rounds/s':>10}")
    for batch in (int(b) for b in args.batches.split(",")):
        rate, rounds = bench(batch, args.seconds, args.payload)
        print(f"{batch:>6} {rate:>12,.0f} {rounds / args.seconds:>10,.0f}")


if __name__ == "__main__":
    main()
