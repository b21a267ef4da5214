"""Receiving a Raft snapshot's data over the peer transport (Member._receive_snapshot)."""
import asyncio

from harness import free_ports

from shardkv.node.member import Member, MemberConfig
from shardkv.raft import Message, MessageType, Snapshot
from shardkv.raft.types import SnapshotMeta, encode


def _member(tmp_path) -> Member:
    url = "http://127.0.0.1:%d" % free_ports(1)[0]
    return Member(MemberConfig(name="n0", data_dir=str(tmp_path), advertise_client_urls=[url],
                               listen_peer_urls=[url], initial_advertise_peer_urls=[url],
                               initial_cluster={"n0": [url]}))


def _frames(index: int, data: bytes) -> list[bytes]:
    snap = Snapshot(SnapshotMeta(index=index, term=5))
    msg = Message(MessageType.SNAPSHOT, 1, 2, term=5, snapshot=snap)
    return [encode(msg), b"registry", data[: len(data) // 2], data[len(data) // 2:]]


def test_a_resent_snapshot_never_overwrites_the_one_being_installed(tmp_path):
    """A leader may send the same snapshot twice (a heartbeat answer re-probes a follower whose
    log it compacted); the second copy arriving while the first is installed must not rewrite
    the file the install reads (chaos seed 1310: a checksum mismatch stopped the member)."""
    async def main() -> None:
        m = _member(tmp_path)
        m.open()
        try:
            await m._receive_snapshot(_frames(1000, b"first copy" * 1000))
            installing, _ = m._incoming_snapshot
            m._incoming_snapshot = None  # what _install_snapshot does before reading the file
            await m._receive_snapshot(_frames(1000, b"second copy" * 1000))
            assert installing.read_bytes() == b"first copy" * 1000
            # a snapshot Raft will only answer (at or below the commit index) needs no file
            before = sorted(m.dir.glob("snapshot.incoming.*"))
            await m._receive_snapshot(_frames(m.node.raft.log.committed, b"stale" * 1000))
            assert sorted(m.dir.glob("snapshot.incoming.*")) == before
            assert m._incoming[-1].snapshot.meta.index == m.node.raft.log.committed
        finally:
            m.transport.close()
            m.store.close()
            m.raftlog.close()
    asyncio.run(asyncio.wait_for(main(), 20))
