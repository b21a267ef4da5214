"""Receiving a Raft snapshot's data over the peer transport (Member._on_snapshot and
_receive_snapshot): one directory per snapshot, and only verified snapshots reach Raft."""
import asyncio
import hashlib

from harness import free_ports

from shardkv import rejected
from shardkv.mvcc import snapshot
from shardkv.mvcc.kv import PutRequest
from shardkv.mvcc.store import Store
from shardkv.node import membership
from shardkv.node.member import Member, MemberConfig
from shardkv.node.membership import MemberRecord
from shardkv.node.transport import KIND_MESSAGES, KIND_SNAPSHOT
from shardkv.raft import Message, MessageType, Snapshot
from shardkv.raft.types import ConfState, SnapshotMeta, encode

LEADER = 2


def _member(tmp_path) -> Member:
    url = "http://127.0.0.1:%d" % free_ports(1)[0]
    m = Member(MemberConfig(name="n0", data_dir=str(tmp_path / "m"), advertise_client_urls=[url],
                            listen_peer_urls=[url], initial_advertise_peer_urls=[url],
                            initial_cluster={"n0": [url]}))
    m.open()
    m.registry.members[LEADER] = MemberRecord(id=LEADER)  # a peer that may send snapshots
    return m


def _close(m: Member) -> None:
    m.transport.close()
    m.store.close()
    m.raftlog.close()


def _image(tmp_path, index: int, value: bytes) -> list[bytes]:
    """A store's snapshot stream (chunks + sha256) whose applied index is ``index``."""
    with Store(tmp_path / f"src-{value.decode()}") as store:
        store.apply([(index, PutRequest(key=b"k", value=value))])
        return list(snapshot.StoreSnapshot(store).chunks())


def _frames(m: Member, index: int, stream: list[bytes], registry: bytes | None = None):
    snap = Snapshot(SnapshotMeta(index=index, term=5, conf_state=ConfState((m.id, LEADER))))
    msg = Message(MessageType.SNAPSHOT, m.id, LEADER, term=5, snapshot=snap)
    if registry is None:
        registry = membership.encode(m.registry)
    return [encode(msg), registry, *stream]


async def _deliver(m: Member, kind: bytes, frames: list[bytes]) -> None:
    m._on_frames(m.cluster_id, LEADER, kind, frames)
    while m._receiving_snapshot or len(m._tasks):
        await asyncio.sleep(0.01)


def test_a_resent_snapshot_never_overwrites_the_one_being_installed(tmp_path):
    """A leader may send the same snapshot twice (a heartbeat answer re-probes a follower whose
    log it compacted); the second copy arriving while the first is installed must not rewrite
    the file the install reads (chaos seed 1310: a checksum mismatch stopped the member)."""
    async def main() -> None:
        m = _member(tmp_path)
        try:
            await _deliver(m, KIND_SNAPSHOT, _frames(m, 1000, _image(tmp_path, 1000, b"first")))
            installing, _, _ = m._incoming_snapshot
            first = (installing / "data.mdb").read_bytes()
            m._incoming_snapshot = None  # what _install_snapshot does before reading the file
            await _deliver(m, KIND_SNAPSHOT, _frames(m, 1000, _image(tmp_path, 1000, b"second")))
            assert (installing / "data.mdb").read_bytes() == first
            assert m._incoming_snapshot[0] != installing
            # a snapshot Raft will only answer (at or below the commit index) needs no file
            before = sorted(m.dir.glob("snapshot.incoming.*"))
            await _deliver(m, KIND_SNAPSHOT,
                           _frames(m, m.node.raft.log.committed, [b"x" * 32]))
            assert sorted(m.dir.glob("snapshot.incoming.*")) == before
            assert m._incoming[-1].snapshot.meta.index == m.node.raft.log.committed
        finally:
            _close(m)
    asyncio.run(asyncio.wait_for(main(), 20))


def test_damaged_or_forged_snapshots_are_refused_and_counted(tmp_path):
    """None of these reaches Raft (so none can stop the member at install), each is counted,
    and no received directory is left behind."""
    garbage = b"not an lmdb file" * 4096

    async def main() -> None:
        m = _member(tmp_path)
        try:
            good = _image(tmp_path, 1000, b"v")
            cases = [
                ("bad_registry", KIND_SNAPSHOT, _frames(m, 1000, good, b"{not json")),
                ("bad_registry", KIND_SNAPSHOT, _frames(m, 1000, good, b'{"cluster_id": 7}')),
                ("bad_snapshot_data", KIND_SNAPSHOT,  # a chunk damaged on the way
                 _frames(m, 1000, [good[0][:-1] + b"?", *good[1:]])),
                ("bad_snapshot_data", KIND_SNAPSHOT, _frames(m, 1000, [b"short"])),
                ("bad_snapshot_data", KIND_SNAPSHOT,  # garbage with its correct sha256
                 _frames(m, 1000, [garbage, hashlib.sha256(garbage).digest()])),
                ("bad_snapshot_data", KIND_SNAPSHOT,  # an image older than the snapshot
                 _frames(m, 2000, good)),
                ("malformed", KIND_SNAPSHOT, [b"\xc1", membership.encode(m.registry), b"x"]),
                ("bad_frames", KIND_SNAPSHOT, _frames(m, 1000, [])[:2]),
                ("snapshot_without_data", KIND_MESSAGES, [encode([Message(
                    MessageType.SNAPSHOT, m.id, LEADER, term=5, snapshot=Snapshot(
                        SnapshotMeta(1000, 5, ConfState((m.id, LEADER)))))])]),
            ]
            for reason, kind, frames in cases:
                before = rejected.value("peer", reason)
                await _deliver(m, kind, frames)
                assert rejected.value("peer", reason) == before + 1, reason
                assert m._incoming == [] and m._incoming_snapshot is None, reason
                assert list(m.dir.glob("snapshot.incoming.*")) == [], reason
            before = rejected.value("peer", "snapshot_from_non_member")
            m._on_frames(m.cluster_id, 99, KIND_SNAPSHOT, _frames(m, 1000, good))
            assert rejected.value("peer", "snapshot_from_non_member") == before + 1
            assert not m.stopped.is_set()
        finally:
            _close(m)
    asyncio.run(asyncio.wait_for(main(), 30))
