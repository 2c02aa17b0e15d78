"""One round of this node: join, start the worker group, race it, stop it; an outcome value.

:class:`RoundRunner` is made once per agent run and runs one round per call of
:meth:`RoundRunner.run`, which returns a :data:`~corral.agent.decide.RoundOutcome`.
What happens next (rejoin, succeed, fail, stop) is :func:`~corral.agent.decide.next_action`'s
to decide and the agent's loop's to do.

Every wait of a round is raced against the run's handled signals
(:class:`~corral.agent.signals.SignalLatch`); the running group is raced, in a
task scope (``corral.core.aio.first_of``), against the signals, the round's end and
the node's services (:class:`~corral.agent.services.NodeServices`: the liveness
ring, hang detection, the health checks): the losers are cancelled and awaited,
and an error of any racer is raised.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, cast

from corral.agent import hooks as agent_hooks
from corral.agent.decide import Changed, Failed, JobOver, RoundOutcome, Stopped, Succeeded
from corral.agent.events import AgentEvents
from corral.agent.health import leave_unhealthy
from corral.agent.hooks import AgentHooks
from corral.agent.lifecycle import AgentState, StateMachine
from corral.agent.policy import RestartPolicy
from corral.agent.results import read_results
from corral.agent.services import Hung, NodeServices
from corral.agent.signals import SignalLatch
from corral.core.aio import first_of, task_scope
from corral.core.clock import Clock
from corral.core.errors import Interrupted, NodeRefused, RendezvousClosed
from corral.core.failures import FailureReport
from corral.core.model import RoundChange, RoundInfo
from corral.rendezvous.api import Rendezvous

if TYPE_CHECKING:
    from corral.config import LaunchConfig
    from corral.core.compat import TaskGroup
    from corral.workers.group import GroupResult, WorkerGroup
    from corral.workers.logs import RunLogs
    from corral.workers.reaper import Reaper
    from corral.workers.spec import WorkerSpec

__all__ = ["EnvBuilder", "RoundRunner"]

log = logging.getLogger("corral.agent")

#: ``(base_env, spec, rnd, local_rank, error_file) -> env``: ``Agent.worker_env``.
EnvBuilder = Callable[["Mapping[str, str]", "WorkerSpec", RoundInfo, int, str], dict[str, str]]


class RoundRunner:
    """Runs this node's rounds of one agent run, one per :meth:`run`.

    Args:
        cfg: the launch configuration.
        rdzv: the job's rendezvous.
        spec: the worker spec.
        logs: the run's log layout.
        reaper: the watchdog of the workers' process groups.
        services: the node's services.
        latch: the run's handled signals.
        events: the run's events.
        machine: the agent's state machine (the runner moves it through a round).
        hooks, policy: the agent's extension points.
        env_builder: each worker's environment (``Agent.worker_env``).
        node_id, host: this node.
        environ: the environment workers inherit.
        clock: the agent's clock.
        hosts_store: this node hosts the job's embedded store (it cannot leave).
        tasks: the agent run's task group.
    """

    def __init__(
        self,
        cfg: LaunchConfig,
        *,
        rdzv: Rendezvous,
        spec: WorkerSpec,
        logs: RunLogs,
        reaper: Reaper,
        services: NodeServices,
        latch: SignalLatch,
        events: AgentEvents,
        machine: StateMachine,
        hooks: AgentHooks,
        policy: RestartPolicy,
        env_builder: EnvBuilder,
        node_id: str,
        host: str,
        environ: Mapping[str, str],
        clock: Clock,
        hosts_store: bool,
        tasks: TaskGroup,
    ) -> None:
        self.cfg = cfg
        self.rdzv = rdzv
        self.spec = spec
        self.logs = logs
        self.reaper = reaper
        self.services = services
        self.latch = latch
        self.events = events
        self.machine = machine
        self.hooks = hooks
        self.policy = policy
        self.env_builder = env_builder
        self.node_id = node_id
        self.host = host
        self.environ = environ
        self.clock = clock
        self.hosts_store = hosts_store
        self.tasks = tasks
        self.attempt = 0  # worker groups started so far (WorkerStarted's attempt)
        self.group: WorkerGroup | None = None  # the running group (signals go to it)

    def send_signal(self, signum: int) -> None:
        """Forward ``signum`` to the running group's workers, if one runs."""
        if self.group is not None:
            self.group.send_signal(signum)

    async def run(self) -> RoundOutcome:
        """Join the next round, run the group in it, stop it; return how the round ended.

        Raises: Interrupted (a handled signal), NodeRefused (``before_start``),
        and the rendezvous's errors (JobFailed, JobStopped, ...).
        """
        from corral.workers.group import WorkerGroup

        cfg, spec = self.cfg, self.spec
        self.machine.to(AgentState.RENDEZVOUS)
        await self.latch.race(self.services.ready_to_join(self.rdzv))
        with self.services.joining():
            try:
                rnd = await self.latch.race(self.rdzv.join())
            except RendezvousClosed:
                return JobOver()
            self.events.round_closed(rnd, spec.local_world_size)
        log.info(
            "round %d: node %d of %d, ranks %d..%d of %d, restarts %d/%d",
            rnd.round,
            rnd.group_rank,
            rnd.group_world_size,
            rnd.rank_offset,
            rnd.rank_offset + spec.local_world_size - 1,
            rnd.world_size,
            rnd.restart_count,
            rnd.restarts_allowed(cfg.max_restarts),
        )
        try:
            await agent_hooks.before_start(self.hooks, rnd)
        except NodeRefused:
            self.machine.to(AgentState.FAILED)
            raise
        group = WorkerGroup(
            spec,
            rnd,
            attempt=self.attempt,
            logs=self.logs,
            reaper=self.reaper,
            node_id=self.node_id,
            host=self.host,
            base_env=self.environ,
            env_builder=self.env_builder,
            standbys=self.services.standbys,
            tasks=self.tasks,  # its error-file poll runs in the run's task group
        )
        attempt = self.attempt
        self.attempt += 1
        self.group = group
        self.machine.to(AgentState.RUNNING)
        try:
            await self.services.before_start()
            await group.start()
            self.events.workers_started(group.pids, rnd, attempt)
            result = await self._race_group(group, rnd)
        except BaseException:
            await group.stop(cfg.shutdown_timeout)
            raise
        if isinstance(result, RoundChange):
            return await self._changed(group, rnd, result)
        if result.succeeded:
            return await self._succeeded(group, rnd)
        return await self._failed(group, rnd, list(result.failures))

    # -- the race ---------------------------------------------------------------------------

    async def _race_group(self, group: WorkerGroup, rnd: RoundInfo) -> GroupResult | RoundChange:
        """Wait for the first of: a signal, the group's result, the round's end, a service's
        verdict (hung ranks: the group failed; this node unhealthy: it leaves the round)."""
        from corral.workers.group import GroupResult

        watch = self.services.watch(group, rnd)
        racers: list[Awaitable[object]] = [
            self.latch.wait(),
            group.wait(),
            self.rdzv.watch_round(rnd),
        ]
        if watch is not None:
            racers.append(watch)
        i, result = await first_of(*racers)
        if i == 3:
            if isinstance(result, Hung):  # the group fails with the hang's reports
                return GroupResult(succeeded=False, failures=list(result.failures))
            return await leave_unhealthy(self.rdzv, rnd, result)  # this node leaves the job
        if i == 0:
            # the signal was forwarded already; tell the job (--on-signal: stop
            # it everywhere, or leave it), give the workers the shutdown timeout
            # to act on it, then SIGKILL (torchrun's death_sig semantics)
            async with task_scope() as tg:  # the store is told while they exit
                told = tg.create_task(self.tell_job(rnd))
                await group.stop(self.cfg.shutdown_timeout, first_signal=None)
            raise told.result()
        return cast("GroupResult | RoundChange", result)

    async def tell_job(self, rnd: RoundInfo | None) -> Interrupted:
        """A handled signal: stop the job or leave it, once (agent/preempt.py)."""
        return await self.latch.tell_job(
            self.rdzv, self.cfg, rnd, host=self.host, hosts_store=self.hosts_store
        )

    # -- the round's end ------------------------------------------------------------------

    async def _changed(
        self, group: WorkerGroup, rnd: RoundInfo, change: RoundChange
    ) -> RoundOutcome:
        self.machine.to(AgentState.STOPPING)
        if change.stop_signal:  # a handled signal on another node stopped the job
            from corral.agent.preempt import stop_for_change

            stopped = await stop_for_change(group, change, self.cfg.shutdown_timeout)
            return Stopped(stopped.signum, stopped.node)
        kind = change.kind.value
        log.info(
            "round %d over (%s%s): stopping workers",
            rnd.round,
            kind,
            f": {change.detail}" if change.detail else "",
        )
        self.events.round_over(rnd, kind, change.detail)
        await self.stop(group)
        await agent_hooks.notify(self.hooks, rnd, kind, [])
        return Changed(rnd, change)

    async def _succeeded(self, group: WorkerGroup, rnd: RoundInfo) -> RoundOutcome:
        results = read_results(group)
        self.events.round_over(rnd, "succeeded", "", exited=group.pids)
        await agent_hooks.notify(self.hooks, rnd, "succeeded", [])
        self.machine.to(AgentState.STOPPING)
        change = await self.latch.race(self.rdzv.report_success(rnd))
        if change is not None:
            log.info("round %d superseded after local success (%s)", rnd.round, change.kind.value)
        return Succeeded(rnd, results, change)

    async def _failed(
        self, group: WorkerGroup, rnd: RoundInfo, failures: list[FailureReport]
    ) -> RoundOutcome:
        """Local ``failures`` of ``group`` (the earliest first): publish them, stop the
        siblings meanwhile, and return the job's decision with the policy's verdict."""
        self.machine.to(AgentState.STOPPING)
        first = failures[0]
        log.warning(
            "round %d: worker rank %d (local %d, pid %d) failed with %s; stopping the group",
            rnd.round,
            first.rank,
            first.local_rank,
            first.pid,
            "a hang" if first.hang else first.signal_name or f"exit code {first.exitcode}",
        )
        self.events.round_over(rnd, "failure", f"rank {first.rank} failed", failed=failures)
        await agent_hooks.notify(self.hooks, rnd, "failed", failures)
        verdict = self.policy.on_failure(failures)
        if not verdict.restart:
            log.warning("restart policy gives up: %s; the job fails now", verdict.reason)
        # a hung rank cannot act on SIGTERM: after the verdict and its stack dump it is
        # SIGKILLed at once; the others get SIGTERM and the grace (docs/hangs.md)
        hung = [f.local_rank for f in failures if f.hang and f.local_rank >= 0]
        async with task_scope() as tg:  # stop the siblings while the failures go out
            stop = tg.create_task(self.stop(group, kill=hung))
            try:
                decision, root = await self.latch.race(
                    self.rdzv.report_failure(rnd, failures, final=not verdict.restart)
                )
            finally:
                await stop  # every worker is stopped before the scope ends
        return Failed(rnd, tuple(failures), decision, root, verdict)

    async def stop(self, group: WorkerGroup, kill: Collection[int] = ()) -> None:
        """Stop ``group`` (``kill``: hung local ranks, SIGKILLed at once: docs/hangs.md)."""
        t0 = self.clock.now()
        self.services.stopping(group)  # its processes, while they are alive
        await group.stop(self.cfg.shutdown_timeout, kill=kill)
        self.events.workers_stopped(group.rnd.round, self.clock.now() - t0)
        if self.group is group:
            self.group = None
