"""The error-file poll of detached stops is a task in a task group, and its failures are seen.

An OSError of one look is tried again with a warning; any other error ends the
poll and is raised by ``WorkerGroup.wait`` (before: a ``call_later`` callback
whose exception stopped the polling silently). The poll runs in the task group
the group is given (the agent run's), else in a scope of the group's own that
``stop`` leaves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.core.aio import task_scope
from corral.core.compat import TaskGroup
from corral.core.errors import LauncherError
from corral.workers import Reaper, RunLogs, WorkerGroup, WorkerSpec
from corral.workers.logs import AttemptLogs
from corral.workers.standby import StandbyPool

from .conftest import round_info


@dataclasses.dataclass(frozen=True)
class _FlakyLogs(AttemptLogs):
    """Real attempt logs whose ``error_file`` raises the queued faults, once armed."""

    faults: list[BaseException] = dataclasses.field(default_factory=list)
    looked: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def error_file(self, local_rank: int) -> str:
        self.looked.set()
        if self.faults:
            raise self.faults.pop(0)
        return super().error_file(local_rank)


class _Node:
    def __init__(self, tmp: Path) -> None:
        self.reaper = Reaper()
        self.reaper.start()
        self.logs = RunLogs("poll", log_dir=str(tmp / "logs"))
        self.spec = WorkerSpec("sleep", args=("60",), no_python=True)

    def group(self, pool: StandbyPool, tasks: TaskGroup | None = None) -> WorkerGroup:
        real = self.logs.new_attempt(1)
        logs = _FlakyLogs(**{f.name: getattr(real, f.name) for f in dataclasses.fields(real)})
        return WorkerGroup(
            self.spec,
            round_info(1),
            attempt=0,
            logs=logs,
            reaper=self.reaper,
            node_id="n",
            host="h",
            base_env=dict(os.environ),
            standbys=pool,
            tasks=tasks,
        )


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[_Node]:
    n = _Node(tmp_path)
    try:
        yield n
    finally:
        n.logs.close()
        n.reaper.close()


def _pool(node: _Node) -> StandbyPool:
    """No standbys, detached stops: the error files are polled."""
    return StandbyPool(None, node.spec, os.environ, node.reaper, detach_stops=True)


async def _next_look(logs: _FlakyLogs) -> None:
    logs.looked.clear()
    await asyncio.wait_for(logs.looked.wait(), 30)


async def test_an_unexpected_poll_error_is_raised_by_wait(node: _Node) -> None:
    async with _pool(node) as pool:
        g = node.group(pool)
        await g.start()
        try:
            logs = g.logs
            assert isinstance(logs, _FlakyLogs)
            logs.faults.append(RuntimeError("poll broke"))
            with pytest.raises(LauncherError, match="watching the workers' error files failed"):
                await asyncio.wait_for(g.wait(), 30)
        finally:
            await g.stop(0.5)


async def test_an_oserror_of_one_look_is_retried_with_a_warning(
    node: _Node, caplog: pytest.LogCaptureFixture
) -> None:
    async with _pool(node) as pool, task_scope() as tasks:  # the agent run's task group
        g = node.group(pool, tasks)
        await g.start()
        try:
            logs = g.logs
            assert isinstance(logs, _FlakyLogs)
            with caplog.at_level(logging.WARNING, logger="corral.workers"):
                logs.faults.append(OSError(5, "Input/output error"))
                await _next_look(logs)  # the failed look
                await _next_look(logs)  # and the next one: the poll goes on
            assert "looking at the workers' error files failed" in caplog.text
            assert g.state.name == "RUNNING"
        finally:
            await g.stop(0.5)
    assert all(w.returncode is not None for w in g.workers)


async def test_the_poll_ends_when_the_group_stops_running(node: _Node) -> None:
    """A group that leaves RUNNING cancels its poll at once: the run's task group does not
    wait out the poll's sleep (the end of every job waited up to ERROR_FILE_POLL)."""
    node.spec = WorkerSpec("true", no_python=True)
    async with _pool(node) as pool, task_scope() as tasks:
        g = node.group(pool, tasks)
        await g.start()
        polls = [t for t in asyncio.all_tasks() if t.get_name().startswith("error-file poll")]
        assert len(polls) == 1
        try:
            assert (await asyncio.wait_for(g.wait(), 30)).succeeded
            assert polls[0].done() or polls[0].cancelling()
        finally:
            await g.stop(0.5)
    assert polls[0].cancelled()
