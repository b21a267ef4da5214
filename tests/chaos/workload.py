"""Client workloads of the chaos harness, through etcd's v3 gRPC API (one thread per client).

* ``RegisterClient``: get / put / compare-and-set (a Txn comparing the value, then a put) on a
  few keys under ``PREFIX``, every value unique. Each operation is recorded as a
  ``linearizability.Op`` with time.monotonic() invoke/complete times: ok, failed (a Txn that
  answered succeeded=False: a definite non-swap), or unknown (timeout, unavailable, any other
  error on a write: it may or may not have taken effect; complete = inf). Reads that fail are
  dropped (a read has no effect). Acknowledged writes are kept with their revision.
* ``Watcher``: a watch on ``PREFIX`` that resumes from its last revision + 1 after every
  disconnect, rotating through the members.
* ``LeaseClient``: grant, put under the lease, revoke, read back.
* ``LockClient``: etcd's v3lock Lock/Unlock with a fencing token (the lock key's create
  revision) and writes guarded by a Txn on the lock key.
"""
from __future__ import annotations

import math
import queue
import random
import threading
import time
from dataclasses import dataclass, field

import grpc

from linearizability import CAS, GET, PUT, Op
from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc
from shardkv.api.v3lockpb import v3lock_pb2, v3lock_pb2_grpc

PREFIX = b"chaos/"
PREFIX_END = b"chaos0"  # PREFIX with its last byte + 1
OP_TIMEOUT = 3.0


@dataclass(frozen=True)
class Write:
    """An acknowledged write: ``key`` held ``value`` from revision ``revision``."""
    key: str
    value: str
    revision: int


@dataclass(frozen=True)
class Event:
    key: str
    value: str
    mod_revision: int
    kind: str  # PUT / DELETE


@dataclass
class SharedState:
    """What clients share: the last value seen per key (to pick cas expectations), and the
    clock of key generations: every ``rotate`` seconds the clients move on to fresh keys (as
    Jepsen's independent keys do), which bounds each key's history and the number of
    unknown-outcome operations the linearizability search must place on it."""
    rotate: float = 5.0
    started: float = field(default_factory=time.monotonic)
    last_seen: dict[str, str] = field(default_factory=dict)
    attempted: set[str] = field(default_factory=set)  # every value any client tried to write
    lock: threading.Lock = field(default_factory=threading.Lock)


class RegisterClient(threading.Thread):
    def __init__(self, cid: int, targets: list[str], keys: list[str], shared: SharedState,
                 stop: threading.Event, seed: int, serializable: bool = False) -> None:
        super().__init__(name=f"client-{cid}", daemon=True)
        self.serializable = serializable  # local (possibly stale) reads: the checker's teeth
        self.cid, self.targets, self.keys = cid, targets, keys
        self.shared, self.stop_event = shared, stop
        self.rnd = random.Random(seed)
        self.ops: list[Op] = []
        self.acked: list[Write] = []
        self.counts = {"ok": 0, "failed": 0, "unknown": 0}
        self._n = 0
        self._target = cid % len(targets)

    def run(self) -> None:
        while not self.stop_event.is_set():
            with grpc.insecure_channel(self.targets[self._target]) as ch:
                kv = rpc.KVStub(ch)
                while not self.stop_event.is_set():
                    if not self.one_op(kv):
                        break  # unknown outcome: try another member
            self._target = (self._target + 1) % len(self.targets)
            self.stop_event.wait(0.1)

    def one_op(self, kv: rpc.KVStub) -> bool:
        generation = int((time.monotonic() - self.shared.started) / self.shared.rotate)
        key = f"{self.rnd.choice(self.keys)}.{generation}"
        roll = self.rnd.random()
        with self.shared.lock:
            expected = self.shared.last_seen.get(key)
        if roll < 0.4:
            return self._get(kv, key)
        if roll < 0.7 or expected is None:
            return self._put(kv, key)
        return self._cas(kv, key, expected)

    def _value(self) -> str:
        self._n += 1
        value = f"c{self.cid}-{self._n}"
        with self.shared.lock:
            self.shared.attempted.add(value)
        return value

    def _seen(self, key: str, value: str | None) -> None:
        if value is not None:
            with self.shared.lock:
                self.shared.last_seen[key] = value

    def _record(self, op: Op, status: str) -> None:
        self.ops.append(op)
        self.counts[status] += 1

    def _get(self, kv: rpc.KVStub, key: str) -> bool:
        invoke = time.monotonic()
        try:
            resp = kv.Range(pb.RangeRequest(key=PREFIX + key.encode(),
                                            serializable=self.serializable), timeout=OP_TIMEOUT)
        except grpc.RpcError:
            self.counts["unknown"] += 1  # a read has no effect: not part of the history
            return False
        complete = time.monotonic()
        value = resp.kvs[0].value.decode() if resp.kvs else None
        self._seen(key, value)
        self._record(Op(self.cid, key, GET, None, value, invoke, complete), "ok")
        return True

    def _put(self, kv: rpc.KVStub, key: str) -> bool:
        value = self._value()
        invoke = time.monotonic()
        try:
            resp = kv.Put(pb.PutRequest(key=PREFIX + key.encode(), value=value.encode()),
                          timeout=OP_TIMEOUT)
        except grpc.RpcError:
            self._record(Op(self.cid, key, PUT, value, None, invoke, math.inf), "unknown")
            return False
        self._record(Op(self.cid, key, PUT, value, True, invoke, time.monotonic()), "ok")
        self.acked.append(Write(key, value, resp.header.revision))
        self._seen(key, value)
        return True

    def _cas(self, kv: rpc.KVStub, key: str, expected: str) -> bool:
        value = self._value()
        k = PREFIX + key.encode()
        req = pb.TxnRequest(
            compare=[pb.Compare(key=k, target=pb.Compare.VALUE, result=pb.Compare.EQUAL,
                                value=expected.encode())],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=value.encode()))])
        invoke = time.monotonic()
        try:
            resp = kv.Txn(req, timeout=OP_TIMEOUT)
        except grpc.RpcError:
            self._record(Op(self.cid, key, CAS, (expected, value), None, invoke, math.inf),
                         "unknown")
            return False
        complete = time.monotonic()
        op = Op(self.cid, key, CAS, (expected, value), resp.succeeded, invoke, complete)
        self._record(op, "ok" if resp.succeeded else "failed")
        if resp.succeeded:
            self.acked.append(Write(key, value, resp.header.revision))
            self._seen(key, value)
        return True


