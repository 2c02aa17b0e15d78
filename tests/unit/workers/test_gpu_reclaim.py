"""The wait for the previous attempt's GPU memory: a fake NVML and a fake clock (docs/workers.md)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Collection
from types import SimpleNamespace

import pytest

from corral.config import LaunchConfig
from corral.core.clock import FakeClock
from corral.workers.gpu_reclaim import GpuReclaim, still_holding

pytestmark = pytest.mark.timeout(10)


class FakeNvml:
    """NVML's process lists as a test sets them; counts the reads."""

    def __init__(self, *pids: int) -> None:
        self.pids: set[int] = set(pids)
        self.reads = 0
        self.error: Exception | None = None

    async def __call__(self) -> Collection[int]:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return frozenset(self.pids)


def group(*pids: int) -> SimpleNamespace:
    return SimpleNamespace(pids=dict(enumerate(pids)), marker="")  # no marker: no /proc scan


async def until_sleeping(clock: FakeClock) -> None:
    async with asyncio.timeout(5):
        while clock.sleepers == 0:
            await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("previous", "on_gpu", "held"),
    [
        ({1, 2}, {2, 3}, [2]),
        ({1, 2}, set(), []),
        (set(), {7}, []),  # another job's process on the GPU is not waited for
        ({5, 4}, {4, 5, 6}, [4, 5]),
    ],
)
def test_still_holding(previous: set[int], on_gpu: set[int], held: list[int]) -> None:
    assert still_holding(previous, on_gpu) == held


async def test_waits_until_the_previous_processes_release_their_memory() -> None:
    clock, nvml = FakeClock(), FakeNvml(10, 11, 99)  # 99: not ours
    r = GpuReclaim(30.0, clock, nvml, poll=0.5)
    r.remember(group(10, 11))  # type: ignore[arg-type]
    waiting = asyncio.create_task(r.wait())
    await until_sleeping(clock)
    nvml.pids.discard(10)
    clock.advance(0.5)
    await until_sleeping(clock)
    assert not waiting.done()  # 11 still holds memory
    nvml.pids.discard(11)
    clock.advance(0.5)
    assert await asyncio.wait_for(waiting, 5) == []
    assert nvml.reads == 3 and clock.now() == 1.0


async def test_gives_up_at_the_timeout_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    clock, nvml = FakeClock(), FakeNvml(10)
    r = GpuReclaim(2.0, clock, nvml, poll=0.5)
    r.remember(group(10))  # type: ignore[arg-type]
    waiting = asyncio.create_task(r.wait())
    for _ in range(4):
        await until_sleeping(clock)
        clock.advance(0.5)
    assert await asyncio.wait_for(waiting, 5) == [10]
    warned = [x.getMessage() for x in caplog.records if x.levelno == logging.WARNING]
    assert warned == [
        "process(es) [10] of the previous attempt still hold GPU memory after "
        "--gpu-reclaim-timeout 2s; starting the next attempt anyway"
    ]
    # the pids are forgotten: the next wait (nothing stopped since) returns at once
    reads = nvml.reads
    assert await r.wait() == [] and nvml.reads == reads


async def test_nothing_remembered_or_memory_already_free_costs_no_sleep() -> None:
    clock, nvml = FakeClock(), FakeNvml()
    r = GpuReclaim(30.0, clock, nvml)
    assert await r.wait() == [] and nvml.reads == 0  # the first attempt: nothing to wait for
    r.remember(group(10))  # type: ignore[arg-type]
    assert await r.wait() == [] and nvml.reads == 1 and clock.now() == 0


async def test_an_nvml_error_is_one_warning_and_no_wait(caplog: pytest.LogCaptureFixture) -> None:
    clock, nvml = FakeClock(), FakeNvml(10)
    nvml.error = RuntimeError("NVML Shared Library Not Found")
    r = GpuReclaim(30.0, clock, nvml)
    r.remember(group(10))  # type: ignore[arg-type]
    assert await r.wait() == []
    assert "NVML Shared Library Not Found" in caplog.text and clock.now() == 0


async def test_without_gpus_it_is_a_no_op_that_never_imports_pynvml(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    env = {"CUDA_VISIBLE_DEVICES": ""}  # no device visible to the workers
    r = GpuReclaim.for_node(LaunchConfig(entrypoint="x.py"), env, FakeClock())
    assert not r.active
    r.remember(group(10))  # type: ignore[arg-type]
    assert await r.wait() == []
    off = GpuReclaim(0.0, FakeClock(), FakeNvml(10))  # --gpu-reclaim-timeout 0: off
    assert not off.active
    assert "pynvml" not in sys.modules


async def test_a_descendant_of_the_workers_is_found_by_the_groups_marker() -> None:
    import os
    import subprocess

    from corral.workers.sweep import MARKER_VAR

    marker = f"test{os.getpid()}.g1"
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={**os.environ, MARKER_VAR: marker},  # as a worker's child inherits it
    )
    try:
        clock, nvml = FakeClock(), FakeNvml(child.pid)
        r = GpuReclaim(1.0, clock, nvml, poll=1.0)
        r.remember(SimpleNamespace(pids={}, marker=marker))  # type: ignore[arg-type]
        waiting = asyncio.create_task(r.wait())
        await until_sleeping(clock)
        clock.advance(1.0)
        assert await asyncio.wait_for(waiting, 5) == [child.pid]
    finally:
        child.kill()
        child.wait(10)
