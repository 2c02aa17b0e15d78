"""A worker of this node failed: publish it, stop the siblings, and follow the job's decision.

A function of an :class:`~corral.agent.agent.Agent` (``agent``), bound on it as
``_on_failure``. The job-wide decision (restart, counted once for the job, or
fail with the root cause) is the rendezvous's (``report_failure``); the
node-local judgement (give up now, wait before rejoining) the restart policy's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from corral.agent.results import summary
from corral.agent.state import AgentState
from corral.core.aio import task_scope
from corral.core.errors import WorkerFailed
from corral.core.failures import FailureReport
from corral.core.model import Decision, RoundInfo
from corral.rendezvous.api import Rendezvous

if TYPE_CHECKING:
    from corral.agent.agent import Agent
    from corral.workers.group import WorkerGroup

__all__ = ["on_failure"]

log = logging.getLogger("corral.agent")


async def on_failure(
    agent: Agent,
    group: WorkerGroup,
    rdzv: Rendezvous,
    rnd: RoundInfo,
    failures: list[FailureReport],
) -> None:
    """React to the local ``failures`` of ``group`` (the earliest first).

    Returns once every worker is stopped and the job restarts (after the
    policy's delay); raises WorkerFailed, root cause first, when the job fails.
    """
    agent.machine.to(AgentState.STOPPING)
    first = failures[0]
    log.warning(
        "round %d: worker rank %d (local %d, pid %d) failed with %s; stopping the group",
        rnd.round,
        first.rank,
        first.local_rank,
        first.pid,
        "a hang" if first.hang else first.signal_name or f"exit code {first.exitcode}",
    )
    agent._round_over(rnd, "failure", f"rank {first.rank} failed", failed=failures)
    await agent._notify(rnd, "failed", failures)
    verdict = agent.policy.on_failure(failures)
    if not verdict.restart:
        log.warning("restart policy gives up: %s; the job fails now", verdict.reason)
    # a hung rank cannot act on SIGTERM: after the verdict and its stack dump it is
    # SIGKILLed at once; the others get SIGTERM and the grace (docs/hangs.md)
    hung = [f.local_rank for f in failures if f.hang and f.local_rank >= 0]
    async with task_scope() as tg:  # stop the siblings while the failures go out
        stop = tg.create_task(agent._stop(group, kill=hung))
        try:
            decision, root = await agent._race(
                rdzv.report_failure(rnd, failures, final=not verdict.restart)
            )
        finally:
            await stop  # every worker is stopped before the scope ends
    if decision is Decision.RESTART:
        agent._restart(rnd, "failure", f"rank {first.rank} failed")
        if verdict.delay > 0:
            log.info("waiting %.1fs before rejoining (%s)", verdict.delay, verdict.reason)
        await agent._race(agent.policy.before_rejoin(verdict))
        return
    agent.machine.to(AgentState.FAILED)
    root = root or first
    others = [f for f in failures if (f.node_id, f.local_rank) != (root.node_id, root.local_rank)]
    raise WorkerFailed(summary(root), [root, *others])
