"""The agent's events, built from its objects (kept out of agent.py, which only calls these).

Each function emits through ``agent._emit``, which builds nothing when no
sink listens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from corral.core import events as ev
from corral.core.failures import FailureReport
from corral.core.model import RoundInfo

__all__ = ["job_ended", "round_closed", "round_over", "workers_started"]

_MARKS: dict[str, type[ev.Event]] = {"member_lost": ev.NodeLost, "node_waiting": ev.NodeWaiting}


def round_closed(agent: Any, rnd: RoundInfo, local_world_size: int) -> None:
    agent._emit(
        ev.RoundClosed,
        rnd.round,
        group_rank=rnd.group_rank,
        group_world_size=rnd.group_world_size,
        rank_offset=rnd.rank_offset,
        local_world_size=local_world_size,
        world_size=rnd.world_size,
        restart_count=rnd.restart_count,
        max_restarts=rnd.restarts_allowed(agent.cfg.max_restarts),
        members=tuple(m.node_id for m in rnd.members),
        host=agent.host,
    )


def workers_started(agent: Any, group: Any, rnd: RoundInfo, attempt: int) -> None:
    pids: Mapping[int, int] = group.pids
    for local_rank in sorted(pids):
        agent._emit(
            ev.WorkerStarted,
            rnd.round,
            local_rank=local_rank,
            rank=rnd.rank_offset + local_rank,
            pid=pids[local_rank],
            attempt=attempt,
        )


def round_over(
    agent: Any,
    rnd: RoundInfo,
    cause: str,
    detail: str,
    *,
    exited: Mapping[int, int] | None = None,
    failed: Sequence[FailureReport] = (),
) -> None:
    """The round is over for this node: its marks, then :class:`RoundEnded`."""
    r = rnd.round
    mark = _MARKS.get(cause)
    if mark is ev.NodeWaiting:
        agent._emit(ev.NodeWaiting, r, subject="", detail=detail)
    elif mark is ev.NodeLost:
        agent._emit(ev.NodeLost, r, detail=detail)
    for local_rank, pid in sorted((exited or {}).items()):
        agent._emit(
            ev.WorkerExited, r, local_rank=local_rank, rank=rnd.rank_offset + local_rank, pid=pid
        )
    for f in failed:
        agent._emit(
            ev.WorkerFailed,
            r,
            local_rank=f.local_rank,
            rank=f.rank,
            pid=f.pid,
            exitcode=f.exitcode,
            signal=f.signal_name,
            message=f.message,
            exit_wall=f.timestamp,
        )
    agent._emit(ev.RoundEnded, r, cause=cause, detail=detail)


def job_ended(agent: Any, exc: BaseException | None) -> None:
    """:class:`JobEnded` with the outcome ``exc`` (None: success) stands for."""
    from corral.core.errors import Interrupted, JobFailed, WorkerFailed

    root = ""
    if exc is None:
        outcome, code = "succeeded", 0
    elif isinstance(exc, Interrupted):
        outcome, code = "interrupted", 128 + exc.signum
    elif isinstance(exc, (WorkerFailed, JobFailed)):
        report = exc.root_cause
        outcome, code = "failed", report.exit_code if report is not None else 1
        if report is not None:
            how = report.signal_name or f"exit code {report.exitcode}"
            root = f"rank {report.rank} on {report.host or report.node_id}: {how}"
            root += f": {report.message}" if report.message else ""
    else:
        outcome, code = "error", 1
        root = f"{type(exc).__name__}: {exc}"
    agent._emit(ev.JobEnded, agent._round, outcome=outcome, exit_code=code, root_cause=root)
