"""The MVCC key-value state machine behind a Raft group, with etcd v3.4's semantics, in LMDB.

LMDB layout (one environment, named databases):

* ``key``    revision bytes (16, +``t`` for a tombstone) -> msgpack ``KeyValue`` (etcd's key bucket)
* ``index``  user key -> revision history of that key (see ``index.py``)
* ``meta``   ``current_rev``, ``compact_rev``, ``consistent_index`` (last applied Raft index)
* ``lease``  lease ID (8 bytes BE, signed) -> granted TTL;  ``lease_keys``  ID + user key -> b""
* ``alarm``  member ID (8 bytes BE) + alarm type (1 byte) -> b""

Writes only happen in ``apply``: one LMDB write transaction per batch of Raft entries, holding the
new ``consistent_index`` too, so after any crash data and applied index agree. Each request runs in
a nested transaction so a request that fails leaves no partial writes.
"""
from __future__ import annotations

import logging
import os
import shutil
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import msgspec

from shardkv.mvcc import index
from shardkv.mvcc.errors import (
    ApplyFailedError,
    CompactedError,
    CorruptError,
    EtcdError,
    KeyTooLargeError,
    FutureRevisionError,
    KeyNotFoundError,
    LeaseExistsError,
    LeaseNotFoundError,
    LeaseTTLTooLargeError,
    NoSpaceError,
)
from shardkv.mvcc.kv import (
    AlarmAction,
    AlarmMember,
    AlarmRequest,
    AlarmResponse,
    AlarmType,
    CompactionRequest,
    CompactionResponse,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    Event,
    EventType,
    HashKVResponse,
    HashResponse,
    KeyValue,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseKeepAliveResponse,
    LeaseLeasesResponse,
    LeaseRevokeRequest,
    LeaseRevokeResponse,
    LeaseStatus,
    LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    ResponseHeader,
    ResponseOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
    WriteRequest,
)
from shardkv.mvcc.lease import MAX_LEASE_TTL, Lessor
from shardkv.mvcc.revision import LocalRevisions, RevisionSource, bytes_to_rev, rev_to_bytes
from shardkv.mvcc.validate import validate
from shardkv.trace import tr

log = logging.getLogger("shardkv.mvcc.store")

DEFAULT_QUOTA_BYTES = 2 * 1024**3  # etcd's default --quota-backend-bytes
DEFAULT_MAX_TXN_OPS = 128
INITIAL_MAP_SIZE = 64 * 1024**2
KV_OVERHEAD = 256  # etcd's quota cost estimates
LEASE_OVERHEAD = 64

_I64 = struct.Struct(">q")
# etcd's lease IDs are int64 and may be negative (a client may pick its own); etcd keys its lease
# bucket by the ID's two's-complement big-endian bytes, as ">q" packs it.
_LEASE_ID = struct.Struct(">q")
_ALARM = struct.Struct(">QB")
_encode = msgspec.msgpack.Encoder().encode
_decode_kv = msgspec.msgpack.Decoder(KeyValue).decode
_decode_int = msgspec.msgpack.Decoder(int).decode

_CURRENT_REV = b"current_rev"
_COMPACT_REV = b"compact_rev"
_CONSISTENT_INDEX = b"consistent_index"
_INDEX_LAYOUT = b"index_layout"  # "2": newest entry in index, all entries in history

Result = object  # a response struct, an EtcdError instance, or None (entry skipped / no request)


@dataclass
class ApplyResult:
    """What ``Store.apply`` did: one result per batch item (response, ``EtcdError`` instance or
    None for a skipped/empty entry), every change event in revision order for the watch hub, the
    revision after the batch, and an alarm the node must propose (see ``propose_alarm``)."""

    results: list[Result]
    events: list[Event]
    revision: int
    # Set when the batch crossed the quota and no NOSPACE alarm is raised yet: the node must
    # propose it (etcd does the same); once applied, writes with a cost are refused.
    propose_alarm: AlarmRequest | None = None


@dataclass
class EventsPage:
    """A bounded slice of history (``Store.events_page``): every stored event with main
    revision in [start, ``end``], oldest first, and the compaction revision of the same read."""

    events: list[Event]
    end: int
    compact_revision: int


@dataclass
class _Dbs:
    key: lmdb._Database
    index: lmdb._Database
    meta: lmdb._Database
    lease: lmdb._Database
    lease_keys: lmdb._Database
    alarm: lmdb._Database
    history: lmdb._Database


@dataclass
class _View:
    """One request's view: an LMDB transaction plus etcd's begin/current revision rules."""

    txn: lmdb.Transaction
    dbs: _Dbs
    begin_rev: int
    compact_rev: int
    next_rev: Callable[[int], int]
    new_rev: int = 0
    changes: list[Event] = field(default_factory=list)
    granted: list[tuple[int, int]] = field(default_factory=list)
    revoked: list[int] = field(default_factory=list)

    def rev(self) -> int:
        """Reads inside a write see its own changes: etcd's beginRev (+1 once something changed)."""
        return self.new_rev if self.changes else self.begin_rev

    def write_rev(self) -> int:
        if not self.new_rev:
            self.new_rev = self.next_rev(self.begin_rev)
        return self.new_rev


