"""Each scheduler's documented environment -> the launch configuration, through the CLI's parse.

The variables are those the schedulers document and set: Slurm's srun step
(``SLURM_*``), Kubeflow Trainer v2's torch plugin (``PET_NNODES``,
``PET_NPROC_PER_NODE``, ``PET_NODE_RANK`` from the job completion index,
``PET_MASTER_ADDR`` ``<trainjob>-node-0-0.<trainjob>``, ``PET_MASTER_PORT``
29400), Kubeflow training-operator's PyTorchJob (master replica:
``MASTER_ADDR``/``MASTER_PORT``/``WORLD_SIZE``/``RANK`` plus
``PET_NPROC_PER_NODE``/``PET_NODE_RANK``/``PET_NNODES``; elastic policy:
``PET_RDZV_ENDPOINT``/``PET_RDZV_BACKEND``/``PET_NNODES``/``PET_MAX_RESTARTS``/
``PET_RDZV_ID``), indexed Jobs and JobSet (``JOB_COMPLETION_INDEX``,
``JOB_INDEX``), SkyPilot (``SKYPILOT_NODE_IPS``, ``SKYPILOT_NUM_NODES``,
``SKYPILOT_NODE_RANK``, ``SKYPILOT_TASK_ID``, ``SKYPILOT_NUM_GPUS_PER_NODE``).
"""

from __future__ import annotations

import pytest

from corral.cli import parse_args
from corral.config import LaunchConfig
from corral.core.errors import ConfigError

S = "train.py"
K8S = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def srun(
    nodelist: str = "gpu[001-004]", nodes: int = 4, nodeid: int = 2, **extra: str
) -> dict[str, str]:
    """What srun puts in a task's environment (the variables corral reads, and some it must not)."""
    env = {
        "SLURM_JOB_ID": "12345",
        "SLURM_JOBID": "12345",
        "SLURM_STEP_ID": "0",
        "SLURM_STEPID": "0",
        "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_STEP_NUM_NODES": str(nodes),
        "SLURM_NODEID": str(nodeid),
        "SLURM_PROCID": str(nodeid),
        "SLURM_LOCALID": "0",
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_NODELIST": nodelist,
        "SLURM_STEP_NODELIST": nodelist,
        "SLURM_STEP_NUM_TASKS": str(nodes),
        "SLURM_NTASKS": str(nodes),
    }
    env.update(extra)
    return env


def cfg(env: dict[str, str], *argv: str) -> LaunchConfig:
    return parse_args([*argv, S], env)


# --- Slurm -----------------------------------------------------------------------


def test_srun_needs_no_flag() -> None:
    c = cfg(srun(), "--nproc-per-node", "8")
    assert (c.min_nodes, c.max_nodes) == (4, 4)
    assert c.rdzv_backend == "c10d"
    assert c.rdzv_endpoint == "gpu001:29400"
    assert c.rdzv_id == "12345.0"
    assert c.nproc_per_node == 8
    assert c.scheduler_summary.startswith("slurm: 4 nodes, rdzv tcp://gpu001:29400, id 12345.0")
    assert "SLURM_STEP_NODELIST" in c.scheduler_summary
    assert c.scheduler_ignored == ()


def test_srun_first_host_of_full_hostlist_syntax() -> None:
    c = cfg(srun("rack[2-3]-n[07-08],login1", nodes=5))
    assert c.rdzv_endpoint == "rack2-n07:29400"
    assert c.max_nodes == 5


def test_srun_step_list_wins_over_job_list() -> None:
    env = srun("gpu[003-004]", nodes=2, SLURM_JOB_NODELIST="gpu[001-004]", SLURM_JOB_NUM_NODES="4")
    c = cfg(env)
    assert c.rdzv_endpoint == "gpu003:29400"
    assert c.max_nodes == 2


