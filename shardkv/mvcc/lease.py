"""Lease timing: the leader-local half of etcd's lessor.

What a lease *is* (its ID, granted TTL, attached keys) is state-machine state kept in LMDB by
``Store`` and changed only by applied requests (``LeaseGrantRequest``/``LeaseRevokeRequest``, puts
and deletes). When a lease *expires* is leader-local and in memory here, as in etcd: keep-alives
are not replicated, and a follower's leases never expire ("forever") until it is promoted.

The caller owns the clock: pass ``clock`` (seconds, monotonic) at construction and/or ``now`` to
``expired``; nothing here sleeps or starts timers. The leader polls ``expired(now)`` and proposes a
``LeaseRevokeRequest`` for each ID through Raft.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from shardkv.mvcc.errors import LeaseNotFoundError, NotPrimaryError

MAX_LEASE_TTL = 9_000_000_000  # etcd's MaxLeaseTTL (seconds)
DEFAULT_MIN_TTL = 2  # etcd's minimum: ceil(1.5 * election timeout of 1 s)
DEFAULT_REVOKE_RATE = 1000  # etcd's leaseRevokeRate: revokes per second the leader aims for


def new_lease_id() -> int:
    """A random positive int64 for a LeaseGrant that asked the server to choose (ID == 0).

    Chosen by the node *before* proposing, as etcd does, so every replica applies the same ID."""
    return secrets.randbits(63) or 1


class Lessor:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        min_ttl: int = DEFAULT_MIN_TTL,
        revoke_rate: int = DEFAULT_REVOKE_RATE,
    ) -> None:
        self._clock = clock
        self.min_ttl = min_ttl
        self._revoke_rate = revoke_rate
        self._ttl: dict[int, int] = {}
        self._expiry: dict[int, float] = {}  # only while primary
        self.primary = False

    # -- mirror of applied state (called by Store after its transaction commits) --

    def adopt(self, leases: dict[int, int]) -> None:
        """Make ``{ID: granted TTL}`` the lease set (store open, defrag, snapshot install).
        Leases already known keep their deadline, so a defrag on the leader extends nothing."""
        now = self._clock()
        self._ttl = dict(leases)
        if self.primary:
            self._expiry = {lid: self._expiry.get(lid, now + ttl) for lid, ttl in leases.items()}

    def granted(self, lease_id: int, ttl: int) -> None:
        self._ttl[lease_id] = ttl
        if self.primary:
            self._expiry[lease_id] = self._clock() + ttl

    def revoked(self, lease_id: int) -> None:
        self._ttl.pop(lease_id, None)
        self._expiry.pop(lease_id, None)

    # -- leader-local timing --

    def promote(self, extend: float) -> None:
        """Become the leader's lessor: every lease gets ``extend`` seconds on top of its TTL, and
        leases that would expire in the same second beyond the revoke rate are spread out (etcd's
        Promote), so a new leader does not revoke everything at once."""
        self.primary = True
        now = self._clock()
        self._expiry = {lid: now + extend + ttl for lid, ttl in self._ttl.items()}
        self._spread_expiries(now)

    def _spread_expiries(self, now: float) -> None:
        if len(self._expiry) < self._revoke_rate:
            return  # etcd: fewer leases than one second of revokes cannot pile up
        target = max(1, (3 * self._revoke_rate) // 4)  # leave headroom below the revoke rate
        order = sorted(self._expiry, key=lambda lid: self._expiry[lid])
        base = self._expiry[order[0]] - now
        next_window = base + 1.0
        count = 0
        for lid in order:
            remaining = self._expiry[lid] - now
            if remaining > next_window:
                base, next_window, count = remaining, remaining + 1.0, 1
                continue
            count += 1
            if count <= target:
                continue
            delay = count / target - (remaining - base)
            next_window = base + delay
            self._expiry[lid] = now + remaining + delay

    def demote(self) -> None:
        """Lost leadership: leases stop expiring here (the new leader decides)."""
        self.primary = False
        self._expiry = {}

    def renew(self, lease_id: int) -> int:
        """Keep-alive: restart the lease's TTL; returns the granted TTL."""
        if not self.primary:
            raise NotPrimaryError()
        if lease_id not in self._ttl or self._expiry[lease_id] <= self._clock():
            raise LeaseNotFoundError()
        self._expiry[lease_id] = self._clock() + self._ttl[lease_id]
        return self._ttl[lease_id]

    def remaining(self, lease_id: int) -> int:
        """Whole seconds left (etcd truncates); the granted TTL when not primary."""
        if lease_id not in self._ttl:
            raise LeaseNotFoundError()
        if not self.primary:
            return self._ttl[lease_id]
        return max(0, int(self._expiry[lease_id] - self._clock()))

    def granted_ttl(self, lease_id: int) -> int:
        if lease_id not in self._ttl:
            raise LeaseNotFoundError()
        return self._ttl[lease_id]

    def expired(self, now: float | None = None) -> list[int]:
        """IDs whose time is up, soonest first; empty unless primary."""
        if not self.primary:
            return []
        now = self._clock() if now is None else now
        due = [lid for lid, at in self._expiry.items() if at <= now]
        return sorted(due, key=lambda lid: self._expiry[lid])

    def ids(self) -> list[int]:
        return sorted(self._ttl)

    def __contains__(self, lease_id: int) -> bool:
        return lease_id in self._ttl
