"""Watch streams with bounded queues: slow streams' watchers become victims (unsynced) and catch
up from storage in bounded steps, exactly once, in order, without gaps; compaction cancels
those left behind; watchers selecting the same events share them."""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from shardkv.mvcc.kv import (
    CompactionRequest,
    DeleteRangeRequest,
    EventType,
    PutRequest,
    RequestOp,
    TxnRequest,
    WatchCreateRequest,
)
from shardkv.mvcc.store import Store
from shardkv.mvcc.watch import MAX_WATCHERS_PER_SYNC, WatchHub

BIG = b"v" * 10_000


class Cluster:
    def __init__(self, path, **hub_kw) -> None:
        self.store = Store(path)
        self.hub = WatchHub(self.store, **hub_kw)
        self.all_events = []

    def apply(self, *requests) -> None:
        index = self.store.consistent_index
        result = self.store.apply([(index + i + 1, r) for i, r in enumerate(requests)])
        self.all_events.extend(result.events)
        self.hub.notify(result.events)


def revs(responses) -> list[tuple[int, bytes, int]]:
    return [(e.type, e.kv.key, e.kv.mod_revision) for r in responses for e in r.events]


def by_watcher(responses) -> dict[int, list]:
    out: dict[int, list] = {}
    for r in responses:
        out.setdefault(r.watch_id, []).append(r)
    return out


def test_a_stream_that_is_not_read_holds_a_bounded_queue(tmp_path):
    c = Cluster(tmp_path / "db", stream_max_bytes=100_000, stream_max_responses=50,
                watcher_max_bytes=30_000, buffer_limit=4)
    stream = c.hub.new_stream()
    watchers = [c.hub.watch(WatchCreateRequest(key=b"k"), stream=stream) for _ in range(200)]
    for _ in range(20):
        c.apply(PutRequest(key=b"k", value=BIG))
        # created responses (one per watcher) are not bounded; event responses are
        assert len(stream) - stream.control <= 50
        assert stream.bytes - 64 * stream.control <= 100_000
        assert all(w.queued - 1 <= 4 for w in watchers)
    assert stream.behind > 150  # most watchers fell back to catching up from storage
    assert not c.hub.sync_unsynced()  # nothing can progress while the stream is full


def test_slow_stream_catches_up_exactly_once_in_order(tmp_path):
    c = Cluster(tmp_path / "db", stream_max_bytes=50_000, stream_max_responses=30,
                sync_read_bytes=40_000, revs_per_sync=3)
    ready = []
    stream = c.hub.new_stream(on_ready=lambda: ready.append(1))
    wants = []
    c.hub.on_sync_wanted = lambda: wants.append(1)
    watchers = [c.hub.watch(WatchCreateRequest(key=b"k", range_end=b"l"), stream=stream)
                for _ in range(40)]
    single = [c.hub.watch(WatchCreateRequest(key=b"k1"), stream=stream) for _ in range(10)]
    for i in range(30):
        c.apply(PutRequest(key=b"k%d" % (i % 3), value=BIG), DeleteRangeRequest(key=b"k0"))
    got = []
    for _ in range(10_000):
        got += stream.take()
        more = c.hub.sync_unsynced()
        if not more and stream.behind == 0 and not len(stream):
            break
    assert ready and wants
    for w in watchers + single:
        mine = revs(by_watcher(got)[w.id])
        assert mine == [(e.type, e.kv.key, e.kv.mod_revision) for e in c.all_events
                        if w.matches(e)]
        assert c.hub.is_synced(w.id)


def test_victim_left_behind_by_compaction_is_cancelled_after_a_gap_free_prefix(tmp_path):
    c = Cluster(tmp_path / "db", stream_max_responses=2, buffer_limit=2)
    slow = c.hub.watch(WatchCreateRequest(key=b"k"))
    for _ in range(5):
        c.apply(PutRequest(key=b"k", value=b"x"))
    assert not c.hub.is_synced(slow.id)
    got = slow.take()
    c.apply(CompactionRequest(revision=5))
    c.hub.sync_unsynced()
    got += slow.take()
    assert [r.created for r in got[:1]] == [True]
    assert (got[-1].canceled, got[-1].compact_revision) == (True, 5)
    assert revs(got) == [(EventType.PUT, b"k", 2)]  # a gap-free prefix, then the cancel
    assert not c.hub.has_watchers


def test_watchers_selecting_the_same_events_share_them(tmp_path):
    c = Cluster(tmp_path / "db")
    c.apply(PutRequest(key=b"k", value=BIG))
    stream = c.hub.new_stream()
    live = [c.hub.watch(WatchCreateRequest(key=b"k"), stream=stream) for _ in range(3)]
    past = [c.hub.watch(WatchCreateRequest(key=b"k", start_revision=1), stream=stream)
            for _ in range(3)]
    c.hub.sync_unsynced()  # the replay: one read shared by the three
    c.apply(PutRequest(key=b"k", value=BIG))  # the notification, shared by all six
    responses = [r for r in stream.take() if r.events]
    replay = [r.events for r in responses if r.watch_id in {w.id for w in past}
              and r.events[0].kv.mod_revision == 2]
    assert len(replay) == 3 and replay[0] is replay[1] is replay[2]
    notified = [r.events for r in responses if r.events[0].kv.mod_revision == 3]
    assert len(notified) == 6 and all(e is notified[0] for e in notified)
    assert live


