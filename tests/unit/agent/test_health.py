"""--health-check: one check's run (timeout, process group), and the watch's verdicts on a fake clock."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psutil
import pytest
from tests.helpers import gone

from corral.agent.health import HealthWatch, Unhealthy, run_check
from corral.core.aio import task_scope
from corral.core.clock import FakeClock, MonotonicClock
from corral.core.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


async def _until(cond, what: str, bound: float = 20.0) -> None:
    """Poll ``cond`` (a real condition, not a delay) for at most ``bound`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + bound
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_exit_zero_is_healthy_and_the_last_line_is_the_reason() -> None:
    ok = await run_check("echo fine", 10, MonotonicClock())
    assert ok.healthy and ok.exit_code == 0
    bad = await run_check("echo checking; echo 'GPU 3: ECC' >&2; exit 4", 10, MonotonicClock())
    assert not bad.healthy
    assert (bad.exit_code, bad.reason) == (4, "GPU 3: ECC")
    silent = await run_check("exit 5", 10, MonotonicClock())
    assert silent.reason == "exit code 5"


async def test_a_hanging_check_is_killed_with_its_process_group_at_the_timeout(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    pidfile = tmp_path / "pid"
    # the shell and a child of its own both hang; the child also holds the output pipe
    cmd = f"sleep 1000 & echo $! > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}; wait"
    task = asyncio.create_task(run_check(cmd, 30, clock))
    try:
        await _until(pidfile.exists, "the check's child to start")
        child = int(pidfile.read_text())
        pgid = os.getpgid(child)
        assert pgid != os.getpgid(0), "the check runs in a process group of its own"
        await _until(lambda: clock.sleepers == 1, "the check to wait on its timeout")
        clock.advance(29.9)
        await asyncio.sleep(0)
        assert not task.done() and clock.sleepers == 1, "its timeout is not due before 30 s"
        clock.advance(0.1)
        res = await asyncio.wait_for(task, 20)
    finally:
        task.cancel()  # the check's own cleanup kills its process group
    assert res.exit_code is None and not res.healthy
    assert res.reason == "no answer within 30 s (killed)"
    await _until(lambda: gone(child), "the check's child to be killed")
    members = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == pgid and not gone(p.pid)]
    assert members == [], "no process of the check's group is left"


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return -1


async def test_a_cancelled_check_kills_its_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    cmd = f"sleep 1000 & echo $! > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}; wait"
    task = asyncio.create_task(run_check(cmd, 1000, MonotonicClock()))
    await _until(pidfile.exists, "the check's child to start")
    child = int(pidfile.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until(lambda: gone(child), "the cancelled check's child to be killed")


async def test_watch_checks_every_interval_and_reports_changes_once(tmp_path: Path) -> None:
    async with task_scope() as tg:
        sick = tmp_path / "sick"
        clock = FakeClock()
        seen: list[Unhealthy | None] = []
        cmd = f"test ! -e {sick} || {{ echo 'disk full'; exit 1; }}"
        watch = HealthWatch(
            (cmd,), timeout=10, interval=60, clock=clock, on_change=seen.append, tasks=tg
        )
        await watch.start()  # the first round runs before start returns
        try:
            assert watch.known and watch.verdict is None and watch.rounds == 1
            await asyncio.wait_for(watch.wait_healthy(), 5)
            sick.touch()
            await _until(lambda: clock.sleepers == 1, "the watch to sleep its interval")
            assert watch.rounds == 1, "no check before the interval"
            clock.advance(60)
            verdict = await asyncio.wait_for(watch.unhealthy(), 10)
            assert verdict == Unhealthy(cmd, "disk full")
            clock_rounds = watch.rounds
            await _until(lambda: clock.sleepers == 1, "the next interval")
            clock.advance(60)  # still unhealthy: no second report
            await _until(lambda: watch.rounds == clock_rounds + 1, "another round")
            assert seen == [verdict]
            sick.unlink()
            waiter = asyncio.create_task(watch.wait_healthy())
            await _until(lambda: clock.sleepers == 1, "the next interval")
            assert not waiter.done()
            clock.advance(60)
            await asyncio.wait_for(waiter, 10)
            assert seen == [verdict, None]
        finally:
            await watch.stop()


async def test_interval_zero_retries_until_healthy_then_stops_checking(tmp_path: Path) -> None:
    async with task_scope() as tg:
        sick = tmp_path / "sick"
        sick.touch()
        clock = FakeClock()
        cmd = f"test ! -e {sick}"
        watch = HealthWatch((cmd,), timeout=10, interval=0, clock=clock, tasks=tg)
        await watch.start()
        try:
            assert watch.verdict == Unhealthy(cmd, "exit code 1")
            sick.unlink()
            await _until(lambda: clock.sleepers == 1, "the retry")
            clock.advance(5)
            await asyncio.wait_for(watch.wait_healthy(), 10)
            await _until(
                lambda: watch._task is not None and watch._task.done(), "the checks to end"
            )
            assert watch.rounds == 2
        finally:
            await watch.stop()


async def test_a_check_the_shell_cannot_run_is_a_config_error(tmp_path: Path) -> None:
    async with task_scope() as tg:
        watch = HealthWatch(
            ("no-such-command-corral-test",),
            timeout=10,
            interval=60,
            clock=MonotonicClock(),
            tasks=tg,
        )
        with pytest.raises(ConfigError, match=r"the shell cannot run it \(exit 127"):
            await watch.start()
        script = tmp_path / "check.sh"
        script.write_text("#!/bin/sh\nexit 0\n")  # not executable
        watch = HealthWatch(
            (str(script),), timeout=10, interval=60, clock=MonotonicClock(), tasks=tg
        )
        with pytest.raises(ConfigError, match="exit 126"):
            await watch.start()


async def test_an_error_of_the_checker_ends_the_run_and_reaches_its_waiters(tmp_path: Path) -> None:
    """The checking task fails: its error ends the run's task group, as itself, and every
    waiter on the verdict raises it too (never a silent end of the checks)."""
    sick = tmp_path / "sick"
    clock = FakeClock()

    def broken(verdict: Unhealthy | None) -> None:
        raise RuntimeError("the checker broke")

    waiter: asyncio.Task[Unhealthy] | None = None
    with pytest.raises(RuntimeError, match="the checker broke"):
        async with task_scope() as tg:  # the agent run's group
            watch = HealthWatch((f"test ! -e {sick}",), timeout=10, interval=60, clock=clock,
                                on_change=broken, tasks=tg)  # fmt: skip
            await watch.start()
            waiter = asyncio.create_task(watch.unhealthy())
            sick.touch()
            await _until(lambda: clock.sleepers == 1, "the interval")
            clock.advance(60)
            await asyncio.Event().wait()  # the run: ended by the checker's error
    assert waiter is not None
    with pytest.raises(RuntimeError, match="the checker broke"):
        await asyncio.wait_for(waiter, 10)