class Watcher(threading.Thread):
    """Watches PREFIX from ``start_revision``; after any disconnect resumes from the last
    revision seen + 1 on the next member."""

    def __init__(self, wid: int, targets: list[str], start_revision: int) -> None:
        super().__init__(name=f"watcher-{wid}", daemon=True)
        self.targets = targets
        self.next_revision = start_revision
        self.events: list[Event] = []
        self.reconnects = 0
        self.errors: list[str] = []  # a canceled watch (e.g. compacted): the checker reports it
        self._target = wid % len(targets)
        self._stopping = threading.Event()
        self._call = None
        self._lock = threading.Lock()

    @property
    def last_revision(self) -> int:
        return self.next_revision - 1

    def stop(self) -> None:
        self._stopping.set()
        self.reconnect()

    def reconnect(self) -> None:
        """Drop the current stream (e.g. one stuck on a member that fell behind)."""
        with self._lock:
            if self._call is not None:
                self._call.cancel()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._watch_once(self.targets[self._target])
            except grpc.RpcError:
                pass
            if self._stopping.is_set():
                return
            self.reconnects += 1
            self._target = (self._target + 1) % len(self.targets)
            self._stopping.wait(0.2)

    def _watch_once(self, target: str) -> None:
        requests: queue.Queue = queue.Queue()
        requests.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=PREFIX, range_end=PREFIX_END, start_revision=self.next_revision)))

        def gen():
            while True:
                req = requests.get()
                if req is None:
                    return
                yield req

        with grpc.insecure_channel(target) as ch:
            call = rpc.WatchStub(ch).Watch(gen())
            with self._lock:
                self._call = call
            if self._stopping.is_set():
                call.cancel()
            try:
                for resp in call:
                    if resp.canceled:
                        self.errors.append(f"watch canceled: {resp.cancel_reason!r} "
                                           f"(compact_revision {resp.compact_revision})")
                        self._stopping.set()
                        return
                    for ev in resp.events:
                        self._event(ev)
            finally:
                requests.put(None)
                with self._lock:
                    self._call = None

    def _event(self, ev) -> None:
        kind = "DELETE" if ev.type == 1 else "PUT"
        self.events.append(Event(ev.kv.key[len(PREFIX):].decode(), ev.kv.value.decode(),
                                 ev.kv.mod_revision, kind))
        self.next_revision = max(self.next_revision, ev.kv.mod_revision + 1)


LEASE_PREFIX = PREFIX + b"lease/"