def test_flags_and_pet_win_over_slurm() -> None:
    c = cfg(srun(), "--nnodes", "2:4", "--rdzv-id", "mine")
    assert (c.min_nodes, c.max_nodes, c.rdzv_id) == (2, 4, "mine")
    assert c.rdzv_endpoint == "gpu001:29400"
    assert "--nnodes" in c.scheduler_summary and "--rdzv-id" in c.scheduler_summary
    env = srun(PET_RDZV_ENDPOINT="10.0.0.9:1234", PET_NNODES="3")
    c = cfg(env)
    assert (c.rdzv_endpoint, c.max_nodes) == ("10.0.0.9:1234", 3)
    assert "PET_RDZV_ENDPOINT" in c.scheduler_summary


def test_endpoint_port_only_takes_the_slurm_host() -> None:
    c = cfg(srun(), "--rdzv-endpoint", ":29555")
    assert c.rdzv_endpoint == "gpu001:29555"


def test_etcd_backend_keeps_its_own_endpoint() -> None:
    c = cfg(srun(), "--rdzv-backend", "etcd", "--rdzv-endpoint", "10.0.0.5:2379")
    assert (c.rdzv_backend, c.rdzv_endpoint, c.rdzv_id) == ("etcd", "10.0.0.5:2379", "12345.0")
    with pytest.raises(ConfigError, match="etcd backend needs"):
        cfg(srun(), "--rdzv-backend", "etcd")


def test_static_world_from_slurm() -> None:
    c = cfg(srun(nodeid=3), "--rdzv-backend", "static")
    assert (c.rdzv_backend, c.master_addr, c.node_rank, c.max_nodes) == ("static", "gpu001", 3, 4)


def test_nproc_auto_uses_slurm_gpus_only_when_asked() -> None:
    env = srun(SLURM_GPUS_ON_NODE="4")
    assert cfg(env, "--nproc-per-node", "auto").nproc_per_node == 4
    assert cfg(env).nproc_per_node == 1  # torchrun's default, not the GPUs
    assert cfg(env, "--nproc-per-node", "2").nproc_per_node == 2


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "a[1-2]", "SLURM_NNODES": "2"}, "no SLURM_STEP_ID"),
        ({**srun(), "SLURM_STEP_NODELIST": "", "SLURM_JOB_NODELIST": "", "SLURM_NODELIST": ""}, "no SLURM_STEP_NODELIST"),
        (srun("gpu[001-004"), "does not read"),
        (srun("gpu[001-003]"), "3 host(s) but SLURM_STEP_NUM_NODES=4"),
        ({**srun(), "SLURM_STEP_NUM_NODES": "x", "SLURM_NNODES": "x", "SLURM_JOB_NUM_NODES": "x"}, "not a node count"),
    ],
    ids=["job-without-step", "no-node-list", "bad-hostlist", "count-mismatch", "bad-count"],
)  # fmt: skip
def test_half_set_slurm_is_reported_and_ignored(env: dict[str, str], says: str) -> None:
    c = cfg(env)
    assert c.scheduler_summary == ""
    assert len(c.scheduler_ignored) == 1 and says in c.scheduler_ignored[0]
    assert (c.rdzv_backend, c.max_nodes, c.rdzv_id) == ("c10d", 1, c.rdzv_id)  # standalone
    assert c.standalone


def test_several_tasks_per_node_is_an_error() -> None:
    with pytest.raises(ConfigError, match="ntasks-per-node=1"):
        cfg(srun(SLURM_STEP_NUM_TASKS="32"))


def test_scheduler_none_and_explicit() -> None:
    c = cfg(srun(), "--scheduler", "none")
    assert c.standalone and c.scheduler_summary == ""
    assert cfg(srun(), "--scheduler", "slurm").rdzv_id == "12345.0"
    with pytest.raises(ConfigError, match="--scheduler slurm: no slurm variables"):
        cfg({}, "--scheduler", "slurm")
    with pytest.raises(ConfigError, match="--scheduler slurm: slurm: SLURM_JOB_ID=7 but no"):
        cfg({"SLURM_JOB_ID": "7"}, "--scheduler", "slurm")
    with pytest.raises(ConfigError, match="--scheduler pbs: expected one of"):
        cfg({}, "--scheduler", "pbs")
    assert cfg(srun(PET_SCHEDULER="none")).standalone


