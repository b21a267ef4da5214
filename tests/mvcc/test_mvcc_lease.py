"""Leases: applied grant/revoke/attach semantics in the store, and leader-local timing driven by
an injected clock (no real time passes in these tests)."""
from __future__ import annotations

import pytest

from shardkv.mvcc import errors as E
from shardkv.mvcc.kv import (
    DeleteRangeRequest,
    EventType,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    LeaseTimeToLiveRequest,
    PutRequest,
    RangeRequest,
)
from shardkv.mvcc.lease import MAX_LEASE_TTL, Lessor, new_lease_id
from shardkv.mvcc.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Node:
    """A store fed consecutive Raft indexes, with a fake clock."""

    def __init__(self, path, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.store = Store(path, lessor=Lessor(clock=self.clock))

    def apply(self, *requests):
        index = self.store.consistent_index
        result = self.store.apply([(index + i + 1, r) for i, r in enumerate(requests)])
        return result.results if len(requests) > 1 else result.results[0]


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path / "db")
    yield n
    n.store.close()


def test_grant_rules_follow_etcd(node):
    resp = node.apply(LeaseGrantRequest(ID=5, TTL=1))
    assert (resp.ID, resp.TTL) == (5, 2)  # raised to the minimum TTL
    assert isinstance(node.apply(LeaseGrantRequest(ID=5, TTL=10)), E.LeaseExistsError)
    assert isinstance(node.apply(LeaseGrantRequest(ID=0, TTL=10)), E.LeaseNotFoundError)
    too_long = node.apply(LeaseGrantRequest(ID=6, TTL=MAX_LEASE_TTL + 1))
    assert str(too_long) == "etcdserver: too large lease TTL"
    assert str(node.apply(LeaseGrantRequest(ID=5, TTL=3))) == "etcdserver: lease already exists"
    assert [s.ID for s in node.store.lease_leases().leases] == [5]
    assert new_lease_id() > 0


def test_revoke_deletes_attached_keys_in_one_revision(node):
    node.apply(LeaseGrantRequest(ID=7, TTL=30))
    node.apply(PutRequest(key=b"b", value=b"1", lease=7), PutRequest(key=b"a", value=b"2", lease=7),
               PutRequest(key=b"c", value=b"3", lease=7), PutRequest(key=b"free", value=b"4"))
    node.apply(PutRequest(key=b"c", value=b"3'"))  # re-put without the lease detaches it
    ttl = node.store.lease_time_to_live(LeaseTimeToLiveRequest(ID=7, keys=True))
    assert (ttl.keys, ttl.grantedTTL) == ([b"a", b"b"], 30)
    before = node.store.current_revision
    result = node.store.apply([(node.store.consistent_index + 1, LeaseRevokeRequest(ID=7))])
    assert result.results[0].header.revision == before + 1
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in result.events] == [
        (EventType.DELETE, b"a", before + 1), (EventType.DELETE, b"b", before + 1)]
    keys = [kv.key for kv in node.store.range(RangeRequest(key=b"\x00", range_end=b"\x00")).kvs]
    assert keys == [b"c", b"free"]
    assert isinstance(node.apply(LeaseRevokeRequest(ID=7)), E.LeaseNotFoundError)
    gone = node.store.lease_time_to_live(LeaseTimeToLiveRequest(ID=7, keys=True))
    assert (gone.ID, gone.TTL, gone.grantedTTL, gone.keys) == (7, -1, 0, [])  # etcd: no error


def test_delete_detaches_key_from_lease(node):
    node.apply(LeaseGrantRequest(ID=1, TTL=30), PutRequest(key=b"k", value=b"v", lease=1))
    node.apply(DeleteRangeRequest(key=b"k"))
    assert node.store.lease_time_to_live(LeaseTimeToLiveRequest(ID=1, keys=True)).keys == []
    rev = node.store.current_revision
    assert node.apply(LeaseRevokeRequest(ID=1)).header.revision == rev  # nothing to delete


def test_leases_and_attachments_survive_restart(tmp_path):
    node = Node(tmp_path / "db")
    node.apply(LeaseGrantRequest(ID=9, TTL=40), PutRequest(key=b"k", value=b"v", lease=9))
    node.store.close()
    again = Node(tmp_path / "db")
    ttl = again.store.lease_time_to_live(LeaseTimeToLiveRequest(ID=9, keys=True))
    assert (ttl.grantedTTL, ttl.keys) == (40, [b"k"])
    assert again.store.range(RangeRequest(key=b"k")).kvs[0].lease == 9
    again.store.close()


def test_expiry_is_leader_local_and_driven_by_the_clock(node):
    clock, lessor = node.clock, node.store.lessor
    node.apply(LeaseGrantRequest(ID=1, TTL=10), LeaseGrantRequest(ID=2, TTL=20))
    assert lessor.expired(clock.now + 1000) == []  # followers never expire leases
    with pytest.raises(E.NotPrimaryError):
        node.store.lease_keep_alive(1)
    lessor.promote(extend=0)
    assert lessor.expired(clock.now + 9.9) == []
    assert lessor.expired(clock.now + 10) == [1]
    clock.now += 8
    assert node.store.lease_keep_alive(1).TTL == 10  # renewed: 10 s from now
    assert node.store.lease_time_to_live(LeaseTimeToLiveRequest(ID=1)).TTL == 10
    assert lessor.expired(clock.now + 10) == [1]
    assert lessor.expired(clock.now + 12) == [1, 2]
    clock.now += 15
    assert node.store.lease_keep_alive(1).TTL == 0  # expired: not renewed (etcd answers TTL 0)
    assert node.store.lease_keep_alive(99).TTL == 0
    node.apply(LeaseRevokeRequest(ID=1))  # the leader proposes the revoke through Raft
    assert lessor.expired() == [2]  # 1 is gone; 2 ran out too
    lessor.demote()
    assert lessor.expired(clock.now + 100) == []


def test_promote_extends_and_spreads_expiries():
    clock = Clock()
    lessor = Lessor(clock=clock, revoke_rate=4)  # aims for at most 3 expiries per second
    for lid in range(1, 11):
        lessor.granted(lid, 10)
    lessor.promote(extend=5)
    assert lessor.expired(clock.now + 14.9) == []  # TTL plus the election-time extension
    assert len(lessor.expired(clock.now + 15)) == 3
    expired_by = lambda t: len(lessor.expired(clock.now + t))
    for step in range(200):  # no one-second window holds more than 3 expiries
        t = 14 + step * 0.05
        assert expired_by(t + 1) - expired_by(t) <= 3
    assert expired_by(100) == 10


def test_defragment_keeps_lease_deadlines(node):
    node.apply(LeaseGrantRequest(ID=1, TTL=10))
    node.store.lessor.promote(extend=0)
    node.clock.now += 6
    node.store.defragment()
    assert node.store.lease_time_to_live(LeaseTimeToLiveRequest(ID=1)).TTL == 4
