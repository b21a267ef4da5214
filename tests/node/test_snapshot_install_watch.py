"""A member that installs a Raft snapshot keeps its watchers: they catch up on the new
history (WatchHub.restored), as etcd's watchable store does on restore."""
from shardkv.mvcc import snapshot
from shardkv.mvcc.kv import PutRequest, WatchCreateRequest
from shardkv.mvcc.store import Store
from shardkv.mvcc.watch import WatchHub


def test_synced_watcher_sees_history_that_arrived_by_snapshot(tmp_path):
    with Store(tmp_path / "follower") as follower, Store(tmp_path / "leader") as leader:
        for i in range(5):
            leader.apply([(i + 1, PutRequest(key=b"k", value=b"%d" % i))])
        hub = WatchHub(follower)
        watcher = hub.watch(WatchCreateRequest(key=b"k"))
        previous = follower.current_revision
        received = tmp_path / "received"  # as the member does: receive, verify, swap in
        snapshot.receive(snapshot.StoreSnapshot(leader).chunks(), received, 1 << 30)
        follower.replace_with(received / "data.mdb")
        hub.restored(previous)
        hub.sync_unsynced()
        responses = watcher.take()
        assert responses[0].created
        assert [e.kv.value for r in responses[1:] for e in r.events] == [b"0", b"1", b"2", b"3",
                                                                           b"4"]