class Store:
    """MVCC keyspace + leases + alarms of one Raft group, persisted in LMDB under ``path``.

    Threading: one thread applies (``apply``); reads (``range``, ``txn_readonly``, ``events``,
    hashes, ``copy_to``) may run in other threads concurrently, each in its own LMDB read
    transaction. ``defragment``/``replace_with`` and map growth inside ``apply`` need no other
    call in flight: the node should hold a lock that readers share around those.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        member_id: int = 0,
        quota_bytes: int = DEFAULT_QUOTA_BYTES,
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
        revision_source: RevisionSource | None = None,
        lessor: Lessor | None = None,
        durable: bool = True,
        map_size: int = INITIAL_MAP_SIZE,
    ) -> None:
        """``durable=True`` fsyncs data and meta page on every batch commit. ``durable=False``
        skips the meta-page sync (LMDB NOMETASYNC): a power loss may roll back the last batches,
        but never tears one, and the applied index always matches the data (Raft replays the
        rest from its log). A process crash loses nothing in either mode."""
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.member_id = member_id
        self.quota_bytes = quota_bytes
        self.max_txn_ops = max_txn_ops
        self.revisions = revision_source or LocalRevisions()
        self.lessor = lessor or Lessor()
        self._durable = durable
        self._map_size = map_size
        self._open()

    # ---------------------------------------------------------------- lifecycle

    def _open(self) -> None:
        self._env = lmdb.open(
            str(self.path),
            map_size=self._map_size,
            max_dbs=8,
            sync=True,
            metasync=self._durable,
            readahead=False,
        )
        self._map_size = self._env.info()["map_size"]
        names = ("key", "index", "meta", "lease", "lease_keys", "alarm")
        self._dbs = _Dbs(*(self._env.open_db(n.encode()) for n in names),
                         # not dupfixed: LMDB 0.9.36's compacting copy (snapshots)
                         # segfaults on DUPFIXED sub-databases
                         history=self._env.open_db(b"history", dupsort=True))
        _migrate_index(self._env, self._dbs)
        with self._env.begin() as txn:
            self._current_rev = self._meta(txn, _CURRENT_REV, 1)  # etcd's empty store is at 1
            self._compact_rev = self._meta(txn, _COMPACT_REV, -1)
            self._consistent_index = self._meta(txn, _CONSISTENT_INDEX, 0)
            leases = {
                _LEASE_ID.unpack(k)[0]: _decode_int(v) for k, v in txn.cursor(db=self._dbs.lease)
            }
        self.lessor.adopt(leases)
        self._known_size = self.size()

    def close(self) -> None:
        self._env.close()

    def sync(self) -> None:
        """Force everything committed so far to disk (useful with ``durable=False``, e.g. before
        telling Raft it may drop log entries the state machine has applied)."""
        self._env.sync(True)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self, txn: lmdb.Transaction, name: bytes, default: int) -> int:
        raw = txn.get(name, db=self._dbs.meta)
        return _I64.unpack(raw)[0] if raw is not None else default

    @property
    def current_revision(self) -> int:
        return self._current_rev

    @property
    def compact_revision(self) -> int:
        """etcd's compactMainRev: -1 until the first compaction."""
        return self._compact_rev

    @property
    def consistent_index(self) -> int:
        """Index of the last Raft entry whose effects are persisted here."""
        return self._consistent_index

    def size(self) -> int:
        """Bytes of the database file in use (LMDB's high-water page mark), etcd's db size."""
        return (self._env.info()["last_pgno"] + 1) * self._env.stat()["psize"]

    def _view(self, txn: lmdb.Transaction) -> _View:
        return _View(
            txn,
            self._dbs,
            begin_rev=self._meta(txn, _CURRENT_REV, 1),
            compact_rev=self._meta(txn, _COMPACT_REV, -1),
            next_rev=self.revisions.next_revision,
        )

    # ---------------------------------------------------------------- reads

    def range(self, request: RangeRequest) -> RangeResponse:
        """A read at the latest applied state (linearizability is the node's job: ReadIndex)."""
        validate(request)
        with self._env.begin() as txn:
            return _range(self._view(txn), request)

    def txn_readonly(self, request: TxnRequest) -> TxnResponse:
        """A transaction without puts/deletes, served from a read snapshot (no new revision)."""
        validate(request, self.max_txn_ops)
        if not is_readonly_txn(request):
            raise ValueError("txn_readonly got a txn that writes; propose it through Raft")
        with self._env.begin() as txn:
            return _txn(self._view(txn), request)

    def events(self, start_rev: int, end_rev: int) -> list[Event]:
        """Stored changes with main revision in [start_rev, end_rev], oldest first (no prev_kv)."""
        out = []
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._dbs.key)
            if not cursor.set_range(rev_to_bytes(max(start_rev, 0), 0)):
                return out
            for raw_rev, raw_kv in cursor:
                main, _, tombstone = bytes_to_rev(raw_rev)
                if main > end_rev:
                    break
                kind = EventType.DELETE if tombstone else EventType.PUT
                out.append(Event(type=kind, kv=_decode_kv(raw_kv)))
        return out

    def events_page(self, start_rev: int, end_rev: int, max_revs: int,
                    max_bytes: int) -> EventsPage:
        """Like ``events(start_rev, end_rev)`` but bounded, in whole revisions: it stops before
        the revision that would exceed ``max_revs`` revisions, or once ``max_bytes`` of stored
        changes were read (at least one revision, however big). The compaction revision comes
        from the same read transaction: history from a revision at or above it is complete."""
        out: list[Event] = []
        end, revs, size = end_rev, 0, 0
        with self._env.begin() as txn:
            compact = self._meta(txn, _COMPACT_REV, -1)
            cursor = txn.cursor(db=self._dbs.key)
            if cursor.set_range(rev_to_bytes(max(start_rev, 0), 0)):
                last = -1
                for raw_rev, raw_kv in cursor:
                    main, _, tombstone = bytes_to_rev(raw_rev)
                    if main > end_rev:
                        break
                    if main != last:
                        if revs >= max_revs or (revs and size >= max_bytes):
                            end = last
                            break
                        revs, last = revs + 1, main
                    size += len(raw_rev) + len(raw_kv)
                    kind = EventType.DELETE if tombstone else EventType.PUT
                    out.append(Event(type=kind, kv=_decode_kv(raw_kv)))
        return EventsPage(out, end, compact)

    # ---------------------------------------------------------------- writes

    def apply(self, batch: Sequence[tuple[int, WriteRequest | None]],
              computed: Callable[[list[Result]], None] | None = None) -> ApplyResult:
        """Apply committed Raft entries ``(index, request)`` in one durable LMDB transaction.

        Entries at or below ``consistent_index`` were applied before a restart and are skipped
        (result None); ``request`` None (e.g. an empty or conf-change entry) only advances the
        applied index. A failing request yields its ``EtcdError`` as result and changes nothing;
        so does a request that raises anything else but a disk error (``ApplyFailedError``,
        logged with its index): applying committed entries is total, only ``lmdb.Error`` and
        ``OSError`` escape.
        ``computed`` is handed the results before the commit and its fsync (the entries are
        already durable in the Raft log, so their answers are final); it may be called again
        with the same results if the transaction is retried.
        """
        tr("apply0")
        while True:
            try:
                return self._apply_once(batch, computed)
            except lmdb.MapFullError:
                # The whole transaction was aborted; retry it with a bigger map.
                self._map_size *= 2
                self._env.set_mapsize(self._map_size)

    def _apply_once(self, batch: Sequence[tuple[int, WriteRequest | None]],
                    computed: Callable[[list[Result]], None] | None) -> ApplyResult:
        results: list[Result] = []
        events: list[Event] = []
        granted: list[tuple[int, int]] = []
        revoked: list[int] = []
        current, compact, applied = self._current_rev, self._compact_rev, self._consistent_index
        base_size, batch_cost, nospace = self._known_size, 0, False
        with self._env.begin(write=True) as txn:
            for raft_index, request in batch:
                if raft_index <= applied:
                    results.append(None)
                    continue
                applied = raft_index
                if request is None:
                    results.append(None)
                    continue
                child = self._env.begin(write=True, parent=txn)
                view = _View(child, self._dbs, current, compact, self.revisions.next_revision)
                try:
                    result: Result = self._apply_one(view, request)
                except EtcdError as err:
                    child.abort()
                    results.append(err)
                    continue
                except lmdb.BadValsizeError:
                    # a key too long for LMDB that the checks let through: the request's
                    # fault, the same on every replica (validate refuses such keys first)
                    child.abort()
                    results.append(KeyTooLargeError())
                    continue
                except (lmdb.Error, OSError, MemoryError):
                    # the machine, not the request (another replica may not meet it): stop, or
                    # grow the map (apply)
                    child.abort()
                    raise
                except Exception:
                    # A request the checks let through and applying it met a bug: every replica
                    # meets it the same way, so an error result keeps them equal and running.
                    child.abort()
                    log.exception("applying entry %d (%s) failed; answering it with an error",
                                  raft_index, type(request).__name__)
                    results.append(ApplyFailedError())
                    continue
                except BaseException:
                    child.abort()
                    raise
                child.commit()
                current = view.rev()
                if isinstance(request, CompactionRequest):
                    compact = request.revision
                events.extend(view.changes)
                granted.extend(view.granted)
                revoked.extend(view.revoked)
                cost = _cost(request)
                batch_cost += cost
                if cost and base_size + batch_cost >= self.quota_bytes:
                    # etcd applies the request that crosses the quota but answers NOSPACE; the
                    # node then proposes the alarm through Raft, so that every replica starts
                    # refusing writes at the same log position (a local switch would diverge).
                    result = NoSpaceError()
                    nospace = True
                results.append(result)
            txn.put(_CURRENT_REV, _I64.pack(current), db=self._dbs.meta)
            txn.put(_COMPACT_REV, _I64.pack(compact), db=self._dbs.meta)
            txn.put(_CONSISTENT_INDEX, _I64.pack(applied), db=self._dbs.meta)
            if computed is not None:
                computed(results)
        tr("committed")
        self._current_rev, self._compact_rev, self._consistent_index = current, compact, applied
        self._known_size = self.size()
        for lease_id, ttl in granted:
            self.lessor.granted(lease_id, ttl)
        for lease_id in revoked:
            self.lessor.revoked(lease_id)
        alarm = None
        if nospace and not self.alarms(AlarmType.NOSPACE):
            alarm = AlarmRequest(action=AlarmAction.ACTIVATE, memberID=self.member_id,
                                 alarm=AlarmType.NOSPACE)
        return ApplyResult(results, events, current, alarm)

    def _apply_one(self, v: _View, request: WriteRequest) -> Result:
        if isinstance(request, AlarmRequest):
            validate(request)
            return _alarm(v, request)
        if _alarm_active(v, AlarmType.CORRUPT):
            raise CorruptError()
        if _cost(request) and _alarm_active(v, AlarmType.NOSPACE):
            raise NoSpaceError()
        if isinstance(request, RangeRequest):  # a read serialized through the log
            validate(request)
            return _range(v, request)
        if isinstance(request, PutRequest):
            validate(request)
            return _put(v, request)
        if isinstance(request, DeleteRangeRequest):
            validate(request)
            return _delete_range(v, request)
        if isinstance(request, TxnRequest):
            validate(request, self.max_txn_ops)
            return _txn(v, request)
        if isinstance(request, CompactionRequest):
            return _compact(v, request)
        if isinstance(request, LeaseGrantRequest):
            return _lease_grant(v, request, self.lessor.min_ttl)
        if isinstance(request, LeaseRevokeRequest):
            return _lease_revoke(v, request)
        raise TypeError(f"not a write request: {type(request).__name__}")

    # ---------------------------------------------------------------- leases (leader-local)

    def lease_keep_alive(self, lease_id: int) -> LeaseKeepAliveResponse:
        """Renew on the leader. An unknown or already expired lease answers ``TTL == 0``, as
        etcd's keep-alive stream does; NotPrimaryError means: forward to the leader."""
        header = self._header()  # etcd takes the revision before renewing
        try:
            ttl = self.lessor.renew(lease_id)
        except LeaseNotFoundError:
            ttl = 0
        return LeaseKeepAliveResponse(header=header, ID=lease_id, TTL=ttl)

    def lease_time_to_live(self, request: LeaseTimeToLiveRequest) -> LeaseTimeToLiveResponse:
        """Remaining and granted TTL (and attached keys, sorted). An unknown lease is not an
        error: etcd answers with ``TTL == -1``."""
        lid = request.ID
        resp = LeaseTimeToLiveResponse(header=self._header(), ID=lid, TTL=-1)
        if lid not in self.lessor:
            return resp
        resp.TTL, resp.grantedTTL = self.lessor.remaining(lid), self.lessor.granted_ttl(lid)
        if request.keys:
            with self._env.begin() as txn:
                resp.keys = _lease_keys(txn, self._dbs, lid)
        return resp

    def lease_leases(self) -> LeaseLeasesResponse:
        leases = [LeaseStatus(ID=lid) for lid in self.lessor.ids()]
        return LeaseLeasesResponse(header=self._header(), leases=leases)

    def _header(self) -> ResponseHeader:
        return ResponseHeader(member_id=self.member_id, revision=self._current_rev)

    # ---------------------------------------------------------------- alarms and quota

    def alarms(self, alarm: int = AlarmType.NONE) -> list[AlarmMember]:
        """Persisted alarms, all of them for ``AlarmType.NONE`` (etcd's AlarmRequest GET)."""
        with self._env.begin() as txn:
            return _alarms(txn, self._dbs, alarm)

    def check_quota(self, request: WriteRequest) -> None:
        """etcd's propose-time quota check: raise NoSpaceError if ``request`` would not fit."""
        cost = _cost(request)
        # The size as of the last apply: exact enough for a quota (etcd also checks a size
        # that in-flight proposals are about to change), and not two syscalls per request.
        if cost and self._known_size + cost >= self.quota_bytes:
            raise NoSpaceError()

    def defragment(self) -> None:
        """Reclaim free pages: copy the database compactly and swap it in (etcd's defrag).
        Call with no read transactions of this store open."""
        tmp = self.path / "defrag.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self._env.copy(str(tmp), compact=True)
        self._env.close()
        os.replace(tmp / "data.mdb", self.path / "data.mdb")
        fsync_dir(self.path)
        shutil.rmtree(tmp)
        self._open()

    # ---------------------------------------------------------------- hashes

    def hash(self) -> HashResponse:
        """etcd's Maintenance.Hash: crc32 (zlib/IEEE) over every database, in name order, each
        as its name then every key and value in key order -- except meta ``consistent_index``,
        which legitimately differs between replicas (etcd ignores it too)."""
        h = 0
        with self._env.begin() as txn:
            revision = self._meta(txn, _CURRENT_REV, 1)
            for name in ("alarm", "index", "key", "lease", "lease_keys", "meta"):
                h = zlib.crc32(name.encode(), h)
                for k, v in txn.cursor(db=getattr(self._dbs, name)):
                    if name == "meta" and k == _CONSISTENT_INDEX:
                        continue
                    h = zlib.crc32(v, zlib.crc32(k, h))
        header = ResponseHeader(member_id=self.member_id, revision=revision)
        return HashResponse(header=header, hash=h)

    def hash_kv(self, revision: int = 0) -> HashKVResponse:
        """etcd's HashKV: crc32 (zlib/IEEE) of b"key" followed by every (revision bytes, stored
        KeyValue) of the key database with main revision <= ``revision`` (0 = current). Because
        compaction here is physical and immediate, what is stored is exactly etcd's "keep" set.
        Errors as etcd: revision <= compact revision, or in the future."""
        with self._env.begin() as txn:
            v = self._view(txn)
            if 0 < revision <= v.compact_rev:
                raise CompactedError()
            if revision > v.begin_rev:
                raise FutureRevisionError()
            upper = revision or v.begin_rev
            h = zlib.crc32(b"key")
            for raw_rev, raw_kv in txn.cursor(db=self._dbs.key):
                if bytes_to_rev(raw_rev)[0] > upper:
                    break
                h = zlib.crc32(raw_kv, zlib.crc32(raw_rev, h))
            header = ResponseHeader(member_id=self.member_id, revision=v.begin_rev)
            return HashKVResponse(header=header, hash=h, compact_revision=v.compact_rev)

    # ---------------------------------------------------------------- snapshots

    def copy_to(self, fd: int) -> int:
        """Write a consistent copy of the whole database to ``fd`` from one read transaction
        (writers are not blocked). Returns the applied index the copy contains."""
        with self._env.begin() as txn:
            applied = self._meta(txn, _CONSISTENT_INDEX, 0)
            self._env.copyfd(fd, compact=True, txn=txn)
        return applied

    def replace_with(self, db_file: Path) -> None:
        """Swap the database for ``db_file`` (a verified snapshot body) and reload."""
        self._env.close()
        os.replace(db_file, self.path / "data.mdb")
        fsync_dir(self.path)
        self._open()


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ==================================================================== request semantics


