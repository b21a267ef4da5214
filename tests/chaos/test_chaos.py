"""The chaos harness in CI: short runs of real shardkv-node clusters under faults, checked for
linearizable registers, exactly-once gap-free watches, durable acknowledged writes and revoked
leases that stay revoked; plus the harness's own pieces (the partition hook, the watch
checker) on known inputs.

Longer soaks: python3 scripts/chaos.py --minutes N [--members 3|5] [--nemesis ...]
"""
from __future__ import annotations

import time

import pytest

import nemesis
from checks import check_reference, check_watch
from runner import Config, run
from workload import Event


def _events(revs: list[int]) -> list[Event]:
    return [Event("r0", f"v{r}", r, "PUT") for r in revs]


def test_watch_checker_accepts_the_history_itself():
    ref = _events([5, 6, 7, 8])
    assert check_reference(ref, 5, 8).ok
    assert check_watch("w", ref, ref, 5, 8, []).ok


@pytest.mark.parametrize("seen, what", [
    ([5, 6, 6, 7, 8], "duplicate"),
    ([5, 7, 8], "gap"),
    ([5, 7, 6, 8], "out of order"),
    ([5, 6, 7], "stopped"),
])
def test_watch_checker_catches(seen, what):
    v = check_watch("w", _events(seen), _events([5, 6, 7, 8]), 5, 8, [])
    assert not v.ok and any(what in p for p in v.problems), v.problems


def test_watch_checker_catches_a_wrong_value_and_a_gappy_history():
    seen = _events([5, 6]) + [Event("r0", "phantom", 7, "PUT")]
    assert not check_watch("w", seen, _events([5, 6, 7]), 5, 7, []).ok
    assert not check_reference(_events([5, 7]), 5, 7).ok


def test_partition_hook_isolates_the_leader(tmp_path):
    """The transport's test-only fault file really cuts a member off: the majority elects
    another leader, the isolated one cannot serve a linearizable read; healing restores it."""
    cluster = nemesis.start_cluster(tmp_path, 3)
    try:
        old = cluster.leader()
        assert old is not None
        rest = [n for n in cluster.nodes if n is not old]
        cluster.partition([[old], rest])
        deadline = time.monotonic() + 30
        new = None
        while time.monotonic() < deadline and new is None:
            st = cluster.status(rest[0])
            new = next((n for n in rest if st and cluster.ids[n.name] == st.leader), None)
            time.sleep(0.2)
        assert new is not None, "the majority elected no leader of its own"
        assert not cluster.serves(old, timeout=2)
        cluster.heal_network()
        assert cluster.wait_healthy(45)
    finally:
        cluster.close()


def _assert_passes(cfg: Config) -> None:
    report = run(cfg)
    print(report.table())
    assert report.ok, report.table()
    assert len(report.faults) >= 3 and report.counts.get("ok", 0) >= 20, report.table()


def test_three_members_under_kills_pauses_partitions_and_transfers():
    _assert_passes(Config(members=3, seconds=30, seed=3, nemeses=[
        "kill", "kill-leader", "pause", "partition", "move-leader"]))


def test_five_members_under_combined_faults_and_whole_cluster_crash():
    _assert_passes(Config(members=5, seconds=20, seed=5, combine=0.6, nemeses=[
        "kill-leader", "pause", "partition", "crash-all"]))
