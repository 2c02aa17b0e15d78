"""The node's worker processes: spec (argv, env), process groups, the reaper, logs."""

from corral.workers.group import GroupResult, GroupState, WorkerGroup
from corral.workers.logs import AttemptLogs, RunLogs
from corral.workers.reaper import Reaper
from corral.workers.spec import WorkerSpec, needs_omp_notice, worker_argv, worker_env

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
