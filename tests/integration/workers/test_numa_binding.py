"""--numa-binding on real workers: fresh and pre-started ones run their first line already bound.

The topology is a fake sysfs tree (WorkerSpec.numa_sysfs_root) built from this machine's
own CPUs: two NUMA nodes of one CPU each, GPU 0 on the first, GPU 1 on the second.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from corral.core.errors import ConfigError
from corral.workers import Reaper, RunLogs, WorkerGroup, WorkerSpec
from corral.workers.standby import StandbyPool, prestart_plan

from .conftest import round_info

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

# Every thread's affinity, as the worker's first statement sees it.
SCRIPT = """\
import json, os
aff = {t: sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}
with open(os.path.join(os.environ["OUT"], "aff" + os.environ["LOCAL_RANK"]), "w") as f:
    json.dump(aff, f)
import corral_test_threader  # pre-imported by a standby: its thread predates the assignment
"""
# Imported by the standby in advance: leaves a thread running, which must be bound too.
THREADER = """\
import threading
threading.Thread(target=threading.Event().wait, daemon=True).start()
"""

CPUS = sorted(os.sched_getaffinity(0))[:2]
needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs in this affinity")


def fake_sysfs(root: Path) -> Path:
    for node, cpu in enumerate(CPUS):
        d = root / f"devices/system/node/node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(f"{cpu}\n")
        dev = root / f"bus/pci/devices/0000:{0x18 + node:02x}:00.0"
        dev.mkdir(parents=True)
        (dev / "vendor").write_text("0x10de\n")
        (dev / "class").write_text("0x030200\n")
        (dev / "numa_node").write_text(f"{node}\n")
    return root


async def run(
    spec: WorkerSpec, tmp: Path, env: dict[str, str], pool: StandbyPool | None = None
) -> WorkerGroup:
    reaper = Reaper()
    reaper.start()
    logs = RunLogs("numa", log_dir=str(tmp / "logs"))
    try:
        g = WorkerGroup(
            spec,
            round_info(spec.local_world_size),
            attempt=0,
            logs=logs,
            reaper=reaper,
            node_id="n",
            host="h",
            base_env=env,
            standbys=pool,
        )
        try:
            await g.start()
            res = await asyncio.wait_for(g.wait(), 30)
        finally:
            await g.stop(2.0)
        assert res.succeeded, (res, g.logs and g.logs.dir)
        return g
    finally:
        logs.close()
        reaper.close()


def affinities(out: Path, rank: int) -> dict[str, list[int]]:
    got: dict[str, list[int]] = json.loads((out / f"aff{rank}").read_text())
    return got


@needs_two_cpus
async def test_fresh_and_prestarted_workers_start_bound(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "aff.py").write_text(SCRIPT)
    (code / "corral_test_threader.py").write_text(THREADER)
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["OUT"] = str(out)
    spec = WorkerSpec(
        str(code / "aff.py"),
        local_world_size=2,
        python_exec=sys.executable,
        numa_binding="node",
        numa_sysfs_root=str(fake_sysfs(tmp_path / "sys")),
    )
    await run(spec, tmp_path, env)
    for rank in (0, 1):
        aff = affinities(out, rank)
        assert len(aff) == 1 and set(map(tuple, aff.values())) == {(CPUS[rank],)}, aff

    plan = prestart_plan(spec, ("corral_test_threader",))
    assert plan is not None
    reaper = Reaper()
    reaper.start()
    try:
        async with StandbyPool(plan, spec, env, reaper, zygote=False) as pool:
            async with asyncio.timeout(30):
                while len(pool._standbys) < 2 or not all(sb.ready for sb in pool._standbys):
                    await asyncio.sleep(0.01)
            g = await run(spec, tmp_path, env, pool)
            assert [w.prestarted for w in g.workers] == [True, True]
    finally:
        reaper.close()
    for rank in (0, 1):
        aff = affinities(out, rank)
        assert len(aff) >= 2, aff  # the imported module's thread is there, and bound too
        assert set(map(tuple, aff.values())) == {(CPUS[rank],)}, aff


async def test_no_gpu_fails_the_start_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    spec = WorkerSpec(sys.executable, ("-c", "pass"), no_python=True, numa_binding="socket")
    with pytest.raises(ConfigError, match=r"^--numa-binding socket: GPU 0: no such GPU \(0 NVIDIA"):
        await run(spec, tmp_path, env)
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("attempt_*"))
