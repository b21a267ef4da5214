"""A 3-member cluster of real processes: replication, leader failure, loss of quorum,
recovery, full restart, and a lagging member catching up through a snapshot."""
import json
import re
import signal

import pytest

from harness import Cluster, Node, etcdctl, wait_ready, wait_until

pytestmark = pytest.mark.etcdctl


def leader_of(c: Cluster) -> Node:
    """The member every live member names as leader."""
    def find():
        live = [n for n in c.nodes if n.alive]
        p = etcdctl(",".join(n.client_url for n in live), "endpoint", "status", "-w", "json")
        if p.returncode != 0:
            return None
        statuses = json.loads(p.stdout)
        leaders = {s["Status"]["leader"] for s in statuses}
        if len(leaders) != 1:
            return None
        for s, n in zip(statuses, live):
            if s["Status"]["header"]["member_id"] in leaders:
                return n
        return None
    return wait_until(find, 20, 0.2, "one agreed leader")


def put_eventually(endpoint: str, key: str, value: str) -> None:
    """Retry a put for a bounded time (a put whose leader died fails and is retried)."""
    wait_until(lambda: etcdctl(endpoint, "put", key, value).returncode == 0, 30, 0.2,
               f"put {key} via {endpoint}")


def get_value(endpoint: str, key: str, *extra: str) -> str:
    p = etcdctl(endpoint, "get", key, "--print-value-only", *extra)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_failover_quorum_loss_and_full_restart(cluster_factory):
    c = cluster_factory(3)
    for i, n in enumerate(c.nodes):
        assert etcdctl(n.client_url, "put", f"k{i}", f"v{i}").stdout == "OK\n"
    for n in c.nodes:
        assert get_value(n.client_url, "k0") == "v0\n"

    # kill the leader: the other two elect a new one and writes continue
    old = leader_of(c)
    old.kill(signal.SIGKILL)
    rest = [n for n in c.nodes if n is not old]
    put_eventually(rest[0].client_url, "after-leader-kill", "1")
    assert get_value(rest[1].client_url, "after-leader-kill") == "1\n"

    # stop a second member: no quorum, writes fail with etcd's error
    rest[1].kill(signal.SIGKILL)
    p = etcdctl(rest[0].client_url, "put", "no-quorum", "x")
    assert p.returncode != 0
    assert ("etcdserver: no leader" in p.stderr or "etcdserver: request timed out" in p.stderr
            or "context deadline exceeded" in p.stderr), p.stderr

    # one comes back: quorum again, writes resume
    rest[1].start()
    put_eventually(rest[0].client_url, "quorum-back", "1")

    # restart everything: every acknowledged write is still there
    for n in c.nodes:
        n.kill(signal.SIGKILL)
    for n in c.nodes:
        n.start()
    wait_ready(c)
    for n in c.nodes:
        assert get_value(n.client_url, "k2") == "v2\n"
        assert get_value(n.client_url, "after-leader-kill") == "1\n"
        assert get_value(n.client_url, "quorum-back") == "1\n"


def test_sigterm_on_leader_hands_over_leadership(cluster_factory):
    c = cluster_factory(3)
    old = leader_of(c)
    old.kill(signal.SIGTERM)
    assert "leadership transfer" in old.log()
    rest = [n for n in c.nodes if n is not old]
    put_eventually(rest[0].client_url, "after-sigterm", "1")
    assert "elected leader" in rest[0].log()


def test_lagging_member_catches_up_through_snapshot(cluster_factory):
    c = cluster_factory(3, ["--snapshot-count", "20"])
    lagging = [n for n in c.nodes if n is not leader_of(c)][0]
    lagging.kill(signal.SIGKILL)
    live = ",".join(n.client_url for n in c.nodes if n is not lagging)
    for i in range(60):
        assert etcdctl(live, "put", f"s{i}", str(i)).returncode == 0
    # Keep writing until the leader's store is well ahead of its last compaction point, so the
    # lagging member installs a store that is ahead of its new log by more than the snapshot
    # count (it must still compact only what Raft applied).
    leader = leader_of(c)
    for i in range(40):
        compacted = [int(x) for x in re.findall(r"saved snapshot at index (\d+)", leader.log())]
        status = json.loads(etcdctl(leader.client_url, "endpoint", "status", "-w", "json").stdout)
        if compacted and status[0]["Status"]["raftAppliedIndex"] - compacted[-1] >= 22:
            break
        assert etcdctl(live, "put", f"s{60 + i}", "x").returncode == 0
    lagging.start()
    wait_until(lambda: etcdctl(lagging.client_url, "get", "s59", "--print-value-only",
                               "--consistency=s").stdout == "59\n", 30, 0.3,
               "the restarted member to catch up")
    assert get_value(lagging.client_url, "s0", "--consistency=s") == "0\n"
    # it keeps working past its own next log compaction (its store arrived ahead of its log)
    for i in range(45):
        assert etcdctl(lagging.client_url, "put", f"t{i}", str(i)).returncode == 0
    assert lagging.alive and get_value(lagging.client_url, "t44") == "44\n"
    leader_log = "".join(n.log() for n in c.nodes if n is not lagging)
    assert "sent database snapshot" in leader_log
