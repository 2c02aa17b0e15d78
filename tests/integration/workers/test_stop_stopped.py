"""Stopping a group whose workers are frozen (SIGSTOP) or hung (docs/workers.md, docs/hangs.md).

A worker stopped by a signal (state T) cannot act on SIGTERM until continued:
the group sends it SIGCONT with the SIGTERM, so it exits by the SIGTERM at
once rather than being SIGKILLed after the grace. Hung ranks (``kill=``) get
SIGKILL at once; the others still get SIGTERM. Each stop is bounded far below
its grace, so a regression to "wait the whole grace" fails the test instead of
only slowing it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from corral.workers.process import proc_stopped

from .conftest import Beacon, MakeGroup
from .test_worker_group import code

pytestmark = pytest.mark.timeout(30)

GRACE = 120.0  # the stop's grace: never waited in these tests (each is bounded by 15 s)


async def _wait_stopped(pid: int) -> None:
    async with asyncio.timeout(10):
        while not proc_stopped(pid):
            await asyncio.sleep(0.01)


def test_proc_stopped_reads_state_t() -> None:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not proc_stopped(p.pid)
        os.kill(p.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not proc_stopped(p.pid) and time.monotonic() < deadline:  # asynchronous
            time.sleep(0.01)
        assert proc_stopped(p.pid)
        os.kill(p.pid, signal.SIGCONT)
    finally:
        p.kill()
        p.wait(10)
    assert not proc_stopped(p.pid) and not proc_stopped(None)


async def test_a_stopped_worker_gets_sigcont_with_sigterm_and_exits_by_it(
    make_group: MakeGroup, beacon: Beacon
) -> None:
    # rank 0 freezes itself; its SIGTERM handler exits 43 (it can answer only once continued)
    g = make_group(
        code("""
        signal.signal(signal.SIGTERM, lambda *a: os._exit(43))
        say('ready')
        if R == '0':
            os.kill(os.getpid(), signal.SIGSTOP)
        signal.pause()
    """),
        2,
    )
    await g.start()
    await beacon.lines(2)
    await _wait_stopped(g.pids[0])
    async with asyncio.timeout(15):  # far below GRACE: no SIGKILL after the grace
        await g.stop(GRACE)
    assert [w.returncode for w in g.workers] == [43, 43]
    assert g.failures == []


async def test_a_stopped_worker_with_default_sigterm_dies_of_it(
    make_group: MakeGroup, beacon: Beacon
) -> None:
    g = make_group(code("say('ready')\nos.kill(os.getpid(), signal.SIGSTOP)\nsignal.pause()\n"), 1)
    await g.start()
    await beacon.lines(1)
    await _wait_stopped(g.pids[0])
    async with asyncio.timeout(15):
        await g.stop(GRACE)
    assert g.workers[0].returncode == -signal.SIGTERM


async def test_hung_ranks_get_sigkill_at_once_the_others_sigterm(
    make_group: MakeGroup, beacon: Beacon
) -> None:
    # every rank would outlive SIGTERM for ever; rank 1 is frozen (hung), rank 0 answers SIGTERM
    g = make_group(
        code("""
        signal.signal(signal.SIGTERM, lambda *a: os._exit(43) if R == '0' else None)
        say('ready')
        if R == '1':
            os.kill(os.getpid(), signal.SIGSTOP)
        while True:
            signal.pause()
    """),
        2,
    )
    await g.start()
    await beacon.lines(2)
    await _wait_stopped(g.pids[1])
    async with asyncio.timeout(15):
        await g.stop(GRACE, kill=[1])
    assert [w.returncode for w in g.workers] == [43, -signal.SIGKILL]
    assert g.failures == []