def _fail(kind: type[EtcdError]) -> None:
    raise kind()


def _check_rev(v: _View, rev: int) -> int:
    """etcd's rangeKeys revision rules; returns the revision to read at."""
    cur = v.rev()
    if rev > cur:
        _fail(FutureRevisionError)
    if rev <= 0:
        rev = cur
    if rev < v.compact_rev:
        _fail(CompactedError)
    return rev


def _value_of(v: _View, entry: index.IndexEntry) -> bytes:
    raw = v.txn.get(rev_to_bytes(entry[index.MAIN], entry[index.SUB]), db=v.dbs.key)
    return _decode_kv(raw).value


def _kv_of(v: _View, key: bytes, entry: index.IndexEntry, with_value: bool = True) -> KeyValue:
    return KeyValue(
        key=key,
        create_revision=entry[index.CREATE],
        mod_revision=entry[index.MAIN],
        version=entry[index.VERSION],
        value=_value_of(v, entry) if with_value else b"",
        lease=entry[index.LEASE],
    )


def _live(v: _View, key: bytes, range_end: bytes, rev: int) -> list[tuple[bytes, index.IndexEntry]]:
    return index.live_in_range(v.txn, v.dbs, key, index.range_end_of(range_end), rev)


_SORT_KEYS: dict[int, Callable[[KeyValue], object]] = {
    SortTarget.KEY: lambda kv: kv.key,
    SortTarget.VERSION: lambda kv: kv.version,
    SortTarget.CREATE: lambda kv: kv.create_revision,
    SortTarget.MOD: lambda kv: kv.mod_revision,
    SortTarget.VALUE: lambda kv: kv.value,
}


