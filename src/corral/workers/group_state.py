"""A worker group's states, the moves allowed between them, and how it ended.

:class:`~corral.workers.group.WorkerGroup` goes through :class:`GroupState`
along :data:`TRANSITIONS` (its ``_to``), and :meth:`~corral.workers.group.WorkerGroup.wait`
returns a :class:`GroupResult` whose failures :func:`failure_report` makes
from what a failed worker's exit (or its error file, before the exit) says.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from corral.core.failures import FailureReport
from corral.core.model import RoundInfo
from corral.core.render import read_error_file
from corral.workers.process import WorkerProcess

__all__ = ["TRANSITIONS", "GroupResult", "GroupState", "failure_report"]


class GroupState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


TRANSITIONS: dict[GroupState, frozenset[GroupState]] = {
    GroupState.CREATED: frozenset({GroupState.RUNNING, GroupState.STOPPING}),
    GroupState.RUNNING: frozenset({GroupState.SUCCEEDED, GroupState.FAILED, GroupState.STOPPING}),
    GroupState.SUCCEEDED: frozenset({GroupState.STOPPING}),
    GroupState.FAILED: frozenset({GroupState.STOPPING}),
    GroupState.STOPPING: frozenset({GroupState.STOPPED}),
    GroupState.STOPPED: frozenset(),
}


@dataclass(frozen=True)
class GroupResult:
    """How the group ended.

    Attributes:
        succeeded: every worker exited 0.
        failures: the failed workers known when the first failure was noticed,
            in exit-notice order (the local root cause first); empty on success.
        exitcodes: local rank -> exit code (-N for signal N) of the workers that had exited.
    """

    succeeded: bool
    failures: list[FailureReport] = field(default_factory=list)
    exitcodes: dict[int, int] = field(default_factory=dict)


def failure_report(
    w: WorkerProcess,
    rnd: RoundInfo,
    *,
    host: str,
    node_id: str,
    err_path: str,
    early: int | None = None,
) -> FailureReport:
    """The failure of ``w`` in round ``rnd``: at its exit, or ``early`` (its exit code
    to be) at its error file ``err_path``."""
    rc = w.returncode if early is None else early
    assert rc is not None
    parsed = read_error_file(err_path)
    message: str | None = w.spawn_error
    tb: str | None = None
    if parsed is not None:
        message, tb, _ = parsed
    return FailureReport(
        rank=rnd.rank_offset + w.local_rank,
        local_rank=w.local_rank,
        group_rank=rnd.group_rank,
        host=host,
        node_id=node_id,
        pid=w.pid or 0,
        exitcode=rc,
        message=message,
        traceback=tb,
        stderr_tail=None if parsed is not None else w.stderr_tail(),
        timestamp=w.exit_time if early is None else time.time(),
        round=rnd.round,
        restart_count=rnd.restart_count,
        error_file=err_path if parsed is not None else None,
    )
