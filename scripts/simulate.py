#!/usr/bin/env python3
"""Soak the Raft core in the deterministic simulator.

    scripts/simulate.py --seeds 10000 [--first-seed 0] [--ticks 300] [--profile mixed|churn|calm]
                        [--bug commit_previous_term|vote_without_log_check|keep_conflicting_suffix]

Prints one summary line; exits 1 on any violation (each failing seed is printed, replayable
with --first-seed SEED --seeds 1).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from raftsim.sim import Faults, Violation, run_seed  # noqa: E402

PROFILES = {
    "mixed": lambda seed: None,  # the simulator draws a fault profile from the seed
    "churn": lambda seed: Faults.leader_churn(random.Random(seed)),
    "calm": lambda seed: Faults(),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=1000)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--ticks", type=int, default=300, help="ticks of the fault phase per seed")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="mixed")
    ap.add_argument("--bug", action="append", default=[], help="plant a known bug (test the tests)")
    ap.add_argument("--stop-at-first", action="store_true")
    args = ap.parse_args()

    totals: Counter[str] = Counter()
    failures: list[str] = []
    started = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        try:
            stats = run_seed(seed, args.ticks, bugs=frozenset(args.bug), faults=PROFILES[args.profile](seed))
        except Violation as v:
            failures.append(str(v))
            print(f"VIOLATION {v}", flush=True)
            if args.stop_at_first:
                break
            continue
        totals.update(stats)
    elapsed = time.perf_counter() - started
    print(
        f"{'FAIL' if failures else 'OK'}: seeds {args.first_seed}..{args.first_seed + args.seeds - 1} "
        f"profile={args.profile} violations={len(failures)} ticks={totals['ticks']} "
        f"writes_acked={totals['acked']} reads_checked={totals['reads_checked']} crashes={totals['crashes']} "
        f"partitions={totals['partitions']} conf_changes={totals['conf_changes']} "
        f"transfers={totals['transfers']} snapshots={totals['snapshots_sent']} "
        f"messages={totals['messages']} in {elapsed:.1f}s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