def _range(v: _View, r: RangeRequest) -> RangeResponse:
    """etcd 3.4 applierV3backend.Range: ``count`` is the number of keys in the range at the
    revision, before the min/max filters and the limit (etcd counts in mvcc, filters after)."""
    rev = _check_rev(v, r.revision)
    filtered = (
        r.min_mod_revision or r.max_mod_revision or r.min_create_revision or r.max_create_revision
    )
    if r.count_only:
        keep: int | None = 0
    elif r.limit > 0 and r.sort_order == SortOrder.NONE and not filtered:
        keep = r.limit + 1  # one extra tells ``more``
    else:
        keep = None  # sorting and filters need every key
    live, count = index.count_in_range(v.txn, v.dbs, r.key, index.range_end_of(r.range_end),
                                       rev, keep)
    resp = RangeResponse(header=ResponseHeader(revision=v.rev()), count=count)
    if r.count_only:
        return resp
    need_value = not r.keys_only or r.sort_target == SortTarget.VALUE
    kvs = [_kv_of(v, k, e, need_value) for k, e in live]
    kvs = [kv for kv in kvs if _passes_filters(kv, r)]
    order = r.sort_order
    if r.sort_target != SortTarget.KEY and order == SortOrder.NONE:
        order = SortOrder.ASCEND  # etcd: results are key-ordered already, so only non-KEY sorts
    if order in (SortOrder.ASCEND, SortOrder.DESCEND):  # etcd ignores an unknown order
        kvs.sort(key=_SORT_KEYS[r.sort_target], reverse=order == SortOrder.DESCEND)
    if r.limit > 0 and len(kvs) > r.limit:
        kvs = kvs[: r.limit]
        resp.more = True
    if r.keys_only:
        for kv in kvs:
            kv.value = b""
    resp.kvs = kvs
    return resp


