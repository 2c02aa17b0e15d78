"""Each scheduler layout launches a real 2-node job with no flags at all: ``corral train.py``.

Both agents run in a private network namespace holding only ``lo`` (so the
fixed ports a scheduler implies, 29400 and 29500, are this test's alone), and
every value comes from the environment the scheduler would set, with loopback
addresses where the scheduler would give host names or pod IPs.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.helpers import CORRAL, Hub, NetNS, Procs, corral_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

K8S = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def slurm(node: int) -> dict[str, str]:
    return {
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_ID": "0",
        "SLURM_NNODES": "2",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": str(node),
        "SLURM_PROCID": str(node),
        "SLURM_JOB_NODELIST": "127.0.0.[1-2]",
        "SLURM_STEP_NODELIST": "127.0.0.[1-2]",
        "SLURM_STEP_NUM_TASKS": "2",
    }


def trainer_v2(node: int) -> dict[str, str]:
    return {
        **K8S,
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "1",
        "PET_NODE_RANK": str(node),
        "JOB_COMPLETION_INDEX": str(node),
        "PET_MASTER_ADDR": "127.0.0.1",  # <trainjob>-node-0-0.<trainjob>
        "PET_MASTER_PORT": "29400",
    }


def pytorchjob_master(node: int) -> dict[str, str]:
    return {
        **K8S,
        "MASTER_ADDR": "127.0.0.1",  # <job>-master-0
        "MASTER_PORT": "23456",
        "WORLD_SIZE": "2",
        "RANK": str(node),
        "PET_NPROC_PER_NODE": "1",
        "PET_NODE_RANK": str(node),
        "PET_NNODES": "2",
    }


def pytorchjob_elastic(node: int) -> dict[str, str]:
    return {
        **K8S,
        "PET_RDZV_ENDPOINT": "127.0.0.1:23456",  # <job>-worker-0:23456
        "PET_RDZV_BACKEND": "c10d",
        "PET_NNODES": "1:2",
        "PET_MAX_RESTARTS": "3",
        "PET_NPROC_PER_NODE": "1",
    }


def indexed_job(node: int) -> dict[str, str]:
    return {
        **K8S,
        "JOB_COMPLETION_INDEX": str(node),
        "JOBSET_NAME": "train",
        "REPLICATED_JOB_NAME": "nodes",
        "JOB_INDEX": "0",
        "PET_NNODES": "2",
        "PET_MASTER_ADDR": "127.0.0.1",  # train-nodes-0-0.train
    }


def skypilot(node: int) -> dict[str, str]:
    return {
        "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.2\n",
        "SKYPILOT_NUM_NODES": "2",
        "SKYPILOT_NODE_RANK": str(node),
        "SKYPILOT_TASK_ID": "sky-2026-11-30-00-00-00-000001_loop_1",
    }


LAYOUTS: dict[str, tuple[Callable[[int], dict[str, str]], str]] = {
    "slurm-srun": (slurm, "slurm: 2 nodes, rdzv tcp://127.0.0.1:29400, id 4242.0"),
    "kubeflow-trainer-v2": (trainer_v2, "kubernetes: 2 nodes, node rank"),
    "pytorchjob-master": (pytorchjob_master, "master 127.0.0.1:23456 (from PET_NNODES"),
    "pytorchjob-elastic": (pytorchjob_elastic, "kubernetes: 1:2 nodes, rdzv tcp://127.0.0.1:23456"),
    "indexed-job": (indexed_job, "JOB_COMPLETION_INDEX"),
    "skypilot": (skypilot, "skypilot: 2 nodes, rdzv tcp://127.0.0.1:29400"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_launches_with_no_flags(layout: str, procs: Procs, hub: Hub, tmp_path: Path) -> None:
    env_of, summary = LAYOUTS[layout]
    ns = NetNS(procs)
    agents = []
    for node in (0, 1):
        err = open(tmp_path / f"agent{node}.err", "wb")
        env = corral_env(HUB=hub.path, TMPDIR=str(tmp_path), **env_of(node))
        agents.append(
            procs.start(
                ns.wrap([*CORRAL, str(hub.script)]), stdout=subprocess.DEVNULL, stderr=err, env=env
            )
        )
        err.close()
    workers = hub.collect(2, timeout=40)
    assert sorted(int(w["RANK"]) for w in workers) == [0, 1]
    assert {w["WORLD_SIZE"] for w in workers} == {"2"}
    assert {w["MASTER_ADDR"] for w in workers} == {"127.0.0.1"}
    assert len({w["MASTER_PORT"] for w in workers}) == 1
    for w in workers:
        w.release(0)
    for node, agent in enumerate(agents):
        code = agent.wait(timeout=30)
        stderr = (tmp_path / f"agent{node}.err").read_text(errors="replace")
        assert code == 0, stderr
        first = stderr.splitlines()[0]
        assert summary in first, stderr


def test_evicted_pod_of_a_trainjob_stops_the_static_world(
    procs: Procs, hub: Hub, tmp_path: Path
) -> None:
    """Kubernetes evicts one pod (SIGTERM): a static world (MIN == MAX) stops on every node."""
    import signal

    ns = NetNS(procs)
    agents = []
    for node in (0, 1):
        err = open(tmp_path / f"agent{node}.err", "wb")
        env = corral_env(HUB=hub.path, TMPDIR=str(tmp_path), **trainer_v2(node))
        agents.append(
            procs.start(
                ns.wrap([*CORRAL, str(hub.script)]),
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )
        )
        err.close()
    hub.collect(2, timeout=40)
    agents[1].send_signal(signal.SIGTERM)
    for node, agent in enumerate(agents):
        stderr = lambda n=node: (tmp_path / f"agent{n}.err").read_text(errors="replace")  # noqa: E731
        assert agent.wait(timeout=30) == 143, stderr()
        assert "job stopped by SIGTERM on node" in stderr(), stderr()
