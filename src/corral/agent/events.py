"""The agent's events (docs/events.md), built from its objects: one object, made once per run.

:class:`AgentEvents` is the agent's sink entry: every event the agent and its
round runner emit goes through it, and nothing is built when no sink listens.
It remembers the round this node is in (later events name it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from corral.core import events as ev
from corral.core.errors import Interrupted, JobFailed, WorkerFailed, signal_name
from corral.core.failures import FailureReport
from corral.core.model import RoundInfo

if TYPE_CHECKING:
    from corral.events.observe import Observers

__all__ = ["AgentEvents"]

_MARKS: dict[str, type[ev.Event]] = {"member_lost": ev.NodeLost, "node_waiting": ev.NodeWaiting}


class AgentEvents:
    """The events of one agent run.

    Args:
        observers: the run's sinks (None: silent).
        host: this node's host name (on RoundClosed and the health events).
        max_restarts: ``--max-restarts`` (the budget a round reports).
    """

    def __init__(self, observers: Observers | None, *, host: str, max_restarts: int) -> None:
        self._observers = observers
        self.host = host
        self.max_restarts = max_restarts
        self.round = -1  # the round this node is in (-1: none yet)

    def emit(self, cls: type[ev.Event], round: int, **fields: object) -> None:
        """Hand an event to the sinks; nothing is built when nobody listens."""
        if self._observers is not None and self._observers.sink:
            self._observers.emit(cls, round, **fields)

    def signal_received(self, signum: int) -> None:
        self.emit(ev.SignalReceived, self.round, signal=signal_name(signum))

    def health_changed(self, check: str | None, reason: str = "") -> None:
        """NodeHealthy (``check`` None) or NodeUnhealthy."""
        if check is None:
            self.emit(ev.NodeHealthy, self.round, host=self.host)
        else:
            self.emit(ev.NodeUnhealthy, self.round, host=self.host, check=check, reason=reason)

    def round_closed(self, rnd: RoundInfo, local_world_size: int) -> None:
        """This node is in round ``rnd``: remember it, emit RoundClosed."""
        self.round = rnd.round
        self.emit(
            ev.RoundClosed,
            rnd.round,
            group_rank=rnd.group_rank,
            group_world_size=rnd.group_world_size,
            rank_offset=rnd.rank_offset,
            local_world_size=local_world_size,
            world_size=rnd.world_size,
            restart_count=rnd.restart_count,
            max_restarts=rnd.restarts_allowed(self.max_restarts),
            members=tuple(m.node_id for m in rnd.members),
            host=self.host,
        )

    def workers_started(self, pids: Mapping[int, int], rnd: RoundInfo, attempt: int) -> None:
        for local_rank in sorted(pids):
            self.emit(
                ev.WorkerStarted,
                rnd.round,
                local_rank=local_rank,
                rank=rnd.rank_offset + local_rank,
                pid=pids[local_rank],
                attempt=attempt,
            )

    def workers_stopped(self, round: int, seconds: float) -> None:
        self.emit(ev.WorkersStopped, round, seconds=seconds)

    def round_over(
        self,
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
            self.emit(ev.NodeWaiting, r, subject="", detail=detail)
        elif mark is ev.NodeLost:
            self.emit(ev.NodeLost, r, detail=detail)
        for local_rank, pid in sorted((exited or {}).items()):
            self.emit(
                ev.WorkerExited,
                r,
                local_rank=local_rank,
                rank=rnd.rank_offset + local_rank,
                pid=pid,
            )
        for f in failed:
            self.emit(
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
        self.emit(ev.RoundEnded, r, cause=cause, detail=detail)

    def restart_decided(self, rnd: RoundInfo, cause: str, detail: str) -> None:
        """The job restarts after ``rnd`` (``cause``: a ChangeKind value or ``"failure"``)."""
        if cause != "job_ended":
            self.emit(ev.RestartDecided, rnd.round, cause=cause, detail=detail,
                      restart_count=rnd.restart_count,
                      max_restarts=rnd.restarts_allowed(self.max_restarts))  # fmt: skip

    def job_ended(self, exc: BaseException | None) -> None:
        """:class:`JobEnded` with the outcome ``exc`` (None: success) stands for."""
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
        self.emit(ev.JobEnded, self.round, outcome=outcome, exit_code=code, root_cause=root)