def _passes_filters(kv: KeyValue, r: RangeRequest) -> bool:
    if r.max_mod_revision and kv.mod_revision > r.max_mod_revision:
        return False
    if r.min_mod_revision and kv.mod_revision < r.min_mod_revision:
        return False
    if r.max_create_revision and kv.create_revision > r.max_create_revision:
        return False
    if r.min_create_revision and kv.create_revision < r.min_create_revision:
        return False
    return True


def _get(v: _View, key: bytes) -> KeyValue | None:
    live = _live(v, key, b"", v.rev())
    return _kv_of(v, key, live[0][1]) if live else None


def _lease_exists(v: _View, lease_id: int) -> bool:
    return v.txn.get(_LEASE_ID.pack(lease_id), db=v.dbs.lease) is not None


def _put(v: _View, p: PutRequest, in_txn: bool = False) -> PutResponse:
    """etcd's Put; the lease and ignore_* checks run first so a failure writes nothing."""
    _check_put(v, p, in_txn)
    prev = _get(v, p.key) if (p.ignore_value or p.ignore_lease or p.prev_kv) else None
    value = prev.value if p.ignore_value and prev else p.value
    lease = prev.lease if p.ignore_lease and prev else p.lease
    _write_put(v, p.key, value, lease)
    return PutResponse(header=ResponseHeader(revision=v.rev()), prev_kv=prev if p.prev_kv else None)


