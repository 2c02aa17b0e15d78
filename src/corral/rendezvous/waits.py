"""The rendezvous driver's waits: store watches (and events) merged into one queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from corral.core.aio import task_scope
from corral.core.clock import Clock, clock_timeout
from corral.core.compat import TaskGroup
from corral.core.errors import StoreError, StoreUnavailable
from corral.store.api import WatchEvent

__all__ = ["FailureSource", "Mux", "watching"]


class FailureSource(Protocol):
    """An owner of a background task whose failure ends a wait (the :class:`~corral.rendezvous.driver.lease.Lease`)."""

    def subscribe(self, listener: Callable[[BaseException], None]) -> None: ...

    def unsubscribe(self, listener: Callable[[BaseException], None]) -> None: ...


# What a Mux yields: (tag, event), (tag, error) when a watch failed, (tag, None) for a signal.
Item = tuple[str, WatchEvent | StoreError | None]


class Mux:
    """Merges several store watches (and asyncio events) into one queue, tagged.

    Each source runs in a task of the task group of :func:`watching`, which
    cancels and awaits them all when its block ends. A watch that fails with a
    ``StoreError`` delivers it as an item instead of raising, so the consumer
    decides. Any other failure of a source (a bug, an untranslated error) is
    not an item: it cancels the consumer's block at once, wherever it waits,
    and ``async with watching()`` raises it.
    """

    def __init__(self, tg: TaskGroup) -> None:
        self._tg = tg
        self._q: asyncio.Queue[Item] = asyncio.Queue()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._subscriptions: list[tuple[FailureSource, Callable[[BaseException], None]]] = []

    def add(self, tag: str, cm: AbstractAsyncContextManager[AsyncIterator[WatchEvent]]) -> None:
        self.drop(tag)
        self._tasks[tag] = self._tg.create_task(self._pump(tag, cm))

    async def start(
        self, tag: str, cm: AbstractAsyncContextManager[AsyncIterator[WatchEvent]]
    ) -> None:
        """:meth:`add`, and return once the watch is in place (or has failed:
        its error is then the tag's first item). A read made after it misses
        nothing the watch does not deliver."""
        await self.start_all({tag: cm})

    async def start_all(
        self, sources: Mapping[str, AbstractAsyncContextManager[AsyncIterator[WatchEvent]]]
    ) -> None:
        """:meth:`start` for several watches at once (their requests go out together):
        return once every one is in place or has failed."""
        loop = asyncio.get_running_loop()
        entered: list[asyncio.Future[None]] = []
        for tag, cm in sources.items():
            self.drop(tag)
            fut: asyncio.Future[None] = loop.create_future()
            self._tasks[tag] = self._tg.create_task(self._pump(tag, cm, fut))
            entered.append(fut)
        if entered:
            await asyncio.wait(entered)

    def add_event(self, tag: str, ev: asyncio.Event) -> None:
        self.drop(tag)
        self._tasks[tag] = self._tg.create_task(self._signal(tag, ev))

    def add_failure(self, owner: FailureSource) -> None:
        """End the block with the error of ``owner``'s failed task, at once.

        A subscription, not a task: nothing runs until a failure, when a task
        that raises the error is started in the block's group (which then ends
        the block with it).
        """

        def fail(exc: BaseException) -> None:
            self._tg.create_task(_reraise(exc))

        owner.subscribe(fail)
        self._subscriptions.append((owner, fail))

    def drop(self, tag: str) -> None:
        t = self._tasks.pop(tag, None)
        if t is not None:
            t.cancel()

    async def _pump(
        self,
        tag: str,
        cm: AbstractAsyncContextManager[AsyncIterator[WatchEvent]],
        entered: asyncio.Future[None] | None = None,
    ) -> None:
        try:
            async with cm as events:
                if entered is not None:
                    entered.set_result(None)
                async for ev in events:
                    self._q.put_nowait((tag, ev))
            self._q.put_nowait((tag, StoreUnavailable(f"watch {tag!r} ended")))
        except StoreError as exc:
            self._q.put_nowait((tag, exc))
        finally:
            if entered is not None and not entered.done():
                entered.set_result(None)  # a StoreError is in the queue; others fail the scope

    async def _signal(self, tag: str, ev: asyncio.Event) -> None:
        await ev.wait()
        self._q.put_nowait((tag, None))

    async def next(self, clock: Clock, timeout: float | None = None) -> Item | None:
        """The next item; None if ``timeout`` (clock seconds) passes first."""
        if not self._q.empty():
            return self._q.get_nowait()
        if timeout is None:
            return await self._q.get()
        if timeout <= 0:
            return None
        try:
            async with clock_timeout(clock, timeout):
                return await self._q.get()  # a cancelled get() leaves the item queued
        except TimeoutError:
            return None

    def ready(self) -> Item | None:
        """The next item if one is queued now, else None (no waiting)."""
        return self._q.get_nowait() if not self._q.empty() else None

    def cancel_all(self) -> None:
        """Cancel every source (the task group awaits them when the block ends)."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        for owner, listener in self._subscriptions:
            owner.unsubscribe(listener)
        self._subscriptions.clear()


async def _reraise(exc: BaseException) -> None:
    raise exc


@asynccontextmanager
async def watching() -> AsyncIterator[Mux]:
    """``async with watching() as mux``: every source added ends with the block.

    The sources' tasks live in a :func:`corral.core.aio.task_scope`: leaving the
    block cancels and awaits them; a source that fails with anything but a
    ``StoreError`` ends the block with that error.
    """
    async with task_scope() as tg:
        mux = Mux(tg)
        try:
            yield mux
        finally:
            mux.cancel_all()
