"""The chaos harness in CI: short runs of real shardkv-node clusters under faults, checked for
linearizable registers, exactly-once gap-free watches, durable acknowledged writes, revoked
leases that stay revoked and fenced lock writes; plus the harness's own pieces (the partition
hook, the watch and lock checkers) on known inputs.

Longer soaks: python3 scripts/chaos.py --minutes N [--members 3|5] [--nemesis ...]
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import nemesis
from checks import check_locks, check_reference, check_watch
from runner import Config, run
from workload import Event, Tenure


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


def _lock_history(writes: list[tuple[int, str]]) -> list[Event]:
    """Two holders: lock key a created at 10, deleted at 14; b created at 11 (waits), deleted
    at 20; plus guarded writes (revision, value)."""
    ev = [Event("lock/L/a", "", 10, "PUT"), Event("lock/L/b", "", 11, "PUT"),
          Event("lock/L/a", "", 14, "DELETE"), Event("lock/L/b", "", 20, "DELETE")]
    ev += [Event("fenced/L", v, r, "PUT") for r, v in writes]
    return sorted(ev, key=lambda e: e.mod_revision)


def test_lock_checker_accepts_fenced_writes_in_tenure_order():
    tenures = [Tenure("v3lock", 0, b"a", 10, 0.0, 1.0), Tenure("v3lock", 1, b"b", 11, 0.5, 2.0)]
    v, info = check_locks(_lock_history([(12, "10:0:1"), (13, "10:0:2"), (15, "11:1:3")]),
                          tenures)
    assert v.ok and v.checked == 3, v.problems
    assert "overlapping in real time: 1" in info  # reported, not a failure


@pytest.mark.parametrize("writes, what", [
    ([(12, "11:1:1")], "lock owner"),  # b writes while a still holds the lock
    ([(15, "10:0:1")], "lock owner"),  # a writes after its key is gone (b holds it)
    ([(21, "11:1:1")], "no lock key"),  # b writes after its key is gone
    ([(12, "10:0:1"), (15, "11:1:2"), (16, "10:0:3")], "after token"),
])
def test_lock_checker_catches(writes, what):
    v, _ = check_locks(_lock_history(writes), [])
    assert not v.ok and any(what in p for p in v.problems), v.problems


_SLOW_SAVE = """
import sys, time
from shardkv.mvcc.raftlog import RaftLog
from shardkv.raft.types import Entry, HardState
log = RaftLog(sys.argv[1])
t = time.monotonic()
log.save(HardState(term=1), [Entry(term=1, index=1)])
print(time.monotonic() - t)
"""


def test_slow_disk_hook_delays_raft_log_saves(tmp_path):
    """SHARDKV_TEST_DISK_DELAY: a save waits at least the file's milliseconds (a lower bound
    only: sleep never returns early)."""
    delay = tmp_path / "disk"
    delay.write_text("300")
    env = dict(os.environ, SHARDKV_TEST_DISK_DELAY=str(delay))
    out = subprocess.run([sys.executable, "-c", _SLOW_SAVE, str(tmp_path / "log")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) >= 0.3


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


def _assert_passes(cfg: Config):
    report = run(cfg)
    print(report.table())
    assert report.ok, report.table()
    assert len(report.faults) >= 3 and report.counts.get("ok", 0) >= 20, report.table()
    return report


def test_three_members_under_kills_pauses_partitions_and_transfers():
    _assert_passes(Config(members=3, seconds=20, seed=3, nemeses=[
        "kill", "kill-leader", "pause", "partition", "move-leader"]))


def test_three_members_under_membership_changes_slow_disks_and_odd_partitions():
    """Remove a member / wipe it / add it back (voter, or learner then promoted), a slow Raft
    log fsync, one-way and bridge partitions; the cluster ends with its original members."""
    report = _assert_passes(Config(members=3, seconds=20, seed=4, combine=0.3,
                                   snapshot_count=500, nemeses=[
                                       "membership", "slow-disk", "partition-oneway", "bridge"]))
    assert any("re-added" in f for f in report.faults), report.table()


def test_five_members_under_combined_faults_and_whole_cluster_crash():
    _assert_passes(Config(members=5, seconds=20, seed=5, combine=0.6, nemeses=[
        "kill-leader", "pause", "partition", "crash-all"]))