def _check_put(v: _View, p: PutRequest, in_txn: bool) -> None:
    """etcd checks a standalone put's lease first, but a txn's puts key-first
    (applierV3backend.Put vs checkRequestPut); the first failing check names the error."""
    missing_lease = bool(p.lease) and not _lease_exists(v, p.lease)
    if missing_lease and not in_txn:
        _fail(LeaseNotFoundError)
    if (p.ignore_value or p.ignore_lease) and _get(v, p.key) is None:
        _fail(KeyNotFoundError)
    if missing_lease:
        _fail(LeaseNotFoundError)


def _write_put(v: _View, key: bytes, value: bytes, lease: int) -> None:
    rev = v.write_rev()
    sub = len(v.changes)
    last = index.latest(v.txn, v.dbs, key)
    if last is not None and last[index.VERSION] == 0:
        last = None  # a tombstone: the put starts a new generation
    create = last[index.CREATE] if last else rev
    version = last[index.VERSION] + 1 if last else 1
    kv = KeyValue(key=key, create_revision=create, mod_revision=rev, version=version,
                  value=value, lease=lease)
    v.txn.put(rev_to_bytes(rev, sub), _encode(kv), db=v.dbs.key)
    index.append(v.txn, v.dbs, key, [rev, sub, create, version, lease])
    old_lease = last[index.LEASE] if last else 0
    if old_lease:
        v.txn.delete(_LEASE_ID.pack(old_lease) + key, db=v.dbs.lease_keys)
    if lease:
        v.txn.put(_LEASE_ID.pack(lease) + key, b"", db=v.dbs.lease_keys)
    v.changes.append(Event(type=EventType.PUT, kv=kv))


def _delete_range(v: _View, d: DeleteRangeRequest) -> DeleteRangeResponse:
    live = _live(v, d.key, d.range_end, v.rev())
    resp = DeleteRangeResponse()
    if d.prev_kv:
        resp.prev_kvs = [_kv_of(v, k, e) for k, e in live]
    for key, entry in live:
        _write_tombstone(v, key, entry)
    resp.deleted = len(live)
    resp.header.revision = v.rev()
    return resp


def _write_tombstone(v: _View, key: bytes, live_entry: index.IndexEntry) -> None:
    rev = v.write_rev()
    sub = len(v.changes)
    kv = KeyValue(key=key, mod_revision=rev)  # etcd's tombstone KeyValue carries only the key
    v.txn.put(rev_to_bytes(rev, sub, tombstone=True), _encode(kv), db=v.dbs.key)
    index.append(v.txn, v.dbs, key, [rev, sub, 0, 0, 0])
    if live_entry[index.LEASE]:
        v.txn.delete(_LEASE_ID.pack(live_entry[index.LEASE]) + key, db=v.dbs.lease_keys)
    v.changes.append(Event(type=EventType.DELETE, kv=kv))


