"""``memory://``: an in-process :class:`~corral.store.api.Store` with fault switches.

Made for the tests of the code above the store (rendezvous, agent): it has the
same meaning as the tcp and etcd backends (it wraps the same
:class:`~corral.store.core.StoreCore` as the tcp server) and lets a test inject
faults:

* ``fail_next(n, exc)``: the next ``n`` calls raise ``exc`` (default StoreUnavailable);
* ``partition()`` / ``heal()``: every call raises StoreUnavailable, and open
  watches end with StoreUnavailable, until healed;
* ``expire(lease)``: the lease ends now, as if its TTL had passed.

Lease expiry follows the injected :class:`~corral.core.clock.Clock`: with a
:class:`~corral.core.clock.FakeClock`, ``clock.advance(ttl)`` ends due leases at once
(the next call sees them gone, and a background timer delivers their delete
events to watches when the event loop next runs), with no real sleeping.

Several simulated nodes can share one store: :meth:`MemoryStore.session` returns
another handle onto the same data, clock and timer, with its own fault switches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from corral.core.aio import first_of, task_scope
from corral.core.clock import Clock, MonotonicClock
from corral.core.compat import TaskGroup
from corral.core.errors import StoreError, StoreUnavailable
from corral.store.api import (
    Characteristics,
    KeyValue,
    WatchEvent,
    WriteResult,
    check_distinct,
)
from corral.store.core import StoreCore
from corral.store.stream import WatchStream

__all__ = ["MemoryStore", "SharedCore", "open_memory_store"]

log = logging.getLogger(__name__)

# No I/O: every call returns at once.
_CHARACTERISTICS = Characteristics(
    linearizable=True, leases=True, connection_leases=False, replicated=False, bounded_requests=True
)
_OWNING = Characteristics(
    linearizable=True, leases=True, connection_leases=True, replicated=False, bounded_requests=True
)


class SharedCore:
    """A core, the clock that ends its leases, and the timer task that does it.

    Every :class:`MemoryStore` session of one store shares one; the tcp server
    owns one too (its :meth:`~corral.store.tcp.server.StoreServer.local_store`
    is a session onto it). The timer runs in a task scope of the store's own:
    :meth:`open` enters it (``StoreServer.start``, ``async with MemoryStore()``,
    ``open_memory_store``, and at the latest a bare store's first grant),
    :meth:`stop` cancels the timer and leaves it. The timer starts on the first
    :meth:`kick` (a grant).

    A timer that fails does not end the scope (that would cancel whichever task
    happened to open the store): its error is logged and kept in
    :attr:`errors`, every one of them, and every later call of the store is
    told (:meth:`expire_due` raises).
    """

    def __init__(self, core: StoreCore, clock: Clock) -> None:
        self.core = core
        self.clock = clock
        self.timer: asyncio.Task[None] | None = None
        #: every failure of the lease timer, in order
        self.errors: list[BaseException] = []
        self.wake = asyncio.Event()
        self.target: float | None = None  # deadline the timer sleeps towards
        self._scope: AsyncExitStack | None = None
        self._tasks: TaskGroup | None = None
        self._stopped = False

    async def open(self) -> None:
        """Enter the task scope the lease timer runs in (again: nothing; after :meth:`stop`: nothing)."""
        if self._scope is not None or self._stopped:
            return
        scope = AsyncExitStack()
        self._tasks = await scope.enter_async_context(task_scope())
        self._scope = scope

    def expire_due(self) -> None:
        """End the leases that are due now.

        Raises: StoreError if the lease timer has failed (leases would no longer
        end by themselves: every caller of the store is told, instead of none).
        """
        if self.errors:
            first = self.errors[0]
            more = f" (and {len(self.errors) - 1} more time(s))" if len(self.errors) > 1 else ""
            raise StoreError(f"the store's lease timer failed: {first!r}{more}") from first
        self.core.expire(self.clock.now())

    def kick(self) -> None:
        """Make sure the timer runs and sleeps towards the earliest deadline.

        After :meth:`stop` or a failure of the timer, nothing (the leases end on
        the next call, or every call raises).
        Raises: RuntimeError if the scope was never opened (a bug of the owner).
        """
        if self._stopped or self.errors:  # a failed timer: every call says so instead
            return
        if self.timer is None or self.timer.done():
            if self._tasks is None:
                raise RuntimeError("the store's lease timer has no task scope: open() it first")
            self.timer = self._tasks.create_task(self._run(), name="store lease timer")
            return
        deadline = self.core.next_deadline()
        if deadline is not None and (self.target is None or deadline < self.target):
            self.wake.set()

    async def _run(self) -> None:
        try:
            while True:
                self.wake.clear()
                self.expire_due()
                self.target = deadline = self.core.next_deadline()
                if deadline is None:
                    await self.wake.wait()
                    continue
                delay = deadline - self.clock.now()
                if delay <= 0:
                    continue
                await first_of(self.clock.sleep(delay), self.wake.wait())
        except Exception as exc:
            log.error("store: the lease timer failed: %r", exc, exc_info=exc)
            self.errors.append(exc)

    async def stop(self) -> None:
        """Cancel the timer and leave the scope, waiting for it (idempotent)."""
        self._stopped = True
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
        scope, self._scope, self._tasks = self._scope, None, None
        if scope is not None:
            await scope.aclose()


class MemoryStore:
    """An in-process store: the :class:`~corral.store.api.Store` contract, with fault switches.

    Args:
        clock: drives lease expiry (default: the real monotonic clock).
        history: events retained for watches from a past revision.
    """

    def __init__(self, clock: Clock | None = None, *, history: int = 10_000) -> None:
        self._shared = SharedCore(StoreCore(history=history), clock or MonotonicClock())
        self._root = True
        self._owns_leases = False
        self._fail_count = 0
        self._fail_exc: BaseException | None = None
        self._partitioned = False
        self._closed = False
        self._streams: set[WatchStream] = set()

    @classmethod
    def attach(cls, shared: SharedCore, *, owns_leases: bool = False) -> MemoryStore:
        """A session onto an existing shared core (the tcp server's local store).

        With ``owns_leases``, :meth:`close` ends the leases granted through this
        session, like a tcp connection closing.
        """
        s = cls.__new__(cls)
        s._shared = shared
        s._root = False
        s._owns_leases = owns_leases
        s._fail_count = 0
        s._fail_exc = None
        s._partitioned = False
        s._closed = False
        s._streams = set()
        return s

    @property
    def characteristics(self) -> Characteristics:
        return _OWNING if self._owns_leases else _CHARACTERISTICS

    @property
    def core(self) -> StoreCore:
        """The state machine underneath (for assertions in tests)."""
        return self._shared.core

    def session(self) -> MemoryStore:
        """Another client of the same store (same data, clock and timer; own fault switches)."""
        return MemoryStore.attach(self._shared)

    # --- fault switches --------------------------------------------------------

    def fail_next(self, n: int = 1, exc: BaseException | None = None) -> None:
        """Make the next ``n`` calls raise ``exc`` (default StoreUnavailable)."""
        self._fail_count = n
        self._fail_exc = exc

    def partition(self) -> None:
        """Cut this client off: every call raises StoreUnavailable and open watches end."""
        self._partitioned = True
        for s in list(self._streams):
            s.fail(StoreUnavailable("memory store: partitioned (test fault)"))

    def heal(self) -> None:
        """Undo :meth:`partition`."""
        self._partitioned = False

    def expire(self, lease: int) -> None:
        """End ``lease`` now, as if its TTL had passed (its keys are deleted)."""
        self._shared.core.revoke(lease)

    # --- the contract ----------------------------------------------------------

    def _enter(self) -> StoreCore:
        if self._closed:
            raise StoreUnavailable("memory store: client is closed")
        if self._partitioned:
            raise StoreUnavailable("memory store: partitioned (test fault)")
        if self._fail_count > 0:
            self._fail_count -= 1
            exc = self._fail_exc
            raise exc if exc is not None else StoreUnavailable("memory store: injected failure")
        self._shared.expire_due()
        return self._shared.core

    async def get(self, key: str, *, min_revision: int = 0) -> KeyValue | None:
        return self._enter().get(key)

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        return self._enter().range(prefix)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        return self._enter().put(key, value, lease=lease)

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> int:
        check_distinct(items)
        core = self._enter()
        revision = 0
        for key, value in items:
            revision = core.put(key, value)
        return revision

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> WriteResult:
        return self._enter().create(key, value, lease=lease)

    async def create_and_read(
        self, creates: Sequence[tuple[str, bytes, int]], prefixes: Sequence[str]
    ) -> tuple[list[WriteResult], list[list[KeyValue]], int]:
        check_distinct(creates)
        core = self._enter()
        results = [core.create(key, value, lease=lease) for key, value, lease in creates]
        reads = [core.range(prefix)[0] for prefix in prefixes]
        return results, reads, core.revision

    async def compare_and_set(
        self, key: str, value: bytes, expected_mod_revision: int, *, lease: int = 0
    ) -> WriteResult:
        return self._enter().compare_and_set(key, value, expected_mod_revision, lease=lease)

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        return self._enter().delete(key, prefix=prefix)

    async def grant(self, ttl: float) -> int:
        core = self._enter()
        await self._shared.open()  # a bare MemoryStore(clock): its timer's scope, now
        lid = core.grant(ttl, self._shared.clock.now(), owner=self if self._owns_leases else None)
        self._shared.kick()
        return lid

    async def keep_alive(self, lease: int) -> float:
        return self._enter().keep_alive(lease, self._shared.clock.now())

    async def revoke(self, lease: int) -> None:
        self._enter().revoke(lease)

    def watch(
        self, key: str, *, prefix: bool = False, start_revision: int = 0
    ) -> AbstractAsyncContextManager[AsyncIterator[WatchEvent]]:
        return self._watch(key, prefix, start_revision)

    @asynccontextmanager
    async def _watch(
        self, key: str, prefix: bool, start_revision: int
    ) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        core = self._enter()
        stream = WatchStream()
        wid = core.watch(key, stream.push, prefix=prefix, start_revision=start_revision)
        self._streams.add(stream)
        try:
            yield stream
        finally:
            self._streams.discard(stream)
            core.cancel_watch(wid)

    async def close(self) -> None:
        """Close this client: its watches end with StoreUnavailable. Leases stay (TTL ends them)."""
        if self._closed:
            return
        self._closed = True
        for s in list(self._streams):
            s.fail(StoreUnavailable("memory store: client closed"))
        if self._owns_leases:
            self._shared.core.revoke_owned(self)
        if self._root:
            await self._shared.stop()

    async def __aenter__(self) -> MemoryStore:
        await self._shared.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_memory_store(
    url: str, *, token: str | None = None, timeout: float = 60.0
) -> MemoryStore:
    """Registry factory for ``memory://`` (a fresh, private store; ``token`` is ignored)."""
    del url, token, timeout
    store = MemoryStore()
    await store._shared.open()
    return store
