"""A plain in-memory reference model of etcd v3.4's MVCC semantics.

Written from etcd's behaviour (apply.go, kvstore_txn.go, v3rpc/key.go), deliberately naively:
the full history of every key stays in a dict, compaction only moves the "compacted" fence, and
every read scans everything. The property tests compare ``shardkv.mvcc.store.Store`` against it
field by field. Errors are returned as exception instances (compared by type).
"""
from __future__ import annotations

from shardkv.mvcc import errors as E
from shardkv.mvcc.kv import (
    CompactionRequest,
    CompactionResponse,
    Compare,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseRevokeRequest,
    LeaseRevokeResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    ResponseHeader,
    ResponseOp,
    TxnRequest,
    TxnResponse,
)

MIN_TTL = 2


def in_range(k: bytes, key: bytes, range_end: bytes) -> bool:
    if not range_end:
        return k == key
    if range_end == b"\0":
        return k >= key
    return key <= k < range_end


class Model:
    def __init__(self, max_txn_ops: int = 128) -> None:
        self.rev = 1
        self.compact = -1
        self.history: dict[bytes, list[tuple[int, KeyValue | None]]] = {}
        self.leases: dict[int, int] = {}
        self.max_txn_ops = max_txn_ops
        # per-request scratch
        self.changed = False

    # ------------------------------------------------------------------ state

    def cur(self) -> int:
        return self.rev + 1 if self.changed else self.rev

    def state_at(self, rev: int) -> dict[bytes, KeyValue]:
        out = {}
        for k, hist in self.history.items():
            latest = None
            for main, kv in hist:
                if main <= rev:
                    latest = kv
            if latest is not None:
                out[k] = latest
        return out

    def live(self, key: bytes, range_end: bytes, rev: int) -> list[KeyValue]:
        state = self.state_at(rev)
        return [KeyValue(**{f: getattr(state[k], f) for f in KeyValue.__struct_fields__})
                for k in sorted(state) if in_range(k, key, range_end)]

    # ------------------------------------------------------------------ entry points

    def read(self, req: object) -> object:
        self.changed = False
        try:
            if isinstance(req, RangeRequest):
                self.validate_key(req.key)
                return self.range(req)
            self.validate_txn_top(req)
            return self.txn(req)
        except E.EtcdError as err:
            return err

    def write(self, req: object) -> object:
        self.changed = False
        try:
            if isinstance(req, PutRequest):
                self.validate_put(req)
                resp = self.put(req)
            elif isinstance(req, DeleteRangeRequest):
                self.validate_key(req.key)
                resp = self.delete(req)
            elif isinstance(req, TxnRequest):
                self.validate_txn_top(req)
                resp = self.txn(req)
            elif isinstance(req, CompactionRequest):
                resp = self.compaction(req)
            elif isinstance(req, LeaseGrantRequest):
                resp = self.grant(req)
            elif isinstance(req, LeaseRevokeRequest):
                resp = self.revoke(req)
            else:
                raise TypeError(req)
        except E.EtcdError as err:
            self.rollback()
            return err
        if self.changed:
            self.rev += 1
        return resp

    def rollback(self) -> None:
        for k in list(self.history):
            self.history[k] = [(m, kv) for m, kv in self.history[k] if m <= self.rev]
            if not self.history[k]:
                del self.history[k]
        self.changed = False

    # ------------------------------------------------------------------ validation (gRPC layer)

    def validate_key(self, key: bytes) -> None:
        if not key:
            raise E.EmptyKeyError()

    def validate_put(self, p: PutRequest) -> None:
        self.validate_key(p.key)
        if p.ignore_value and p.value:
            raise E.ValueProvidedError()
        if p.ignore_lease and p.lease:
            raise E.LeaseProvidedError()

    def validate_txn_top(self, t: TxnRequest) -> None:
        self.validate_txn(t, self.max_txn_ops)
        self.intervals(t.success)
        self.intervals(t.failure)

    def validate_txn(self, t: TxnRequest, budget: int) -> None:
        n = max(len(t.compare), len(t.success), len(t.failure))
        if n > budget:
            raise E.TooManyOpsError()
        for c in t.compare:
            self.validate_key(c.key)
        for op in t.success + t.failure:
            if op.request_range is not None:
                self.validate_key(op.request_range.key)
            elif op.request_put is not None:
                self.validate_put(op.request_put)
            elif op.request_delete_range is not None:
                self.validate_key(op.request_delete_range.key)
            elif op.request_txn is not None:
                self.validate_txn(op.request_txn, budget - n)
            else:
                raise E.KeyNotFoundError()

    def intervals(self, ops: list[RequestOp]) -> tuple[set[bytes], list[tuple[bytes, bytes]]]:
        def hit(dels: list[tuple[bytes, bytes]], k: bytes) -> bool:
            # etcd's interval tree compares strings; range_end "\0" therefore covers nothing.
            return any((k == b if not e else b <= k < e) for b, e in dels)

        dels = [(o.request_delete_range.key, o.request_delete_range.range_end)
                for o in ops if o.request_delete_range is not None]
        puts: set[bytes] = set()
        for o in ops:
            if o.request_txn is None:
                continue
            pt, dt = self.intervals(o.request_txn.success)
            pe, de = self.intervals(o.request_txn.failure)
            for k in pt:
                if k in puts or hit(dels, k):
                    raise E.DuplicateKeyError()
                puts.add(k)
            for k in pe:
                if (k in puts and k not in pt) or hit(dels, k):
                    raise E.DuplicateKeyError()
                puts.add(k)
            dels += dt + de
        for o in ops:
            if o.request_put is not None:
                if o.request_put.key in puts or hit(dels, o.request_put.key):
                    raise E.DuplicateKeyError()
                puts.add(o.request_put.key)
        return puts, dels

    # ------------------------------------------------------------------ operations

    def range(self, r: RangeRequest) -> RangeResponse:
        cur = self.cur()
        rev = r.revision
        if rev > cur:
            raise E.FutureRevisionError()
        if rev <= 0:
            rev = cur
        if rev < self.compact:
            raise E.CompactedError()
        kvs = self.live(r.key, r.range_end, rev)
        resp = RangeResponse(header=ResponseHeader(revision=cur), count=len(kvs))
        if r.count_only:
            return resp
        filtered = (r.min_mod_revision or r.max_mod_revision or r.min_create_revision
                    or r.max_create_revision)
        if r.limit > 0 and r.sort_order == 0 and not filtered:
            # etcd quirk: with sort_order NONE it fetches only limit+1 keys (in key order) and
            # only then sorts them by a non-KEY target.
            kvs = kvs[: r.limit + 1]
        kvs = [kv for kv in kvs
               if not (r.max_mod_revision and kv.mod_revision > r.max_mod_revision)
               and not (r.min_mod_revision and kv.mod_revision < r.min_mod_revision)
               and not (r.max_create_revision and kv.create_revision > r.max_create_revision)
               and not (r.min_create_revision and kv.create_revision < r.min_create_revision)]
        order = r.sort_order
        if r.sort_target != 0 and order == 0:
            order = 1
        attr = ["key", "version", "create_revision", "mod_revision", "value"][r.sort_target]
        if order:
            kvs.sort(key=lambda kv: getattr(kv, attr), reverse=order == 2)
        if r.limit > 0 and len(kvs) > r.limit:
            kvs = kvs[: r.limit]
            resp.more = True
        if r.keys_only:
            for kv in kvs:
                kv.value = b""
        resp.kvs = kvs
        return resp

    def get(self, key: bytes) -> KeyValue | None:
        found = self.live(key, b"", self.cur())
        return found[0] if found else None

    def check_put(self, p: PutRequest, in_txn: bool) -> None:
        # etcd: a standalone put checks its lease first, a txn's put its key first.
        checks = [self.check_lease, self.check_key_exists]
        for check in reversed(checks) if in_txn else checks:
            check(p)

    def check_lease(self, p: PutRequest) -> None:
        if p.lease and p.lease not in self.leases:
            raise E.LeaseNotFoundError()

    def check_key_exists(self, p: PutRequest) -> None:
        if (p.ignore_value or p.ignore_lease) and self.get(p.key) is None:
            raise E.KeyNotFoundError()

    def put(self, p: PutRequest, in_txn: bool = False) -> PutResponse:
        self.check_put(p, in_txn)
        prev = self.get(p.key)
        value = prev.value if p.ignore_value else p.value
        lease = prev.lease if p.ignore_lease else p.lease
        main = self.rev + 1
        kv = KeyValue(key=p.key, value=value, lease=lease, mod_revision=main,
                      create_revision=prev.create_revision if prev else main,
                      version=prev.version + 1 if prev else 1)
        self.history.setdefault(p.key, []).append((main, kv))
        self.changed = True
        return PutResponse(header=ResponseHeader(revision=main), prev_kv=prev if p.prev_kv else None)

    def delete(self, d: DeleteRangeRequest) -> DeleteRangeResponse:
        kvs = self.live(d.key, d.range_end, self.cur())
        for kv in kvs:
            self.history[kv.key].append((self.rev + 1, None))
            self.changed = True
        return DeleteRangeResponse(header=ResponseHeader(revision=self.cur()), deleted=len(kvs),
                                   prev_kvs=kvs if d.prev_kv else [])

    def compare(self, c: Compare) -> bool:
        kvs = self.live(c.key, c.range_end, self.cur())
        if not kvs:
            if c.target == 3:
                return False
            kvs = [KeyValue()]
        attr = ["version", "create_revision", "mod_revision", "value", "lease"][c.target]
        for kv in kvs:
            a, b = getattr(kv, attr), getattr(c, attr)
            ok = [a == b, a > b, a < b, a != b][c.result]
            if not ok:
                return False
        return True

    def choose(self, t: TxnRequest) -> tuple[bool, list]:
        """Decide every branch up front (compares see the state before the txn)."""
        ok = all(self.compare(c) for c in t.compare)
        ops = t.success if ok else t.failure
        return ok, [(op, self.choose(op.request_txn) if op.request_txn else None) for op in ops]

    def walk_checks(self, plan: list) -> None:
        for op, sub in plan:
            if sub is not None:
                self.walk_checks(sub[1])
            elif op.request_put is not None:
                self.check_put(op.request_put, in_txn=True)

    def walk_range_checks(self, plan: list) -> None:
        for op, sub in plan:
            if sub is not None:
                self.walk_range_checks(sub[1])
            elif op.request_range is not None and op.request_range.revision != 0:
                if op.request_range.revision > self.cur():
                    raise E.FutureRevisionError()
                if op.request_range.revision < self.compact:
                    raise E.CompactedError()

    def txn(self, t: TxnRequest) -> TxnResponse:
        ok, plan = self.choose(t)
        self.walk_checks(plan)  # lease/ignore checks (only matter for txns with puts)
        self.walk_range_checks(plan)
        resp = self.run(ok, plan)
        resp.header.revision = self.cur()
        return resp

    def run(self, ok: bool, plan: list) -> TxnResponse:
        resp = TxnResponse(succeeded=ok)
        for op, sub in plan:
            if sub is not None:
                resp.responses.append(ResponseOp(response_txn=self.run(*sub)))
            elif op.request_range is not None:
                resp.responses.append(ResponseOp(response_range=self.range(op.request_range)))
            elif op.request_put is not None:
                resp.responses.append(ResponseOp(response_put=self.put(op.request_put, True)))
            else:
                d = self.delete(op.request_delete_range)
                resp.responses.append(ResponseOp(response_delete_range=d))
        return resp

    def compaction(self, c: CompactionRequest) -> CompactionResponse:
        if c.revision <= self.compact:
            raise E.CompactedError()
        if c.revision > self.rev:
            raise E.FutureRevisionError()
        self.compact = c.revision
        return CompactionResponse(header=ResponseHeader(revision=self.rev))

    def grant(self, g: LeaseGrantRequest) -> LeaseGrantResponse:
        if g.ID == 0:
            raise E.LeaseNotFoundError()
        if g.ID in self.leases:
            raise E.LeaseExistsError()
        self.leases[g.ID] = max(g.TTL, MIN_TTL)
        return LeaseGrantResponse(header=ResponseHeader(revision=self.rev), ID=g.ID,
                                  TTL=self.leases[g.ID])

    def revoke(self, r: LeaseRevokeRequest) -> LeaseRevokeResponse:
        if r.ID not in self.leases:
            raise E.LeaseNotFoundError()
        for kv in self.live(b"\0", b"\0", self.cur()):
            if kv.lease == r.ID:
                self.history[kv.key].append((self.rev + 1, None))
                self.changed = True
        del self.leases[r.ID]
        return LeaseRevokeResponse(header=ResponseHeader(revision=self.cur()))
