"""One worker process: a full console, closing without blocking, signals after reaping."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import termios
from pathlib import Path

import psutil
import pytest

from corral.config import Std, StdSpec
from corral.core.errors import LauncherError
from corral.workers import RunLogs
from corral.workers.logs import Sink, StreamPlan
from corral.workers.process import WorkerProcess

from .conftest import Beacon, MakeGroup

pytestmark = pytest.mark.timeout(30)

QUIET = StreamPlan(Sink.DEVNULL)


def _spawn(code: str, stderr: StreamPlan = QUIET, **kw: int) -> tuple[WorkerProcess, asyncio.Event]:
    wp = WorkerProcess(0, [sys.executable, "-c", code], dict(os.environ), QUIET, stderr, **kw)
    exited = asyncio.Event()
    wp.spawn(lambda _w: exited.set())
    return wp, exited


async def _until(cond: object, timeout: float = 10.0) -> None:
    """Poll ``cond()`` with a deadline, letting the loop run between polls."""
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_full_nonblocking_console_neither_spins_nor_loses_output() -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)  # the console: a non-blocking pipe that nobody reads yet
    data = b"".join(b"%06d\n" % i for i in range(50000))  # 350 kB: far over a pipe's 64 kB
    wp, exited = _spawn(
        "import sys; sys.stderr.buffer.write(b''.join(b'%06d\\n' % i for i in range(50000)))",
        StreamPlan(Sink.PIPE, None, console=True, keep_tail=True),
        console_err=w,
    )
    try:

        def console_full() -> bool:
            buf = bytearray(4)
            fcntl.ioctl(r, termios.FIONREAD, buf)
            return int.from_bytes(buf, sys.byteorder) >= 65536

        await _until(console_full)  # the loop runs while the console is full (no spinning)
        got = bytearray()
        done = asyncio.Event()

        def on_readable() -> None:
            try:
                got.extend(os.read(r, 1 << 16))
            except BlockingIOError:
                return
            if len(got) >= len(data):
                done.set()

        asyncio.get_running_loop().add_reader(r, on_readable)
        async with asyncio.timeout(10):
            await done.wait()
            await exited.wait()
        assert bytes(got) == data  # all of it, in order
        assert wp.returncode == 0
    finally:
        asyncio.get_running_loop().remove_reader(r)
        await wp.aclose()
        os.close(r)
        os.close(w)


async def test_aclose_awaits_the_kill_without_blocking_the_loop() -> None:
    wp, exited = _spawn("import signal; signal.pause()")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    t = asyncio.get_running_loop().create_task(ticker())
    try:
        await wp.aclose()  # still running: SIGKILL, then await its exit
    finally:
        t.cancel()
    assert ticks > 0 and exited.is_set() and wp.returncode == -signal.SIGKILL
    assert (wp.pid is not None and not psutil.pid_exists(wp.pid)) or (
        psutil.Process(wp.pid).ppid() != os.getpid()  # reaped: not our zombie any more
    )


def _set_last_pid(pid: int) -> None:
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid))


async def test_signal_after_reap_cannot_reach_a_reused_pid() -> None:
    wp, exited = _spawn("pass")
    await exited.wait()
    await wp.aclose()  # reaped: the pid is free for anyone
    assert wp.pid is not None
    victim: subprocess.Popen[bytes] | None = None
    for _ in range(20):  # other processes on the machine may take the pid first
        try:
            _set_last_pid(wp.pid - 1)
        except OSError:
            pytest.skip("cannot set ns_last_pid here (needs CAP_SYS_ADMIN)")
        victim = subprocess.Popen(["sleep", "30"], start_new_session=True)
        if victim.pid == wp.pid:
            break
        victim.kill()
        victim.wait()
        victim = None
    if victim is None:
        pytest.skip("could not get the reaped worker's pid reused")
    try:
        wp.signal(signal.SIGKILL)  # the worker is gone: this must not reach pid/pgid reuse
        with pytest.raises(subprocess.TimeoutExpired):
            victim.wait(timeout=0.3)
    finally:
        victim.kill()
        victim.wait()


async def test_exited_workers_group_is_killed_at_close(
    make_group: MakeGroup, beacon: Beacon
) -> None:
    """A worker exits leaving an unmarked child in its process group: stop still ends it."""
    g = make_group(
        "import os, subprocess, sys\n"
        "env = {k: v for k, v in os.environ.items() if k != 'CORRAL_WORKER_TOKEN'}\n"
        "c = subprocess.Popen(['sleep', '30'], env=env)\n"  # no marker: only killpg reaches it
        "fd = os.open(os.environ['BEACON'], os.O_WRONLY); os.write(fd, b'%d\\n' % c.pid)\n",
        1,
    )
    await g.start()
    assert (await g.wait()).succeeded
    [line] = await beacon.lines(1)
    child = psutil.Process(int(line))
    await g.stop(0.5)
    _gone, alive = psutil.wait_procs([child], timeout=2.0)
    assert not alive or all(p.status() == psutil.STATUS_ZOMBIE for p in alive)


async def test_failing_log_pump_fails_the_group(make_group: MakeGroup, short_tmp: Path) -> None:
    logs = RunLogs("full", log_dir=str(short_tmp / "L"), tee=StdSpec(Std.ERR))
    attempt = logs.new_attempt(1)
    os.symlink("/dev/full", attempt.stderr_path(0))  # the tee's log file: a full disk
    g = make_group(
        "import sys, signal; print('x', file=sys.stderr, flush=True); signal.pause()",
        1,
        logs=attempt,
    )
    await g.start()
    with pytest.raises(LauncherError, match="copying the output of worker 0"):
        async with asyncio.timeout(10):
            await g.wait()
    await g.stop(0.1)
    logs.close()


async def test_a_pump_error_in_the_final_drain_reaches_on_error(tmp_path: Path) -> None:
    # The drain at a worker's exit (and at close) is no reader callback: an error there
    # must reach on_error too, not escape into the loop's exception handler.
    from corral.workers.pumps import Pump

    full = tmp_path / "log"
    os.symlink("/dev/full", full)  # a full disk
    r, w = os.pipe()
    seen: list[BaseException] = []
    pump = Pump(r, StreamPlan(Sink.PIPE, path=str(full)), 2, seen.append)
    os.write(w, b"the last words\n")
    os.close(w)
    pump.drain()  # as WorkerProcess._exited does: must not raise
    assert len(seen) == 1 and isinstance(seen[0], OSError)
    assert pump.fd is None  # closed
