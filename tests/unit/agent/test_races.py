"""The agent's races: a failing background task (liveness) fails the agent at once."""

from __future__ import annotations

import asyncio
from typing import NoReturn

import pytest

from corral.agent.agent import Agent
from corral.config import LaunchConfig
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


def _agent() -> Agent:
    return Agent(LaunchConfig(nproc_per_node=1, shutdown_timeout=1.0), handle_signals=False)


async def test_an_unexpected_liveness_error_fails_the_race_at_once() -> None:
    agent = _agent()
    live = BrokenLiveness()
    agent._liveness = live  # type: ignore[assignment]
    f = Forever()
    asyncio.get_running_loop().call_soon(live.go.set)
    # before the fix: the error was dropped and the race waited for the group forever
    with pytest.raises(KeyError, match="addr"):
        await agent._race_group(f, f, RND)  # type: ignore[arg-type]


async def test_a_signal_wins_the_race_and_stops_the_group() -> None:
    agent = _agent()
    f = Forever()
    agent._signum = 15
    asyncio.get_running_loop().call_soon(agent._signal_event.set)
    with pytest.raises(Interrupted):
        await agent._race_group(f, f, RND)  # type: ignore[arg-type]
    assert f.stopped.is_set()


async def test_race_returns_the_awaitable_and_raises_interrupted_on_a_signal() -> None:
    agent = _agent()
    assert await agent._race(asyncio.sleep(0, "x")) == "x"
    agent._signum = 2
    agent._signal_event.set()
    with pytest.raises(Interrupted):
        await agent._race(asyncio.Event().wait())
