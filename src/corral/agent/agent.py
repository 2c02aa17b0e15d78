"""The agent: one per node. Rendezvous, run the worker group, react, repeat.

The loop (docs/design.md): join a round -> start the worker group -> wait for
the first of (group finished, group failed, round superseded, signal) -> stop
-> decide -> rejoin or exit. :class:`Agent` is the façade: it opens what one
run needs (the logs, the observers, the run's task group, the node's services,
the rendezvous), then loops: :class:`~corral.agent.runner.RoundRunner` runs a
round and returns its outcome, :func:`~corral.agent.decide.next_action`
decides, and the loop does it. The job-wide decisions (restart budget, root
cause) are the rendezvous's; the process-level concerns (signals, the reaper,
the hosted store) are this module's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import uuid
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from corral.agent import results, signals
from corral.agent.decide import Fail, Rejoin, Stop, Succeeded, next_action
from corral.agent.events import AgentEvents
from corral.agent.hooks import AgentHooks
from corral.agent.lifecycle import AgentState, StateMachine
from corral.agent.policy import ImmediatePolicy, RestartPolicy
from corral.agent.results import summary as _summary  # imported from here by tests
from corral.agent.signals import SignalLatch
from corral.core import events as ev
from corral.core.aio import RunTasks, run_scope
from corral.core.clock import Clock, MonotonicClock
from corral.core.errors import (
    ConfigError,
    Interrupted,
    JobFailed,
    JobStopped,
    LauncherError,
    NodeQuarantined,
    WorkerFailed,
    signal_name,
)
from corral.core.failures import FailureReport
from corral.core.model import RoundInfo

if TYPE_CHECKING:  # annotations only: these load lazily, when the agent first needs them
    from corral.agent.health import HealthWatch
    from corral.agent.runner import RoundRunner
    from corral.agent.services import NodeServices
    from corral.config import LaunchConfig
    from corral.core.compat import TaskGroup
    from corral.events.observe import Observers
    from corral.rendezvous.builtin import Opened
    from corral.workers.logs import RunLogs
    from corral.workers.reaper import Reaper
    from corral.workers.spec import WorkerSpec
    from corral.workers.standby import StandbyPool

__all__ = ["Agent", "AgentHooks"]

log = logging.getLogger("corral.agent")


class Agent:
    """Runs this node's part of a job described by a :class:`LaunchConfig`.

    Extension points (docs/api.md): :class:`AgentHooks` (``before_start``,
    ``on_outcome``), a :class:`~corral.agent.policy.RestartPolicy`, and the
    :meth:`worker_env` method, which a subclass may override to add variables.

    Args:
        cfg: the validated configuration.
        environ: the environment workers inherit (default: ``os.environ``).
        clock: monotonic clock (tests may pass a fake one for pure parts).
        hooks: optional extension points.
        policy: node-local restart judgement (default: :class:`ImmediatePolicy`).
        handle_signals: install handlers for ``cfg.signals_to_handle`` (forward to
            the workers, stop, raise Interrupted). None: only when running in the
            main thread (signal handlers cannot be installed elsewhere); the
            previous handlers are restored when the agent ends.
    """

    def __init__(
        self,
        cfg: LaunchConfig,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        hooks: AgentHooks | None = None,
        policy: RestartPolicy | None = None,
        handle_signals: bool | None = None,
        events: Callable[[ev.Event], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.environ = dict(os.environ if environ is None else environ)
        self.clock = clock or MonotonicClock()
        self.hooks = hooks or AgentHooks()
        self.policy: RestartPolicy = policy or ImmediatePolicy()
        self.handle_signals = handle_signals
        self.results: dict[int, object] = {}
        self.machine = StateMachine()
        self.host = socket.gethostname()
        self.node_id = f"{self.host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.events = events  # the caller's EventSink (docs/events.md)
        self.observers: Observers | None = None  # while executing
        self.root_cause: FailureReport | None = None
        # the running round's runner and the run's signals (while executing)
        self._runner: RoundRunner | None = None
        self._latch: SignalLatch | None = None
        self._agent_events: AgentEvents | None = None
        self._opened: Opened | None = None  # the rendezvous and its store, once open

    # -- public ---------------------------------------------------------------

    async def run(self) -> int:
        """Run until the job ends; return the process exit code (docs/contract.md).

        The CLI's entry: :meth:`execute`, with its errors turned into exit codes
        (128+N for a signal N, the root cause's code, 1 for a launcher error)
        and a root-cause block or one error line on stderr.
        """
        try:
            await self.execute()
        except Interrupted as exc:
            if isinstance(exc, JobStopped):  # "stopped by SIGTERM on node X" on every node
                print(f"corral: {exc}", file=sys.stderr, flush=True)
            return 128 + exc.signum
        except WorkerFailed as exc:
            self.root_cause = exc.root_cause
            results.print_root_cause(exc.root_cause, len(exc.failures))
            return exc.exit_code
        except NodeQuarantined as exc:  # kept out of the job; it has ended (docs/contract.md)
            print(f"corral: {exc}", file=sys.stderr, flush=True)
            return exc.exit_code
        except ConfigError:
            raise  # bad input found at start (a --health-check the shell cannot run): exit 2
        except LauncherError as exc:
            print(f"corral: error: {exc}", file=sys.stderr, flush=True)
            return 1
        return 0

    async def execute(self) -> dict[int, object]:
        """Run until the job ends; return this node's results by global rank.

        A worker's result is what a function entrypoint returned (read from the
        file its wrapper wrote; see :mod:`corral.workers._fn_entry`), None for
        a command.

        Raises:
            WorkerFailed: the job failed; ``failures[0]`` is the job-wide root cause.
            NodeRefused: ``before_start`` refused a round.
            Interrupted: a handled signal stopped the agent.
            LauncherError: any other launcher or rendezvous error.
        """
        from corral.workers.logs import RunLogs
        from corral.workers.reaper import Reaper

        loop = asyncio.get_running_loop()
        reaper = Reaper()
        reaper.start()
        latch = self._latch = SignalLatch()
        installed: dict[int, signals.Handler] = {}
        try:
            installed = signals.install_handlers(
                loop, self.cfg.signals_to_handle, self._on_signal, self.handle_signals
            )
            # The run's task group encloses everything the run opens: each object
            # ends its tasks when it closes (the stack below), and an error of any
            # task cancels the run and is raised as itself (docs/design.md).
            async with run_scope() as tasks, AsyncExitStack() as stack:
                logs = RunLogs.from_config(self.cfg)
                stack.callback(logs.close)
                if logs.temporary is not None:
                    reaper.register_dir(logs.temporary)  # removed even if we are SIGKILLed
                from corral.events.observe import Observers

                self.observers = await stack.enter_async_context(
                    Observers(self.cfg, node_id=self.node_id, sink=self.events,
                              run_dir=logs.run_dir if self.cfg.log_dir else None)
                )  # fmt: skip
                events = self._agent_events = AgentEvents(
                    self.observers, host=self.host, max_restarts=self.cfg.max_restarts
                )
                await self._run(stack, tasks, logs, reaper, latch, events)
                await self._linger()
                return dict(self.results)
        except JobFailed as exc:
            self.root_cause = exc.root_cause
            failures = [exc.root_cause] if exc.root_cause is not None else []
            raise WorkerFailed(_summary(exc.root_cause), failures) from None
        except WorkerFailed as exc:
            self.root_cause = exc.root_cause
            raise
        finally:
            signals.remove_handlers(loop, installed)
            reaper.close()
            self._runner = None

    async def _run(
        self,
        stack: AsyncExitStack,
        tasks: RunTasks,
        logs: RunLogs,
        reaper: Reaper,
        latch: SignalLatch,
        events: AgentEvents,
    ) -> None:
        """The run: the node's services, the rendezvous, the loop. ``tasks`` is the run's
        task group (every background task of the run is in it: an error of one ends the
        run, as itself); ``stack`` closes what the run opened, before ``tasks`` ends."""
        from corral.agent.health import health_watch

        # --health-check: the first check runs here, the rest in the run's group
        health = await stack.enter_async_context(
            health_watch(
                self.cfg.health_checks,
                tasks=tasks,
                timeout=self.cfg.health_check_timeout,
                interval=self.cfg.health_check_interval,
                clock=self.clock,
                on_change=lambda v: events.health_changed(
                    None if v is None else v.check, "" if v is None else v.reason
                ),
            )
        )
        from corral.workers.standby import pool_for

        # --prestart: standbys import while the nodes gather (after the first health
        # check: an unhealthy node starts none); the pool's own scope lets the
        # detached stops finish whatever ends the run (docs/design.md)
        standbys = await stack.enter_async_context(pool_for(self.cfg, self.environ, reaper))
        from corral.agent.opening import open_rendezvous

        opened = self._opened = await open_rendezvous(
            self.cfg,
            node_id=self.node_id,
            host=self.host,
            clock=self.clock,
            environ=self.environ,
            stack=stack,
            observers=self.observers,
            tasks=tasks,  # the lease's keep-alive
        )
        services = self._services(opened, health, standbys)
        self._runner = self._round_runner(opened, services, logs, reaper, latch, events, tasks)
        try:  # JobEnded: once the loop has begun, however it ends (docs/events.md)
            try:
                await self._loop(self._runner)
            except (JobFailed, WorkerFailed):
                await self._linger()
                raise
            except Interrupted as exc:  # a handled signal: agent/preempt.py
                if latch.received and not isinstance(exc, JobStopped):
                    exc = await self._runner.tell_job(None)
                if isinstance(exc, JobStopped):
                    await self._linger()
                raise exc from None
        except BaseException as exc:
            # a task of the run (or of the standby pool) failed: the run is being
            # cancelled, and the task's error is why
            failure = tasks.failure or standbys.failure
            events.job_ended(
                failure if isinstance(exc, asyncio.CancelledError) and failure else exc
            )
            raise
        events.job_ended(None)

    def _services(
        self, opened: Opened, health: HealthWatch | None, standbys: StandbyPool
    ) -> NodeServices:
        from corral.agent.services import NodeServices
        from corral.workers.gpu_reclaim import GpuReclaim

        hangs = None
        if self.cfg.hang_timeout is not None:  # docs/hangs.md
            from corral.hangs.watch import HangWatch

            obs = self.observers  # progress marks as events and metrics
            hangs = HangWatch.from_config(
                self.cfg,
                node_id=self.node_id,
                host=self.host,
                store=opened.store,
                on_marks=obs.on_marks if obs is not None else None,
                on_hang=obs.on_hang if obs is not None else None,
            )
        return NodeServices(
            health=health,
            hangs=hangs,
            liveness=opened.liveness,
            standbys=standbys,
            reclaim=GpuReclaim.for_node(self.cfg, self.environ, self.clock),  # no-op sans GPUs
        )

    def _round_runner(
        self,
        opened: Opened,
        services: NodeServices,
        logs: RunLogs,
        reaper: Reaper,
        latch: SignalLatch,
        events: AgentEvents,
        tasks: TaskGroup,
    ) -> RoundRunner:
        from corral.agent.runner import RoundRunner
        from corral.workers.spec import WorkerSpec

        return RoundRunner(
            self.cfg,
            rdzv=opened.rendezvous,
            spec=WorkerSpec.from_config(self.cfg, self.environ),
            logs=logs,
            reaper=reaper,
            services=services,
            latch=latch,
            events=events,
            machine=self.machine,
            hooks=self.hooks,
            policy=self.policy,
            env_builder=self.worker_env,
            node_id=self.node_id,
            host=self.host,
            environ=self.environ,
            clock=self.clock,
            hosts_store=opened.server is not None,
            tasks=tasks,
        )

    def worker_env(
        self,
        base_env: Mapping[str, str],
        spec: WorkerSpec,
        rnd: RoundInfo,
        local_rank: int,
        error_file: str,
    ) -> dict[str, str]:
        """The environment of one worker: :func:`corral.workers.spec.worker_env`.

        The one place to extend the worker environment: override in a subclass,
        call ``super().worker_env(...)`` and add to (never remove from) its result.
        """
        from corral.workers.spec import worker_env

        return worker_env(base_env, spec, rnd, local_rank, error_file)

    # -- the loop -------------------------------------------------------------

    async def _loop(self, runner: RoundRunner) -> None:
        """Run rounds until :func:`next_action` ends the job: return on success, raise
        the failure or the stop."""
        while True:
            outcome = await runner.run()
            if isinstance(outcome, Succeeded):
                self.results = outcome.results
            action = next_action(self.machine.state, outcome)
            if isinstance(action, Rejoin):
                if action.cause:
                    runner.events.restart_decided(action.rnd, action.cause, action.detail)
                if action.verdict is not None:
                    if action.verdict.delay > 0:
                        log.info(
                            "waiting %.1fs before rejoining (%s)",
                            action.verdict.delay,
                            action.verdict.reason,
                        )
                    await runner.latch.race(self.policy.before_rejoin(action.verdict))
                continue
            if isinstance(action, Stop):
                raise JobStopped(action.signum, action.node)
            if isinstance(action, Fail):
                self.machine.to(AgentState.FAILED)
                root = action.failures[0]
                raise WorkerFailed(_summary(root), list(action.failures))
            self.machine.to(AgentState.SUCCEEDED)
            return

    def _on_signal(self, signum: int) -> None:
        """The loop's handler: forward to the workers, latch the first signal, wake the races."""
        log.warning("received %s: forwarding to workers and stopping", signal_name(signum))
        if self._runner is not None:
            self._runner.send_signal(signum)
        assert self._latch is not None
        self._latch.receive(signum)
        if self._agent_events is not None:
            self._agent_events.signal_received(signum)

    async def _linger(self) -> None:
        from corral.agent.opening import linger

        if self._opened is not None:
            await linger(self._opened.server, self.cfg)