def test_a_catch_up_step_is_bounded(tmp_path):
    c = Cluster(tmp_path / "db", sync_read_bytes=50_000)
    for _ in range(20):
        c.apply(PutRequest(key=b"k", value=BIG))
    reads = []
    original = c.store.events_page

    def spy(*args):
        page = original(*args)
        reads.append(page)
        return page

    c.store.events_page = spy
    stream = c.hub.new_stream()
    n = MAX_WATCHERS_PER_SYNC + 100
    for _ in range(n):
        c.hub.watch(WatchCreateRequest(key=b"k", start_revision=1), stream=stream)
    stream.take()  # the created responses
    c.hub.sync_unsynced()
    (page,) = reads
    assert len(page.events) <= 6  # ~50 KB of 10 KB values: whole revisions past the bound
    served = {r.watch_id for r in stream.take()}
    assert 0 < len(served) <= MAX_WATCHERS_PER_SYNC


def test_events_page_reads_whole_revisions_within_bounds(tmp_path):
    c = Cluster(tmp_path / "db")
    txn = TxnRequest(success=[RequestOp(request_put=PutRequest(key=b"t%d" % i, value=BIG))
                              for i in range(5)])
    c.apply(PutRequest(key=b"a", value=b"1"), txn, PutRequest(key=b"b", value=b"2"))
    page = c.store.events_page(2, 4, max_revs=100, max_bytes=1)
    assert (page.end, [e.kv.mod_revision for e in page.events]) == (2, [2])
    page = c.store.events_page(3, 4, max_revs=100, max_bytes=1)  # one big revision, whole
    assert (page.end, len(page.events)) == (3, 5)
    page = c.store.events_page(2, 4, max_revs=2, max_bytes=10**9)
    assert (page.end, [e.kv.mod_revision for e in page.events]) == (3, [2] + [3] * 5)
    page = c.store.events_page(2, 4, max_revs=100, max_bytes=10**9)
    assert (page.end, len(page.events), page.compact_revision) == (4, 7, -1)
    assert c.store.events_page(9, 4, 100, 100).events == []


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_shared_bounded_streams_deliver_exactly_once(tmp_path_factory, seed):
    rng = random.Random(seed)
    c = Cluster(tmp_path_factory.mktemp("streams"), buffer_limit=rng.randint(1, 4),
                revs_per_sync=rng.randint(1, 5), stream_max_responses=rng.randint(1, 8),
                stream_max_bytes=rng.choice([100, 5_000, 50_000]),
                watcher_max_bytes=rng.choice([100, 20_000]), response_bytes=rng.choice([1, 10_000]),
                sync_read_bytes=rng.choice([1, 30_000]))
    streams = [c.hub.new_stream() for _ in range(3)]
    keys = [b"a", b"ab", b"b", b"c"]
    watchers, received = [], {}
    for _ in range(60):
        roll = rng.random()
        if roll < 0.15:
            key, end = rng.choice([(b"a", b""), (b"a", b"b"), (b"\x00", b"\x00"), (b"b", b"\x00")])
            start = rng.choice([0, rng.randint(1, c.store.current_revision + 2)])
            w = c.hub.watch(WatchCreateRequest(key=key, range_end=end, start_revision=start,
                                               prev_kv=rng.random() < 0.3),
                            stream=rng.choice(streams))
            watchers.append((w, start if start > 0 else c.store.current_revision + 1))
            received[w.id] = []
        elif roll < 0.7:
            value = rng.choice([b"v", b"w" * 4_000])
            c.apply(*[rng.choice([PutRequest(key=rng.choice(keys), value=value),
                                  DeleteRangeRequest(key=rng.choice(keys))])
                      for _ in range(rng.randint(1, 3))])
        elif roll < 0.8:
            c.hub.sync_unsynced()
        elif roll < 0.85:
            _compact_somewhere(c, rng)
        for s in streams:
            if rng.random() < 0.4:
                for r in s.take(rng.randint(1, 3)):
                    received[r.watch_id].append(r)
    for _ in range(500):
        for s in streams:
            for r in s.take():
                received[r.watch_id].append(r)
        c.hub.sync_unsynced()
    for w, first_rev in watchers:
        want = [(e.type, e.kv.key, e.kv.mod_revision) for e in c.all_events
                if e.kv.mod_revision >= first_rev and w.matches(e)]
        got = revs(received[w.id])
        if received[w.id][-1].canceled:
            assert received[w.id][-1].compact_revision > 0
            assert got == want[: len(got)]
        else:
            assert got == want
            assert c.hub.is_synced(w.id)
        for r in received[w.id]:  # a revision is never split across responses
            assert all(e.kv.mod_revision not in {x.kv.mod_revision for o in received[w.id]
                                                 if o is not r for x in o.events}
                       for e in r.events)


def _compact_somewhere(c: Cluster, rng: random.Random) -> None:
    """At a revision without deletes (etcd drops tombstones at the compaction revision itself)."""
    deleted_at = {e.kv.mod_revision for e in c.all_events if e.type == EventType.DELETE}
    options = [r for r in range(c.store.compact_revision + 1, c.store.current_revision + 1)
               if r not in deleted_at]
    if options:
        c.apply(CompactionRequest(revision=rng.choice(options)))


def test_closing_a_stream_drops_its_watchers(tmp_path):
    c = Cluster(tmp_path / "db", stream_max_responses=1)
    stream = c.hub.new_stream()
    for _ in range(3):
        c.hub.watch(WatchCreateRequest(key=b"k"), stream=stream)
    c.apply(PutRequest(key=b"k"))
    c.hub.close_stream(stream)
    assert not c.hub.has_watchers and len(stream) == 0 and stream.behind == 0
