"""The no-orphans guarantee: SIGKILL the agent, and every worker and grandchild is gone within 1 s."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.timeout(30)

PR_SET_CHILD_SUBREAPER = 36

# An agent-like process: Reaper + WorkerGroup; each worker spawns a grandchild that
# ignores SIGTERM; the agent prints every pid once all are up, then waits forever.
AGENT = r'''
import asyncio, os, sys
from corral.rendezvous.api import RoundInfo
from corral.workers import Reaper, RunLogs, WorkerGroup, WorkerSpec

WORKER = """
import os, signal, subprocess, sys
gc = subprocess.Popen([sys.executable, '-c',
    'import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.pause()'])
print(os.getpid(), gc.pid, flush=True)
signal.pause()
"""

async def main():
    reaper = Reaper(); reaper.start()
    logs = RunLogs("orphans", log_dir=sys.argv[1])
    spec = WorkerSpec(sys.executable, ("-c", WORKER), no_python=True, local_world_size=2)
    rnd = RoundInfo("orphans", 0, 0, 1, (), 0, 2, "127.0.0.1", 29500, 0)
    g = WorkerGroup(spec, rnd, attempt=0, logs=logs, reaper=reaper, node_id="n", host="h",
                    base_env=os.environ)
    await g.start()
    # each worker's stdout goes to the agent's stdout; the test reads the pids there
    await asyncio.Event().wait()

asyncio.run(main())
'''


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Orphans re-parent to the test process, which can then reap them (no zombies to misjudge)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.skip("cannot become a child subreaper")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.mark.parametrize("kill_watchdog_too", [False, True])
def test_sigkill_agent_leaves_no_orphans(
    subreaper: None, tmp_path: Path, kill_watchdog_too: bool
) -> None:
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(tmp_path)], stdout=subprocess.PIPE, start_new_session=True
    )
    procs: list[psutil.Process] = []
    try:
        assert agent.stdout is not None
        for _ in range(2):
            line = (
                agent.stdout.readline()
            )  # blocks until a worker is up (bounded by the test timeout)
            procs += [psutil.Process(int(pid)) for pid in line.split()]
        watchdog = [
            c for c in psutil.Process(agent.pid).children() if c.pid not in {p.pid for p in procs}
        ]
        assert len(procs) == 4 and len(watchdog) == 1
        if kill_watchdog_too:  # the PDEATHSIG + process-group path alone must suffice for workers
            watchdog[0].kill()
        agent.kill()
        agent.wait()
        _gone, alive = psutil.wait_procs(procs + watchdog, timeout=1.0)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        if kill_watchdog_too:
            # without the watchdog, the workers die (PDEATHSIG) but a grandchild that is not
            # killed with its parent may stay: only the workers are guaranteed here.
            assert not [p for p in alive if p.pid in {procs[0].pid, procs[2].pid}]
        else:
            assert not alive, f"still running 1 s after the agent's SIGKILL: {alive}"
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                p.kill()
            except psutil.Error:
                pass
        agent.kill()
        agent.wait()
        if agent.stdout:
            agent.stdout.close()
        psutil.wait_procs(procs, timeout=2.0)
