"""Timestamps at the milestones of a request's path, for scripts/trace_put.py.

Off unless SHARDKV_TRACE=<path prefix> is set: then every ``tr(label)`` records
(CLOCK_MONOTONIC ns, label) in memory, and the process writes them to ``<prefix>.<pid>`` when
it exits. CLOCK_MONOTONIC is shared by all processes of a host, so the members' files merge
into one timeline. Costs one function call per milestone when off."""
from __future__ import annotations

import atexit
import os
import time

_PREFIX = os.environ.get("SHARDKV_TRACE", "")
TRACING = bool(_PREFIX)  # guard labels that cost something to build
_events: list[tuple[str, int]] = []


def tr(label: str) -> None:
    if TRACING:
        _events.append((label, time.monotonic_ns()))


def _dump() -> None:
    if TRACING and _events:
        with open(f"{_PREFIX}.{os.getpid()}", "w") as f:
            f.writelines(f"{t} {label}\n" for label, t in _events)


atexit.register(_dump)
