"""Slurm: a job step started by ``srun`` (one corral per node) needs no flags.

From the step's variables: the nodes (``SLURM_STEP_NUM_NODES``, else
``SLURM_NNODES``/``SLURM_JOB_NUM_NODES``), the rendezvous id
``<SLURM_JOB_ID>.<SLURM_STEP_ID>``, and the rendezvous host, the first host of
the step's node list (``SLURM_STEP_NODELIST``; the job's, ``SLURM_JOB_NODELIST``,
only when it has exactly the step's node count), on port 29400 with the c10d
backend. For a static world (``--rdzv-backend static``) the same host is the
master and ``SLURM_NODEID`` the node rank. ``--nproc-per-node auto`` takes
``SLURM_GPUS_ON_NODE`` when it is set.

``SLURM_JOB_ID`` without a step (corral run in the batch script or an
``salloc`` shell, not under ``srun``), or a node list that does not read, is
reported in one line and ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

from corral.core.errors import ConfigError
from corral.schedulers.base import Found, Read, endpoint, positive_int
from corral.schedulers.hostlist import HostlistError, expand_hostlist

__all__ = ["read"]


def _first(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name)
        if value is not None and value.strip():
            return name, value.strip()
    return None


def read(environ: Mapping[str, str], given: Mapping[str, str]) -> Read:
    """Read a Slurm job step from ``environ`` (see the module docstring).

    Raises:
        ConfigError: the step runs more than one task per node (``srun`` without
            ``--ntasks-per-node=1``): each would be an agent of its own.
    """
    job = _first(environ, "SLURM_JOB_ID", "SLURM_JOBID")
    if job is None:
        return Read()
    step = _first(environ, "SLURM_STEP_ID", "SLURM_STEPID")
    if step is None:
        return Read(
            ignored=(
                f"slurm: {job[0]}={job[1]} but no SLURM_STEP_ID (not a job step: "
                "run corral under srun); Slurm variables ignored",
            )
        )
    nodes = _first(environ, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
    nnodes = positive_int(nodes[1]) if nodes else None
    if nodes is None or nnodes is None:
        what = f"{nodes[0]}={nodes[1]!r} is not a node count" if nodes else "no SLURM_NNODES"
        return Read(ignored=(f"slurm: {what}; Slurm variables ignored",))
    lst = _first(environ, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    if lst is None:
        return Read(
            ignored=(
                "slurm: no SLURM_STEP_NODELIST or SLURM_JOB_NODELIST; Slurm variables ignored",
            )
        )
    try:
        hosts = expand_hostlist(lst[1])
    except HostlistError as exc:
        return Read(
            ignored=(f"slurm: {lst[0]}={lst[1]!r} does not read ({exc}); Slurm variables ignored",)
        )
    if len(hosts) != nnodes:
        return Read(
            ignored=(
                f"slurm: {lst[0]} has {len(hosts)} host(s) but {nodes[0]}={nnodes}; "
                "Slurm variables ignored",
            )
        )
    tasks = positive_int(environ.get("SLURM_STEP_NUM_TASKS"))
    if tasks is not None and tasks > nnodes:
        raise ConfigError(
            f"--scheduler slurm: this step runs {tasks} tasks on {nnodes} node(s); corral is "
            "one agent per node: srun --ntasks-per-node=1 corral ... (or --scheduler none)"
        )
    host = hosts[0]
    values = {
        "nnodes": str(nnodes),
        "rdzv_backend": "c10d",
        "rdzv_endpoint": endpoint(host),
        "rdzv_id": f"{job[1]}.{step[1]}",
        "master_addr": host,
    }
    sources = {
        "nnodes": nodes[0],
        "rdzv_backend": "slurm",
        "rdzv_endpoint": lst[0],
        "rdzv_id": f"{job[0]}.{step[0]}",
        "master_addr": lst[0],
    }
    node_id = _first(environ, "SLURM_NODEID")
    if node_id is not None and positive_int(node_id[1], 0) is not None:
        values["node_rank"] = node_id[1]
        sources["node_rank"] = node_id[0]
    gpus = _first(environ, "SLURM_GPUS_ON_NODE")
    nproc = gpus[1] if gpus is not None and positive_int(gpus[1]) is not None else None
    return Read(
        Found(
            "slurm",
            values,
            sources,
            nproc_auto=nproc,
            nproc_source="SLURM_GPUS_ON_NODE" if nproc else "",
        )
    )
