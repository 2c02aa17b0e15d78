"""Kubernetes: the layouts of Kubeflow Trainer v2, PyTorchJob, JobSet and indexed Jobs.

Most of what these operators set is torchrun's own ``PET_*`` variables, which
the command line reads anyway (``PET_NNODES``, ``PET_NPROC_PER_NODE``,
``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``, ``PET_RDZV_*``,
``PET_MAX_RESTARTS``). What this module adds, inside a pod only
(``KUBERNETES_SERVICE_HOST`` is set):

* PyTorchJob (Kubeflow training-operator) with a Master replica sets
  ``MASTER_ADDR``/``MASTER_PORT`` (the master pod's service) beside
  ``PET_NNODES``/``PET_NODE_RANK`` but no ``PET_MASTER_ADDR``: they become the
  static world's master (torchrun would take 127.0.0.1).
* An indexed Job, or a JobSet of one replicated Job, gives each pod
  ``JOB_COMPLETION_INDEX``: it is the node rank when ``PET_NODE_RANK`` is not
  set, there is more than one node, and a master address is known. In a JobSet
  whose replicated Job has several replicas (``JOB_INDEX`` > 0) the index does
  not say the node's rank in the whole job: it is reported and ignored (set
  ``PET_NODE_RANK``).
"""

from __future__ import annotations

from collections.abc import Mapping

from corral.schedulers.base import Found, Read, positive_int

__all__ = ["read"]

# PET_* variables that describe the world (their presence makes a pod a corral job's node).
_WORLD = ("PET_NNODES", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_RDZV_ENDPOINT")


def read(environ: Mapping[str, str], given: Mapping[str, str]) -> Read:
    """Read a Kubernetes pod's layout (see the module docstring)."""
    if not environ.get("KUBERNETES_SERVICE_HOST"):
        return Read()
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    ignored: list[str] = []
    master = environ.get("MASTER_ADDR", "").strip()
    if "master_addr" not in given and master and ("nnodes" in given or "node_rank" in given):
        values["master_addr"] = master
        sources["master_addr"] = "MASTER_ADDR"
        port = positive_int(environ.get("MASTER_PORT"))
        if "master_port" not in given and port is not None and port <= 65535:
            values["master_port"] = str(port)
            sources["master_port"] = "MASTER_PORT"
    index = environ.get("JOB_COMPLETION_INDEX")
    if index is not None and "node_rank" not in given:
        job_index = environ.get("JOB_INDEX", "0").strip() or "0"
        nnodes = given.get("nnodes", "1").strip()
        has_master = "master_addr" in given or "master_addr" in values
        if positive_int(index, 0) is None:
            ignored.append(f"kubernetes: JOB_COMPLETION_INDEX={index!r} is not a number; ignored")
        elif job_index != "0":
            ignored.append(
                f"kubernetes: JOB_COMPLETION_INDEX={index} in replicated Job JOB_INDEX={job_index}: "
                "not the node's rank in the whole job (set PET_NODE_RANK); ignored"
            )
        elif nnodes in ("1", "1:1") or not has_master:
            ignored.append(
                f"kubernetes: JOB_COMPLETION_INDEX={index} without "
                + ("PET_NNODES (or --nnodes)" if nnodes in ("1", "1:1") else "PET_MASTER_ADDR")
                + "; ignored"
            )
        else:
            values["node_rank"] = str(int(index))
            sources["node_rank"] = "JOB_COMPLETION_INDEX"
    if not values and not any(name in environ for name in _WORLD):
        return Read(ignored=tuple(ignored))
    return Read(Found("kubernetes", values, sources), tuple(ignored))
