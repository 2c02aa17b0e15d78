"""The store as a pure, synchronous state machine.

:class:`StoreCore` holds the key map, the global revision, leases and the
bounded event history, and dispatches watch events to callbacks. It never reads
a clock, touches a socket or logs: time is passed in as ``now`` arguments. The
in-process :class:`~corral.store.memory.MemoryStore` and the tcp server both wrap
one core, so they have the same meaning by construction.

Revisions: every successful write bumps the revision by one. A delete of
several keys (``delete(prefix=True)``, or a lease that ends with keys attached)
is one write: all its delete events share one revision, as in etcd.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from corral.core.errors import ConfigError, LeaseNotFound, StoreCompacted
from corral.store.api import EventType, KeyValue, WatchEvent, WriteResult

__all__ = ["MAX_KEY_BYTES", "Lease", "StoreCore", "WatchCallback"]

MAX_KEY_BYTES = 1024

#: Receives the events of one write that match a watch, in revision order.
WatchCallback = Callable[[list[WatchEvent]], None]


@dataclass(slots=True)
class Lease:
    """A lease as the core keeps it.

    Attributes:
        id: lease id (> 0).
        ttl: seconds from the last keep-alive to expiry.
        deadline: the ``now`` value at which it expires.
        owner: an opaque owner tag (the tcp server uses the connection), or None.
        keys: the keys attached to it.
    """

    id: int
    ttl: float
    deadline: float
    owner: object | None = None
    keys: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Watcher:
    id: int
    key: str
    prefix: bool
    start: int
    callback: WatchCallback


def check_key(key: str) -> None:
    """Raise ConfigError unless ``key`` is a non-empty str of at most 1 KiB in UTF-8."""
    if not isinstance(key, str) or not key:
        raise ConfigError(f"store key must be a non-empty str, got {key!r}")
    if len(key) > MAX_KEY_BYTES // 4 and len(key.encode()) > MAX_KEY_BYTES:
        raise ConfigError(f"store key is {len(key.encode())} bytes; the limit is {MAX_KEY_BYTES}")


class StoreCore:
    """Key map, revisions, leases, history and watch dispatch; no I/O, no clock.

    Args:
        history: how many events to retain for watches that start in the past;
            a watch from an older revision raises StoreCompacted.
    """

    def __init__(self, *, history: int = 10_000) -> None:
        if history < 1:
            raise ConfigError(f"store history ({history}) must be >= 1")
        self.revision = 0
        self._kv: dict[str, KeyValue] = {}
        # Every key, sorted: a prefix read or delete costs O(log n + matches),
        # not a scan of the whole store (a long job keeps many rounds' keys).
        self._sorted: list[str] = []
        self._leases: dict[int, Lease] = {}
        self._deadlines: list[tuple[float, int]] = []  # lazy heap: stale entries skipped
        self._next_lease = 1
        self._history: deque[WatchEvent] = deque()
        self._history_max = history
        # Every event with revision > compacted is still in history.
        self.compacted = 0
        self._exact: dict[str, dict[int, _Watcher]] = {}
        self._exact_of: dict[int, str] = {}  # watch id -> key, for cancel
        # Prefix watches, by id and grouped by prefix: a write visits the prefixes,
        # not every watch (many watches of one prefix cost one startswith).
        self._prefix: dict[int, _Watcher] = {}
        self._prefix_by: dict[str, dict[int, _Watcher]] = {}
        self._next_watch = 1

    # --- reads ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._kv)

    def get(self, key: str) -> KeyValue | None:
        """The key, or None."""
        return self._kv.get(key)

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key starting with ``prefix``, sorted, and the current revision."""
        kv = self._kv
        return [kv[k] for k in self._keys_under(prefix)], self.revision

    def _keys_under(self, prefix: str) -> list[str]:
        """The keys starting with ``prefix``, in sorted order."""
        keys = self._sorted
        lo = bisect.bisect_left(keys, prefix)
        hi = lo
        while hi < len(keys) and keys[hi].startswith(prefix):
            hi += 1
        return keys[lo:hi]

    def lease(self, lease: int) -> Lease | None:
        """The lease, or None if it has ended."""
        return self._leases.get(lease)

    def leases(self) -> list[Lease]:
        """Every live lease."""
        return list(self._leases.values())

    # --- writes --------------------------------------------------------------

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write unconditionally; return the write's revision. Raises LeaseNotFound."""
        check_key(key)
        return self._write(key, value, lease, self._kv.get(key)).mod_revision

    def create(self, key: str, value: bytes, *, lease: int = 0) -> WriteResult:
        """Write only if absent; on conflict return the existing key."""
        check_key(key)
        old = self._kv.get(key)
        if old is not None:
            return WriteResult(False, old, self.revision)
        kv = self._write(key, value, lease, None)
        return WriteResult(True, kv, kv.mod_revision)

    def compare_and_set(
        self, key: str, value: bytes, expected_mod_revision: int, *, lease: int = 0
    ) -> WriteResult:
        """Write only if the key's mod revision is ``expected_mod_revision`` (0: absent)."""
        check_key(key)
        old = self._kv.get(key)
        current = 0 if old is None else old.mod_revision
        if current != expected_mod_revision:
            return WriteResult(False, old, self.revision)
        kv = self._write(key, value, lease, old)
        return WriteResult(True, kv, kv.mod_revision)

    def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete the key or every key under the prefix; return how many."""
        if prefix:
            keys = self._keys_under(key)
        else:
            keys = [key] if key in self._kv else []
        self._delete_keys(keys)
        return len(keys)

    def _write(self, key: str, value: bytes, lease: int, old: KeyValue | None) -> KeyValue:
        owner: Lease | None = None
        if lease:
            owner = self._leases.get(lease)
            if owner is None:
                raise LeaseNotFound(f"lease {lease:#x} does not exist (expired or revoked)")
        if not isinstance(value, bytes):
            value = bytes(value)
        self.revision += 1
        rev = self.revision
        if old is not None and old.lease and old.lease != lease:
            prev = self._leases.get(old.lease)
            if prev is not None:
                prev.keys.discard(key)
        kv = KeyValue(key, value, rev if old is None else old.create_revision, rev, lease)
        if old is None:
            bisect.insort(self._sorted, key)
        self._kv[key] = kv
        if owner is not None:
            owner.keys.add(key)
        self._emit([WatchEvent(EventType.PUT, kv)])
        return kv

    def _delete_keys(self, keys: Iterable[str]) -> list[WatchEvent]:
        events: list[WatchEvent] = []
        rev = self.revision + 1
        for k in keys:
            old = self._kv.pop(k)
            del self._sorted[bisect.bisect_left(self._sorted, k)]
            if old.lease:
                ls = self._leases.get(old.lease)
                if ls is not None:
                    ls.keys.discard(k)
            events.append(WatchEvent(EventType.DELETE, KeyValue(k, b"", 0, rev, 0)))
        if events:
            self.revision = rev
            self._emit(events)
        return events

    # --- leases --------------------------------------------------------------

    def grant(self, ttl: float, now: float, *, owner: object | None = None) -> int:
        """Create a lease expiring at ``now + ttl``; return its id."""
        if not ttl > 0:
            raise ConfigError(f"lease ttl ({ttl}) must be > 0 seconds")
        lid = self._next_lease
        self._next_lease += 1
        deadline = now + ttl
        self._leases[lid] = Lease(lid, float(ttl), deadline, owner)
        heapq.heappush(self._deadlines, (deadline, lid))
        return lid

    def keep_alive(self, lease: int, now: float) -> float:
        """Push the lease's deadline to ``now + ttl``; return the ttl. Raises LeaseNotFound."""
        ls = self._leases.get(lease)
        if ls is None:
            raise LeaseNotFound(f"lease {lease:#x} does not exist (expired or revoked)")
        ls.deadline = now + ls.ttl
        # The old heap entry goes stale; it is skipped when popped.
        heapq.heappush(self._deadlines, (ls.deadline, lease))
        return ls.ttl

    def revoke(self, lease: int) -> int:
        """End the lease and delete its keys; return how many keys. Ended lease: 0."""
        return len(self._end_lease(lease))

    def _end_lease(self, lease: int) -> list[WatchEvent]:
        ls = self._leases.pop(lease, None)
        if ls is None:
            return []
        keys = sorted(ls.keys)
        ls.keys.clear()
        return self._delete_keys(keys)

    def revoke_owned(self, owner: object) -> int:
        """End every lease of ``owner`` (a closed connection); return how many leases."""
        mine = [ls.id for ls in self._leases.values() if ls.owner is owner]
        for lid in mine:
            self.revoke(lid)
        return len(mine)

    def expire(self, now: float) -> list[WatchEvent]:
        """End every lease whose deadline is <= ``now``; return the delete events."""
        events: list[WatchEvent] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, lid = heapq.heappop(heap)
            ls = self._leases.get(lid)
            if ls is None or ls.deadline != deadline:
                continue  # stale entry: revoked or kept alive since
            events.extend(self._end_lease(lid))
        return events

    def next_deadline(self) -> float | None:
        """The earliest live lease deadline, or None."""
        heap = self._deadlines
        while heap:
            deadline, lid = heap[0]
            ls = self._leases.get(lid)
            if ls is not None and ls.deadline == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    # --- watches -------------------------------------------------------------

    def watch(
        self, key: str, callback: WatchCallback, *, prefix: bool = False, start_revision: int = 0
    ) -> int:
        """Register a watch; return its id.

        Past events with revision >= ``start_revision`` are passed to ``callback``
        before this returns; later ones as they happen. ``start_revision`` 0
        means: from the next write.

        Raises: StoreCompacted if ``start_revision`` is at or below the compacted revision.
        """
        start = start_revision if start_revision > 0 else self.revision + 1
        if start <= self.compacted:
            raise StoreCompacted(
                f"watch of {key!r} from revision {start}: history before revision "
                f"{self.compacted + 1} is compacted (current revision {self.revision})"
            )
        wid = self._next_watch
        self._next_watch += 1
        w = _Watcher(wid, key, prefix, start, callback)
        if start <= self.revision:
            # Scan back from the newest event and stop at the start: a recent start
            # revision costs the events since, not the whole history.
            past: list[WatchEvent] = []
            for e in reversed(self._history):
                if e.revision < start:
                    break
                if _matches(w, e.kv.key):
                    past.append(e)
            if past:
                past.reverse()
                callback(past)
        if prefix:
            self._prefix[wid] = w
            self._prefix_by.setdefault(key, {})[wid] = w
        else:
            self._exact.setdefault(key, {})[wid] = w
            self._exact_of[wid] = key
        return wid

    def cancel_watch(self, watch_id: int) -> None:
        """Stop a watch; unknown ids are ignored."""
        w = self._prefix.pop(watch_id, None)
        if w is not None:
            group = self._prefix_by.get(w.key)
            if group is not None:
                group.pop(watch_id, None)
                if not group:
                    del self._prefix_by[w.key]
            return
        key = self._exact_of.pop(watch_id, None)
        if key is None:
            return
        ws = self._exact.get(key)
        if ws is not None:
            ws.pop(watch_id, None)
            if not ws:
                del self._exact[key]

    def compact(self, revision: int) -> None:
        """Forget history up to and including ``revision`` (like etcd's compaction)."""
        hist = self._history
        while hist and hist[0].revision <= revision:
            hist.popleft()
        self.compacted = max(self.compacted, min(revision, self.revision))

    @property
    def watch_count(self) -> int:
        return len(self._prefix) + sum(len(ws) for ws in self._exact.values())

    def _emit(self, events: list[WatchEvent]) -> None:
        hist = self._history
        hist.extend(events)
        while len(hist) > self._history_max:
            self.compacted = hist.popleft().revision
        rev = events[0].revision
        if len(events) == 1:
            ev = events[0]
            ws = self._exact.get(ev.kv.key)
            if ws:
                for w in list(ws.values()):
                    if w.start <= rev:
                        w.callback(events)
            if self._prefix:
                k = ev.kv.key
                for w in self._prefix_watchers(k):
                    if w.start <= rev:
                        w.callback(events)
            return
        for ev in events:
            for w in list(self._exact.get(ev.kv.key, {}).values()):
                if w.start <= rev:
                    w.callback([ev])
        if not self._prefix:
            return
        for pfx, group in list(self._prefix_by.items()):
            mine = [e for e in events if e.kv.key.startswith(pfx)]
            if mine:
                for w in list(group.values()):
                    if w.start <= rev:
                        w.callback(mine)

    def _prefix_watchers(self, key: str) -> list[_Watcher]:
        """The prefix watches that match ``key``, in registration order."""
        by = self._prefix_by
        if len(by) <= len(key):
            groups = [g for p, g in by.items() if key.startswith(p)]
        else:
            groups = [g for g in (by.get(key[:i]) for i in range(1, len(key) + 1)) if g]
        if not groups:
            return []
        if len(groups) == 1:
            return list(groups[0].values())
        return sorted((w for g in groups for w in g.values()), key=_by_id)


def _by_id(w: _Watcher) -> int:
    return w.id


def _matches(w: _Watcher, key: str) -> bool:
    return key.startswith(w.key) if w.prefix else key == w.key
