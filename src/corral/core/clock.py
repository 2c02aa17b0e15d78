"""Time as an argument: a monotonic clock protocol, the real clock, and a fake one for tests."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Protocol

from corral.core.aio import task_scope
from corral.core.compat import timeout as _compat_timeout

__all__ = ["Clock", "FakeClock", "MonotonicClock", "clock_timeout"]


class Clock(Protocol):
    """A monotonic clock: ``now()`` in seconds, and ``sleep``.

    ``sleep(s)`` fixes its deadline, ``now() + s``, when it is called, not when
    the awaitable first runs: a sleep wrapped in a task that starts later (as
    in ``asyncio.wait``) still ends on time.
    """

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> Awaitable[None]: ...


class MonotonicClock:
    """The real clock (``time.monotonic``)."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> Awaitable[None]:
        return _sleep_until(time.monotonic() + seconds)


async def _sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


class FakeClock:
    """A clock that moves only when a test calls :meth:`advance`.

    Sleepers wake in deadline order once the clock reaches their deadline.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> Awaitable[None]:
        if seconds <= 0:
            return asyncio.sleep(0)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        return fut

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending (cancelled ones included until they are due)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        """Move the clock forward and wake every sleeper whose deadline has come."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards ({seconds})")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)


@asynccontextmanager
async def clock_timeout(clock: Clock, seconds: float) -> AsyncIterator[None]:
    """Like ``asyncio.timeout`` but on ``clock``: raises TimeoutError when it passes."""
    if isinstance(clock, MonotonicClock):
        async with _compat_timeout(seconds):
            yield
        return
    task = asyncio.current_task()
    assert task is not None  # always inside a task under asyncio
    fired = False
    # From now, not from when the timer's task first runs (the clock may have moved).
    deadline = clock.now() + seconds

    async def _timer() -> None:
        nonlocal fired
        await clock.sleep(deadline - clock.now())
        fired = True
        task.cancel()

    try:
        async with task_scope() as tg:
            timer = tg.create_task(_timer())
            try:
                yield
            finally:
                timer.cancel()
    except asyncio.CancelledError:
        if fired and task.uncancel() == 0:
            raise TimeoutError(f"deadline of {seconds} s passed") from None
        raise
