"""The member: one Raft group driven from one asyncio loop.

Only the Raft loop task touches the RawNode. Everything else (gRPC handlers, the transport's
reader, timers) queues work (proposals, reads, received messages, feedback) and wakes it. Each
turn of the loop: step received messages, tick, hand all queued proposals to Raft as ONE
``propose_batch`` and all queued linearizable reads to ONE ``read_index``, then work off
Readys: persist (one LMDB txn + sync, in a thread so heartbeats keep flowing), send, apply the
committed entries to the store in one batch, answer waiting requests, advance.

Writes on a follower use Raft's own forwarding (MsgProp): the waiting future stays on the
follower keyed by the request id carried in the entry, and resolves when the follower applies
that entry. One path for leader and follower, no second RPC hop, and the client's answer comes
from the member it talks to, after that member applied the write (read-your-writes there).
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from shardkv import rejected
from shardkv.api import errors as api_errors
from shardkv.mvcc import etcd_import
from shardkv.mvcc import snapshot as mvcc_snapshot
from shardkv.mvcc.errors import ApplyFailedError
from shardkv.mvcc.kv import (
    AlarmRequest,
    CompactionRequest,
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    RangeRequest,
    ResponseHeader,
    TxnRequest,
)
from shardkv.mvcc.raftlog import RaftLog
from shardkv.mvcc.store import Store
from shardkv.mvcc.watch import WatchHub
from shardkv.node import compactor, membership, peerwire
from shardkv.node.membership import MemberRecord, Registry
from shardkv.node.transport import (
    KIND_MESSAGES,
    KIND_REMOVAL_QUERY,
    KIND_REMOVED,
    KIND_SNAPSHOT,
    PeerTransport,
    zmq_endpoint,
)
from shardkv.raft import (
    NONE,
    Config,
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    Message,
    MessageType,
    ProposalDropped,
    RawNode,
    Ready,
    Snapshot,
    SoftState,
    StateRole,
)
from shardkv.raft.types import decode_conf_change, decode_message, encode
from shardkv.trace import TRACING, tr

log = logging.getLogger("shardkv.member")

SNAPSHOT_CATCHUP_ENTRIES = 5000  # etcd keeps this many entries after a snapshot for slow peers
LEASE_CHECK_INTERVAL = 0.5
WATCH_SYNC_INTERVAL = 0.1
READ_RETRY_TICKS = 5  # heartbeats (100 ms by default) before an unanswered ReadIndex is resent
PROGRESS_NOTIFY_INTERVAL = 600.0  # etcd's default watch progress notify interval


class Proposal(msgspec.Struct, array_like=True):
    """A log entry's payload: the client request and the id its waiting future is keyed by."""

    rid: int
    kind: str
    body: bytes


class ConfContext(msgspec.Struct, array_like=True):
    """A conf change's context: the request id and the member record it adds."""

    rid: int
    member: MemberRecord | None = None


REQUEST_KINDS: dict[str, type] = {  # proposal kind -> request struct (intake.py too)
    "range": RangeRequest,
    "put": PutRequest,
    "delete_range": DeleteRangeRequest,
    "txn": TxnRequest,
    "compaction": CompactionRequest,
    "lease_grant": LeaseGrantRequest,
    "lease_revoke": LeaseRevokeRequest,
    "alarm": AlarmRequest,
    "member_attr": MemberRecord,
}
KIND_OF = {cls: name for name, cls in REQUEST_KINDS.items()}
DECODERS = {name: msgspec.msgpack.Decoder(cls) for name, cls in REQUEST_KINDS.items()}
_decode_proposal = msgspec.msgpack.Decoder(Proposal).decode
_decode_conf_context = msgspec.msgpack.Decoder(ConfContext).decode
# A Ready with at most this many new entries is saved on the loop thread rather than an executor
# thread, while saves stay fast: at low load the two thread hand-offs cost more than the write
# itself (one WAL write and fdatasync, ~0.1-0.3 ms here) and take CPU from the other members on
# a small host. Big batches and a slow disk go to the executor so the loop keeps serving.
INLINE_SAVE_MAX_ENTRIES = 4
INLINE_SAVE_MAX_SECONDS = 0.005
# A follower that nobody waits on (see _may_batch_applies for who counts) gathers the
# commits arriving within this long into one store transaction, one fdatasync: at low load every
# put otherwise costs each follower a transaction, a sync and two thread hand-offs of its own.
FOLLOWER_APPLY_BATCH_S = 0.005
# A leader skips lazy followers (nobody waits on them) in its commit broadcasts; the next append
# tells them. When none follows within this long, it tells them anyway, so a member's state is
# never much older than that while it has a leader (serializable reads stay fresh).
COMMIT_NOTICE_DELAY_S = 0.005
APPLY_BACKLOG_MAX = 10_000  # committed entries queued for the applier before Raft waits
# Received Raft messages waiting for the Raft loop; beyond this the transport stops reading
# (a slow disk write must not let peers fill memory). Well above one turn's legitimate input.
INCOMING_MAX = 8192
REMOVAL_QUERY_INTERVAL_S = 1.0  # per peer: "have you removed me?" asked, or answered, this often


@dataclass
class MemberConfig:
    name: str
    data_dir: str
    advertise_client_urls: list[str]
    listen_peer_urls: list[str]
    initial_advertise_peer_urls: list[str]
    initial_cluster: dict[str, list[str]]
    token: str = "etcd-cluster"
    state: str = "new"
    heartbeat_ms: int = 100
    election_ms: int = 1000
    snapshot_count: int = 100000
    quota_bytes: int = 2 * 1024**3
    max_request_bytes: int = 1536 * 1024
    max_txn_ops: int = 128
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: float = 0.0  # seconds (periodic) or revisions; 0 = off

    @property
    def request_timeout(self) -> float:
        """etcd's ReqTimeout: 5 s plus two election timeouts."""
        return 5.0 + 2 * self.election_ms / 1000


class StartupError(Exception):
    """The data directory or flags do not allow this member to start."""


def to_api_error(exc: BaseException) -> api_errors.EtcdError:
    """An mvcc error (or anything else) as the etcd wire error."""
    if isinstance(exc, api_errors.EtcdError):
        return exc
    return api_errors.from_message(str(exc)) or api_errors.EtcdError(
        api_errors.grpc.StatusCode.UNKNOWN, str(exc))


class _BadEntry(Exception):
    """A committed entry that does not decode: answered with ApplyFailedError everywhere."""

    def __init__(self, rid: int, why: str) -> None:
        super().__init__(why)
        self.rid = rid  # 0 when not even that decoded


_CONF_CHANGE_TYPES = frozenset(ConfChangeType)
MAX_DIALED_PEER_URLS = 8  # etcd dials one peer URL at a time; a member record may hold many


