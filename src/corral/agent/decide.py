"""What the agent does after a round: the outcome values, the actions, and the one decision.

:class:`RoundRunner` (agent/runner.py) runs a round and returns a
:data:`RoundOutcome`, a plain value; :func:`next_action` (pure: no I/O, no
clock, no asyncio) turns it into an :data:`Action`, which the agent's loop
(agent/agent.py) carries out: rejoin, return the results, raise the failure or
the stop. The job-wide decisions inside an outcome (restart or fail, the root
cause) were the rendezvous's; the node-local one (give up, wait before
rejoining) the restart policy's. This module only composes them.
"""

from __future__ import annotations

from msgspec import Struct

from corral.agent.lifecycle import AgentState
from corral.agent.policy import RestartVerdict
from corral.core.failures import FailureReport
from corral.core.model import Decision, RoundChange, RoundInfo

__all__ = [
    "Action",
    "Changed",
    "Fail",
    "Failed",
    "JobOver",
    "Rejoin",
    "RoundOutcome",
    "Stop",
    "Stopped",
    "Succeed",
    "Succeeded",
    "next_action",
]


# -- outcomes: how one round ended, as the runner saw it ------------------------------


class JobOver(Struct, frozen=True, gc=False):
    """The rendezvous was closed when this node joined: the job succeeded elsewhere."""


class Changed(Struct, frozen=True, gc=False):
    """The round ended under the running group (a membership change, this node left it
    unhealthy, the job ended): the group is stopped."""

    rnd: RoundInfo
    change: RoundChange


class Stopped(Struct, frozen=True, gc=False):
    """Another node stopped the job with handled signal ``signum`` (``--on-signal stop``):
    the signal was forwarded to this node's workers, which are stopped."""

    signum: int
    node: str


class Succeeded(Struct, frozen=True, gc=False):
    """Every local worker exited 0; ``superseded``: the round ended before the job
    could record the success (None: the job succeeded)."""

    rnd: RoundInfo
    results: dict[int, object]
    superseded: RoundChange | None


class Failed(Struct, frozen=True, gc=False):
    """Local workers failed (``failures``, the earliest first) and the job decided:
    ``decision`` (the rendezvous's), ``root`` (its root cause, if it named one),
    ``verdict`` (the restart policy's: its wait before rejoining)."""

    rnd: RoundInfo
    failures: tuple[FailureReport, ...]
    decision: Decision
    root: FailureReport | None
    verdict: RestartVerdict


RoundOutcome = JobOver | Changed | Stopped | Succeeded | Failed


# -- actions: what the agent's loop does next --------------------------------------------


class Rejoin(Struct, frozen=True, gc=False):
    """Join the next round. ``cause`` (a ChangeKind value or ``"failure"``) and ``detail``
    go to RestartDecided (``cause`` empty: no event, as for a superseded success);
    ``verdict``: the restart policy's, to wait by before rejoining (after a failure)."""

    rnd: RoundInfo
    cause: str = ""
    detail: str = ""
    verdict: RestartVerdict | None = None


class Succeed(Struct, frozen=True, gc=False):
    """The job succeeded: return this node's results (its last successful round's)."""


class Fail(Struct, frozen=True, gc=False):
    """The job failed: raise WorkerFailed with ``failures`` (the root cause first)."""

    failures: tuple[FailureReport, ...]


class Stop(Struct, frozen=True, gc=False):
    """The job was stopped by a handled signal on node ``node``: raise JobStopped."""

    signum: int
    node: str


Action = Rejoin | Succeed | Fail | Stop


def next_action(state: AgentState, outcome: RoundOutcome) -> Action:
    """The agent's next action after ``outcome``, in agent state ``state``.

    Raises ValueError for an outcome that cannot happen in ``state`` (a round's
    end before the group ran, a join's end after it): a bug of the caller.
    """
    if isinstance(outcome, JobOver):
        _expect(state, outcome, AgentState.RENDEZVOUS)
        return Succeed()
    _expect(state, outcome, AgentState.STOPPING)
    if isinstance(outcome, Stopped):
        return Stop(outcome.signum, outcome.node)
    if isinstance(outcome, Changed):
        change = outcome.change
        return Rejoin(outcome.rnd, change.kind.value, change.detail)
    if isinstance(outcome, Succeeded):
        if outcome.superseded is None:
            return Succeed()
        return Rejoin(outcome.rnd)  # superseded: not a restart of this node's doing
    first = outcome.failures[0]
    if outcome.decision is Decision.RESTART:
        return Rejoin(outcome.rnd, "failure", f"rank {first.rank} failed", outcome.verdict)
    root = outcome.root or first
    others = tuple(
        f for f in outcome.failures if (f.node_id, f.local_rank) != (root.node_id, root.local_rank)
    )
    return Fail((root, *others))


def _expect(state: AgentState, outcome: RoundOutcome, want: AgentState) -> None:
    if state is not want:
        raise ValueError(f"{type(outcome).__name__} in agent state {state.name}")
