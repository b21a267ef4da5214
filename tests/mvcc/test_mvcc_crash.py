"""Crash tests: a child process writes under load and announces each acknowledged write; we
SIGKILL it at varying moments, reopen, and check that every acknowledged write is there, the
in-flight one is either wholly there or wholly absent, and the data is well-formed."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mvcc_crash_child import DELETE_EVERY, entry_data, store_key
from shardkv.mvcc.kv import RangeRequest
from shardkv.mvcc.raftlog import RaftLog
from shardkv.mvcc.store import Store
from shardkv.raft.types import HardState

CHILD = Path(__file__).with_name("mvcc_crash_child.py")
ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 8


def run_until_killed(kind: str, path: Path, seed: int) -> tuple[list[list[str]], list[str] | None]:
    """Returns (acknowledged writes, in-flight write or None), as the child announced them."""
    rng = random.Random(seed)
    acks_wanted = rng.randint(2, 25)
    kill_mid_write = rng.random() < 0.7  # else right after an acknowledgement
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), kind, str(path), str(seed)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines: list[str] = []
    try:
        for line in proc.stdout:  # each read is bounded by the child's next announcement
            lines.append(line)
            acks = sum(1 for seen in lines if seen.startswith("ACK"))
            if acks < acks_wanted:
                continue
            if line.startswith("BEGIN") and kill_mid_write:
                # A bounded wait for the child to get somewhere into the write (building,
                # writing pages, syncing, committing): varies where the kill lands.
                time.sleep(rng.uniform(0, 0.01))
                break
            if line.startswith("ACK") and not kill_mid_write:
                break
    finally:
        proc.kill()
        # Read the rest through the same buffered reader: lines it already pulled from the
        # pipe would be lost to communicate(), and their writes would look unacknowledged.
        rest = proc.stdout.read()
        err = proc.stderr.read()
        proc.wait(timeout=30)
    lines += rest.splitlines(keepends=True)  # announcements made while we were not reading
    acked: list[list[str]] = []
    inflight: list[str] | None = None
    for line in lines:
        words = line.split()
        if words and words[0] == "BEGIN":
            inflight = words[1:]
        elif words == ["ACK"]:
            acked.append(inflight)
            inflight = None
    assert len(acked) >= acks_wanted, f"child stopped early: {err}"
    return acked, inflight


class LogModel:
    """What the Raft log must hold after a sequence of acknowledged writes."""

    def __init__(self) -> None:
        self.terms: dict[int, int] = {}
        self.snap = (0, 0)
        self.hard_state = HardState()

    def copy(self) -> LogModel:
        other = LogModel()
        other.terms, other.snap, other.hard_state = dict(self.terms), self.snap, self.hard_state
        return other

    def apply(self, op: list[str]) -> None:
        kind, a, b = op[0], int(op[1]), int(op[2])
        if kind == "SNAP":
            self.snap = (a, b)
            self.terms = {i: t for i, t in self.terms.items() if i > a - 5}
            return
        term = int(op[3])
        self.terms = {i: t for i, t in self.terms.items() if i < a}
        self.terms.update((i, term) for i in range(a, b + 1))
        self.hard_state = HardState(term=term, vote=1, commit=b)

    def expected(self) -> tuple:
        entries = [(i, t) for i, t in sorted(self.terms.items()) if i > self.snap[0]]
        return self.hard_state, self.snap, entries


@pytest.mark.parametrize("kind", ["raftlog", "raftlog-small"])
def test_raft_log_survives_sigkill(tmp_path, kind):
    path = tmp_path / "raftlog"
    model = LogModel()
    for round_ in range(ROUNDS):
        acked, inflight = run_until_killed(kind, path, seed=round_)
        for op in acked:
            model.apply(op)
        with RaftLog(path) as log:
            state = log.load()
        for e in state.entries:
            assert e.data == entry_data(e.index, e.term)
        got = (state.hard_state, (state.snapshot.meta.index, state.snapshot.meta.term),
               [(e.index, e.term) for e in state.entries])
        candidates = [model]
        if inflight is not None:
            with_inflight = model.copy()
            with_inflight.apply(inflight)
            candidates.append(with_inflight)
        matching = [m for m in candidates if m.expected() == got]
        assert matching, f"round {round_}: log matches neither acked nor acked+in-flight state"
        model = matching[-1]


def expected_keys(applied: int) -> list[tuple[bytes, bytes, int]]:
    """(key, value, mod_revision) of every live key after entries 1..applied."""
    out = []
    for i in range(1, applied + 1):
        deleted_by = i + 3
        if i % DELETE_EVERY == 0 or (deleted_by <= applied and deleted_by % DELETE_EVERY == 0):
            continue
        out.append((store_key(i), entry_data(i, 0), i + 1))  # each entry bumps one revision
    return out


def test_store_survives_sigkill(tmp_path):
    path = tmp_path / "store"
    applied = 0
    for round_ in range(ROUNDS):
        acked, inflight = run_until_killed("store", path, seed=100 + round_)
        acked_index = int(acked[-1][0])
        with Store(path) as store:
            allowed = {acked_index} | ({int(inflight[0])} if inflight else set())
            assert store.consistent_index in allowed
            assert store.consistent_index >= applied
            applied = store.consistent_index
            assert store.current_revision == applied + 1
            resp = store.range(RangeRequest(key=b"\x00", range_end=b"\x00"))
            assert [(kv.key, kv.value, kv.mod_revision) for kv in resp.kvs] == expected_keys(applied)