def _dialable(record: MemberRecord) -> list[str]:
    """The peer URLs of ``record`` the transport can connect to. etcd accepts URLs it cannot
    dial (port 99999, no port) in a member record; they stay in the member list, unused."""
    urls = []
    for url in record.peer_urls:
        try:
            zmq_endpoint(url)
        except ValueError:
            log.warning("member %x: peer URL %r cannot be dialed; not using it", record.id, url)
            continue
        urls.append(url)
        if len(urls) == MAX_DIALED_PEER_URLS:
            break
    return urls


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(asyncio.TimeoutError())


class Member:
    def __init__(self, cfg: MemberConfig) -> None:
        self.cfg = cfg
        self.dir = Path(cfg.data_dir) / "member"
        self.id = 0
        self.registry = Registry()
        self.store: Store
        self.hub: WatchHub
        self.raftlog: RaftLog
        self.node: RawNode
        self.transport: PeerTransport
        self.applied = 0
        self.published = asyncio.Event()
        # Held while Store.apply runs in its thread: the lessor's in-memory tables change there,
        # so code on the loop that iterates them (expiry, keep-alive, lease lists) takes it.
        self.apply_lock = asyncio.Lock()
        self.stopped = asyncio.Event()
        self._wake = asyncio.Event()
        self._applied_event = asyncio.Event()
        self._apply_queue: list[Entry] = []  # committed, handed to the applier task
        self._apply_more = asyncio.Event()
        self._apply_idle = asyncio.Event()
        self._apply_idle.set()
        self._apply_now = asyncio.Event()  # someone here waits for the state machine: no batching
        self._clients_waiting = 0  # see client_waiting
        self._notice_timer: asyncio.TimerHandle | None = None
        self._notices_due = False
        self._unsettled = False  # an apply in flight has answered KV writes before its commit
        self._early: set[int] = set()  # proposals answered before the store commit
        self._rid = itertools.count(secrets.randbits(40) << 20)
        self._waiters: dict[int, asyncio.Future] = {}
        self._proposals: list[tuple[int, bytes]] = []  # (request id, entry data)
        self._unsent: list[tuple[int, bytes]] = []  # forwarded proposals that could not go out
        self._leaderless_since: float | None = time.monotonic()
        self._last_leader = NONE
        self._conf_changes: list[tuple[ConfChange, asyncio.Future]] = []
        self._incoming: list[Message] = []
        self._feedback: list[Callable[[], None]] = []
        self._last_save_s = 0.0  # how long the last Raft log save took
        self._ticks_due = 0
        self._tick_count = 0
        self._read_waiters: list[asyncio.Future] = []
        self._reads_inflight: dict[bytes, tuple[list[asyncio.Future], int]] = {}
        self._reads_ready: list[tuple[int, list[asyncio.Future]]] = []
        self._read_seq = itertools.count(1)
        # (directory holding data.mdb, registry blob, snapshot index) received, not installed
        self._incoming_snapshot: tuple[Path, bytes, int] | None = None
        self._receiving_snapshot = False
        self._removal_queries: dict[int, tuple[bytes, float]] = {}  # peer -> (nonce, asked at)
        # (removed member, answer or hint) -> last told at
        self._removal_told: dict[tuple[int, bool], float] = {}
        self._snapshot_seq = itertools.count()
        self._snap_index = 0
        self._revoking: set[int] = set()
        self._tasks: set[asyncio.Task] = set()  # strong references until each finishes
        self._stopping = False
        self._removed = False
        self._just_removed: list[int] = []

    # ------------------------------------------------------------------ startup

    def open(self) -> None:
        """Open (or create) the data directory and the Raft node; no I/O with peers yet."""
        cfg = self.cfg
        etcd_import.import_restored(self.dir, self.dir / "db")  # after `etcdctl snapshot restore`
        fresh = not (self.dir / "identity").exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            self._bootstrap_identity()
        else:
            self._check_identity()
        for leftover in self.dir.glob("snapshot.incoming.*"):
            # received before a crash, never installed: the leader resends
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        registry_path = self.dir / "cluster.json"
        self.registry = membership.load(registry_path) or self._initial_registry()
        if fresh:
            membership.save(registry_path, self.registry)
        quota = cfg.quota_bytes
        self.store = Store(self.dir / "db", member_id=self.id, quota_bytes=quota,
                           max_txn_ops=cfg.max_txn_ops, durable=False,
                           map_size=quota + 1024**3)
        self.hub = WatchHub(self.store)
        self.raftlog = RaftLog(self.dir / "wal")
        state = self.raftlog.load()
        # The commit index alone is persisted lazily (_handle_ready): whatever the store applied
        # was committed, so the commit index restarts at least there.
        last = state.entries[-1].index if state.entries else state.snapshot.meta.index
        commit = min(max(state.hard_state.commit, self.store.consistent_index), last)
        if commit > state.hard_state.commit:
            state.hard_state = msgspec.structs.replace(state.hard_state, commit=commit)
        self._persisted_hs = state.hard_state  # the newest HardState on disk
        self._latest_hs = state.hard_state  # the newest HardState Raft handed out
        self._snap_index = state.snapshot.meta.index
        brand_new = not state.entries and state.snapshot.meta.index == 0 and state.hard_state.term == 0
        voters: tuple[int, ...] = ()
        if brand_new and cfg.state == "new":
            voters = tuple(sorted(self.registry.members))
        election_tick = max(1, cfg.election_ms // max(1, cfg.heartbeat_ms))
        self.node = RawNode(Config(id=self.id, voters=voters, election_tick=election_tick,
                                   heartbeat_tick=1, applied=self.store.consistent_index,
                                   seed=self.id & 0xFFFFFFFF), state)
        self.applied = max(self.store.consistent_index, state.snapshot.meta.index)
        self._frame_budget = peerwire.frame_budget(cfg.max_request_bytes,
                                                   self.node.raft.cfg.max_size_per_msg,
                                                   mvcc_snapshot.DEFAULT_CHUNK_SIZE)
        self.transport = PeerTransport(self.id, cfg.listen_peer_urls, self._on_frames,
                                       peerwire.max_frame_bytes(self._frame_budget),
                                       room=lambda: len(self._incoming) < INCOMING_MAX)
        self.transport.cluster_id = self.registry.cluster_id
        self._connect_peers()
        log.info("starting member %x in cluster %x (data dir %s, applied index %d)",
                 self.id, self.registry.cluster_id, cfg.data_dir, self.applied)

    def _bootstrap_identity(self) -> None:
        cfg = self.cfg
        if cfg.name not in cfg.initial_cluster:
            raise StartupError(f"couldn't find local name {cfg.name!r} in the initial cluster "
                               f"configuration")
        if sorted(cfg.initial_cluster[cfg.name]) != sorted(cfg.initial_advertise_peer_urls):
            raise StartupError("--initial-cluster has %s=%s but --initial-advertise-peer-urls is %s"
                               % (cfg.name, ",".join(cfg.initial_cluster[cfg.name]),
                                  ",".join(cfg.initial_advertise_peer_urls)))
        self.id = membership.member_id(cfg.initial_advertise_peer_urls, cfg.token)
        (self.dir / "identity").write_text(f"{self.id:x} {cfg.name} {cfg.token}\n")

    def _check_identity(self) -> None:
        text = (self.dir / "identity").read_text().split()
        self.id = int(text[0], 16)
        name, token = text[1], text[2]
        if token != self.cfg.token or name != self.cfg.name:
            raise StartupError(
                f"data dir {self.cfg.data_dir} belongs to member {name} ({self.id:x}) of cluster "
                f"token {token!r}, not {self.cfg.name} of {self.cfg.token!r}; refusing to start")

    def _initial_registry(self) -> Registry:
        members = {}
        for name, urls in self.cfg.initial_cluster.items():
            mid = membership.member_id(urls, self.cfg.token)
            members[mid] = MemberRecord(id=mid, name=name, peer_urls=list(urls))
        cid = membership.cluster_id(list(members)) if self.cfg.state == "new" else 0
        return Registry(cluster_id=cid, members=members)

    def _connect_peers(self) -> None:
        self.transport.set_peers({m.id: _dialable(m) for m in self.registry.members.values()})

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tick_advance_pending = True
        self.transport.start(loop)
        self._schedule_tick(loop)
        compaction = compactor.run(self, self.cfg.auto_compaction_mode,
                                   self.cfg.auto_compaction_retention)
        for coro in (self._raft_loop(), self._applier(), self._lease_loop(), self._watch_loop(),
                     self._publish(), compaction):
            self._spawn(coro)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _schedule_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        def tick() -> None:
            if self._stopping:
                return
            self._ticks_due += 1
            self._wake.set()
            loop.call_later(self.cfg.heartbeat_ms / 1000, tick)
        loop.call_later(self.cfg.heartbeat_ms / 1000, tick)

    # ------------------------------------------------------------------ public state

    @property
    def term(self) -> int:
        return self.node.raft.term

    @property
    def leader(self) -> int:
        return self.node.leader

    @property
    def is_leader(self) -> bool:
        return self.node.is_leader

    @property
    def leaderless_for(self) -> float:
        """Seconds since this member last knew a leader (0 while it knows one)."""
        since = self._leaderless_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def pending_proposals(self) -> int:
        return len(self._waiters)

    @property
    def cluster_id(self) -> int:
        return self.registry.cluster_id

    def header(self, revision: int | None = None) -> ResponseHeader:
        rev = self.store.current_revision if revision is None else revision
        return ResponseHeader(cluster_id=self.cluster_id, member_id=self.id, revision=rev,
                              raft_term=self.term)

    @contextlib.contextmanager
    def client_waiting(self) -> Iterator[None]:
        """Around waits that this member's state must follow closely: a lock or election
        waiter watching every apply, a request forwarded to the leader (its client may read
        here next). This member then wants every commit at once."""
        self._clients_waiting += 1
        try:
            yield
        finally:
            self._clients_waiting -= 1

    def applied_changed(self) -> asyncio.Event:
        """An event set at the next apply (for waiters on the state machine, who want it soon:
        no batching of applies meanwhile)."""
        self._apply_now.set()
        return self._applied_event

    # ------------------------------------------------------------------ client requests

    async def propose(self, request: Any, early: bool = False) -> Any:
        """Replicate ``request`` and return its result once applied here (raise etcd errors).
        ``early``: the result may come before the store's commit is visible (a client's KV
        write; see _apply); callers that read the store next must not ask for it."""
        rid = next(self._rid)
        data = encode(Proposal(rid, KIND_OF[type(request)], encode(request)))
        if len(data) > self.cfg.max_request_bytes:
            raise api_errors.ErrRequestTooLarge
        tr("prop")
        fut = asyncio.get_running_loop().create_future()
        self._waiters[rid] = fut
        if early:
            self._early.add(rid)
        self._proposals.append((rid, data))
        self._apply_now.set()
        self._wake.set()
        return await self._applied_result(rid, fut)

    async def _applied_result(self, rid: int, fut: asyncio.Future) -> Any:
        """Wait for request ``rid``'s result, set when this member applies it; etcd's errors
        when it does not come in time, or when applying it failed."""
        try:
            result = await self._within_timeout(fut)
        except asyncio.TimeoutError:
            raise self._timeout_error() from None
        finally:
            self._waiters.pop(rid, None)
            self._early.discard(rid)
        if isinstance(result, BaseException):
            raise to_api_error(result)
        return result

    def _timeout_error(self) -> api_errors.EtcdError:
        return api_errors.ErrNoLeader if self.leader == NONE else api_errors.ErrTimeout

    async def linearizable_barrier(self) -> None:
        """Wait until this member has applied everything committed before the call (ReadIndex)."""
        fut = asyncio.get_running_loop().create_future()
        self._read_waiters.append(fut)
        self._apply_now.set()
        self._wake.set()
        try:
            await self._within_timeout(fut)
        except asyncio.TimeoutError:
            raise self._timeout_error() from None

    async def _within_timeout(self, fut: asyncio.Future) -> Any:
        """``fut``'s result, or TimeoutError after the request timeout. Cheaper than
        asyncio.wait_for, which wakes the caller through a second future (one more loop turn
        on every request's path)."""
        timer = asyncio.get_running_loop().call_later(self.cfg.request_timeout, _expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    async def conf_change(self, kind: int, record: MemberRecord) -> None:
        """Propose a membership change on the leader and wait until it is applied here."""
        if not self.is_leader:
            raise api_errors.ErrNotLeader
        rid = next(self._rid)
        cc = ConfChange(kind, record.id, encode(ConfContext(rid, record)))
        fut = asyncio.get_running_loop().create_future()
        self._waiters[rid] = fut
        self._conf_changes.append((cc, fut))
        self._wake.set()
        await self._applied_result(rid, fut)

    async def transfer_leadership(self, target: int, timeout: float | None = None) -> bool:
        """Ask Raft to hand leadership to ``target``; True once it leads."""
        self._feedback.append(lambda: self.node.transfer_leader(target))
        self._wake.set()
        deadline = time.monotonic() + (timeout or self.cfg.election_ms / 1000 * 2)
        while time.monotonic() < deadline:
            if self.leader == target:
                return True
            await asyncio.sleep(self.cfg.heartbeat_ms / 1000)
        return self.leader == target

    def progress_of(self, node_id: int) -> int | None:
        """The leader's view of how far ``node_id``'s log matches (None if unknown)."""
        pr = self.node.raft.prs.get(node_id)
        return pr.match if pr is not None and self.is_leader else None

    # ------------------------------------------------------------------ transport input

    def _on_frames(self, cluster_id: int, sender: int, kind: bytes, frames: list[bytes]) -> None:
        """One message from the peer port: checked, then queued for the Raft loop (nothing
        here changes Raft). Whatever fails a check is dropped and counted."""
        if sender in (NONE, self.id):
            rejected.count("peer", "bad_sender", log, f"sender id {sender:x}")
            return
        if self.registry.cluster_id == 0 and cluster_id != 0 and sender in self.registry.members:
            self._adopt_cluster_id(cluster_id)
        elif cluster_id != self.registry.cluster_id:
            rejected.count("peer", "cluster_mismatch", log,
                           f"from {sender:x}: cluster id {cluster_id:x} is not ours "
                           f"({self.registry.cluster_id:x})")
            return
        if sender in self.registry.removed and kind != KIND_REMOVAL_QUERY:
            # etcd answers a removed member's requests with 410 Gone, which stops it
            rejected.count("peer", "removed_sender", log, f"from removed member {sender:x}")
            self._tell_removed_member(sender, b"")
            return
        if kind == KIND_MESSAGES:
            self._on_messages(sender, frames)
        elif kind == KIND_SNAPSHOT:
            self._on_snapshot(sender, frames)
        elif kind == KIND_REMOVED:
            self._on_removed_notice(sender, frames)
        elif kind == KIND_REMOVAL_QUERY:
            self._on_removal_query(sender, frames)
        else:
            rejected.count("peer", "unknown_kind", log, f"kind {kind!r} from {sender:x}")

    def _conf_members(self) -> set[int]:
        conf = self.node.raft.conf
        return {*conf.voters, *conf.learners}

    def _on_messages(self, sender: int, frames: list[bytes]) -> None:
        messages, reason = peerwire.unpack(frames)
        if reason is not None:
            rejected.count("peer", reason, log, f"message batch from {sender:x}")
            return
        members = self._conf_members()
        for m in messages:
            reason = peerwire.check(m, self.id, sender, members)
            if reason is None and m.type == MessageType.SNAPSHOT:
                reason = "snapshot_without_data"  # snapshots come with their data, as kind S
            if reason is None:
                self._incoming.append(m)
            else:
                rejected.count("peer", reason, log, f"{m.type} from {sender:x}")
        if messages:
            self._wake.set()

    def _on_snapshot(self, sender: int, frames: list[bytes]) -> None:
        """Frames: the SNAPSHOT message, the member registry, the store image's chunks, and its
        sha256 (maybe inside the last chunk). Checked before anything is written."""
        if len(frames) < 3:
            rejected.count("peer", "bad_frames", log, f"snapshot of {len(frames)} frames")
            return
        if sender not in self.registry.members:
            rejected.count("peer", "snapshot_from_non_member", log, f"from {sender:x}")
            return
        try:
            msg = decode_message(frames[0])
        except msgspec.DecodeError:
            rejected.count("peer", "malformed", log, f"snapshot from {sender:x}")
            return
        reason = peerwire.check(msg, self.id, sender, self._conf_members())
        if reason is None and msg.type != MessageType.SNAPSHOT:
            reason = "bad_snapshot"
        if reason is None:
            try:
                if membership.decode(frames[1]).cluster_id != self.registry.cluster_id:
                    reason = "bad_registry"
            except msgspec.DecodeError:
                reason = "bad_registry"
        if reason is not None:
            rejected.count("peer", reason, log, f"snapshot from {sender:x}")
            return
        if msg.snapshot.meta.index <= self.node.raft.log.committed:
            self._incoming.append(msg)  # Raft only answers it (e.g. a resend): no data needed
            self._wake.set()
            return
        if self._receiving_snapshot:
            # one at a time (each holds a whole store image); the leader sends again
            rejected.count("peer", "snapshot_busy", log, f"snapshot from {sender:x}")
            return
        self._receiving_snapshot = True
        self._spawn(self._receive_snapshot(msg, frames[1], frames[2:]))

    async def _receive_snapshot(self, msg: Message, registry: bytes, chunks: list[bytes]) -> None:
        """Write, verify (checksum, and that the image opens as a store holding at least the
        snapshot's index) and only then step the SNAPSHOT message: a snapshot Raft accepted
        must install."""
        index = msg.snapshot.meta.index
        # one directory per received snapshot: a second one (a resend of the same snapshot, or
        # one from a new leader) must not overwrite one that is still being written or installed
        path = self.dir / f"snapshot.incoming.{next(self._snapshot_seq)}"
        loop = asyncio.get_running_loop()
        try:
            applied = await loop.run_in_executor(None, mvcc_snapshot.receive, chunks, path,
                                                 self.cfg.quota_bytes + 1024**3)
        except (mvcc_snapshot.SnapshotChecksumError, mvcc_snapshot.InvalidSnapshot) as exc:
            rejected.count("peer", "bad_snapshot_data", log,
                           f"snapshot {index} from {msg.frm:x}: {exc}")
            return
        except OSError as exc:  # the disk: the leader sends it again later
            log.error("writing the snapshot received from %x failed: %s", msg.frm, exc)
            return
        finally:
            self._receiving_snapshot = False
        if applied < index:
            shutil.rmtree(path, ignore_errors=True)
            rejected.count("peer", "bad_snapshot_data", log,
                           f"snapshot {index} from {msg.frm:x} holds a store at index {applied}")
            return
        held = self._incoming_snapshot
        if held is not None and held[2] > index:
            shutil.rmtree(path, ignore_errors=True)  # an older one, e.g. from a former leader
            return
        if held is not None:
            shutil.rmtree(held[0], ignore_errors=True)  # superseded, never installed
        self._incoming_snapshot = (path, registry, index)
        log.info("received database snapshot from %x at index %d", msg.frm, index)
        self._incoming.append(msg)
        self._wake.set()

    def _on_removed_notice(self, sender: int, frames: list[bytes]) -> None:
        """Believed only as the answer to this member's own question to a member of its
        configuration (the nonce it sent there), as etcd's removed member believes a 410 Gone
        answering its own request. Anything else from a member is a hint: ask it."""
        if sender not in self.registry.members:
            rejected.count("peer", "removed_notice_from_non_member", log, f"from {sender:x}")
            return
        asked = self._removal_queries.get(sender)
        if asked is not None and frames[0] and secrets.compare_digest(frames[0], asked[0]):
            self._removed = True
            log.warning("the member has been permanently removed from the cluster (answered by "
                        "%x); stopping", sender)
            self.stopped.set()
            return
        # counted (not believed as it came), but a removed member's first notice is one of these:
        # logged below only when it is acted on
        rejected.count("peer", "removed_notice_unconfirmed")
        now = time.monotonic()
        if asked is not None and now - asked[1] < REMOVAL_QUERY_INTERVAL_S:
            return
        nonce = secrets.token_bytes(16)
        self._removal_queries[sender] = (nonce, now)
        log.info("member %x says this member may have been removed; asking it", sender)
        self.transport.send(sender, KIND_REMOVAL_QUERY, [nonce])

    def _on_removal_query(self, sender: int, frames: list[bytes]) -> None:
        if len(frames) != 1 or len(frames[0]) != 16:
            rejected.count("peer", "malformed", log, f"removal query from {sender:x}")
            return
        if sender in self.registry.removed:
            self._tell_removed_member(sender, frames[0])
        # else: not removed here (the asker got a forged notice, or we lag): no answer

    def _tell_removed_member(self, node_id: int, nonce: bytes) -> None:
        """Tell a removed member (at its last known URLs) that it was removed: a hint, or the
        answer to its query (``nonce``). At most one of each per REMOVAL_QUERY_INTERVAL_S per
        member: a hint must not hold back the answer to the query it prompts."""
        key, now = (node_id, bool(nonce)), time.monotonic()
        if now - self._removal_told.get(key, -REMOVAL_QUERY_INTERVAL_S) < REMOVAL_QUERY_INTERVAL_S:
            return
        self._removal_told[key] = now
        self.transport.send_former(node_id, KIND_REMOVED, [nonce])

    def _adopt_cluster_id(self, cluster_id: int) -> None:
        """A member that joined an existing cluster learns the cluster id from its peers."""
        self.registry.cluster_id = cluster_id
        self.transport.cluster_id = cluster_id
        membership.save(self.dir / "cluster.json", self.registry)
        log.info("joined cluster %x", cluster_id)

    # ------------------------------------------------------------------ the Raft loop

    async def _raft_loop(self) -> None:
        try:
            while not self._stopping:
                await self._wake.wait()
                tr("wake")
                self._wake.clear()
                self._drain_peers()
                self._feed_raft()
                while self.node.has_ready() and not self._stopping:
                    await self._handle_ready(self.node.ready())
                    # Requests that arrived during that Ready's disk work join the next one, so
                    # its sync persists them while the previous entries get applied. Yield once
                    # first: a Ready without disk work must not starve the tick timer.
                    await asyncio.sleep(0)
                    self._drain_peers()
                    self._feed_raft()
                self._schedule_commit_notices()
                await self._maybe_snapshot()
        except Exception:
            log.exception("raft loop failed; stopping the member")
            self.stopped.set()
            raise

    def _drain_peers(self) -> None:
        if self.transport.drain():
            self._wake.set()  # it stopped for room: another turn once these are stepped

    def _feed_raft(self) -> None:
        node = self.node
        node.set_lazy(not self.is_leader and not self._waited_on())
        if self._notices_due:
            self._notices_due = False
            node.flush_commit_notices()
        incoming, self._incoming = self._incoming, []
        for m in incoming:
            try:
                node.step(m)
            except Exception:
                # Not caught to carry on: _on_frames refused every message known to make step
                # raise (peerwire.check), so this is a Raft bug, and the step may have left its
                # state half changed (a log cut but not refilled, a configuration not
                # rescanned) that the next Ready would persist. Stopping, as etcd's raft
                # panics, restarts the member from its disk, which this step never reached.
                rejected.count("peer", "step_failed", log, f"{m.type} from {m.frm:x}")
                raise
        feedback, self._feedback = self._feedback, []
        for fn in feedback:
            fn()
        if self._tick_advance_pending:
            self._advance_ticks()
        for _ in range(self._ticks_due):
            node.tick()
            self._tick_count += 1
        if self._ticks_due:
            self._retry_stale_reads()
            self._proposals.extend(self._unsent)  # retry forwarding once per tick, not in a spin
            self._unsent = []
        self._ticks_due = 0
        if self._proposals and node.leader != NONE:
            try:
                node.propose_batch([data for _, data in self._proposals])
                self._proposals = []
            except ProposalDropped:
                pass  # no usable leader right now: retried next turn until the request times out
        self._fail_if_leaderless()
        self._feed_conf_changes()
        self._feed_reads()

    def _schedule_commit_notices(self) -> None:
        if self._notice_timer is None and self.node.commit_notices_owed:
            self._notice_timer = asyncio.get_running_loop().call_later(
                COMMIT_NOTICE_DELAY_S, self._commit_notices_due)

    def _commit_notices_due(self) -> None:
        self._notice_timer = None
        self._notices_due = True
        self._wake.set()

    def _advance_ticks(self) -> None:
        """etcd's --initial-election-tick-advance: fast-forward to one tick before the election
        timeout, so a new cluster elects within ~1 heartbeat to 1 election timeout instead of
        1-2 election timeouts. Pre-vote keeps this from disturbing a cluster that has a leader.
        Like etcd, wait until a peer is connected (or there is none): a campaign whose votes
        cannot leave waits out a whole randomized election timeout again."""
        raft = self.node.raft
        peers = [p for p in raft.conf.voters if p != self.id]
        if peers and not self.transport.connected() \
                and raft.election_elapsed < raft.cfg.election_tick - 1:
            return
        self._tick_advance_pending = False
        while raft.election_elapsed < raft.cfg.election_tick - 1 and raft.lead == NONE:
            self.node.tick()

    def _fail_if_leaderless(self) -> None:
        """Requests queued while no leader is known fail with "no leader" after two election
        timeouts, rather than waiting out the whole request timeout."""
        since = self._leaderless_since
        if since is None or time.monotonic() - since < 2 * self.cfg.election_ms / 1000:
            return
        for rid, _ in self._proposals + self._unsent:
            fut = self._waiters.get(rid)
            if fut is not None and not fut.done():
                fut.set_result(api_errors.ErrNoLeader)
        self._proposals, self._unsent = [], []
        for fut in self._read_waiters:
            if not fut.done():
                fut.set_exception(api_errors.ErrNoLeader)
        self._read_waiters = []

    def _feed_conf_changes(self) -> None:
        pending, self._conf_changes = self._conf_changes, []
        for cc, fut in pending:
            if fut.done():
                continue
            try:
                self.node.propose_conf_change(cc)
            except ProposalDropped:
                self._conf_changes.append((cc, fut))  # e.g. a change still pending: retry

    def _feed_reads(self) -> None:
        waiters = [f for f in self._read_waiters if not f.done()]
        if not waiters or self.node.leader == NONE:
            self._read_waiters = waiters
            return
        ctx = next(self._read_seq).to_bytes(8, "big")
        try:
            self.node.read_index(ctx)
        except ProposalDropped:
            self._read_waiters = waiters
            return
        self._read_waiters = []
        self._reads_inflight[ctx] = (waiters, self._tick_count)

    def _retry_stale_reads(self) -> None:
        """A ReadIndex lost on the way (a leader change, a connection not yet up) never comes
        back: ask again after READ_RETRY_TICKS, etcd's 500 ms readIndexRetryTime (the old
        context, should it arrive, is ignored)."""
        limit = min(READ_RETRY_TICKS, self.node.raft.cfg.election_tick)
        for ctx, (waiters, issued) in list(self._reads_inflight.items()):
            if self._tick_count - issued >= limit:
                del self._reads_inflight[ctx]
                self._read_waiters.extend(waiters)

    async def _handle_ready(self, rd: Ready) -> None:
        if TRACING:
            tr(f"ready e{len(rd.entries)} c{len(rd.committed_entries)} m{len(rd.messages)}")
        loop = asyncio.get_running_loop()
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state)
        if rd.snapshot is not None:
            await self._applies_done()
            self._install_snapshot(rd.snapshot)
        # Committed entries go to the applier task, which applies them in order while this loop
        # goes on (etcd's asynchronous apply): entries this member already has on disk at once,
        # so they apply while the new entries sync (two LMDB envs, two threads); any committed
        # entry still in this Ready's own write only after it, so nothing is applied before it
        # is durable here.
        stable = self.node.raft.log.stable
        durable = [e for e in rd.committed_entries if e.index <= stable]
        pending = rd.committed_entries[len(durable):]
        self._queue_apply(durable)
        # A leader replicates while its own write is still syncing (Raft counts the leader's
        # log only after advance); a follower's acks and votes must wait for its disk.
        early = self.node.raft.role == StateRole.LEADER
        if early:
            self._send(rd.messages)
        if rd.hard_state is not None:
            self._latest_hs = rd.hard_state
        if self._must_write(rd):
            hs = self._latest_hs if self._latest_hs != self._persisted_hs else None
            started = time.monotonic()
            if len(rd.entries) <= INLINE_SAVE_MAX_ENTRIES and rd.snapshot is None \
                    and self._last_save_s < INLINE_SAVE_MAX_SECONDS:
                self.raftlog.save(hs, rd.entries)
            else:
                await loop.run_in_executor(None, self.raftlog.save, hs, rd.entries, rd.snapshot)
            self._last_save_s = time.monotonic() - started
            self._persisted_hs = self._latest_hs
            tr("saved")
        if not early:
            self._send(rd.messages)
            tr("sent-after")
        self._queue_apply(pending)
        if len(self._apply_queue) > APPLY_BACKLOG_MAX:
            await self._applies_done()  # the store fell behind: let it catch up
        if rd.read_states:
            self._apply_now.set()
        for rs in rd.read_states:
            entry = self._reads_inflight.pop(rs.context, None)
            if entry is not None:
                self._reads_ready.append((rs.index, entry[0]))
        self.node.advance(rd)
        tr("advanced")
        self._release_reads()

    def _queue_apply(self, entries: list[Entry]) -> None:
        if entries:
            self._apply_queue.extend(entries)
            self._apply_idle.clear()
            self._apply_more.set()

    async def _applies_done(self) -> None:
        """Until every queued committed entry is applied (before a snapshot replaces the store
        or compacts the log)."""
        self._apply_now.set()
        await self._apply_idle.wait()

    async def _applier(self) -> None:
        """Applies queued committed entries in order, everything queued so far in one batch."""
        try:
            while True:
                await self._apply_more.wait()
                self._apply_more.clear()
                if self._may_batch_applies():
                    await self._gather_commits()
                self._apply_now.clear()
                while self._apply_queue:
                    entries, self._apply_queue = self._apply_queue, []
                    await self._apply(entries)
                    self._release_reads()
                self._apply_idle.set()
        except Exception:
            log.exception("applying committed entries failed; stopping the member")
            self.stopped.set()
            raise

    def _waited_on(self) -> bool:
        """Someone here waits on the state machine: this member's own requests, reads,
        watchers, lock or election waiters, forwarded requests. They want every commit applied
        at once."""
        return bool(self._waiters or self._read_waiters or self._reads_inflight or self._reads_ready
                    or self.hub.has_watchers or self._clients_waiting)

    def _may_batch_applies(self) -> bool:
        """Only a follower that nobody waits on (a leader answers its clients from its
        applies)."""
        if self.is_leader or self._waited_on() or self._stopping or self._apply_now.is_set():
            return False
        # Membership changes show at once (a member list right after a member add, anywhere).
        return all(e.type != EntryType.CONF_CHANGE for e in self._apply_queue)

    async def _gather_commits(self) -> None:
        """Wait FOLLOWER_APPLY_BATCH_S, or less if someone here starts waiting meanwhile."""
        timer = asyncio.get_running_loop().call_later(FOLLOWER_APPLY_BATCH_S, self._apply_now.set)
        try:
            await self._apply_now.wait()
        finally:
            timer.cancel()

    def _must_write(self, rd: Ready) -> bool:
        """etcd's MustSync: new entries, a snapshot, or a new term or vote need a synced write
        before anything goes out; a HardState that only moves the commit index does not (it
        rides along with the next write, and a restart recovers it from the applied index).
        That spares the leader one fsync per batch."""
        persisted = self._persisted_hs
        new_vote = (self._latest_hs.term, self._latest_hs.vote) != (persisted.term, persisted.vote)
        return bool(rd.entries) or rd.snapshot is not None or new_vote

    def _release_reads(self) -> None:
        keep = []
        for index, waiters in self._reads_ready:
            if index <= self.applied:
                for f in waiters:
                    if not f.done():
                        f.set_result(None)
            else:
                keep.append((index, waiters))
        self._reads_ready = keep

    def _on_soft_state(self, soft: SoftState) -> None:
        if soft.lead == NONE:
            self._leaderless_since = self._leaderless_since or time.monotonic()
        else:
            self._leaderless_since = None
            # ReadIndex requests sent before this leader was known may be lost (a candidate or
            # a leaderless follower drops them): ask the new leader now rather than after an
            # election timeout. A late answer to an old context is ignored.
            for waiters, _ in self._reads_inflight.values():
                self._read_waiters.extend(waiters)
            self._reads_inflight.clear()
        self._adopt_role(soft)
        self._last_leader = soft.lead or self._last_leader

    def _adopt_role(self, soft: SoftState) -> None:
        if soft.role == StateRole.LEADER:
            log.info("raft.node: %x elected leader %x at term %d", self.id, self.id, self.term)
            # etcd extends leases by an election timeout so none expires before keep-alives
            # can reach the new leader.
            self.store.lessor.promote(self.cfg.election_ms / 1000)
        else:
            if self.store.lessor.primary:
                self.store.lessor.demote()
            if soft.lead == NONE:
                log.info("raft.node: %x lost leader %x at term %d", self.id, self._last_leader,
                         self.term)
            else:
                log.info("raft.node: %x elected leader %x at term %d", self.id, soft.lead,
                         self.term)

    def _send(self, messages: list[Message]) -> None:
        by_peer: dict[int, list[Message]] = defaultdict(list)
        for m in messages:
            if m.type == MessageType.SNAPSHOT:
                self._spawn(self._send_snapshot(m))
            else:
                by_peer[m.to].append(m)
        for to, batch in by_peer.items():
            if not self.transport.send(to, KIND_MESSAGES, peerwire.pack(batch, self._frame_budget)):
                self._feedback.append(lambda to=to: self.node.report_unreachable(to))
                self._requeue_forwarded(batch)

    def _requeue_forwarded(self, batch: list[Message]) -> None:
        """Proposals forwarded to a leader we cannot reach never left this process: queue them
        again (safe, no duplicate possible) for the next tick, by when the leader may change."""
        for m in batch:
            if m.type == MessageType.PROP:
                for e in m.entries:
                    self._unsent.append((_decode_proposal(e.data).rid, e.data))
            elif m.type == MessageType.READ_INDEX:
                entry = self._reads_inflight.pop(m.context, None)
                if entry is not None:  # asked again at the next tick
                    self._reads_inflight[m.context] = (entry[0], -READ_RETRY_TICKS)

    async def _send_snapshot(self, m: Message) -> None:
        """Ship the whole store out of band with the SNAPSHOT message, then tell Raft."""
        loop = asyncio.get_running_loop()
        try:
            snap = await loop.run_in_executor(None, mvcc_snapshot.StoreSnapshot, self.store)
            chunks = await loop.run_in_executor(None, lambda: list(snap.chunks()))
            ok = self.transport.send(m.to, KIND_SNAPSHOT,
                                     [encode(m), membership.encode(self.registry), *chunks])
        except Exception:
            log.exception("sending snapshot to %x failed", m.to)
            ok = False
        log.info("sent database snapshot to %x at index %d: %s", m.to, m.snapshot.meta.index,
                 "ok" if ok else "failed")
        self._feedback.append(lambda: self.node.report_snapshot(m.to, ok))
        self._wake.set()

    def _install_snapshot(self, snap: Snapshot) -> None:
        """Before the log may claim the snapshot, the store must hold it. Done on the loop
        thread: replacing the LMDB env must not race reads served by this loop."""
        held = self._incoming_snapshot
        # Raft accepts a snapshot only from a SNAPSHOT message stepped right after its data
        # was received and verified (_receive_snapshot): anything else is a bug.
        if held is None or held[2] < snap.meta.index:
            raise RuntimeError(f"raft accepted snapshot {snap.meta.index} without its data")
        path, registry, _ = held
        self._incoming_snapshot = None
        previous_revision = self.store.current_revision
        self.store.replace_with(path / "data.mdb")  # verified when received
        self.hub.restored(previous_revision)
        shutil.rmtree(path, ignore_errors=True)
        self.registry = membership.decode(registry)
        membership.save(self.dir / "cluster.json", self.registry)
        self.transport.cluster_id = self.registry.cluster_id
        self._connect_peers()
        self.applied = max(self.store.consistent_index, snap.meta.index)
        self._snap_index = snap.meta.index
        log.info("applied incoming snapshot at index %d (store applied index %d)",
                 snap.meta.index, self.store.consistent_index)

    # ------------------------------------------------------------------ apply

    async def _apply(self, entries: list[Entry]) -> None:
        batch: list[tuple[int, Any]] = []
        rids: list[int] = []
        registry_changed = False
        failed: list[int] = []  # positions of entries that could not be decoded
        for e in entries:
            try:
                rid, request, changed = self._decode_entry(e)
            except _BadEntry as bad:
                rejected.count("raft_entry", "undecodable", log, f"entry {e.index}: {bad}")
                rid, request, changed = bad.rid, None, False
                failed.append(len(batch))
            registry_changed |= changed
            batch.append((e.index, request))
            rids.append(rid)
        loop = asyncio.get_running_loop()
        early = [i for i, rid in enumerate(rids) if rid in self._early]
        computed = None
        if early:
            # Client KV writes are answered as soon as their results are computed, while the
            # store's commit syncs: the entries are committed in the Raft log, so the answers
            # are final and durable, and a client's next read or watch that could miss them
            # waits (linearizable reads for the applied index, the rest in settled()).
            def computed(results: list[Any]) -> None:  # on the executor thread
                tr("computed")
                loop.call_soon_threadsafe(self._answer, [rids[i] for i in early],
                                          [results[i] for i in early])
        async with self.apply_lock:  # applies run one at a time (the applier task)
            self._unsettled = computed is not None
            try:
                result = await loop.run_in_executor(None, self.store.apply, batch, computed)
            finally:
                self._unsettled = False
        for i in failed:  # every member decodes the same bytes: the same error everywhere
            result.results[i] = ApplyFailedError()
        self.hub.notify(result.events)
        if registry_changed:
            self.registry.applied = entries[-1].index
            await loop.run_in_executor(None, membership.save, self.dir / "cluster.json",
                                       self.registry)
            self._tell_removed()
            self._connect_peers()
        self.applied = max(self.applied, entries[-1].index)
        self._answer(rids, result.results)
        event, self._applied_event = self._applied_event, asyncio.Event()
        event.set()
        if result.propose_alarm is not None and self.is_leader:
            self._spawn(self._propose_quietly(result.propose_alarm))
        if self._removed:
            log.warning("the member has been permanently removed from the cluster; stopping")
            self.stopped.set()

    def _answer(self, rids: list[int], results: list[Any]) -> None:
        tr("answer")
        for rid, res in zip(rids, results):
            fut = self._waiters.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(res)

    @property
    def unsettled(self) -> bool:
        return self._unsettled

    async def settled(self) -> None:
        """Wait until every KV write already answered is visible in the store (answers leave
        before the store's commit): a serializable read must see its own client's writes."""
        while self._unsettled:
            await self._applied_event.wait()

    def _decode_entry(self, e: Entry) -> tuple[int, Any, bool]:
        """(request id, request for the store or None, registry changed). Raises _BadEntry
        for an entry that does not decode (with its request id when that much decoded)."""
        if e.type == EntryType.CONF_CHANGE:
            return self._decode_conf_change(e)
        if not e.data:
            return 0, None, False
        try:
            p = _decode_proposal(e.data)
        except msgspec.DecodeError as exc:
            raise _BadEntry(0, f"proposal: {exc}") from None
        decoder = DECODERS.get(p.kind)
        if decoder is None:
            raise _BadEntry(p.rid, f"unknown request kind {p.kind!r}")
        try:
            request = decoder.decode(p.body)
        except msgspec.DecodeError as exc:
            raise _BadEntry(p.rid, f"{p.kind}: {exc}") from None
        if p.kind == "member_attr":
            changed = e.index > self.registry.applied and self._apply_member_attr(request)
            return p.rid, None, changed
        return p.rid, request, False

    def _decode_conf_change(self, e: Entry) -> tuple[int, None, bool]:
        """Raft has already changed its configuration for this entry (it decodes the change
        itself); a context that does not decode only leaves the member list without its
        record (the member shows up without URLs, as one whose record is lost would)."""
        try:
            cc = decode_conf_change(e.data)
        except msgspec.DecodeError as exc:
            raise _BadEntry(0, f"conf change: {exc}") from None
        try:
            ctx = _decode_conf_context(cc.context) if cc.context else ConfContext(0)
        except msgspec.DecodeError as exc:
            log.error("conf change at index %d: undecodable context (%s); applying it "
                      "without a member record", e.index, exc)
            ctx = ConfContext(0)
        changed = e.index > self.registry.applied and self._apply_conf_change(cc, ctx)
        return ctx.rid, None, changed

    def _apply_conf_change(self, cc: ConfChange, ctx: ConfContext) -> bool:
        members = self.registry.members
        if cc.type not in _CONF_CHANGE_TYPES:
            log.error("conf change of unknown type %r for %x: ignored (Raft ignores it too)",
                      cc.type, cc.node_id)
            return False
        if ctx.member is not None and ctx.member.id != cc.node_id:
            log.error("conf change for %x carries the record of %x: record ignored",
                      cc.node_id, ctx.member.id)
            ctx = ConfContext(ctx.rid)
        if cc.type == ConfChangeType.REMOVE_NODE:
            members.pop(cc.node_id, None)
            self.registry.removed.append(cc.node_id)
            if cc.node_id == self.id:
                self._removed = True
            else:
                self._just_removed.append(cc.node_id)
            return True
        existing = members.get(cc.node_id)
        record = ctx.member or existing or MemberRecord(id=cc.node_id)
        if existing is not None and record is not existing:  # MemberUpdate / promote
            record.name = record.name or existing.name
            record.client_urls = record.client_urls or existing.client_urls
        record.is_learner = cc.type == ConfChangeType.ADD_LEARNER
        members[cc.node_id] = record
        return True

    def _tell_removed(self) -> None:
        """A removed member may never learn its removal from the log (it stops getting
        appends once the change applies), so every member tells it directly, while the socket
        to it still exists (etcd's peer handler answers a removed member with 410 Gone)."""
        for node_id in self._just_removed:
            self.transport.send(node_id, KIND_REMOVED, [b""])
        self._just_removed = []

    def _apply_member_attr(self, attr: MemberRecord) -> bool:
        record = self.registry.members.get(attr.id)
        if record is None:
            return False
        record.name = attr.name
        record.client_urls = list(attr.client_urls)
        return True

    async def _propose_quietly(self, request: Any) -> None:
        try:
            await self.propose(request)
        except api_errors.EtcdError as exc:
            log.warning("internal proposal %s failed: %s", type(request).__name__, exc)

    async def _maybe_snapshot(self) -> None:
        """Every --snapshot-count applied entries: compact the Raft log, keeping some entries so
        slightly slow followers catch up from the log rather than a full snapshot."""
        count = self.cfg.snapshot_count
        # Raft's applied index, not the store's: after installing a snapshot the store may be
        # ahead of the log (the leader's copy was newer than the snapshot's index), and Raft
        # compacts only what it has handed out for applying.
        applied = self.node.raft.log.applied
        if applied - self._snap_index < count:
            return
        keep = min(SNAPSHOT_CATCHUP_ENTRIES, count // 2)
        index = applied - keep
        if index <= self.node.raft.log.offset:
            return
        await self._applies_done()  # the store must hold what the log is about to forget
        loop = asyncio.get_running_loop()
        # The store is lazily synced: make it durable before the log forgets entries.
        await loop.run_in_executor(None, self.store.sync)
        snap = self.node.compact(index, b"")
        await loop.run_in_executor(None, self.raftlog.set_snapshot, snap)
        await loop.run_in_executor(None, self.raftlog.compact, index)
        self._snap_index = applied
        log.info("saved snapshot at index %d, compacted raft log", index)

    # ------------------------------------------------------------------ background duties

    async def _publish(self) -> None:
        """etcd's publish: put this member's name and client URLs into the replicated member
        list, retrying until it is committed."""
        attr = MemberRecord(id=self.id, name=self.cfg.name,
                            client_urls=list(self.cfg.advertise_client_urls))
        while not self._stopping:
            try:
                await self.propose(attr)
            except api_errors.EtcdError:
                continue
            log.info("published local member to cluster (name %s, client URLs %s, cluster %x)",
                     self.cfg.name, ",".join(attr.client_urls), self.cluster_id)
            self.published.set()
            # etcd's lifecycle lines that tooling watches for (cluster version 3.4)
            log.info("set the initial cluster version to 3.4")
            log.info("enabled capabilities for version 3.4")
            log.info("ready to serve client requests")
            return

    async def _lease_loop(self) -> None:
        """The leader revokes expired leases through Raft (keep-alives are leader-local)."""
        while not self._stopping:
            await asyncio.sleep(LEASE_CHECK_INTERVAL)
            if not self.is_leader:
                continue
            async with self.apply_lock:
                expired = self.store.lessor.expired()
            for lease_id in expired:
                if lease_id not in self._revoking:
                    self._revoking.add(lease_id)
                    self._spawn(self._revoke(lease_id))

    async def _revoke(self, lease_id: int) -> None:
        try:
            await self._propose_quietly(LeaseRevokeRequest(ID=lease_id))
        finally:
            self._revoking.discard(lease_id)

    async def _watch_loop(self) -> None:
        """etcd's syncWatchersLoop: watchers behind catch up from storage one bounded step at
        a time. After a step that left work, wait as long as the step took ("be fair to other
        store operations by yielding time taken"); otherwise until the hub wants a step (a
        stream with watchers behind has room again, a watch starts in the past) or 100 ms."""
        wanted = asyncio.Event()
        self.hub.on_sync_wanted = wanted.set
        last_progress = time.monotonic()
        while not self._stopping:
            wanted.clear()
            began = time.monotonic()
            more = self.hub.sync_unsynced()
            took = time.monotonic() - began
            if more:
                await asyncio.sleep(took)
            else:
                try:
                    await asyncio.wait_for(wanted.wait(), WATCH_SYNC_INTERVAL)
                except asyncio.TimeoutError:
                    pass
            if time.monotonic() - last_progress >= PROGRESS_NOTIFY_INTERVAL:
                self.hub.progress()
                last_progress = time.monotonic()

    # ------------------------------------------------------------------ shutdown

    async def stop(self) -> None:
        """Hand leadership to the most caught-up voter (if any), then stop everything."""
        if self.is_leader and len(self.node.raft.conf.voters) > 1:
            target = max((v for v in self.node.raft.conf.voters if v != self.id),
                         key=lambda v: self.progress_of(v) or 0)
            ok = await self.transfer_leadership(target)
            log.info("leadership transfer to %x before stopping: %s", target,
                     "done" if ok else "timed out")
        self._stopping = True
        self._wake.set()
        try:  # an apply cut short would leave its thread writing to a closing store
            await asyncio.wait_for(self._applies_done(), 5)
        except asyncio.TimeoutError:
            pass
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.transport.close()
        self.store.close()
        self.raftlog.close()
        self.stopped.set()

