"""The run's background tasks: a failure of one reaches the agent and ends the run, or is
retried with a warning, never silently (issue 24, part 4). One test per service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from corral.agent.agent import Agent
from corral.config import LaunchConfig, resolve_standalone
from corral.core import events as ev
from corral.core.clock import MonotonicClock
from corral.core.errors import StoreUnavailable
from corral.core.model import RoundInfo
from corral.hangs.detect import Limits
from corral.hangs.watch import HangWatch, hangs_prefix
from corral.store.memory import MemoryStore
from corral.workers.reaper import Reaper
from corral.workers.spec import WorkerSpec
from corral.workers.standby import StandbyPool

pytestmark = pytest.mark.timeout(60)

INTERVAL = 0.0777  # no other part of the agent sleeps this long


class BreaksOnceRunning(MonotonicClock):
    """The real clock, except that the health checks' interval sleep fails (a bug) once
    the workers run: the failure lands in the run's loop, not in its setup."""

    running = False

    def sleep(self, seconds: float) -> Awaitable[None]:
        if seconds == INTERVAL and self.running:
            raise RuntimeError("the health checker broke")
        return super().sleep(seconds)


async def test_a_failing_health_checker_ends_the_run() -> None:
    """The checks run in the run's task group: their error stops the workers and ends
    execute() with it, and JobEnded names it (not the run's cancellation)."""
    cfg = LaunchConfig(
        nproc_per_node=1,
        shutdown_timeout=2.0,
        health_checks=("true",),
        health_check_interval=INTERVAL,
        entrypoint="sleep",
        args=("60",),
        no_python=True,
    )
    clock = BreaksOnceRunning()
    seen: list[ev.Event] = []

    def sink(event: ev.Event) -> None:
        seen.append(event)
        if isinstance(event, ev.WorkerStarted):
            clock.running = True

    agent = Agent(resolve_standalone(cfg), clock=clock, handle_signals=False, events=sink)
    with pytest.raises(RuntimeError, match="the health checker broke"):
        await agent.execute()
    ended = [e for e in seen if isinstance(e, ev.JobEnded)]
    assert len(ended) == 1 and ended[0].outcome == "error"
    assert "the health checker broke" in ended[0].root_cause


@asynccontextmanager
async def _failing() -> AsyncIterator[AsyncIterator[Any]]:
    raise StoreUnavailable("store down")
    yield  # pragma: no cover


@asynccontextmanager
async def _ended() -> AsyncIterator[AsyncIterator[Any]]:
    async def nothing() -> AsyncIterator[Any]:
        return
        yield  # pragma: no cover

    yield nothing()


Outage = Callable[[], AbstractAsyncContextManager[AsyncIterator[Any]]]


class OutageStore(MemoryStore):
    """A memory store whose first ``bad`` watches are ``outage()`` (a watch that fails,
    or one the store ends at once); :attr:`healthy` is set when a real watch is given."""

    def __init__(self, bad: int, outage: Outage) -> None:
        super().__init__()
        self.bad = bad
        self.outage = outage
        self.healthy = asyncio.Event()

    def watch(self, key: str, **kw: Any) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        if self.bad > 0:
            self.bad -= 1
            return self.outage()
        self.healthy.set()
        return super().watch(key, **kw)


@pytest.mark.parametrize(
    ("outage", "warning"),
    [
        # before: a StoreError was logged at debug and the node stopped following
        (_failing, "not watched (store down); retrying"),
        # a watch the store ends with no error and no record is an outage too
        (_ended, "the store ended the watch"),
    ],
)
async def test_the_hang_follower_retries_an_outage_with_one_warning(
    caplog: pytest.LogCaptureFixture, outage: Outage, warning: str
) -> None:
    """Two bad watches: warned once, retried, and the node still sees another node's hang."""
    store = OutageStore(2, outage)
    watch = HangWatch(
        Limits(30.0, 30.0), node_id="me", host="h", store=store, base="p/run/", poll=0.01
    )
    rnd = RoundInfo("job", 0, 0, 2, (), 0, 2, "127.0.0.1", 1, 0)
    remote = asyncio.Event()
    with caplog.at_level(logging.DEBUG, logger="corral.hangs"):
        follower = asyncio.create_task(watch._watch_remote(rnd, remote))
        try:
            await asyncio.wait_for(store.healthy.wait(), 10)
            await store.put(hangs_prefix("p/run/", 0) + "other", b"{}")
            await asyncio.wait_for(follower, 10)
        finally:
            follower.cancel()
    assert remote.is_set()
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and warning in warned[0].getMessage()


async def test_a_failing_detached_stop_ends_the_standby_pools_owner() -> None:
    """A child of the pool's scope that fails cancels the pool's owner (the agent's run)
    and comes out of the pool's block, as itself."""
    spec = WorkerSpec.from_config(LaunchConfig(nproc_per_node=1, entrypoint="x"), {})

    async def broken_stop() -> None:
        await asyncio.sleep(0)
        raise OSError("the stop broke")

    with pytest.raises(OSError, match="the stop broke"):
        async with StandbyPool(None, spec, {}, Reaper(), detach_stops=True) as pool:
            assert pool.detach(broken_stop())
            await asyncio.Event().wait()  # the run: ended by the child's error


async def test_the_standby_pools_children_finish_before_the_owners_error_passes() -> None:
    spec = WorkerSpec.from_config(LaunchConfig(nproc_per_node=1, entrypoint="x"), {})
    finished: list[str] = []

    async def slow_stop() -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        finished.append("stop")

    with pytest.raises(KeyError, match="the owner's"):
        async with StandbyPool(None, spec, {}, Reaper(), detach_stops=True) as pool:
            pool.detach(slow_stop())
            raise KeyError("the owner's")
    assert finished == ["stop"]
