"""SkyPilot: a task's run section on every node of a cluster.

``SKYPILOT_NODE_IPS`` (one address a line, the head node first),
``SKYPILOT_NUM_NODES`` and ``SKYPILOT_TASK_ID`` give a c10d rendezvous on the
first address, port 29400, id the task id; ``SKYPILOT_NODE_RANK`` and the first
address make a static world when ``--rdzv-backend static`` is asked for.
``--nproc-per-node auto`` takes ``SKYPILOT_NUM_GPUS_PER_NODE`` when it is set.
A set that does not agree (a count that differs from the address list, no
task id) is reported in one line and ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

from corral.schedulers.base import Found, Read, endpoint, positive_int

__all__ = ["read"]

_VARS = ("SKYPILOT_NODE_IPS", "SKYPILOT_NUM_NODES", "SKYPILOT_NODE_RANK")


def read(environ: Mapping[str, str], given: Mapping[str, str]) -> Read:
    """Read a SkyPilot task's node (see the module docstring)."""
    if not any(environ.get(name) for name in _VARS):
        return Read()
    ips = [line.strip() for line in environ.get("SKYPILOT_NODE_IPS", "").splitlines()]
    ips = [ip for ip in ips if ip]
    num = positive_int(environ.get("SKYPILOT_NUM_NODES"))
    task = environ.get("SKYPILOT_TASK_ID", "").strip().replace("/", "-")
    problem = ""
    if not ips:
        problem = "no SKYPILOT_NODE_IPS"
    elif num is None:
        problem = f"SKYPILOT_NUM_NODES={environ.get('SKYPILOT_NUM_NODES')!r} is not a node count"
    elif len(ips) != num:
        problem = f"SKYPILOT_NODE_IPS has {len(ips)} address(es) but SKYPILOT_NUM_NODES={num}"
    elif not task:
        problem = "no SKYPILOT_TASK_ID"
    if problem:
        return Read(ignored=(f"skypilot: {problem}; SkyPilot variables ignored",))
    values = {
        "nnodes": str(num),
        "rdzv_backend": "c10d",
        "rdzv_endpoint": endpoint(ips[0]),
        "rdzv_id": task,
        "master_addr": ips[0],
    }
    sources = {
        "nnodes": "SKYPILOT_NUM_NODES",
        "rdzv_backend": "skypilot",
        "rdzv_endpoint": "SKYPILOT_NODE_IPS",
        "rdzv_id": "SKYPILOT_TASK_ID",
        "master_addr": "SKYPILOT_NODE_IPS",
    }
    rank = environ.get("SKYPILOT_NODE_RANK", "").strip()
    if positive_int(rank, 0) is not None:
        values["node_rank"] = rank
        sources["node_rank"] = "SKYPILOT_NODE_RANK"
    gpus = environ.get("SKYPILOT_NUM_GPUS_PER_NODE", "").strip()
    nproc = gpus if positive_int(gpus) is not None else None
    return Read(
        Found(
            "skypilot",
            values,
            sources,
            nproc_auto=nproc,
            nproc_source="SKYPILOT_NUM_GPUS_PER_NODE" if nproc else "",
        )
    )