class LeaseClient(threading.Thread):
    """Grant a lease, put a key under it, revoke it; once a revoke is acknowledged the key must
    never be readable again and the lease must refuse new keys. Violations seen on the way are
    kept in ``violations``; acknowledged revokes in ``revoked`` for the end-of-run check."""

    def __init__(self, targets: list[str], stop: threading.Event) -> None:
        super().__init__(name="leases", daemon=True)
        self.targets, self.stop_event = targets, stop
        self.revoked: list[bytes] = []
        self.violations: list[str] = []
        self.rounds = 0
        self._target = 0

    def run(self) -> None:
        n = 0
        while not self.stop_event.is_set():
            target = self.targets[self._target % len(self.targets)]
            self._target += 1
            n += 1
            try:
                with grpc.insecure_channel(target) as ch:
                    self._round(rpc.KVStub(ch), rpc.LeaseStub(ch), LEASE_PREFIX + b"%d" % n)
            except grpc.RpcError:
                pass  # unknown outcome: this round checks nothing
            self.stop_event.wait(0.2)

    def _round(self, kv: rpc.KVStub, leases: rpc.LeaseStub, key: bytes) -> None:
        lease = leases.LeaseGrant(pb.LeaseGrantRequest(TTL=600), timeout=OP_TIMEOUT).ID
        kv.Put(pb.PutRequest(key=key, value=b"leased", lease=lease), timeout=OP_TIMEOUT)
        leases.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease), timeout=OP_TIMEOUT)
        self.revoked.append(key)
        self.rounds += 1
        if kv.Range(pb.RangeRequest(key=key), timeout=OP_TIMEOUT).kvs:
            self.violations.append(f"{key!r} readable after its lease {lease:x} was revoked")
        try:
            kv.Put(pb.PutRequest(key=key + b"/late", value=b"x", lease=lease), timeout=OP_TIMEOUT)
            self.violations.append(f"put under revoked lease {lease:x} succeeded")
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise


# lock keys: LOCK_NAMES[kind] + b"/" + lease id in hex; FENCED_KEYS[kind] is written only by
# that lock's holders, guarded by their lock key. v3lock: the server-side Lock API; mutex: a
# client-side lease lock like clientv3/concurrency.Mutex (txn create_revision == 0, then wait
# until our key is the oldest under the prefix)
LOCK_NAMES = {"v3lock": PREFIX + b"lock/L", "mutex": PREFIX + b"lock/M"}
FENCED_KEYS = {"v3lock": PREFIX + b"fenced/L", "mutex": PREFIX + b"fenced/M"}
LOCK_WAIT = 10.0  # seconds a client waits for a lock before giving up
LOCK_TTL = 4  # seconds: a holder that dies (or is cut off) loses the lock this long after


@dataclass
class Tenure:
    """One acquisition as the client saw it: ``token`` is the lock key's create revision (the
    fencing token); real-time [acquired, released]; the guarded writes it tried."""
    kind: str
    client: int
    key: bytes
    token: int
    acquired: float
    released: float = math.inf
    writes: int = 0
    fenced_off: int = 0  # guarded writes refused: the lock key was gone (lease expired)


