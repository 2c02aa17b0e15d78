"""Simulated nodes of one job over a MemoryStore on a FakeClock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from corral.config import RendezvousOptions, StoreOptions
from corral.core.aio import task_scope
from corral.core.clock import FakeClock
from corral.core.compat import TaskGroup
from corral.core.model import NodeDesc
from corral.rendezvous.dynamic import DynamicRendezvous
from corral.store.memory import MemoryStore

CONF = RendezvousOptions(
    join_timeout=600.0,
    last_call_timeout=30.0,
    keep_alive_interval=5.0,
    keep_alive_max_attempt=3,
    settle_time=0.0,
)
STORE = StoreOptions(read_timeout=5.0)


async def spin(n: int = 50) -> None:
    """Let every ready task run (no time passes)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def advance(clock: FakeClock, seconds: float, step: float = 1.0) -> None:
    """Move the fake clock in steps, letting keep-alives and timers run between them."""
    left = seconds
    while left > 1e-9:
        d = min(step, left)
        clock.advance(d)
        left -= d
        await spin()


class Job:
    """K simulated nodes sharing one memory store."""

    def __init__(self, clock: FakeClock, store: MemoryStore, tasks: TaskGroup) -> None:
        self.clock = clock
        self.store = store
        self.tasks = tasks  # the nodes' keep-alives run in it (as in an agent run's group)
        # A failure of a task in it that the test expects (and asserted): not re-raised
        # when the fixture leaves the group.
        self.expected_failure: type[BaseException] | None = None
        self.nodes: dict[str, DynamicRendezvous] = {}
        self.sessions: dict[str, MemoryStore] = {}

    def node(
        self,
        name: str,
        *,
        min_nodes: int,
        max_nodes: int,
        max_restarts: int = 0,
        conf: RendezvousOptions = CONF,
        run_id: str = "job",
        over: Any = None,
        no_restart_code: int = 0,
    ) -> DynamicRendezvous:
        """A node; ``over``: a wrapper of ``store.session()`` (a fault) to use instead."""
        sess = self.store.session()
        r = DynamicRendezvous(
            over if over is not None else sess,
            run_id=run_id,
            node=NodeDesc(node_id=name, addr="127.0.0.1", local_world_size=2, host=name),
            min_nodes=min_nodes,
            max_nodes=max_nodes,
            max_restarts=max_restarts,
            conf=conf,
            store_conf=STORE,
            clock=self.clock,
            no_restart_code=no_restart_code,
            tasks=self.tasks,
        )
        self.nodes[name] = r
        self.sessions[name] = sess
        return r

    async def until(self, pred: Callable[[], Awaitable[bool]], limit: int = 200) -> None:
        for _ in range(limit):
            if await pred():
                return
            await spin(5)
        raise AssertionError("condition not reached")

    async def has_key(self, key: str) -> bool:
        return await self.store.get(key) is not None


@pytest.fixture
async def job() -> AsyncIterator[Job]:
    clock = FakeClock()
    store = MemoryStore(clock)
    stack = contextlib.AsyncExitStack()
    j = Job(clock, store, await stack.enter_async_context(task_scope()))
    try:
        yield j
    finally:
        for r in j.nodes.values():
            try:
                await r.close()
            except Exception:
                pass
        await store.close()
        try:
            await stack.aclose()
        except BaseException as exc:
            if j.expected_failure is None or not isinstance(exc, j.expected_failure):
                raise
