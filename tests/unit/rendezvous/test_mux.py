"""The rendezvous's watch multiplexer: a failing source reaches its consumer at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from corral.core.clock import FakeClock, MonotonicClock, clock_timeout
from corral.core.errors import StoreUnavailable
from corral.rendezvous.waits import watching
from corral.store.api import WatchEvent

pytestmark = pytest.mark.timeout(10)


class Broken(Exception):
    """Not a StoreError: a bug or an untranslated error in a watch."""


@asynccontextmanager
async def _watch(go: asyncio.Event, exc: BaseException) -> AsyncIterator[AsyncIterator[WatchEvent]]:
    async def events() -> AsyncIterator[WatchEvent]:
        await go.wait()
        raise exc
        yield  # pragma: no cover

    yield events()


async def test_a_source_failing_with_a_non_store_error_ends_the_consumers_wait() -> None:
    go = asyncio.Event()
    loop = asyncio.get_running_loop()
    with pytest.raises(Broken, match="pump broke"):
        async with watching() as mux:
            await mux.start("w", _watch(go, Broken("pump broke")))
            loop.call_soon(go.set)
            await mux.next(MonotonicClock())  # no timeout: before the fix, waits forever


async def test_a_source_failing_with_a_non_store_error_interrupts_a_timed_wait() -> None:
    go = asyncio.Event()
    clock = FakeClock()
    with pytest.raises(Broken):
        async with watching() as mux:
            mux.add("w", _watch(go, Broken("x")))
            asyncio.get_running_loop().call_soon(go.set)
            await mux.next(clock, 600.0)  # the fake clock never moves


async def test_a_store_error_is_an_item_not_a_failure() -> None:
    go = asyncio.Event()
    go.set()
    async with watching() as mux:
        mux.add("w", _watch(go, StoreUnavailable("lost")))
        item = await mux.next(MonotonicClock(), 5.0)
    assert item is not None
    tag, err = item
    assert tag == "w" and isinstance(err, StoreUnavailable)


async def test_next_times_out_on_the_fake_clock_and_keeps_later_items() -> None:
    clock = FakeClock()
    ev = asyncio.Event()
    async with watching() as mux:
        mux.add_event("sig", ev)
        waiting = asyncio.ensure_future(mux.next(clock, 5.0))
        while clock.sleepers == 0:
            await asyncio.sleep(0)
        clock.advance(5.0)
        assert await waiting is None
        ev.set()
        assert await mux.next(clock, 5.0) == ("sig", None)


async def test_leaving_the_block_ends_every_source() -> None:
    never = asyncio.Event()
    async with watching() as mux:
        mux.add_event("a", never)
        mux.add("b", _watch(never, Broken("unused")))
        tasks = list(mux._tasks.values())
    assert all(t.done() for t in tasks)


async def test_clock_timeout_on_a_fake_clock() -> None:
    clock = FakeClock()

    async def body() -> None:
        async with clock_timeout(clock, 3.0):
            await asyncio.Event().wait()

    t = asyncio.ensure_future(body())
    while clock.sleepers == 0:
        await asyncio.sleep(0)
    clock.advance(3.0)
    with pytest.raises(TimeoutError):
        await t
