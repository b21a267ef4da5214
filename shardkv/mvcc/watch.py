"""Watch hub: etcd's watchable store, synchronous.

Every watcher belongs to a *stream* (one client Watch call: etcd's watchStream) that queues its
watchers' responses until the host sends them. What a stream may hold is bounded, in responses
and in bytes, and so is what each of its watchers may hold there.

Watchers are *synced* (they have seen every revision up to the store's current one and get new
events straight from ``notify``) or *unsynced* (behind: created with an old ``start_revision``,
or their stream had no room when events arrived: etcd's victims). ``sync_unsynced`` catches
unsynced watchers up from storage, one bounded step at a time (etcd's syncWatchers): at most
``MAX_WATCHERS_PER_SYNC`` watchers, one bounded read of history shared by all of them, and only
as much as their streams have room for; the rest waits for the next step. A watcher sees every
revision in order exactly once, however slow its client; events of one revision always travel
in one response. Watchers that select the same events of a notification or of a history read
share one ``Events`` list, so the host encodes those events once (``Events.encoded``).

The asyncio host calls ``notify(apply_result.events)`` after each ``Store.apply``, and
``sync_unsynced()`` again soon while it returns True (yielding to other work in between), else
when ``on_sync_wanted`` fires (a stream with unsynced watchers emptied its queue, a watcher
starts in the past) or periodically. A stream's ``on_ready`` tells the host it has something to
send; the host takes it with ``WatchStream.pop``. Nothing here blocks or spawns.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from itertools import islice

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
from shardkv.mvcc.store import EventsPage, Store

DEFAULT_BUFFER_LIMIT = 128  # responses one watcher may have queued (etcd's chanBufLen)
WATCHER_MAX_BYTES = 1024 * 1024  # event bytes one watcher may have queued
STREAM_MAX_RESPONSES = 4096  # responses one stream may have queued
STREAM_MAX_BYTES = 4 * 1024 * 1024  # event bytes one stream may have queued
# A response gathers whole revisions until it holds this many event bytes (one revision may
# hold more: it is never split).
RESPONSE_BYTES = 256 * 1024
DEFAULT_REVS_PER_SYNC = 1000  # etcd's watchBatchMaxRevs: revisions per catch-up read
MAX_WATCHERS_PER_SYNC = 512  # etcd's maxWatchersPerSync
SYNC_READ_BYTES = 1024 * 1024  # history read per catch-up step (at least one revision)
# Event checks (watcher x candidate event) per catch-up step, so that one step stays short
# even with many watchers selecting differently.
SYNC_WORK = 50_000
_SCAN_PER_SYNC = 4 * MAX_WATCHERS_PER_SYNC  # unsynced watchers looked at per step
_MAX_SELECTIONS = 4096  # distinct selections kept with a page before it is read again
_EVENT_OVERHEAD = 32  # bytes an event costs beyond its keys and values, roughly, once encoded
_CONTROL_BYTES = 64  # a created / canceled / progress response

_PrevCache = dict[tuple[bytes, int], KeyValue | None]  # (key, revision) -> value then


class Events(list):
    """The events of one response, oldest first. Shared by every watcher that selected the same
    events and never changed once queued, so the host may cache their encoding in ``encoded``."""

    __slots__ = ("size", "encoded")

    def __init__(self, events: Iterable[Event], size: int) -> None:
        super().__init__(events)
        self.size = size  # bytes of keys and values, roughly as encoded
        self.encoded: object = None


def _event_size(event: Event) -> int:
    size = len(event.kv.key) + len(event.kv.value) + _EVENT_OVERHEAD
    if event.prev_kv is not None:
        size += len(event.prev_kv.key) + len(event.prev_kv.value) + _EVENT_OVERHEAD
    return size


class Watcher:
    """One watch: what it selects, and where it stands."""

    def __init__(self, stream: WatchStream, watch_id: int, req: WatchCreateRequest,
                 next_rev: int) -> None:
        self.stream = stream
        self.id = watch_id
        self.key = req.key
        self.range_end = req.range_end
        self.prev_kv = req.prev_kv
        self.progress_notify = req.progress_notify
        self._skip = frozenset(EventType.PUT if f == FilterType.NOPUT else EventType.DELETE
                               for f in req.filters)
        # Watchers with equal selectors select the same events from the same candidates.
        self.selector = (self.key, self.range_end, self._skip, self.prev_kv)
        # Unsynced: the first revision not sent yet. Synced: a lower bound only (it stays at the
        # start revision, which matters while that is still in the future).
        self.next_rev = next_rev
        self.queued = 0  # responses of this watcher in its stream's queue
        self.queued_bytes = 0

    def matches(self, event: Event) -> bool:
        if event.type in self._skip:
            return False
        key = event.kv.key
        if not self.range_end:
            return key == self.key
        if self.range_end == b"\0":
            return key >= self.key
        return self.key <= key < self.range_end

    def take(self, max_responses: int | None = None) -> list[WatchResponse]:
        """Drain up to ``max_responses`` queued responses of this watcher's stream (its own
        unless it was created on a shared stream), oldest first."""
        return self.stream.take(max_responses)


class WatchStream:
    """The watchers of one client stream and their queued responses, oldest first."""

    def __init__(self, hub: WatchHub, on_ready: Callable[[], None] | None) -> None:
        self._hub = hub
        self._on_ready = on_ready
        self._queue: deque[tuple[Watcher, WatchResponse, int]] = deque()
        self.bytes = 0
        self.control = 0  # created/canceled responses queued (the host may bound these)
        self.behind = 0  # watchers of this stream in the unsynced set
        self.watchers: dict[int, Watcher] = {}

    def __len__(self) -> int:
        return len(self._queue)

    def room(self, watcher: Watcher, size: int) -> bool:
        """May ``watcher`` queue a response of ``size`` event bytes? An empty stream takes any
        one response, so a revision bigger than every bound still goes out."""
        if not self._queue:
            return True
        hub = self._hub
        return (len(self._queue) < hub.stream_max_responses
                and self.bytes + size <= hub.stream_max_bytes
                and watcher.queued < hub.buffer_limit
                and (not watcher.queued or watcher.queued_bytes + size <= hub.watcher_max_bytes))

    def put(self, watcher: Watcher, resp: WatchResponse, size: int) -> None:
        """Queue a response (callers check ``room`` first, except for control responses: one
        created and one canceled per watcher)."""
        self._queue.append((watcher, resp, size))
        self.bytes += size
        watcher.queued += 1
        watcher.queued_bytes += size
        if not resp.events and (resp.created or resp.canceled):
            self.control += 1
        if len(self._queue) == 1 and self._on_ready is not None:
            self._on_ready()

    def pop(self) -> WatchResponse | None:
        """The oldest queued response, or None."""
        if not self._queue:
            return None
        watcher, resp, size = self._queue.popleft()
        self.bytes -= size
        watcher.queued -= 1
        watcher.queued_bytes -= size
        if not resp.events and (resp.created or resp.canceled):
            self.control -= 1
        if not self._queue and self.behind:
            self._hub.wake_sync()  # room again for watchers catching up
        return resp

    def take(self, max_responses: int | None = None) -> list[WatchResponse]:
        n = len(self._queue) if max_responses is None else min(max_responses, len(self._queue))
        return [self.pop() for _ in range(n)]  # type: ignore[misc]


class _Page:
    """A page of history read for catch-up, with what watchers selected from it so far."""

    def __init__(self, start: int, page: EventsPage) -> None:
        self.start = start
        self.events = page.events
        self.end = page.end
        self.compact_revision = page.compact_revision
        self.by_key: dict[bytes, list[Event]] = {}
        for event in page.events:
            self.by_key.setdefault(event.kv.key, []).append(event)
        # (selector, first revision) -> responses, shared by every watcher asking the same
        self.selections: dict[object, list[Events]] = {}
        self.prev_cache: _PrevCache = {}


class WatchHub:
    def __init__(self, store: Store, buffer_limit: int = DEFAULT_BUFFER_LIMIT,
                 revs_per_sync: int = DEFAULT_REVS_PER_SYNC,
                 watcher_max_bytes: int = WATCHER_MAX_BYTES,
                 stream_max_responses: int = STREAM_MAX_RESPONSES,
                 stream_max_bytes: int = STREAM_MAX_BYTES,
                 response_bytes: int = RESPONSE_BYTES,
                 sync_read_bytes: int = SYNC_READ_BYTES) -> None:
        self.store = store
        self.buffer_limit = buffer_limit
        self.revs_per_sync = revs_per_sync
        self.watcher_max_bytes = watcher_max_bytes
        self.stream_max_responses = stream_max_responses
        self.stream_max_bytes = stream_max_bytes
        self.response_bytes = response_bytes
        self.sync_read_bytes = sync_read_bytes
        # Called when unsynced watchers may progress now (the host then calls sync_unsynced).
        self.on_sync_wanted: Callable[[], None] | None = None
        self._synced: dict[int, Watcher] = {}
        # Synced watchers again, indexed so notify only visits watchers an event can concern:
        # single-key watchers by key; range watchers are checked against every event.
        self._synced_by_key: dict[bytes, dict[int, Watcher]] = {}
        self._synced_ranges: dict[int, Watcher] = {}
        # In the order sync_unsynced visits them (visited ones move to the end: round robin).
        self._unsynced: dict[int, Watcher] = {}
        self._page: _Page | None = None  # the last history read, while watchers are behind
        self._next_id = 0

    # ---------------------------------------------------------------- watchers

    def new_stream(self, on_ready: Callable[[], None] | None = None) -> WatchStream:
        """A stream for watchers; ``on_ready`` is called when its queue stops being empty."""
        return WatchStream(self, on_ready)

    def watch(self, req: WatchCreateRequest, on_ready: Callable[[], None] | None = None,
              stream: WatchStream | None = None) -> Watcher:
        """Create a watcher on ``stream`` (a stream of its own with ``on_ready`` if None); its
        first response is ``created``. A ``start_revision`` at or below the current revision
        replays history from there (compacted history cancels the watcher with
        ``compact_revision`` set, on a following ``sync_unsynced``)."""
        watch_id = req.watch_id or self._auto_id()
        if watch_id in self._synced or watch_id in self._unsynced:
            raise ValueError(f"watch id {watch_id} already in use")
        if stream is None:
            stream = self.new_stream(on_ready)
        current = self.store.current_revision
        start = req.start_revision
        watcher = Watcher(stream, watch_id, req, start if start > 0 else current + 1)
        stream.watchers[watch_id] = watcher
        stream.put(watcher, WatchResponse(header=self._header(), watch_id=watch_id, created=True),
                   _CONTROL_BYTES)
        if watcher.next_rev > current:
            self._add_synced(watcher)
        else:
            self._add_unsynced(watcher)
            self.wake_sync()
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

    def _add_unsynced(self, watcher: Watcher) -> None:
        self._unsynced[watcher.id] = watcher
        watcher.stream.behind += 1

    def _remove_unsynced(self, watcher: Watcher) -> None:
        del self._unsynced[watcher.id]
        watcher.stream.behind -= 1

    def _forget(self, watcher: Watcher) -> None:
        if watcher.id in self._synced:
            self._remove_synced(watcher)
        elif watcher.id in self._unsynced:
            self._remove_unsynced(watcher)
        watcher.stream.watchers.pop(watcher.id, None)

    def _auto_id(self) -> int:
        while self._next_id in self._synced or self._next_id in self._unsynced:
            self._next_id += 1
        self._next_id += 1
        return self._next_id - 1

    def cancel(self, watch_id: int) -> None:
        watcher = self._synced.get(watch_id) or self._unsynced.get(watch_id)
        if watcher is None:
            return
        self._forget(watcher)
        watcher.stream.put(watcher, WatchResponse(header=self._header(), watch_id=watch_id,
                                                  canceled=True), _CONTROL_BYTES)

    def close_stream(self, stream: WatchStream) -> None:
        """The client is gone: drop the stream's watchers and whatever it had queued."""
        for watcher in list(stream.watchers.values()):
            self._forget(watcher)
        while stream.pop() is not None:
            pass

    def wake_sync(self) -> None:
        if self.on_sync_wanted is not None:
            self.on_sync_wanted()

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
        whose stream has no room moves to the unsynced set and later catches up from storage."""
        if not events:
            return
        first = events[0].kv.mod_revision
        by_key: dict[bytes, list[Event]] = {}
        for event in events:
            by_key.setdefault(event.kv.key, []).append(event)
        concerned = dict(self._synced_ranges)
        for key in by_key:
            concerned.update(self._synced_by_key.get(key, {}))
        header = self._header()
        shared: dict[object, list[Events]] = {}
        prev_cache: _PrevCache = {}
        for watcher in concerned.values():
            # A synced watcher has been sent everything before this batch; its next_rev only
            # matters while it waits for a future start revision (or just caught up past it).
            ahead = watcher.next_rev > first
            signature = (watcher.selector, watcher.next_rev) if ahead else watcher.selector
            responses = shared.get(signature)
            if responses is None:
                candidates = by_key[watcher.key] if not watcher.range_end else events
                mine = self._select(watcher, candidates) if ahead else \
                    [e for e in candidates if watcher.matches(e)]
                responses = shared[signature] = self._responses(watcher, mine, prev_cache)
            missed = self._deliver(watcher, responses, header)
            if missed is not None:  # etcd's victim: catch up from storage from there
                self._remove_synced(watcher)
                watcher.next_rev = missed
                self._add_unsynced(watcher)

    @staticmethod
    def _select(watcher: Watcher, events: Iterable[Event]) -> list[Event]:
        return [e for e in events if e.kv.mod_revision >= watcher.next_rev and watcher.matches(e)]

    def _responses(self, watcher: Watcher, mine: list[Event],
                   prev_cache: _PrevCache) -> list[Events]:
        """``mine`` (with prev_kv if the watcher asks for it) cut into responses of whole
        revisions of about ``response_bytes`` each."""
        if watcher.prev_kv:
            mine = [Event(type=e.type, kv=e.kv, prev_kv=self._prev_kv(e, prev_cache)) for e in mine]
        out: list[Events] = []
        start, size = 0, 0
        for i, event in enumerate(mine):
            rev = event.kv.mod_revision
            if size >= self.response_bytes and rev != mine[i - 1].kv.mod_revision:
                out.append(Events(mine[start:i], size))
                start, size = i, 0
            size += _event_size(event)
        if start < len(mine):
            out.append(Events(mine[start:], size))
        return out

    def _deliver(self, watcher: Watcher, responses: list[Events],
                 header: ResponseHeader) -> int | None:
        """Queue ``responses`` in order while the stream has room. Returns the first revision
        not queued, or None when everything was."""
        stream = watcher.stream
        for events in responses:
            if not stream.room(watcher, events.size):
                return events[0].kv.mod_revision
            stream.put(watcher, WatchResponse(header=header, watch_id=watcher.id, events=events),
                       events.size)
        return None

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

    def sync_unsynced(self) -> bool:
        """One bounded catch-up step (etcd's syncWatchers): up to ``MAX_WATCHERS_PER_SYNC``
        unsynced watchers whose streams have room get their history from one bounded read,
        as much as their streams take; watchers behind the compaction are cancelled with
        ``compact_revision`` set, as etcd does. Returns True when the step did work and more
        is left: the host should call again soon, letting other work run in between."""
        if not self._unsynced:
            return False
        current = self.store.current_revision
        compact = self.store.compact_revision
        chosen: list[Watcher] = []
        for watcher in list(islice(self._unsynced.values(), _SCAN_PER_SYNC)):
            if watcher.next_rev < compact:
                self._cancel_compacted(watcher, compact)
                continue
            if watcher.next_rev > current:  # restored() under a store that is not ahead yet
                self._remove_unsynced(watcher)
                self._add_synced(watcher)
                continue
            self._rotate(watcher)
            if len(chosen) < MAX_WATCHERS_PER_SYNC and watcher.stream.room(watcher, 1):
                chosen.append(watcher)
        if not chosen:
            return False
        page = self._read(min(w.next_rev for w in chosen), current)
        header = self._header()
        work = 0
        for watcher in chosen:
            if watcher.next_rev < page.compact_revision:  # compacted since `compact` was read
                self._cancel_compacted(watcher, page.compact_revision)
                continue
            if watcher.next_rev > page.end:
                continue  # ahead of this read; a later step starts from its revision
            signature = (watcher.selector, watcher.next_rev)
            responses = page.selections.get(signature)
            if responses is None:
                if work >= SYNC_WORK:
                    break
                candidates = page.by_key.get(watcher.key, []) if not watcher.range_end \
                    else page.events
                work += len(candidates)
                responses = page.selections[signature] = self._responses(
                    watcher, self._select(watcher, candidates), page.prev_cache)
            missed = self._deliver(watcher, responses, header)
            watcher.next_rev = page.end + 1 if missed is None else missed
            if watcher.next_rev > current:
                self._remove_unsynced(watcher)
                self._add_synced(watcher)
        if not self._unsynced:
            self._page = None
        return bool(self._unsynced)

    def _read(self, start: int, current: int) -> _Page:
        """The history page from ``start``: the one read by an earlier step if it started
        there too (history at or above the compaction revision never changes, and watchers
        that stayed behind on a full stream ask for the same page again: they get the same
        ``Events``, encoded once), else a new bounded read."""
        page = self._page
        if page is None or page.start != start or len(page.selections) > _MAX_SELECTIONS:
            page = self._page = _Page(start, self.store.events_page(
                start, current, self.revs_per_sync, self.sync_read_bytes))
        return page

    def _rotate(self, watcher: Watcher) -> None:
        del self._unsynced[watcher.id]
        self._unsynced[watcher.id] = watcher

    def _cancel_compacted(self, watcher: Watcher, compact: int) -> None:
        self._forget(watcher)
        watcher.stream.put(watcher, WatchResponse(header=self._header(), watch_id=watcher.id,
                                                  canceled=True, compact_revision=compact),
                           _CONTROL_BYTES)

    def restored(self, previous_revision: int) -> None:
        """The store was replaced under the hub (a Raft snapshot installed): synced watchers
        have been sent everything up to ``previous_revision`` and now catch up on the new
        history from there, or are cancelled as compacted (etcd's watchable store restore)."""
        self._page = None  # read from the old store
        for watcher in list(self._synced.values()):
            self._remove_synced(watcher)
            watcher.next_rev = max(watcher.next_rev, previous_revision + 1)
            self._add_unsynced(watcher)
        self.wake_sync()

    def progress(self, requested_only: bool = True) -> None:
        """Progress notification (an empty response at the current revision) to synced watchers:
        those created with ``progress_notify`` (periodic), or all (``requested_only=False``, for a
        client's explicit progress request), when their stream has room. Unsynced watchers are
        skipped: the revision would claim events they have not received yet."""
        for watcher in self._synced.values():
            if (watcher.progress_notify or not requested_only) and \
                    watcher.stream.room(watcher, _CONTROL_BYTES):
                watcher.stream.put(watcher, WatchResponse(header=self._header(),
                                                          watch_id=watcher.id), _CONTROL_BYTES)
