"""Membership through etcdctl: add a member that joins, remove it (it stops), learners,
leadership transfer."""
import json

import pytest

from harness import etcdctl, joining_node, wait_until

pytestmark = pytest.mark.etcdctl


def members(endpoints: str) -> list[dict]:
    p = etcdctl(endpoints, "member", "list", "-w", "json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["members"]


def test_add_join_remove(cluster_factory, tmp_path):
    c = cluster_factory(3)
    etcdctl(c.endpoints, "put", "before-join", "1")
    new = joining_node(c, tmp_path, "n3")
    p = etcdctl(c.endpoints, "member", "add", "n3", "--peer-urls=" + new.peer_url)
    assert p.returncode == 0 and "added to cluster" in p.stdout, p.stderr
    c.nodes.append(new)  # killed with the cluster
    new.start()
    wait_until(lambda: etcdctl(new.client_url, "get", "before-join", "--print-value-only")
               .stdout == "1\n", 30, 0.3, "the new member to serve")
    listed = {m["name"]: m for m in members(c.endpoints)}
    assert set(listed) == {"n0", "n1", "n2", "n3"}
    assert listed["n3"]["clientURLs"] == [new.client_url]

    member_id = "%x" % listed["n3"]["ID"]
    p = etcdctl(c.nodes[0].client_url, "member", "remove", member_id)
    assert p.returncode == 0, p.stderr
    wait_until(lambda: not new.alive, 20, 0.2, "the removed member to stop")
    assert "permanently removed" in new.log()
    assert len(members(c.nodes[0].client_url)) == 3
    assert etcdctl(c.nodes[0].client_url, "put", "after-remove", "1").returncode == 0


def test_learner_cannot_be_promoted_before_it_catches_up(cluster_factory, tmp_path):
    c = cluster_factory(3)
    p = etcdctl(c.endpoints, "member", "add", "l", "--learner", "--peer-urls=http://127.0.0.1:9")
    assert p.returncode == 0, p.stderr
    learner = [m for m in members(c.endpoints) if m.get("isLearner")][0]
    p = etcdctl(c.endpoints, "member", "promote", "%x" % learner["ID"])
    assert p.returncode != 0 and "in sync with leader" in p.stderr


def test_move_leader(cluster_factory):
    c = cluster_factory(3)
    status = json.loads(etcdctl(c.endpoints, "endpoint", "status", "-w", "json").stdout)
    leader = status[0]["Status"]["leader"]
    leader_url = [s["Endpoint"] for s in status if s["Status"]["header"]["member_id"] == leader][0]
    target = [s["Status"]["header"]["member_id"] for s in status
              if s["Status"]["header"]["member_id"] != leader][0]
    p = etcdctl(leader_url, "move-leader", "%x" % target)
    assert p.returncode == 0 and "Leadership transferred" in p.stdout, p.stderr
