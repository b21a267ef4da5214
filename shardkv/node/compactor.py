"""etcd's auto-compaction (--auto-compaction-mode / --auto-compaction-retention), run by the
leader and proposed through Raft like a client's Compact.

* periodic: keep ``retention`` of history. The revision is sampled every tenth of the check
  interval (the retention, at most an hour); at each check the store is compacted to the
  newest sample that is at least ``retention`` old.
* revision: every 5 minutes, compact to ``current revision - retention``.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque

from shardkv.api import errors
from shardkv.mvcc.kv import CompactionRequest

log = logging.getLogger("shardkv.compactor")
REVISION_CHECK_INTERVAL = 300.0
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_retention(mode: str, text: str) -> float:
    """Seconds (periodic) or revisions (revision); 0 disables. etcd reads a bare number in
    periodic mode as hours, and otherwise a Go duration such as "1h30m" or "10s"."""
    if mode == "revision":
        return float(int(text))
    if mode != "periodic":
        raise ValueError(f"unknown --auto-compaction-mode {mode!r} (want periodic or revision)")
    if re.fullmatch(r"\d+", text):
        return int(text) * 3600.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid --auto-compaction-retention {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


async def run(member, mode: str, retention: float) -> None:
    """Forever: compact per ``mode`` while ``member`` leads."""
    if retention <= 0:
        return
    if mode == "revision":
        while True:
            await asyncio.sleep(REVISION_CHECK_INTERVAL)
            target = member.store.current_revision - int(retention)
            await _compact(member, target)
    check = min(retention, 3600.0)
    samples: deque[tuple[float, int]] = deque()
    last_check = time.monotonic()
    while True:
        await asyncio.sleep(check / 10)
        now = time.monotonic()
        samples.append((now, member.store.current_revision))
        if now - last_check < check:
            continue
        last_check = now
        target = 0
        while samples and now - samples[0][0] >= retention:
            target = samples.popleft()[1]
        await _compact(member, target)


async def _compact(member, target: int) -> None:
    if not member.is_leader or target <= max(member.store.compact_revision, 0):
        return
    try:
        await member.propose(CompactionRequest(revision=target))
        log.info("finished scheduled compaction at %d", target)
    except errors.EtcdError as exc:
        log.warning("scheduled compaction at %d failed: %s", target, exc)
