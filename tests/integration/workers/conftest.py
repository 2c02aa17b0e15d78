"""Fixtures for real-process worker-group tests: a reaper, groups that are always stopped, a beacon."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from corral.core.model import RoundInfo
from corral.workers import Reaper, RunLogs, WorkerGroup, WorkerSpec


class Beacon:
    """A FIFO that workers write one line to (``BEACON`` in their env); tests await lines."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "beacon")
        os.mkfifo(self.path)
        self._r = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self._w = os.open(self.path, os.O_WRONLY)  # never EOF: reads wait for data
        self._buf = b""
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(self._r, self._on_readable)

    def _on_readable(self) -> None:
        self._buf += os.read(self._r, 65536)
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            self._lines.put_nowait(line.decode())

    async def lines(self, n: int, timeout: float = 10.0) -> list[str]:
        async with asyncio.timeout(timeout):
            return [await self._lines.get() for _ in range(n)]

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self._r)
        os.close(self._r)
        os.close(self._w)


def round_info(world_size: int = 2, **kw: Any) -> RoundInfo:
    d: dict[str, Any] = dict(
        run_id="wtest",
        round=1,
        group_rank=0,
        group_world_size=1,
        members=(),
        rank_offset=0,
        world_size=world_size,
        master_addr="127.0.0.1",
        master_port=29599,
        restart_count=0,
    )
    d.update(kw)
    return RoundInfo(**d)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="wk", dir="/tmp"))
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def beacon(short_tmp: Path) -> AsyncIterator[Beacon]:
    b = Beacon(short_tmp)
    yield b
    b.close()


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    r = Reaper()
    r.start()
    yield r
    r.close()


MakeGroup = Callable[..., WorkerGroup]


@pytest.fixture
async def make_group(reaper: Reaper, beacon: Beacon, short_tmp: Path) -> AsyncIterator[MakeGroup]:
    """Build groups running ``python -c <code>``; every group is stopped and every process reaped."""
    groups: list[WorkerGroup] = []
    all_logs: list[RunLogs] = []

    def make(
        code: str,
        nproc: int = 2,
        *,
        logs: RunLogs | None = None,
        role: str = "default",
        env: dict[str, str] | None = None,
        **rnd: Any,
    ) -> WorkerGroup:
        if logs is None:
            logs = RunLogs("wtest", log_dir=str(short_tmp / "logs"), role=role)
            all_logs.append(logs)
        spec = WorkerSpec(
            sys.executable, ("-c", code), no_python=True, local_world_size=nproc, role=role
        )
        base = {**os.environ, "BEACON": beacon.path, **(env or {})}
        g = WorkerGroup(
            spec,
            round_info(nproc, **rnd),
            attempt=0,
            logs=logs,
            reaper=reaper,
            node_id="node-a",
            host="hostA",
            base_env=base,
        )
        groups.append(g)
        return g

    yield make
    pids = [pid for g in groups for pid in g.pids.values()]
    for g in groups:
        await g.stop(0.5)
    for logs in all_logs:
        logs.close()
    alive = [
        pid
        for pid in pids
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert not alive, f"workers left running: {alive}"
