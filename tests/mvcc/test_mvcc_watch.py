"""Watch hub: matching, filters, prev_kv, history replay, compaction, progress, and slow watchers
that must neither lose nor duplicate events."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardkv.mvcc.kv import (
    CompactionRequest,
    DeleteRangeRequest,
    EventType,
    FilterType,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    RequestOp,
    TxnRequest,
    WatchCreateRequest,
)
from shardkv.mvcc.store import Store
from shardkv.mvcc.watch import WatchHub


class Cluster:
    """A store plus hub, applying requests the way the node will: apply, then notify."""

    def __init__(self, path, **hub_kw) -> None:
        self.store = Store(path)
        self.hub = WatchHub(self.store, **hub_kw)
        self.all_events = []

    def apply(self, *requests) -> list:
        index = self.store.consistent_index
        result = self.store.apply([(index + i + 1, r) for i, r in enumerate(requests)])
        self.all_events.extend(result.events)
        self.hub.notify(result.events)
        return result.results

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def c(tmp_path):
    cluster = Cluster(tmp_path / "db")
    yield cluster
    cluster.close()


def put(key: bytes, value: bytes = b"v", **kw) -> PutRequest:
    return PutRequest(key=key, value=value, **kw)


def events_of(responses) -> list[tuple[int, bytes, int]]:
    return [(e.type, e.kv.key, e.kv.mod_revision) for r in responses for e in r.events]


def test_created_then_events_for_the_watched_key_only(c):
    w = c.hub.watch(WatchCreateRequest(key=b"a"))
    (created,) = w.take()
    assert created.created and created.watch_id == w.id and created.header.revision == 1
    c.apply(put(b"a"), put(b"b"), DeleteRangeRequest(key=b"a"))
    (resp,) = w.take()
    assert events_of([resp]) == [(EventType.PUT, b"a", 2), (EventType.DELETE, b"a", 4)]
    assert resp.header.revision == 4


def test_prefix_from_key_and_filters(c):
    prefix = c.hub.watch(WatchCreateRequest(key=b"p/", range_end=b"p0"))
    from_key = c.hub.watch(WatchCreateRequest(key=b"m", range_end=b"\x00",
                                             filters=[FilterType.NOPUT]))
    no_delete = c.hub.watch(WatchCreateRequest(key=b"\x00", range_end=b"\x00",
                                              filters=[FilterType.NODELETE]))
    c.apply(put(b"p/1"), put(b"a"), put(b"z"), DeleteRangeRequest(key=b"p/1"), DeleteRangeRequest(key=b"a"))
    assert [k for _, k, _ in events_of(prefix.take())] == [b"p/1", b"p/1"]
    assert events_of(from_key.take()) == [(EventType.DELETE, b"p/1", 5)]
    assert [t for t, _, _ in events_of(no_delete.take())] == [EventType.PUT] * 3


def test_prev_kv_is_the_value_before_the_event(c):
    c.apply(put(b"k", b"old"))
    w = c.hub.watch(WatchCreateRequest(key=b"k", prev_kv=True))
    c.apply(put(b"k", b"new"), DeleteRangeRequest(key=b"k"))
    events = [e for r in w.take() for e in r.events]
    assert [(e.kv.value, e.prev_kv.value) for e in events] == [(b"new", b"old"), (b"", b"new")]


def test_replay_history_from_start_revision(c):
    c.apply(put(b"a", b"1"), put(b"a", b"2"), put(b"b"), put(b"a", b"3"))
    w = c.hub.watch(WatchCreateRequest(key=b"a", start_revision=3))
    assert not c.hub.is_synced(w.id)
    c.hub.sync_unsynced()
    assert c.hub.is_synced(w.id)
    c.apply(put(b"a", b"4"))
    assert [(k, rev) for _, k, rev in events_of(w.take())] == [(b"a", 3), (b"a", 5), (b"a", 6)]


def test_future_start_revision_waits_for_it(c):
    w = c.hub.watch(WatchCreateRequest(key=b"a", start_revision=4))
    c.apply(put(b"a"), put(b"a"), put(b"a"))
    assert [rev for _, _, rev in events_of(w.take())] == [4]


def test_compacted_start_revision_cancels_with_compact_revision(c):
    c.apply(put(b"a"), put(b"a"), put(b"a"), CompactionRequest(revision=3))
    w = c.hub.watch(WatchCreateRequest(key=b"a", start_revision=2))
    c.hub.sync_unsynced()
    created, cancelled = w.take()
    assert created.created
    assert (cancelled.canceled, cancelled.compact_revision) == (True, 3)
    assert not c.hub.is_synced(w.id)


def test_one_revision_arrives_in_one_response(c):
    c.apply(LeaseGrantRequest(ID=1, TTL=60), put(b"x", lease=1), put(b"y", lease=1))
    w = c.hub.watch(WatchCreateRequest(key=b"\x00", range_end=b"\x00"))
    w.take()
    txn = TxnRequest(success=[RequestOp(request_put=put(b"t1")), RequestOp(request_put=put(b"t2"))])
    c.apply(txn)
    c.apply(LeaseRevokeRequest(ID=1))
    txn_resp, revoke_resp = w.take()
    assert {e.kv.mod_revision for e in txn_resp.events} == {4}  # grants take no revision
    assert len(txn_resp.events) == 2
    assert [(e.type, e.kv.key) for e in revoke_resp.events] == [
        (EventType.DELETE, b"x"), (EventType.DELETE, b"y")]


def test_progress_notifications_go_to_synced_watchers(c):
    wants = c.hub.watch(WatchCreateRequest(key=b"a", progress_notify=True))
    quiet = c.hub.watch(WatchCreateRequest(key=b"a"))
    behind = c.hub.watch(WatchCreateRequest(key=b"a", start_revision=1, progress_notify=True))
    for w in (wants, quiet, behind):
        w.take()
    c.apply(put(b"b"))
    c.hub.progress()
    (resp,) = wants.take()
    assert (resp.events, resp.header.revision) == ([], 2)
    assert quiet.take() == [] and behind.take() == []
    c.hub.progress(requested_only=False)
    assert len(quiet.take()) == 1 and behind.take() == []


def test_cancel_sends_a_final_response(c):
    w = c.hub.watch(WatchCreateRequest(key=b"a"))
    c.hub.cancel(w.id)
    c.apply(put(b"a"))
    assert [r.canceled for r in w.take()] == [False, True]


def test_slow_watcher_catches_up_without_loss_or_duplicates(tmp_path):
    c = Cluster(tmp_path / "db", buffer_limit=3, revs_per_sync=4)
    ready = []
    slow = c.hub.watch(WatchCreateRequest(key=b"\x00", range_end=b"\x00"), on_ready=lambda: ready.append(1))
    fast = c.hub.watch(WatchCreateRequest(key=b"\x00", range_end=b"\x00"))
    got_slow, got_fast = slow.take(), fast.take()
    for i in range(40):
        c.apply(*[put(b"k%d" % ((i * 3 + j) % 7)) for j in range(3)])
        got_fast += fast.take()
    assert not c.hub.is_synced(slow.id)
    while not c.hub.is_synced(slow.id):
        got_slow += slow.take(2)
        c.hub.sync_unsynced()
    got_slow += slow.take()
    expected = [(e.type, e.kv.key, e.kv.mod_revision) for e in c.all_events]
    assert events_of(got_slow) == expected
    assert events_of(got_fast) == expected
    for resp in got_slow:  # no revision split across responses
        assert all(rev not in {e.kv.mod_revision for r in got_slow if r is not resp for e in r.events}
                   for rev in {e.kv.mod_revision for e in resp.events})
    assert ready
    c.close()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_many_watchers_see_exactly_their_events(tmp_path_factory, seed):
    rng = random.Random(seed)
    c = Cluster(tmp_path_factory.mktemp("watch"), buffer_limit=rng.randint(1, 4),
                revs_per_sync=rng.randint(1, 5))
    keys = [b"a", b"ab", b"b", b"c"]
    watchers, received = [], {}
    for step in range(60):
        roll = rng.random()
        if roll < 0.15:
            key, end = rng.choice([(b"a", b""), (b"a", b"b"), (b"\x00", b"\x00"), (b"b", b"\x00")])
            start = rng.choice([0, rng.randint(1, c.store.current_revision + 2)])
            w = c.hub.watch(WatchCreateRequest(key=key, range_end=end, start_revision=start))
            first_rev = start if start > 0 else c.store.current_revision + 1
            watchers.append((w, first_rev))
            received[w.id] = []
        elif roll < 0.7:
            c.apply(*[rng.choice([put(rng.choice(keys)), DeleteRangeRequest(key=rng.choice(keys))])
                      for _ in range(rng.randint(1, 3))])
        elif roll < 0.8:
            c.hub.sync_unsynced()
        elif roll < 0.85:
            _compact_somewhere(c, rng)
        for w, _ in watchers:
            if rng.random() < 0.5:
                received[w.id] += w.take(rng.randint(1, 3))
    for _ in range(200):
        for w, _ in watchers:
            received[w.id] += w.take()
        c.hub.sync_unsynced()
    for w, first_rev in watchers:
        received[w.id] += w.take()
        want = [(e.type, e.kv.key, e.kv.mod_revision) for e in c.all_events
                if e.kv.mod_revision >= first_rev and w.matches(e)]
        got = events_of(received[w.id])
        if received[w.id][-1].canceled:  # fell behind a compaction: a gap-free prefix, then out
            assert received[w.id][-1].compact_revision > 0
            assert got == want[: len(got)]
            assert not c.hub.is_synced(w.id)
        else:
            assert got == want
            assert c.hub.is_synced(w.id)
    c.close()


def _compact_somewhere(c: Cluster, rng: random.Random) -> None:
    """Compact at a revision without deletes: etcd drops tombstones at the compaction revision
    itself, which would make a watcher starting exactly there legitimately miss them."""
    deleted_at = {e.kv.mod_revision for e in c.all_events if e.type == EventType.DELETE}
    options = [r for r in range(c.store.compact_revision + 1, c.store.current_revision + 1)
               if r not in deleted_at]
    if options:
        c.apply(CompactionRequest(revision=rng.choice(options)))


def test_compaction_cancels_only_watchers_left_behind(tmp_path):
    c = Cluster(tmp_path / "db", buffer_limit=2)
    behind = c.hub.watch(WatchCreateRequest(key=b"\x00", range_end=b"\x00"))
    ahead = c.hub.watch(WatchCreateRequest(key=b"\x00", range_end=b"\x00"))
    for i in range(6):
        c.apply(put(b"k%d" % i))
        ahead.take()
    assert not c.hub.is_synced(behind.id)  # buffer full since revision 3
    got = behind.take()
    c.apply(CompactionRequest(revision=5))
    c.hub.sync_unsynced()
    cancel = behind.take()[-1]
    assert (cancel.canceled, cancel.compact_revision) == (True, 5)
    assert events_of(got) == [(EventType.PUT, b"k0", 2)]  # a gap-free prefix, then the cancel
    c.apply(put(b"after"))
    assert events_of(ahead.take()) == [(EventType.PUT, b"after", 8)]
    c.close()


def test_creating_put_has_no_prev_kv_even_after_a_same_revision_delete(c):
    c.apply(put(b"b", b"old"))
    w = c.hub.watch(WatchCreateRequest(key=b"b", prev_kv=True))
    # etcd's duplicate check misses from-key deletes, so one txn can delete and recreate b
    txn = TxnRequest(success=[RequestOp(request_delete_range=DeleteRangeRequest(key=b"a", range_end=b"\x00")),
                              RequestOp(request_put=put(b"b", b"new"))])
    c.apply(txn)
    deleted, created = [e for r in w.take() for e in r.events]
    assert (deleted.type, deleted.prev_kv.value) == (EventType.DELETE, b"old")
    assert (created.type, created.kv.version, created.prev_kv) == (EventType.PUT, 1, None)
