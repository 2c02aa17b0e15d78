"""corral.core.aio: task scopes with bare errors, and the first-of race."""

from __future__ import annotations

import asyncio

import pytest

from corral.core.aio import first_of, run_scope, task_scope
from corral.core.errors import StoreUnavailable

pytestmark = pytest.mark.timeout(10)


async def _fail_after(ev: asyncio.Event, exc: BaseException) -> None:
    await ev.wait()
    raise exc


async def test_a_failing_child_cancels_the_block_and_is_raised_bare() -> None:
    go = asyncio.Event()
    with pytest.raises(StoreUnavailable, match="gone"):
        async with task_scope() as tg:
            tg.create_task(_fail_after(go, StoreUnavailable("gone")))
            go.set()
            await asyncio.Event().wait()  # cancelled by the child's failure


async def test_the_blocks_own_error_comes_out_bare() -> None:
    with pytest.raises(KeyError):
        async with task_scope():
            raise KeyError("k")


async def test_leaving_the_block_waits_for_children() -> None:
    seen: list[str] = []

    async def child() -> None:
        await asyncio.sleep(0)
        seen.append("child")

    async with task_scope() as tg:
        tg.create_task(child())
    assert seen == ["child"]


async def test_first_of_returns_the_first_and_cancels_the_rest() -> None:
    slow_cancelled = asyncio.Event()

    async def slow() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            slow_cancelled.set()
            raise
        return "slow"  # pragma: no cover

    async def fast() -> str:
        return "fast"

    assert await first_of(slow(), fast()) == (1, "fast")
    assert slow_cancelled.is_set()  # awaited before first_of returned


async def test_first_of_gives_priority_by_position_when_both_are_done() -> None:
    ev = asyncio.Event()
    ev.set()
    i, _ = await first_of(asyncio.sleep(0, "a"), ev.wait())
    assert i == 0
    i, _ = await first_of(ev.wait(), asyncio.sleep(0, "a"))
    assert i == 0


async def test_first_of_raises_an_error_of_any_contestant() -> None:
    go = asyncio.Event()
    asyncio.get_running_loop().call_soon(go.set)
    with pytest.raises(RuntimeError, match="bug"):
        await first_of(asyncio.Event().wait(), _fail_after(go, RuntimeError("bug")))


async def test_first_of_surfaces_an_error_raised_while_cancelling_a_loser() -> None:
    async def bad_cleanup() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise OSError("cleanup failed")

    with pytest.raises(OSError, match="cleanup failed"):
        await first_of(bad_cleanup(), asyncio.sleep(0))


async def test_a_background_failure_interrupts_a_race_in_the_same_scope() -> None:
    go = asyncio.Event()
    with pytest.raises(ValueError, match="liveness"):
        async with task_scope() as tg:
            tg.create_task(_fail_after(go, ValueError("liveness")))
            asyncio.get_running_loop().call_soon(go.set)
            await first_of(asyncio.Event().wait(), asyncio.Event().wait())


async def test_run_scope_names_the_failed_child_while_the_block_is_cancelled() -> None:
    """RunTasks.failure is the child's error when the block sees its CancelledError,
    and the same error then comes out of the block, bare."""
    go = asyncio.Event()
    seen_in_block: list[BaseException | None] = []
    with pytest.raises(KeyError, match="first"):
        async with run_scope() as tg:
            assert tg.failure is None
            tg.create_task(_fail_after(go, KeyError("first")))
            go.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen_in_block.append(tg.failure)
                raise
    assert len(seen_in_block) == 1 and isinstance(seen_in_block[0], KeyError)


async def test_run_scope_a_cancelled_child_is_no_failure() -> None:
    async with run_scope() as tg:
        t = tg.create_task(asyncio.Event().wait())
        await asyncio.sleep(0)
        t.cancel()
    assert tg.failure is None
