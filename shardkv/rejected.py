"""Counts of hostile or malformed input dropped at a boundary (a peer message, an HTTP/2
frame, a client stream): what was refused is counted here and logged (rate-limited) where it
was refused, never raised into the loop that read it.

One Prometheus counter, ``shardkv_rejected_input_total{source, reason}``; ``/metrics`` serves it
beside the member's gauges. Any room may import this module (it imports nothing of shardkv)."""
from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter

REGISTRY = CollectorRegistry(auto_describe=True)
REJECTED = Counter("shardkv_rejected_input", "Input dropped at a boundary, by source and reason.",
                   ["source", "reason"], registry=REGISTRY)
_LOG_EVERY_S = 10.0  # at most one log line per (source, reason) this often: a flood must not
_last_logged: dict[tuple[str, str], float] = {}  # turn into a flood of log lines


def count(source: str, reason: str, log: logging.Logger | None = None, detail: str = "") -> None:
    """Count one rejected input; log it (with ``detail``) at most once per _LOG_EVERY_S."""
    REJECTED.labels(source, reason).inc()
    if log is None:
        return
    now = time.monotonic()
    key = (source, reason)
    if now - _last_logged.get(key, -_LOG_EVERY_S) >= _LOG_EVERY_S:
        _last_logged[key] = now
        log.warning("rejected %s input (%s)%s", source, reason, f": {detail}" if detail else "")


def value(source: str, reason: str) -> float:
    """The current count (tests)."""
    return REJECTED.labels(source, reason)._value.get()
