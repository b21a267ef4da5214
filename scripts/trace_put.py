"""Where one put's 2-3 ms go, hop by hop, across the leader and both followers.

Runs a 3-member cluster with SHARDKV_TRACE set (shardkv/trace.py), drives it with kvbench
`put` from 1 client to the leader, merges the members' timestamps (one host, one monotonic
clock) and prints, for every milestone, its median time after the request's bytes reached the
leader (`rx`), plus one example timeline.

    python3 scripts/trace_put.py [--seconds 5] [--examples 1]

Milestones: rx (bytes in, grpcwire), hdr0/hdr1 (header block decode), task (the call's task
runs), exec (KV execute), prop (proposal queued), wake (Raft loop wakes), ready (a Ready:
eN new entries, cN committed, mN messages), save0/save1 (Raft log txn start / committed and
synced, executor thread), saved (back on the loop), sent-after (a follower's acks sent after
its write), recv (peer frames received), advanced, apply0 (store apply starts, executor
thread), computed (results known, before the store commit), committed (store commit synced),
answer (waiting requests resolved), exec-done, reply (response frames queued), write (socket
write)."""
from __future__ import annotations

import argparse
import collections
import glob
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load(prefix: str) -> list[tuple[int, str, str]]:
    files = sorted(glob.glob(prefix + ".*"), key=lambda f: -os.path.getsize(f))
    events = []
    for name, path in zip(["L", "F1", "F2"], files):  # the leader records the most
        for line in open(path):
            t, label = line.rstrip("\n").split(" ", 1)
            events.append((int(t), name, label))
    events.sort()
    return events


def requests(events: list[tuple[int, str, str]]) -> list[list[tuple[int, str, str]]]:
    """Each put: from the leader's rx that leads to a proposal, until the leader's first
    socket write after the answer."""
    out, i = [], 0
    while i < len(events):
        t, who, label = events[i]
        if who == "L" and label == "rx":
            j = i + 1
            while j < len(events) and events[j][0] - t < 1_000_000 \
                    and events[j][1:] != ("L", "prop"):
                j += 1
            if j < len(events) and events[j][1:] == ("L", "prop"):
                seq, answered, k = [], False, i
                while k < len(events) and events[k][0] - t < 20_000_000:
                    seq.append(events[k])
                    answered |= events[k][1:] == ("L", "answer")
                    if answered and events[k][1:] == ("L", "write"):
                        break
                    k += 1
                out.append(seq)
                i = k
        i += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--examples", type=int, default=1)
    args = ap.parse_args()
    prefix = tempfile.mkdtemp(prefix="shardkv-trace.") + "/trace"
    env = dict(os.environ, SHARDKV_TRACE=prefix)
    subprocess.run([sys.executable, str(REPO / "scripts" / "bench_vs_etcd.py"), "--skip-etcd",
                    "--workloads", "put-1c", "--duration", str(args.seconds)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    seqs = requests(load(prefix))[20:]  # skip the warm-up
    for seq in seqs[len(seqs) // 2:len(seqs) // 2 + args.examples]:
        t0 = seq[0][0]
        for t, who, label in seq:
            print(f"{(t - t0) / 1000:8.0f} µs  {who:3} {label}")
        print("---")
    firsts: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for seq in seqs:
        t0, seen = seq[0][0], set()
        for t, who, label in seq:
            key = (who, label.split(" ")[0])
            if key not in seen:
                seen.add(key)
                firsts[key].append((t - t0) / 1000)
    print(f"{len(seqs)} puts; median time of each milestone's first occurrence after rx:")
    for (who, label), times in sorted(firsts.items(), key=lambda kv: statistics.median(kv[1])):
        print(f"  {who:3} {label:11} {statistics.median(times):7.0f} µs  (in {len(times)})")


if __name__ == "__main__":
    main()
