"""The event iterator behind every ``Store.watch``: fed by a callback, ended by an error."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from corral.store.api import WatchEvent

__all__ = ["WatchStream"]


class WatchStream:
    """One watch's events, in order; ``fail`` ends the iteration with that error.

    The backend pushes events as they arrive (no polling); the consumer iterates
    with ``async for``. Use from the event loop's thread only.
    """

    __slots__ = ("error", "events", "waiter")

    def __init__(self) -> None:
        self.events: deque[WatchEvent] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None

    def push(self, events: Iterable[WatchEvent]) -> None:
        self.events.extend(events)
        self._wakeup()

    def fail(self, exc: BaseException) -> None:
        """End the stream with ``exc`` once the queued events are consumed (first error wins)."""
        if self.error is None:
            self.error = exc
        self._wakeup()

    def _wakeup(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> WatchEvent:
        while not self.events:
            if self.error is not None:
                raise self.error
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.events.popleft()