def test_standalone_ignores_the_scheduler() -> None:
    c = cfg(srun(), "--standalone")
    assert c.standalone and c.max_nodes == 1 and c.scheduler_summary == ""


# --- Kubernetes ------------------------------------------------------------------


def test_kubeflow_trainer_v2_static_world() -> None:
    env = {
        **K8S,
        "PET_NNODES": "4",
        "PET_NPROC_PER_NODE": "2",
        "PET_NODE_RANK": "3",  # fieldRef: the job completion index
        "PET_MASTER_ADDR": "mnist-node-0-0.mnist",
        "PET_MASTER_PORT": "29400",
        "JOB_COMPLETION_INDEX": "3",
    }
    c = cfg(env)
    assert (c.rdzv_backend, c.max_nodes, c.node_rank, c.nproc_per_node) == ("static", 4, 3, 2)
    assert (c.master_addr, c.master_port) == ("mnist-node-0-0.mnist", 29400)
    assert c.scheduler_summary == (
        "kubernetes: 4 nodes, node rank 3, master mnist-node-0-0.mnist:29400 "
        "(from PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT)"
    )


def test_pytorchjob_master_replica_static_world() -> None:
    env = {
        **K8S,
        "MASTER_ADDR": "mnist-master-0",
        "MASTER_PORT": "23456",
        "WORLD_SIZE": "3",
        "RANK": "2",
        "PET_NPROC_PER_NODE": "1",
        "PET_NODE_RANK": "2",
        "PET_NNODES": "3",
        "PYTHONUNBUFFERED": "0",
    }
    c = cfg(env)
    assert (c.rdzv_backend, c.max_nodes, c.node_rank) == ("static", 3, 2)
    assert (c.master_addr, c.master_port) == ("mnist-master-0", 23456)
    assert "MASTER_ADDR, MASTER_PORT" in c.scheduler_summary
    # outside a pod, MASTER_ADDR is not read (it may be anybody's)
    env.pop("KUBERNETES_SERVICE_HOST")
    assert cfg(env).master_addr == "127.0.0.1"


def test_pytorchjob_elastic_policy() -> None:
    env = {
        **K8S,
        "PET_RDZV_ENDPOINT": "elastic-worker-0:23456",
        "PET_RDZV_BACKEND": "c10d",
        "PET_NNODES": "1:3",
        "PET_MAX_RESTARTS": "100",
        "PET_NPROC_PER_NODE": "1",
        "PET_RDZV_ID": "elastic",
    }
    c = cfg(env)
    assert (c.rdzv_backend, c.rdzv_endpoint, c.rdzv_id) == (
        "c10d",
        "elastic-worker-0:23456",
        "elastic",
    )
    assert (c.min_nodes, c.max_nodes, c.max_restarts) == (1, 3, 100)
    assert c.signal_action == "leave"
    assert c.scheduler_summary.startswith(
        "kubernetes: 1:3 nodes, rdzv tcp://elastic-worker-0:23456"
    )


