"""Watch hub: etcd's watchable store, synchronous.

Watchers are *synced* (they have seen every revision up to the store's current one and get new
events straight from ``notify``) or *unsynced* (behind: created with an old ``start_revision``, or
their buffer was full when events arrived). ``sync_unsynced`` catches unsynced watchers up from
storage and moves them back. Each watcher buffers at most ``buffer_limit`` responses; a consumer
drains it with ``Watcher.take``. Events of one revision always travel in one response, and a
watcher sees every revision in order exactly once, however slow it is.

The asyncio host calls ``notify(apply_result.events)`` after each ``Store.apply`` and
``sync_unsynced()`` periodically (and after draining a watcher); ``on_ready`` callbacks tell it a
watcher has something to send. Nothing here blocks or spawns.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from shardkv.mvcc.errors import CompactedError
from shardkv.mvcc.kv import (
    Event,
    EventType,
    FilterType,
    KeyValue,
    RangeRequest,
    ResponseHeader,
    WatchCreateRequest,
    WatchResponse,
)
from shardkv.mvcc.store import Store

DEFAULT_BUFFER_LIMIT = 128  # etcd's per-watcher channel length
DEFAULT_REVS_PER_SYNC = 1000  # etcd's watchBatchMaxRevs: revisions per catch-up response
_PrevCache = dict[tuple[bytes, int], KeyValue | None]  # (key, revision) -> value then


class Watcher:
    """One watch: what it selects, and its buffer of responses waiting to be sent."""

    def __init__(self, hub: WatchHub, watch_id: int, req: WatchCreateRequest,
                 next_rev: int, on_ready: Callable[[], None] | None) -> None:
        self._hub = hub
        self.id = watch_id
        self.key = req.key
        self.range_end = req.range_end
        self.prev_kv = req.prev_kv
        self.progress_notify = req.progress_notify
        self._skip = {EventType.PUT if f == FilterType.NOPUT else EventType.DELETE
                      for f in req.filters}
        # Unsynced: the first revision not sent yet. Synced: a lower bound only (it stays at the
        # start revision, which matters while that is still in the future).
        self.next_rev = next_rev
        self._buffer: deque[WatchResponse] = deque()
        self._on_ready = on_ready

    def matches(self, event: Event) -> bool:
        if event.type in self._skip:
            return False
        key = event.kv.key
        if not self.range_end:
            return key == self.key
        if self.range_end == b"\0":
            return key >= self.key
        return self.key <= key < self.range_end

    @property
    def full(self) -> bool:
        return len(self._buffer) >= self._hub.buffer_limit

    def send(self, resp: WatchResponse) -> None:
        self._buffer.append(resp)
        if len(self._buffer) == 1 and self._on_ready is not None:
            self._on_ready()

    def take(self, max_responses: int | None = None) -> list[WatchResponse]:
        """Drain up to ``max_responses`` buffered responses, oldest first."""
        n = len(self._buffer) if max_responses is None else min(max_responses, len(self._buffer))
        return [self._buffer.popleft() for _ in range(n)]


class WatchHub:
    def __init__(self, store: Store, buffer_limit: int = DEFAULT_BUFFER_LIMIT,
                 revs_per_sync: int = DEFAULT_REVS_PER_SYNC) -> None:
        self.store = store
        self.buffer_limit = buffer_limit
        self.revs_per_sync = revs_per_sync
        self._synced: dict[int, Watcher] = {}
        # Synced watchers again, indexed so notify only visits watchers an event can concern:
        # single-key watchers by key; range watchers are checked against every event.
        self._synced_by_key: dict[bytes, dict[int, Watcher]] = {}
        self._synced_ranges: dict[int, Watcher] = {}
        self._unsynced: dict[int, Watcher] = {}
        self._next_id = 0

    # ---------------------------------------------------------------- watchers

    def watch(self, req: WatchCreateRequest,
              on_ready: Callable[[], None] | None = None) -> Watcher:
        """Create a watcher; its first response is ``created``. A ``start_revision`` at or
        below the current revision replays history from there (compacted history cancels the
        watcher with ``compact_revision`` set, on the next ``sync_unsynced``)."""
        watch_id = req.watch_id or self._auto_id()
        if watch_id in self._synced or watch_id in self._unsynced:
            raise ValueError(f"watch id {watch_id} already in use")
        current = self.store.current_revision
        start = req.start_revision
        watcher = Watcher(self, watch_id, req, start if start > 0 else current + 1, on_ready)
        watcher.send(WatchResponse(header=self._header(), watch_id=watch_id, created=True))
        if watcher.next_rev > current:
            self._add_synced(watcher)
        else:
            self._unsynced[watch_id] = watcher
        return watcher

    def _add_synced(self, watcher: Watcher) -> None:
        self._synced[watcher.id] = watcher
        if watcher.range_end:
            self._synced_ranges[watcher.id] = watcher
        else:
            self._synced_by_key.setdefault(watcher.key, {})[watcher.id] = watcher

    def _remove_synced(self, watcher: Watcher) -> None:
        del self._synced[watcher.id]
        if watcher.range_end:
            del self._synced_ranges[watcher.id]
            return
        same_key = self._synced_by_key[watcher.key]
        del same_key[watcher.id]
        if not same_key:
            del self._synced_by_key[watcher.key]

    def _auto_id(self) -> int:
        while self._next_id in self._synced or self._next_id in self._unsynced:
            self._next_id += 1
        self._next_id += 1
        return self._next_id - 1

    def cancel(self, watch_id: int) -> None:
        watcher = self._synced.get(watch_id) or self._unsynced.pop(watch_id, None)
        if watcher is None:
            return
        if watch_id in self._synced:
            self._remove_synced(watcher)
        watcher.send(WatchResponse(header=self._header(), watch_id=watch_id, canceled=True))

    @property
    def has_watchers(self) -> bool:
        return bool(self._synced or self._unsynced)

    def is_synced(self, watch_id: int) -> bool:
        return watch_id in self._synced

    def _header(self) -> ResponseHeader:
        return ResponseHeader(member_id=self.store.member_id, revision=self.store.current_revision)

    # ---------------------------------------------------------------- delivery

    def notify(self, events: list[Event]) -> None:
        """Hand synced watchers the events of newly applied revisions (oldest first). A watcher
        whose buffer is full moves to the unsynced set and later catches up from storage."""
        if not events:
            return
        first = events[0].kv.mod_revision
        by_key: dict[bytes, list[Event]] = {}
        for event in events:
            by_key.setdefault(event.kv.key, []).append(event)
        concerned = dict(self._synced_ranges)
        for key in by_key:
            concerned.update(self._synced_by_key.get(key, {}))
        prev_cache: _PrevCache = {}
        for watcher in concerned.values():
            # A synced watcher has been sent everything before this batch; its next_rev only
            # matters while it waits for a future start revision.
            candidates = by_key[watcher.key] if not watcher.range_end else events
            mine = self._select(watcher, candidates)
            if not mine:
                continue
            if watcher.full:
                self._remove_synced(watcher)
                self._unsynced[watcher.id] = watcher
                watcher.next_rev = max(watcher.next_rev, first)
                continue
            self._send_events(watcher, mine, prev_cache)

    @staticmethod
    def _select(watcher: Watcher, events: Iterable[Event]) -> list[Event]:
        return [e for e in events if e.kv.mod_revision >= watcher.next_rev and watcher.matches(e)]

    def _send_events(self, watcher: Watcher, mine: list[Event], prev_cache: _PrevCache) -> None:
        if not mine:
            return
        if watcher.prev_kv:
            mine = [Event(type=e.type, kv=e.kv, prev_kv=self._prev_kv(e, prev_cache)) for e in mine]
        watcher.send(WatchResponse(header=self._header(), watch_id=watcher.id, events=mine))

    def _prev_kv(self, event: Event, cache: _PrevCache) -> KeyValue | None:
        """The key's value just before the event (etcd reads it at mod_revision - 1; missing if
        compacted away). Like etcd, none for a creating put, even when a delete of the same key
        in the same revision preceded it."""
        if event.type == EventType.PUT and event.kv.create_revision == event.kv.mod_revision:
            return None
        at = (event.kv.key, event.kv.mod_revision - 1)
        if at not in cache:
            try:
                kvs = self.store.range(RangeRequest(key=at[0], revision=at[1])).kvs
            except CompactedError:
                kvs = []
            cache[at] = kvs[0] if kvs else None
        return cache[at]

    def sync_unsynced(self) -> None:
        """Catch unsynced watchers up from storage, at most ``revs_per_sync`` revisions per
        response, stopping at a full buffer. Watchers behind the compaction are cancelled with
        ``compact_revision`` set, as etcd does."""
        current = self.store.current_revision
        compact = self.store.compact_revision
        prev_cache: _PrevCache = {}
        for watcher in list(self._unsynced.values()):
            if watcher.next_rev < compact:
                del self._unsynced[watcher.id]
                watcher.send(WatchResponse(header=self._header(), watch_id=watcher.id,
                                           canceled=True, compact_revision=compact))
                continue
            while watcher.next_rev <= current and not watcher.full:
                end = min(current, watcher.next_rev + self.revs_per_sync - 1)
                mine = self._select(watcher, self.store.events(watcher.next_rev, end))
                self._send_events(watcher, mine, prev_cache)
                watcher.next_rev = end + 1
            if watcher.next_rev > current:
                del self._unsynced[watcher.id]
                self._add_synced(watcher)

    def restored(self, previous_revision: int) -> None:
        """The store was replaced under the hub (a Raft snapshot installed): synced watchers
        have been sent everything up to ``previous_revision`` and now catch up on the new
        history from there, or are cancelled as compacted (etcd's watchable store restore)."""
        for watcher in list(self._synced.values()):
            self._remove_synced(watcher)
            watcher.next_rev = max(watcher.next_rev, previous_revision + 1)
            self._unsynced[watcher.id] = watcher

    def progress(self, requested_only: bool = True) -> None:
        """Progress notification (an empty response at the current revision) to synced watchers:
        those created with ``progress_notify`` (periodic), or all (``requested_only=False``, for a
        client's explicit progress request). Unsynced watchers are skipped: the revision would
        claim events they have not received yet."""
        for watcher in self._synced.values():
            if (watcher.progress_notify or not requested_only) and not watcher.full:
                watcher.send(WatchResponse(header=self._header(), watch_id=watcher.id))
