"""Checkers of the chaos harness beyond register linearizability (tests/chaos/linearizability.py).

* watches: a watcher sees every committed change under the prefix exactly once, in revision
  order, with no gaps, with the key and value the reference history has at that revision
  (reference: a fresh watch from the start revision after the run, on a healthy cluster, which
  must itself be gap-free since every write in the workload is one put = one revision);
* durability: after kill -9 of every member and a restart, every acknowledged write is readable
  at its revision (Range with ``revision``) with its value, and in the reference history.
* lock fencing: replaying the lock keys of the reference history, every guarded write landed
  while its writer's lock key was the oldest live one (the owner), and the fencing tokens of
  the guarded writes never go back in revision order (successive holders' tokens strictly
  increase; no holder writes inside another's tenure).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from shardkv.api.etcdserverpb import rpc_pb2 as pb
from shardkv.api.etcdserverpb import rpc_pb2_grpc as rpc
from workload import (FENCED_KEYS, LEASE_PREFIX, LOCK_NAMES, PREFIX, Event, LeaseClient, Tenure,
                      Write)

MAX_SHOWN = 8


@dataclass
class Verdict:
    name: str
    ok: bool
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, problem: str) -> None:
        self.ok = False
        if len(self.problems) < MAX_SHOWN:
            self.problems.append(problem)


def check_reference(reference: list[Event], start: int, final: int) -> Verdict:
    """The reference history covers every revision start..final exactly once."""
    v = Verdict("history", True, len(reference))
    revs = [e.mod_revision for e in reference]
    if revs != sorted(set(revs)):
        v.add(f"reference watch not strictly increasing: {revs[:20]}...")
    missing = sorted(set(range(start, final + 1)) - set(revs))
    if missing:
        v.add(f"revisions {start}..{final}: no event for {len(missing)} of them, "
              f"first {missing[:10]}")
    return v


def check_watch(name: str, events: list[Event], reference: list[Event], start: int,
                final: int, errors: list[str]) -> Verdict:
    v = Verdict(name, True, len(events))
    for err in errors:
        v.add(err)
    ref = {e.mod_revision: e for e in reference}
    prev = start - 1
    seen: set[int] = set()
    for e in events:
        if e.mod_revision in seen:
            v.add(f"duplicate event at revision {e.mod_revision}: {e}")
        elif e.mod_revision <= prev:
            v.add(f"out of order: revision {e.mod_revision} after {prev}")
        elif e.mod_revision > prev + 1 and e.mod_revision <= final:
            v.add(f"gap: revisions {prev + 1}..{e.mod_revision - 1} never delivered")
        if e.mod_revision in ref and ref[e.mod_revision] != e:
            v.add(f"revision {e.mod_revision}: watcher saw {e}, history has "
                  f"{ref[e.mod_revision]}")
        elif e.mod_revision not in ref and e.mod_revision <= final:
            v.add(f"revision {e.mod_revision}: watcher saw {e}, not in the history")
        seen.add(e.mod_revision)
        prev = max(prev, e.mod_revision)
    if prev < final:
        v.add(f"watcher stopped at revision {prev}, cluster reached {final}")
    return v


def check_durability(target: str, acked: list[Write], reference: list[Event],
                     timeout: float = 5.0) -> Verdict:
    """Every acknowledged write is in the reference history and readable at its revision."""
    v = Verdict("durability", True, len(acked))
    ref = {e.mod_revision: e for e in reference}
    with grpc.insecure_channel(target) as ch:
        kv = rpc.KVStub(ch)
        for w in sorted(acked, key=lambda w: w.revision):
            e = ref.get(w.revision)
            if e is None or (e.key, e.value) != (w.key, w.value):
                v.add(f"acknowledged {w} but the history has {e} at that revision")
            resp = kv.Range(pb.RangeRequest(key=PREFIX + w.key.encode(), revision=w.revision),
                            timeout=timeout)
            got = resp.kvs[0] if resp.kvs else None
            if got is None or got.value.decode() != w.value or got.mod_revision != w.revision:
                shown = None if got is None else (got.value.decode(), got.mod_revision)
                v.add(f"acknowledged {w}; Range at revision {w.revision} reads {shown}")
    return v


def check_leases(target: str, client: LeaseClient, timeout: float = 5.0) -> Verdict:
    """No key of an acknowledged-revoked lease is readable at the end (after the restart)."""
    v = Verdict(f"leases ({client.rounds} revoked)", True, client.rounds)
    for problem in client.violations:
        v.add(problem)
    with grpc.insecure_channel(target) as ch:
        resp = rpc.KVStub(ch).Range(pb.RangeRequest(key=LEASE_PREFIX,
                                                    range_end=LEASE_PREFIX[:-1] + b"0"),
                                    timeout=timeout)
    alive = {kv.key for kv in resp.kvs}
    for key in client.revoked:
        if key in alive:
            v.add(f"{key!r} still readable at the end; its lease was revoked")
    return v


def check_locks(reference: list[Event], tenures: list[Tenure], stalls: int = 0,
                kind: str = "v3lock") -> tuple[Verdict, str]:
    """The fencing check over the reference history (see the module docstring), and a line on
    real-time overlaps: etcd's locks are leases, so a paused or cut-off holder can still think
    it holds the lock after its lease expired and the next one got it; that is expected, and
    is why the guarded writes must be fenced. Not a failure."""
    lock_prefix = LOCK_NAMES[kind][len(PREFIX):].decode() + "/"
    fenced = FENCED_KEYS[kind][len(PREFIX):].decode()
    tenures = [t for t in tenures if t.kind == kind]
    holder = {t.token: t.client for t in tenures}
    v = Verdict(f"{kind} fencing ({len(tenures)} holds)", True)
    live: dict[str, int] = {}  # lock key -> create revision
    last = 0
    for e in sorted(reference, key=lambda e: e.mod_revision):
        if e.key.startswith(lock_prefix):
            if e.kind == "PUT":
                live.setdefault(e.key, e.mod_revision)
            else:
                live.pop(e.key, None)
        elif e.key == fenced and e.kind == "PUT":
            v.checked += 1
            token, cid = (int(x) for x in e.value.split(":")[:2])
            owner = min(live.values()) if live else None
            if owner != token:
                held = "no lock key was live" if owner is None else \
                    f"the lock owner was the key created at {owner}"
                v.add(f"revision {e.mod_revision}: guarded write {e.value!r} (token {token}) "
                      f"but then {held}")
            if token < last:
                v.add(f"revision {e.mod_revision}: token {token} after token {last} "
                      f"(a holder wrote after its successor)")
            if holder.get(token, cid) != cid:
                v.add(f"revision {e.mod_revision}: token {token} belongs to client "
                      f"{holder[token]}, written by client {cid}")
            last = max(last, token)
    ordered = sorted(tenures, key=lambda t: t.acquired)
    overlaps = sum(1 for i, a in enumerate(ordered) for b in ordered[i + 1:]
                   if b.acquired < a.released and a.client != b.client)
    fenced_off = sum(t.fenced_off for t in tenures)
    info = (f"{kind}: {len(tenures)} holds ({stalls} holders stalled past their lease), "
            f"{v.checked} guarded writes committed, {fenced_off} refused (lock lost); holds "
            f"overlapping in real time: {overlaps} (etcd locks are "
            f"leases, not mutually exclusive in real time under pauses; the fencing check is "
            f"what must pass)")
    return v, info