class LockClient(threading.Thread):
    """etcd's v3lock (``kind`` "v3lock"), or a client-side lease lock ("mutex", as
    clientv3/concurrency.Mutex: a Txn puts our key if its create revision is 0, then we poll
    until it is the oldest key under the prefix): LeaseGrant, Lock (blocks until ours is the
    oldest key under the name), read our key's create revision (the fencing token), then a few writes of FENCED_KEY each
    guarded by a Txn that compares our lock key's create revision (etcd's recommended pattern:
    the write lands only while we still hold the lock), then Unlock and LeaseRevoke. A holder
    that errors out just walks away: its lease expires. Before a write a holder may stall for
    longer than its lease (``STALL``): the write must then be refused."""

    STALL = 0.1  # chance that a holder stalls past its lease before a write (a GC pause)

    def __init__(self, cid: int, targets: list[str], stop: threading.Event, seed: int,
                 fenced: bool = True, kind: str = "v3lock") -> None:
        super().__init__(name=f"{kind}-{cid}", daemon=True)
        self.cid, self.targets, self.stop_event = cid, targets, stop
        self.kind, self.lock_name, self.fenced_key = kind, LOCK_NAMES[kind], FENCED_KEYS[kind]
        self.crashed: str | None = None  # the workload's own bug: the checker reports it
        self.fenced = fenced  # False: plain puts (teeth: the fencing checker must object)
        self.stalls = 0
        self.rnd = random.Random(seed)
        self.tenures: list[Tenure] = []
        self.acked: list[Write] = []
        self.errors = 0
        self._n = 0
        self._target = cid % len(targets)

    def run(self) -> None:
        while not self.stop_event.is_set():
            target = self.targets[self._target]
            try:
                with grpc.insecure_channel(target) as ch:
                    self._round(rpc.KVStub(ch), rpc.LeaseStub(ch), v3lock_pb2_grpc.LockStub(ch))
            except grpc.RpcError:
                self.errors += 1
                self._target = (self._target + 1) % len(self.targets)
            except Exception as exc:  # noqa: BLE001 - not the cluster's fault: fail the run
                self.crashed = repr(exc)
                raise
            self.stop_event.wait(self.rnd.uniform(0.0, 0.3))

    def _round(self, kv, leases, locks) -> None:
        lease = leases.LeaseGrant(pb.LeaseGrantRequest(TTL=LOCK_TTL), timeout=OP_TIMEOUT).ID
        if self.kind == "v3lock":
            key = locks.Lock(v3lock_pb2.LockRequest(name=self.lock_name, lease=lease),
                             timeout=LOCK_WAIT).key
        else:
            key = self._mutex(kv, lease)
            if key is None:
                return
        acquired = time.monotonic()
        # waiting for the lock used up part of the lease: one keepalive gives the holder a
        # whole TTL again (clients keep their session's lease alive all along)
        alive = next(iter(leases.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lease)]),
                                                timeout=OP_TIMEOUT)), None)
        got = kv.Range(pb.RangeRequest(key=key), timeout=OP_TIMEOUT).kvs
        if alive is None or alive.TTL <= 0:
            got = []
        if not got:
            return  # already lost (lease expired): nothing to fence
        tenure = Tenure(self.kind, self.cid, key, got[0].create_revision, acquired)
        self.tenures.append(tenure)
        try:
            for _ in range(self.rnd.randint(1, 3)):
                self._n += 1
                value = f"{tenure.token}:{self.cid}:{self._n}"
                if self.rnd.random() < self.STALL:  # the holder stalls; its lease expires
                    self.stalls += 1
                    time.sleep(LOCK_TTL + 1.5)
                put = pb.PutRequest(key=self.fenced_key, value=value.encode())
                req = pb.TxnRequest(
                    compare=[pb.Compare(key=key, target=pb.Compare.CREATE,
                                        result=pb.Compare.EQUAL, create_revision=tenure.token)]
                    if self.fenced else [],
                    success=[pb.RequestOp(request_put=put)])
                tenure.writes += 1
                resp = kv.Txn(req, timeout=OP_TIMEOUT)
                if not resp.succeeded:
                    tenure.fenced_off += 1
                    return
                self.acked.append(Write(self.fenced_key[len(PREFIX):].decode(), value,
                                        resp.header.revision))
                time.sleep(self.rnd.uniform(0.0, 0.3))
        finally:
            tenure.released = time.monotonic()
        if self.kind == "v3lock":
            locks.Unlock(v3lock_pb2.UnlockRequest(key=key), timeout=OP_TIMEOUT)
        else:
            kv.DeleteRange(pb.DeleteRangeRequest(key=key), timeout=OP_TIMEOUT)
        leases.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease), timeout=OP_TIMEOUT)

    def _mutex(self, kv, lease: int) -> bytes | None:
        """clientv3/concurrency.Mutex.Lock, polling instead of watching: our key, put if its
        create revision is 0, until it is the oldest under the prefix. None: gave up (our key
        is deleted) or our key vanished (the lease expired)."""
        prefix = self.lock_name + b"/"
        key = prefix + b"%x" % lease
        kv.Txn(pb.TxnRequest(
            compare=[pb.Compare(key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL,
                                create_revision=0)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=b"", lease=lease))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))]), timeout=OP_TIMEOUT)
        deadline = time.monotonic() + LOCK_WAIT
        oldest = pb.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0", limit=1,
                                 sort_order=pb.RangeRequest.ASCEND,
                                 sort_target=pb.RangeRequest.CREATE)
        while True:
            owner = kv.Range(oldest, timeout=OP_TIMEOUT).kvs
            if owner and owner[0].key == key:
                return key
            if not kv.Range(pb.RangeRequest(key=key), timeout=OP_TIMEOUT).kvs:
                return None
            if time.monotonic() > deadline or self.stop_event.is_set():
                kv.DeleteRange(pb.DeleteRangeRequest(key=key), timeout=OP_TIMEOUT)
                return None
            time.sleep(0.05)
