"""The deterministic simulation: thousands of seeded runs with faults, every step checked.

CI runs SEEDS_PER_CHUNK * CHUNKS seeds of the mixed profile plus a run of the leader-churn
profile; ``scripts/simulate.py`` runs longer soaks.
"""
import random

import pytest

from raftsim.sim import Faults, Simulation, Violation, run_seed
from shardkv.raft.raft import (
    BUG_COMMIT_PREVIOUS_TERM,
    BUG_KEEP_CONFLICTING_SUFFIX,
    BUG_VOTE_WITHOUT_LOG_CHECK,
)

CHUNKS = 20
SEEDS_PER_CHUNK = 100  # 2,000 mixed-profile seeds in all


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_mixed_fault_seeds_keep_raft_safe_and_live(chunk):
    for seed in range(chunk * SEEDS_PER_CHUNK, (chunk + 1) * SEEDS_PER_CHUNK):
        run_seed(seed)


@pytest.mark.parametrize("chunk", range(3))
def test_leader_churn_seeds_keep_raft_safe_and_live(chunk):
    for seed in range(100_000 + chunk * 100, 100_000 + (chunk + 1) * 100):
        run_seed(seed, faults=Faults.leader_churn(random.Random(seed)))


# Seeds that once failed (the simulator or the core was wrong); each replays forever.
REGRESSION_SEEDS = [
    (21, "mixed"),  # retry storm outran replication: clients now back off
    (48, "mixed"),  # a Ready completed inside another Ready's completion (re-entrant drive)
    (54, "mixed"),
    (116, "mixed"),
    (15, "churn"),  # trimming a stale leader's appends left a gap in the log
    (192, "churn"),
    (42, "churn"),  # figure-8 shape: an old-term entry re-replicated by a later leader
    (121, "churn"),
]


@pytest.mark.parametrize("seed,profile", REGRESSION_SEEDS)
def test_regression_seed(seed, profile):
    faults = Faults.leader_churn(random.Random(seed)) if profile == "churn" else None
    run_seed(seed, faults=faults)


def test_same_seed_replays_the_same_run():
    first = Simulation(7, trace=True).run()
    second = Simulation(7, trace=True).run()
    assert first == second and first["trace"] != 0


def _first_violation(bug: str, profile: str, bound: int) -> int | None:
    for seed in range(bound):
        faults = Faults.leader_churn(random.Random(seed)) if profile == "churn" else None
        try:
            run_seed(seed, bugs=frozenset([bug]), faults=faults)
        except Violation:
            return seed
    return None


@pytest.mark.parametrize(
    "bug,profile,bound",
    [
        (BUG_VOTE_WITHOUT_LOG_CHECK, "mixed", 100),
        (BUG_KEEP_CONFLICTING_SUFFIX, "mixed", 100),
        (BUG_COMMIT_PREVIOUS_TERM, "churn", 600),
    ],
)
def test_simulation_finds_planted_bug(bug, profile, bound):
    """The simulator has teeth: each classic Raft bug, switched on, is caught within
    ``bound`` seeds."""
    assert _first_violation(bug, profile, bound) is not None
