"""corral.launch / launch_async with function and command entrypoints (real workers)."""

from __future__ import annotations

import asyncio
import sys
import threading
from dataclasses import replace
from typing import Any

import pytest

import corral
from corral.agent.agent import Agent
from corral.config import LaunchConfig
from corral.core.errors import ConfigError, WorkerFailed
from corral.core.model import RoundInfo
from corral.workers.spec import WorkerSpec
from tests.api import fns
from tests.helpers import Hub

pytestmark = pytest.mark.timeout(60)


async def test_function_returns_value_per_rank(cfg: LaunchConfig) -> None:
    results = await corral.launch_async(cfg, fns.rank_times, 10)
    assert results == {0: (0, 2, 0), 1: (1, 2, 10)}


async def test_command_returns_none_per_rank(cfg: LaunchConfig) -> None:
    command = replace(cfg, no_python=True)
    assert await corral.launch_async(command, "true") == {0: None, 1: None}


async def test_function_exception_reaches_caller_with_traceback(cfg: LaunchConfig) -> None:
    with pytest.raises(WorkerFailed) as info:
        await corral.launch_async(cfg, fns.fail_on_rank, 1)
    err = info.value
    root = err.root_cause
    assert root is not None and root.rank == 1 and root.exitcode == 1
    assert root.message == "ValueError: rank 1 is broken"
    assert root.traceback is not None
    assert "inner_helper_that_raises" in root.traceback
    assert 'raise ValueError(f"rank' in root.traceback
    assert err.exit_code == 1
    assert "worker rank 1" in str(err) and "rank 1 is broken" in str(err)
    assert all(f.rank == 1 for f in err.failures)  # rank 0 was stopped, not failed


async def test_command_failure_carries_exit_code(cfg: LaunchConfig, tmp_path: Any) -> None:
    script = tmp_path / "exit7.py"
    script.write_text("import sys\nsys.exit(7)\n")
    with pytest.raises(WorkerFailed) as info:
        await corral.launch_async(replace(cfg, nproc_per_node=1), str(script))
    assert info.value.exit_code == 7


def test_sync_launch_in_a_thread_without_signal_handlers(cfg: LaunchConfig) -> None:
    out: dict[str, Any] = {}

    def target() -> None:
        out["results"] = corral.launch(replace(cfg, nproc_per_node=1), fns.rank_times, 3)

    t = threading.Thread(target=target)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive()
    assert out["results"] == {0: (0, 1, 0)}


async def test_sync_launch_refuses_a_running_loop(cfg: LaunchConfig) -> None:
    with pytest.raises(RuntimeError, match="launch_async"):
        corral.launch(cfg, fns.rank_times, 1)


@pytest.mark.parametrize("method", ["fork", "forkserver"])
async def test_function_needs_spawn(cfg: LaunchConfig, method: str) -> None:
    with pytest.raises(ConfigError, match="spawn"):
        await corral.launch_async(replace(cfg, start_method=method), fns.rank_times, 1)


async def test_unpicklable_function_is_a_config_error(cfg: LaunchConfig) -> None:
    with pytest.raises(ConfigError, match="cannot be pickled"):
        await corral.launch_async(cfg, lambda: 1)


async def test_signal_handlers_of_the_caller_are_restored(cfg: LaunchConfig) -> None:
    import signal

    def mine(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGUSR1, mine)
    try:
        await corral.launch_async(replace(cfg, nproc_per_node=1), fns.rank_times, 1)
        assert signal.getsignal(signal.SIGUSR1) is mine
    finally:
        signal.signal(signal.SIGUSR1, previous)


class EnvAgent(Agent):
    def worker_env(
        self,
        base_env: Any,
        spec: WorkerSpec,
        rnd: RoundInfo,
        local_rank: int,
        error_file: str,
    ) -> dict[str, str]:
        env = super().worker_env(base_env, spec, rnd, local_rank, error_file)
        env["MY_SHARD"] = f"shard-{env['RANK']}"
        return env


async def test_agent_subclass_extends_worker_env(cfg: LaunchConfig) -> None:
    results = await corral.launch_async(cfg, fns.read_env, "MY_SHARD", agent_class=EnvAgent)
    assert results == {0: "shard-0", 1: "shard-1"}


def test_import_corral_is_lazy() -> None:
    import subprocess

    code = (
        "import sys, corral; "
        "assert 'corral.api' not in sys.modules and 'asyncio' not in sys.modules, sorted(sys.modules); "
        "assert callable(corral.launch) and 'corral.api' in sys.modules; "
        "print(sorted(corral.__all__))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert "launch_async" in out.stdout


async def test_cancelling_launch_async_stops_workers(cfg: LaunchConfig, hub: Hub) -> None:
    import psutil

    task = asyncio.ensure_future(corral.launch_async(cfg, fns.report_and_block, hub.path))
    workers = await asyncio.to_thread(hub.collect, 2)  # both workers run
    procs = [psutil.Process(w["pid"]) for w in workers]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 20)
    _, alive = psutil.wait_procs(procs, timeout=5)
    assert alive == [], f"workers outlived the cancelled launch: {alive}"
