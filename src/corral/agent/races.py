"""The agent's races: a step against the handled signals, a running group against its round.

Functions of an :class:`~corral.agent.agent.Agent` (``agent``), bound on it as
methods (``_race``, ``_race_group``) rather than wrapped in coroutines that
only await them. Each race runs in a task scope (``corral.core.aio``): the losers
are cancelled and awaited, and an error of any racer is raised (docs/design.md).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar, cast

from corral.agent.signals import tell_job
from corral.core.aio import first_of, task_scope
from corral.core.errors import Interrupted
from corral.core.failures import FailureReport
from corral.core.model import RoundChange, RoundInfo
from corral.rendezvous.api import Rendezvous

if TYPE_CHECKING:
    from corral.agent.agent import Agent
    from corral.hangs.watch import HangWatch
    from corral.workers.group import GroupResult, WorkerGroup

__all__ = ["hang_watch", "race", "race_group"]

T = TypeVar("T")


async def race(agent: Agent, aw: Awaitable[T]) -> T:
    """Await ``aw`` unless a handled signal arrives first (then raise Interrupted)."""
    i, result = await first_of(aw, agent._signal_event.wait())
    if i == 1:
        raise Interrupted(agent._signum)
    return cast(T, result)


async def race_group(
    agent: Agent, group: WorkerGroup, rdzv: Rendezvous, rnd: RoundInfo
) -> GroupResult | RoundChange:
    """Wait for the first of: a signal, the group's result, the round's end.

    The liveness watch (it never returns: it revokes a dead predecessor's
    lease, which ends the round for all) runs beside the race in the same
    task scope: an error of it fails this race at once, as itself.
    """
    async with task_scope() as tg:
        live = tg.create_task(agent._liveness.watch(rnd)) if agent._liveness else None
        try:
            hangs = hang_watch(agent)  # with --hang-timeout: a 4th racer (docs/hangs.md)
            health = agent._health  # with --health-check: the last racer (docs/health.md)
            racers = [
                agent._signal_event.wait(),
                group.wait(),
                rdzv.watch_round(rnd),
                *([hangs.watch(group, rnd)] if hangs is not None else []),
                *([health.unhealthy()] if health is not None else []),
            ]
            i, result = await first_of(*racers)
            if health is not None and i == len(racers) - 1:  # this node leaves the job
                from corral.agent.health import leave_unhealthy

                return await leave_unhealthy(agent, rdzv, rnd, result)
            if i == 3:  # a hang: the group fails with the hang's reports
                from corral.workers.group import GroupResult

                return GroupResult(succeeded=False, failures=cast("list[FailureReport]", result))
            if i == 0:
                # the signal was forwarded already; tell the job (--on-signal: stop
                # it everywhere, or leave it), give the workers the shutdown timeout
                # to act on it, then SIGKILL (torchrun's death_sig semantics)
                async with task_scope() as tg:  # the store is told while they exit
                    told = tg.create_task(tell_job(agent, rdzv, rnd))
                    await group.stop(agent.cfg.shutdown_timeout, first_signal=None)
                raise told.result()
            return cast("GroupResult | RoundChange", result)
        finally:
            if live is not None:
                live.cancel()  # the scope awaits it


def hang_watch(agent: Agent) -> HangWatch | None:
    """The node's hang detector (made once, at the first group), or None when off."""
    if agent.cfg.hang_timeout is None:
        return None
    if agent._hangs is None:
        from corral.hangs.watch import HangWatch

        agent._hangs = HangWatch.from_config(
            agent.cfg, node_id=agent.node_id, host=agent.host, store=agent._store
        )
        if agent.observers is not None:  # progress marks as events and metrics
            agent._hangs.on_marks = agent.observers.on_marks
            agent._hangs.on_hang = agent.observers.on_hang
    return agent._hangs
