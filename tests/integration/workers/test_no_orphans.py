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
from corral.core.model import RoundInfo
from corral.workers import Reaper, RunLogs, WorkerGroup, WorkerSpec

WORKER = """
import os, signal, subprocess, sys
gc = subprocess.Popen([sys.executable, '-c',
    'import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.pause()'])
os.write(1, f'{os.getpid()} {gc.pid}\\n'.encode())  # one write: the 2 workers share a pipe
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


# A worker whose descendants leave its process group and session: a setsid child, a
# double-forked daemon (its middle process exits, so it is an orphan), and a grandchild
# in the worker's group that ignores SIGTERM. The worker prints (or says) all three pids.
ESCAPEES = r"""
import os, signal, subprocess, sys
setsid_child = subprocess.Popen(["sleep", "1000"], start_new_session=True)
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    pid = os.fork()
    if pid == 0:
        os.execvp("sleep", ["sleep", "1001"])
    os.write(w, str(pid).encode())
    os._exit(0)
os.wait()
daemon = int(os.read(r, 32))
stubborn = subprocess.Popen([sys.executable, "-c",
    "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); signal.pause()"],
    stdout=subprocess.PIPE)
stubborn.stdout.readline()
report = f"{os.getpid()} {setsid_child.pid} {daemon} {stubborn.pid}"
if "BEACON" in os.environ:
    fd = os.open(os.environ["BEACON"], os.O_WRONLY); os.write(fd, (report + "\n").encode()); os.close(fd)
else:
    print(report, flush=True)
signal.pause()
"""

ESCAPE_AGENT = r"""
import asyncio, os, sys
from corral.core.model import RoundInfo
from corral.workers import Reaper, RunLogs, WorkerGroup, WorkerSpec
from corral.workers.sweep import claim_children

async def main():
    claim_children()  # as the CLI does
    reaper = Reaper(); reaper.start()
    logs = RunLogs("escape", log_dir=sys.argv[1])
    spec = WorkerSpec(sys.executable, ("-c", sys.argv[2]), no_python=True, local_world_size=2)
    rnd = RoundInfo("escape", 0, 0, 1, (), 0, 2, "127.0.0.1", 29500, 0)
    env = {k: v for k, v in os.environ.items() if k != "BEACON"}
    g = WorkerGroup(spec, rnd, attempt=0, logs=logs, reaper=reaper, node_id="n", host="h",
                    base_env=env)
    await g.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _gone_by(pids: list[int], deadline_s: float) -> list[int]:
    """Poll until every pid is gone or a zombie (bounded by ``deadline_s``); return the living."""
    import time

    end = time.monotonic() + deadline_s
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > end:
            return alive
        psutil.wait_procs([], timeout=0.01)  # a bounded pause between polls


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def test_escapees_die_with_sigkilled_agent(subreaper: None, tmp_path: Path) -> None:
    agent = subprocess.Popen(
        [sys.executable, "-c", ESCAPE_AGENT, str(tmp_path), ESCAPEES],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    pids: list[int] = []
    try:
        assert agent.stdout is not None
        for _ in range(2):
            pids += [int(p) for p in agent.stdout.readline().split()]
        assert len(pids) == 8
        escapees = [p for i, p in enumerate(pids) if i % 4]
        assert all(psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in escapees)
        agent.kill()
        agent.wait()
        alive = _gone_by(pids, 1.0)
        assert not alive, f"still running 1 s after the agent's SIGKILL: {alive}"
    finally:
        _kill_all(pids)
        agent.kill()
        agent.wait()
        if agent.stdout:
            agent.stdout.close()
        psutil.wait_procs([p for p in psutil.Process().children() if p.pid in pids], timeout=2.0)


async def test_escapees_die_on_graceful_stop(tmp_path: Path) -> None:
    from corral.workers import Reaper, RunLogs, WorkerGroup, WorkerSpec

    from .conftest import Beacon, round_info

    beacon = Beacon(tmp_path)
    reaper = Reaper()
    reaper.start()
    logs = RunLogs("escape", log_dir=str(tmp_path / "logs"))
    spec = WorkerSpec(sys.executable, ("-c", ESCAPEES), no_python=True, local_world_size=2)
    g = WorkerGroup(
        spec,
        round_info(2),
        attempt=0,
        logs=logs,
        reaper=reaper,
        node_id="n",
        host="h",
        base_env={**os.environ, "BEACON": beacon.path},
    )
    pids: list[int] = []
    try:
        await g.start()
        for line in await beacon.lines(2, timeout=20):
            pids += [int(p) for p in line.split()]
        await g.stop(0.5)  # SIGTERM: the stubborn grandchild ignores it, the others never get it
        alive = _gone_by(pids, 2.0)
        assert not alive, f"still running after the group stopped: {alive}"
    finally:
        _kill_all(pids)
        await g.stop(0.1)
        beacon.close()
        logs.close()
        reaper.close()


# A daemon that starts with an empty environment (no marker): only the subreaper finds it.
BARE_DAEMON = r"""
import os, signal
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execve("/bin/sleep", ["sleep", "1002"], {})
    os._exit(0)
os.wait()
print(os.getpid(), flush=True)
signal.pause()
"""

STOPPING_AGENT = r"""
import asyncio, os, sys
from corral.core.model import RoundInfo
from corral.workers import Reaper, RunLogs, WorkerGroup, WorkerSpec
from corral.workers.sweep import claim_children

async def main():
    claim_children()  # as the CLI does
    reaper = Reaper(); reaper.start()
    logs = RunLogs("bare", log_dir=sys.argv[1])
    spec = WorkerSpec(sys.executable, ("-c", sys.argv[2]), no_python=True, local_world_size=1)
    rnd = RoundInfo("bare", 0, 0, 1, (), 0, 1, "127.0.0.1", 29500, 0)
    g = WorkerGroup(spec, rnd, attempt=0, logs=logs, reaper=reaper, node_id="n", host="h",
                    base_env=os.environ)
    await g.start()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await g.stop(0.5)
    print("stopped", flush=True)
    reaper.close()

asyncio.run(main())
"""


def test_orphan_without_marker_is_ended_by_the_subreaper_agent(tmp_path: Path) -> None:
    agent = subprocess.Popen(
        [sys.executable, "-c", STOPPING_AGENT, str(tmp_path), BARE_DAEMON],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    daemons: list[int] = []
    try:
        assert agent.stdin is not None and agent.stdout is not None
        worker = int(agent.stdout.readline())
        daemons = [
            c.pid for c in psutil.Process(agent.pid).children() if c.name() == "sleep"
        ]  # re-parented to the agent, in a session of its own, with no marker
        assert len(daemons) == 1, (worker, psutil.Process(agent.pid).children())
        assert b"CORRAL_WORKER_TOKEN" not in Path(f"/proc/{daemons[0]}/environ").read_bytes()
        agent.stdin.write(b"stop\n")
        agent.stdin.flush()
        assert agent.stdout.readline().strip() == b"stopped"
        assert not _gone_by(daemons, 2.0)
        assert agent.wait(timeout=10) == 0
    finally:
        _kill_all(daemons)
        agent.kill()
        agent.wait()
        for stream in (agent.stdin, agent.stdout):
            if stream:
                stream.close()
