"""Jepsen-style fault soak of a real shardkv-node cluster on loopback (see tests/chaos/).

    python3 scripts/chaos.py --minutes 5 --members 5 --nemesis kill,pause,partition
    nemeses: kill, kill-leader, pause, partition, partition-oneway, bridge, move-leader,
             membership, slow-disk, crash-all

Prints the summary table; exits 1 on any checker violation (member logs are kept, with
history.pickle and, on a linearizability violation, reduced.pickle: the shrunk history).
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "chaos"))

import nemesis  # noqa: E402
from runner import Config, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=1.0, help="length of the fault phase")
    ap.add_argument("--members", type=int, default=3, choices=(3, 5))
    ap.add_argument("--nemesis", default="kill,kill-leader,pause,partition,move-leader",
                    help="comma-separated: " + ",".join(nemesis.NEMESES))
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--keys", type=int, default=3)
    ap.add_argument("--watchers", type=int, default=2)
    ap.add_argument("--lockers", type=int, default=2,
                    help="v3lock clients, and as many client-side mutex clients, writing "
                         "fenced keys (0: no lock workload)")
    ap.add_argument("--snapshot-count", type=int, default=None,
                    help="members' --snapshot-count (small: a re-added member gets a snapshot)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--combine", type=float, default=0.3,
                    help="chance that two nemeses strike together")
    ap.add_argument("--serializable-reads", action="store_true",
                    help="teeth check: clients read locally (etcd's serializable reads), which "
                         "a partition makes stale; the checker should report a violation")
    ap.add_argument("--unfenced-locks", action="store_true",
                    help="teeth check: lock holders write without the Txn guard; a holder that "
                         "stalled past its lease then writes inside its successor's tenure "
                         "and the lock fencing checker should report it")
    ap.add_argument("--dir", type=Path, help="data dirs and logs (default: a temporary dir)")
    args = ap.parse_args(argv)
    names = [n for n in args.nemesis.split(",") if n]
    unknown = [n for n in names if n not in nemesis.NEMESES]
    if unknown or not names:
        ap.error(f"unknown nemesis {unknown}; choose from {','.join(nemesis.NEMESES)}")
    cfg = Config(members=args.members, seconds=args.minutes * 60, nemeses=names,
                 clients=args.clients, keys=args.keys, watchers=args.watchers,
                 lockers=args.lockers, seed=args.seed, snapshot_count=args.snapshot_count,
                 combine=args.combine, serializable_reads=args.serializable_reads,
                 unfenced_locks=args.unfenced_locks,
                 base=args.dir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # kill: still stop the members
    report = run(cfg)
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
