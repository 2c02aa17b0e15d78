"""MemoryStore: lease expiry on a FakeClock and the fault switches."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from corral.core.clock import FakeClock
from corral.core.errors import LeaseNotFound, StoreTimeout, StoreUnavailable
from corral.store.api import EventType, Store
from corral.store.memory import MemoryStore


async def test_is_a_store() -> None:
    async with MemoryStore() as s:
        assert isinstance(s, Store)


async def test_lease_expires_when_fake_clock_advances() -> None:
    clock = FakeClock()
    async with MemoryStore(clock) as s:
        lid = await s.grant(5)
        await s.put("eph", b"x", lease=lid)
        async with s.watch("eph") as events:
            clock.advance(4.9)
            assert await s.get("eph") is not None
            clock.advance(0.1)
            ev = await asyncio.wait_for(anext(events), 5)
            assert ev.type is EventType.DELETE and ev.kv.key == "eph"
        with pytest.raises(LeaseNotFound):
            await s.keep_alive(lid)


async def test_expire_is_seen_by_next_call_without_the_timer() -> None:
    clock = FakeClock()
    async with MemoryStore(clock) as s:
        lid = await s.grant(1)
        await s.put("eph", b"x", lease=lid)
        clock.advance(1)
        assert await s.get("eph") is None


async def test_keep_alive_postpones_expiry() -> None:
    clock = FakeClock()
    async with MemoryStore(clock) as s:
        lid = await s.grant(2)
        await s.put("eph", b"x", lease=lid)
        clock.advance(1.5)
        assert await s.keep_alive(lid) == 2
        clock.advance(1.5)
        assert await s.get("eph") is not None
        clock.advance(0.5)
        assert await s.get("eph") is None


async def test_fail_next_and_partition() -> None:
    async with MemoryStore() as s:
        s.fail_next(2, StoreTimeout("injected"))
        for _ in range(2):
            with pytest.raises(StoreTimeout):
                await s.get("k")
        assert await s.get("k") is None
        async with s.watch("k") as events:
            s.partition()
            with pytest.raises(StoreUnavailable):
                await s.put("k", b"")
            with pytest.raises(StoreUnavailable):
                await anext(events)
        s.heal()
        assert await s.put("k", b"") == 1


async def test_expire_switch_and_sessions() -> None:
    async with MemoryStore() as s:
        other = s.session()
        lid = await s.grant(60)
        await s.put("eph", b"x", lease=lid)
        other.partition()
        assert await s.get("eph") is not None
        s.expire(lid)
        assert await s.get("eph") is None
        other.heal()
        assert (await other.range(""))[1] == 2
        await other.close()


class _BrokenClock:
    """A clock whose sleep fails: the lease timer dies of an unexpected error."""

    def now(self) -> float:
        return 0.0

    def sleep(self, seconds: float) -> Awaitable[None]:
        raise RuntimeError("clock broke")


async def test_a_failed_lease_timer_fails_every_later_call() -> None:
    from corral.core.errors import StoreError

    store = MemoryStore(_BrokenClock())
    await store.grant(5)  # starts the timer, which fails on its first sleep
    for _ in range(5):
        await asyncio.sleep(0)
    # before: the timer died silently and leases never ended again
    with pytest.raises(StoreError, match="lease timer failed"):
        await store.get("k")
    await store.close()
