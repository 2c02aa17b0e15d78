"""The agent's races: a failing background task (liveness) fails the agent at once."""

from __future__ import annotations

import asyncio
from typing import NoReturn

import pytest

from corral.agent.events import AgentEvents
from corral.agent.hooks import AgentHooks
from corral.agent.lifecycle import StateMachine
from corral.agent.policy import ImmediatePolicy
from corral.agent.runner import RoundRunner
from corral.agent.services import NodeServices
from corral.agent.signals import SignalLatch
from corral.config import LaunchConfig
from corral.core.clock import MonotonicClock
from corral.core.errors import Interrupted
from corral.core.model import RoundChange, RoundInfo

pytestmark = pytest.mark.timeout(10)

RND = RoundInfo("job", 0, 0, 2, (), 0, 4, "127.0.0.1", 1, 0)


class Forever:
    """A worker group and a rendezvous whose waits never end by themselves."""

    def __init__(self) -> None:
        self.stopped = asyncio.Event()

    async def wait(self) -> object:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def watch_round(self, rnd: RoundInfo) -> RoundChange:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def stop(self, timeout: float, first_signal: object = None) -> None:
        self.stopped.set()


class BrokenLiveness:
    """A liveness ring watcher that hits an unexpected error (a bug)."""

    def __init__(self) -> None:
        self.go = asyncio.Event()

    async def watch(self, rnd: RoundInfo) -> NoReturn:
        await self.go.wait()
        raise KeyError("addr")


def _runner(rdzv: object, services: NodeServices | None = None) -> RoundRunner:
    """A runner for the race alone: the group and the rendezvous are fakes."""
    cfg = LaunchConfig(nproc_per_node=1, shutdown_timeout=1.0)
    return RoundRunner(
        cfg,
        rdzv=rdzv,  # type: ignore[arg-type]
        spec=None,  # type: ignore[arg-type]
        logs=None,  # type: ignore[arg-type]
        reaper=None,  # type: ignore[arg-type]
        services=services or NodeServices(),
        latch=SignalLatch(),
        events=AgentEvents(None, host="h", max_restarts=0),
        machine=StateMachine(),
        hooks=AgentHooks(),
        policy=ImmediatePolicy(),
        env_builder=lambda *a: {},
        node_id="n",
        host="h",
        environ={},
        clock=MonotonicClock(),
        hosts_store=False,
        tasks=None,  # type: ignore[arg-type]
    )


async def test_an_unexpected_liveness_error_fails_the_race_at_once() -> None:
    live = BrokenLiveness()
    f = Forever()
    runner = _runner(f, NodeServices(liveness=live))  # type: ignore[arg-type]
    asyncio.get_running_loop().call_soon(live.go.set)
    # before the fix: the error was dropped and the race waited for the group forever
    with pytest.raises(KeyError, match="addr"):
        await runner._race_group(f, RND)  # type: ignore[arg-type]


async def test_a_signal_wins_the_race_and_stops_the_group() -> None:
    f = Forever()
    runner = _runner(f)
    asyncio.get_running_loop().call_soon(runner.latch.receive, 15)
    with pytest.raises(Interrupted):
        await runner._race_group(f, RND)  # type: ignore[arg-type]
    assert f.stopped.is_set()


async def test_race_returns_the_awaitable_and_raises_interrupted_on_a_signal() -> None:
    latch = SignalLatch()
    assert await latch.race(asyncio.sleep(0, "x")) == "x"
    latch.receive(2)
    latch.receive(15)  # the first one is kept
    with pytest.raises(Interrupted) as err:
        await latch.race(asyncio.Event().wait())
    assert err.value.signum == 2