# -------------------------------------------------------------------- txn


@dataclass
class _Path:
    """Which branch each txn takes, decided before any write (etcd's compareToPath)."""

    succeeded: bool
    nested: list[_Path]  # one per request_txn op of the chosen branch, in order


def _branch(r: TxnRequest, path: _Path) -> list[RequestOp]:
    return r.success if path.succeeded else r.failure


def _compare_to_path(v: _View, r: TxnRequest) -> _Path:
    ok = all(_compare(v, c) for c in r.compare)
    ops = r.success if ok else r.failure
    return _Path(ok, [_compare_to_path(v, op.request_txn) for op in ops if op.request_txn])


def _compare(v: _View, c: Compare) -> bool:
    """etcd's applyCompare: every key in the range must satisfy it; a missing key compares as
    an all-zero KeyValue, except that a VALUE compare on no keys always fails."""
    live = _live(v, c.key, c.range_end, v.rev())
    if not live:
        return c.target != CompareTarget.VALUE and _compare_kv(c, KeyValue())
    return all(_compare_kv(c, _kv_of(v, k, e, c.target == CompareTarget.VALUE)) for k, e in live)


def _compare_kv(c: Compare, kv: KeyValue) -> bool:
    """etcd's compareKV. An unknown target compares as equal and an unknown result holds, as
    in etcd (both are legal in its API: proto3 enums are open)."""
    target = c.target
    if target == CompareTarget.VALUE:
        actual, wanted = kv.value, c.value
    elif target == CompareTarget.CREATE:
        actual, wanted = kv.create_revision, c.create_revision
    elif target == CompareTarget.MOD:
        actual, wanted = kv.mod_revision, c.mod_revision
    elif target == CompareTarget.VERSION:
        actual, wanted = kv.version, c.version
    elif target == CompareTarget.LEASE:
        actual, wanted = kv.lease, c.lease
    else:
        actual = wanted = 0
    if c.result == CompareResult.EQUAL:
        return actual == wanted
    if c.result == CompareResult.NOT_EQUAL:
        return actual != wanted
    if c.result == CompareResult.GREATER:
        return actual > wanted
    if c.result == CompareResult.LESS:
        return actual < wanted
    return True


def is_readonly_txn(r: TxnRequest) -> bool:
    """No put or delete anywhere in it: the node may serve it with ``Store.txn_readonly``."""
    for op in [*r.success, *r.failure]:
        if op.request_put or op.request_delete_range:
            return False
        if op.request_txn and not is_readonly_txn(op.request_txn):
            return False
    return True


def _check_path(
    v: _View, r: TxnRequest, path: _Path, check: Callable[[_View, RequestOp], None]
) -> None:
    nested = iter(path.nested)
    for op in _branch(r, path):
        if op.request_txn:
            _check_path(v, op.request_txn, next(nested), check)
        else:
            check(v, op)


def _check_op_put(v: _View, op: RequestOp) -> None:
    if op.request_put:
        _check_put(v, op.request_put, in_txn=True)


def _check_op_range(v: _View, op: RequestOp) -> None:
    """etcd's checkRequestRange: revision 0 (latest) always passes; note that a negative
    revision fails as compacted once anything was compacted (etcd compares it as is)."""
    rev = op.request_range.revision if op.request_range else 0
    if rev == 0:
        return
    if rev > v.rev():
        _fail(FutureRevisionError)
    if rev < v.compact_rev:
        _fail(CompactedError)


def _txn(v: _View, r: TxnRequest) -> TxnResponse:
    path = _compare_to_path(v, r)
    if not is_readonly_txn(r):
        _check_path(v, r, path, _check_op_put)
    _check_path(v, r, path, _check_op_range)
    resp = _apply_path(v, r, path)
    resp.header.revision = v.rev()
    return resp


def _apply_path(v: _View, r: TxnRequest, path: _Path) -> TxnResponse:
    """Nested txn responses keep a zero header revision, as etcd leaves them."""
    resp = TxnResponse(succeeded=path.succeeded)
    nested = iter(path.nested)
    for op in _branch(r, path):
        if op.request_range:
            resp.responses.append(ResponseOp(response_range=_range(v, op.request_range)))
        elif op.request_put:
            resp.responses.append(ResponseOp(response_put=_put(v, op.request_put, in_txn=True)))
        elif op.request_delete_range:
            d = _delete_range(v, op.request_delete_range)
            resp.responses.append(ResponseOp(response_delete_range=d))
        elif op.request_txn:
            t = _apply_path(v, op.request_txn, next(nested))
            resp.responses.append(ResponseOp(response_txn=t))
    return resp


# -------------------------------------------------------------------- compaction


