"""The node's worker processes: spec (argv, env), process groups, the reaper, logs.

The names below load their modules on first use, so that a light module of this
package (``corral.workers.std``, which the configuration reads) does not bring
in the process machinery (asyncio, the reaper) with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.workers.group import GroupResult, GroupState, WorkerGroup
    from corral.workers.logs import AttemptLogs, RunLogs
    from corral.workers.reaper import Reaper
    from corral.workers.spec import WorkerSpec, needs_omp_notice, worker_argv, worker_env

_WHERE = {
    "AttemptLogs": "corral.workers.logs",
    "GroupResult": "corral.workers.group",
    "GroupState": "corral.workers.group",
    "Reaper": "corral.workers.reaper",
    "RunLogs": "corral.workers.logs",
    "WorkerGroup": "corral.workers.group",
    "WorkerSpec": "corral.workers.spec",
    "needs_omp_notice": "corral.workers.spec",
    "worker_argv": "corral.workers.spec",
    "worker_env": "corral.workers.spec",
}

__all__ = [
    "AttemptLogs",
    "GroupResult",
    "GroupState",
    "Reaper",
    "RunLogs",
    "WorkerGroup",
    "WorkerSpec",
    "needs_omp_notice",
    "worker_argv",
    "worker_env",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'corral.workers' has no attribute {name!r}")
    return getattr(importlib.import_module(where), name)