def test_indexed_job_completion_index_is_the_node_rank() -> None:
    env = {**K8S, "JOB_COMPLETION_INDEX": "2", "PET_NNODES": "4", "PET_MASTER_ADDR": "train-0.svc"}
    c = cfg(env)
    assert (c.rdzv_backend, c.node_rank, c.master_addr) == ("static", 2, "train-0.svc")
    assert "JOB_COMPLETION_INDEX" in c.scheduler_summary
    # JobSet, one replicated Job: JOB_INDEX 0
    c = cfg({**env, "JOBSET_NAME": "js", "REPLICATED_JOB_NAME": "workers", "JOB_INDEX": "0"})
    assert c.node_rank == 2
    # PET_NODE_RANK wins
    assert cfg({**env, "PET_NODE_RANK": "1"}).node_rank == 1


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"JOB_INDEX": "1", "PET_NNODES": "4", "PET_MASTER_ADDR": "m"}, "JOB_INDEX=1"),
        ({"PET_MASTER_ADDR": "m"}, "without PET_NNODES"),
        ({"PET_NNODES": "4"}, "without PET_MASTER_ADDR"),
        ({"JOB_COMPLETION_INDEX": "x", "PET_NNODES": "4", "PET_MASTER_ADDR": "m"}, "not a number"),
    ],
    ids=["replicated-jobset", "no-nnodes", "no-master", "bad-index"],
)
def test_ambiguous_completion_index_is_reported_and_ignored(
    extra: dict[str, str], says: str
) -> None:
    env = {**K8S, "JOB_COMPLETION_INDEX": "2", **extra}
    c = cfg(env)
    assert c.node_rank == 0
    assert len(c.scheduler_ignored) == 1 and says in c.scheduler_ignored[0]


def test_plain_pod_says_nothing() -> None:
    c = cfg(dict(K8S))
    assert c.standalone and c.scheduler_summary == "" and c.scheduler_ignored == ()


# --- SkyPilot --------------------------------------------------------------------


def sky(rank: int = 1, **extra: str) -> dict[str, str]:
    env = {
        "SKYPILOT_NODE_IPS": "10.0.0.4\n10.0.0.5\n10.0.0.6\n",
        "SKYPILOT_NUM_NODES": "3",
        "SKYPILOT_NODE_RANK": str(rank),
        "SKYPILOT_TASK_ID": "sky-2026-11-30-00-00-00-000001_mycluster_3",
        "SKYPILOT_NUM_GPUS_PER_NODE": "8",
    }
    env.update(extra)
    return env


def test_skypilot_task() -> None:
    c = cfg(sky(), "--nproc-per-node", "auto")
    assert (c.rdzv_backend, c.rdzv_endpoint, c.max_nodes) == ("c10d", "10.0.0.4:29400", 3)
    assert c.rdzv_id == "sky-2026-11-30-00-00-00-000001_mycluster_3"
    assert c.nproc_per_node == 8
    assert c.scheduler_summary.startswith("skypilot: 3 nodes, rdzv tcp://10.0.0.4:29400")
    s = cfg(sky(rank=2), "--rdzv-backend", "static")
    assert (s.master_addr, s.node_rank) == ("10.0.0.4", 2)


def test_skypilot_on_kubernetes_is_skypilot() -> None:
    assert cfg({**K8S, **sky()}).scheduler_summary.startswith("skypilot:")


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"SKYPILOT_NUM_NODES": "2"}, "3 address(es) but SKYPILOT_NUM_NODES=2"),
        ({"SKYPILOT_NODE_IPS": ""}, "no SKYPILOT_NODE_IPS"),
        ({"SKYPILOT_TASK_ID": ""}, "no SKYPILOT_TASK_ID"),
    ],
)
def test_half_set_skypilot(extra: dict[str, str], says: str) -> None:
    c = cfg({**sky(), **extra})
    assert c.standalone and says in c.scheduler_ignored[0]


# --- --on-signal -----------------------------------------------------------------


def test_on_signal_default_and_flag() -> None:
    assert cfg({}, "--nnodes", "2", "--master-port", "29500").signal_action == "stop"
    elastic = ("--nnodes", "1:2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "h:1")
    assert cfg({}, *elastic).signal_action == "leave"
    assert cfg({}, *elastic, "--on-signal", "stop").signal_action == "stop"
    assert cfg({"PET_ON_SIGNAL": "leave"}, "--master-port", "1").signal_action == "leave"
    with pytest.raises(ConfigError, match="--on-signal pause: expected stop or leave"):
        cfg({}, "--on-signal", "pause")