def _compact(v: _View, c: CompactionRequest) -> CompactionResponse:
    """Compaction is physical and done in this transaction (``physical`` is implied)."""
    if c.revision <= v.compact_rev:
        _fail(CompactedError)
    if c.revision > v.rev():
        _fail(FutureRevisionError)
    v.txn.put(_COMPACT_REV, _I64.pack(c.revision), db=v.dbs.meta)
    for e in index.compact(v.txn, v.dbs, c.revision):
        raw = rev_to_bytes(e[index.MAIN], e[index.SUB], tombstone=e[index.VERSION] == 0)
        v.txn.delete(raw, db=v.dbs.key)
    return CompactionResponse(header=ResponseHeader(revision=v.rev()))


def _migrate_index(env: lmdb.Environment, dbs: _Dbs) -> None:
    """Data dirs written before the index split kept a key's whole history as one msgpack list
    in ``index``: move it into ``history`` and leave the newest entry (done once, on open)."""
    with env.begin(write=True) as txn:
        if txn.get(_INDEX_LAYOUT, db=dbs.meta) == b"2":
            return
        old = [(k, raw) for k, raw in txn.cursor(db=dbs.index)]
        decode_old = msgspec.msgpack.Decoder(list[list[int]]).decode
        for key, raw in old:
            entries = decode_old(raw)
            for entry in entries:
                index.append(txn, dbs, key, entry)
        txn.put(_INDEX_LAYOUT, b"2", db=dbs.meta)


# -------------------------------------------------------------------- leases


def _lease_keys(txn: lmdb.Transaction, dbs: _Dbs, lease_id: int) -> list[bytes]:
    prefix = _LEASE_ID.pack(lease_id)
    cursor = txn.cursor(db=dbs.lease_keys)
    keys = []
    if cursor.set_range(prefix):
        for k in cursor.iternext(values=False):
            if not k.startswith(prefix):
                break
            keys.append(k[len(prefix):])
    return keys


def _lease_grant(v: _View, g: LeaseGrantRequest, min_ttl: int) -> LeaseGrantResponse:
    """etcd's lessor.Grant: ID 0 is "not found" (the node picks IDs before proposing)."""
    if g.ID == 0:
        _fail(LeaseNotFoundError)
    if g.TTL > MAX_LEASE_TTL:
        _fail(LeaseTTLTooLargeError)
    if _lease_exists(v, g.ID):
        _fail(LeaseExistsError)
    ttl = max(g.TTL, min_ttl)
    v.txn.put(_LEASE_ID.pack(g.ID), _encode(ttl), db=v.dbs.lease)
    v.granted.append((g.ID, ttl))
    return LeaseGrantResponse(header=ResponseHeader(revision=v.rev()), ID=g.ID, TTL=ttl)


def _lease_revoke(v: _View, r: LeaseRevokeRequest) -> LeaseRevokeResponse:
    """Deletes every attached key, in key order, in one revision, then the lease."""
    if not _lease_exists(v, r.ID):
        _fail(LeaseNotFoundError)
    for key in _lease_keys(v.txn, v.dbs, r.ID):
        live = _live(v, key, b"", v.rev())
        if live:
            _write_tombstone(v, key, live[0][1])
    v.txn.delete(_LEASE_ID.pack(r.ID), db=v.dbs.lease)
    v.revoked.append(r.ID)
    return LeaseRevokeResponse(header=ResponseHeader(revision=v.rev()))


# -------------------------------------------------------------------- alarms and quota


def _alarms(txn: lmdb.Transaction, dbs: _Dbs, alarm: int) -> list[AlarmMember]:
    out = []
    for k in txn.cursor(db=dbs.alarm).iternext(values=False):
        member, kind = _ALARM.unpack(k)
        if alarm in (AlarmType.NONE, kind):
            out.append(AlarmMember(memberID=member, alarm=kind))
    return out


def _alarm_active(v: _View, alarm: int) -> bool:
    return bool(_alarms(v.txn, v.dbs, alarm))


def _alarm(v: _View, a: AlarmRequest) -> AlarmResponse:
    resp = AlarmResponse(header=ResponseHeader(revision=v.rev()))
    key = _ALARM.pack(a.memberID, a.alarm)
    member = AlarmMember(memberID=a.memberID, alarm=a.alarm)
    if a.action == AlarmAction.GET:
        resp.alarms = _alarms(v.txn, v.dbs, a.alarm)
    elif a.action == AlarmAction.ACTIVATE and a.alarm != AlarmType.NONE:
        v.txn.put(key, b"", db=v.dbs.alarm)
        resp.alarms = [member]
    elif a.action == AlarmAction.DEACTIVATE and v.txn.get(key, db=v.dbs.alarm) is not None:
        v.txn.delete(key, db=v.dbs.alarm)
        resp.alarms = [member]
    return resp


def _cost(request: object) -> int:
    """etcd's quota cost estimate; zero for requests allowed while NOSPACE is raised."""
    if isinstance(request, PutRequest):
        return KV_OVERHEAD + len(request.key) + len(request.value)
    if isinstance(request, TxnRequest):
        def puts(ops: list[RequestOp]) -> int:
            return sum(_cost(op.request_put) for op in ops if op.request_put)
        return max(puts(request.success), puts(request.failure))
    if isinstance(request, LeaseGrantRequest):
        return LEASE_OVERHEAD
    return 0

