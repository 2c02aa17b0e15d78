"""The agent: one per node. Rendezvous, run the worker group, react, repeat.

The loop (DESIGN.md): join a round -> start the worker group -> wait for the
first of (group finished, group failed, round superseded, signal) -> stop ->
decide -> rejoin or exit. The job-wide decisions (restart budget, root cause)
are the rendezvous's; this module only composes the pieces and owns the
process-level concerns (signals, the reaper, the hosted store).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import uuid
from collections.abc import Callable, Collection, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from corral.agent import emitting, failure, opening, races, results, signals
from corral.agent import hooks as agent_hooks
from corral.agent.hooks import AgentHooks
from corral.agent.policy import ImmediatePolicy, RestartPolicy
from corral.agent.results import summary as _summary  # imported from here by tests
from corral.agent.state import AgentState, StateMachine
from corral.core import events as ev
from corral.core.clock import Clock, MonotonicClock
from corral.core.errors import (
    ConfigError,
    Interrupted,
    JobFailed,
    JobStopped,
    LauncherError,
    NodeQuarantined,
    RendezvousClosed,
    WorkerFailed,
)
from corral.core.failures import FailureReport
from corral.core.model import RoundChange, RoundInfo
from corral.events import agent as agent_events
from corral.rendezvous.api import Rendezvous
from corral.rendezvous.liveness import PeerLiveness

if TYPE_CHECKING:  # annotations only: these load lazily, when the agent first needs them
    from corral.agent.health import HealthWatch
    from corral.config import LaunchConfig
    from corral.events.observe import Observers
    from corral.hangs.watch import HangWatch
    from corral.store.api import Store
    from corral.store.tcp.server import StoreServer
    from corral.workers.gpu_reclaim import GpuReclaim
    from corral.workers.group import WorkerGroup
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
        self._signal_event = asyncio.Event()
        self._events = events  # the caller's EventSink (docs/events.md)
        self.observers: Observers | None = None  # while executing
        self._round = -1
        self._signum = 0
        self._group: WorkerGroup | None = None
        self._standbys: StandbyPool | None = None  # --prestart
        self._server: StoreServer | None = None
        self._liveness: PeerLiveness | None = None
        self._told: Interrupted | None = None  # what a handled signal ended this agent with
        self._store: Store | None = None  # the job's store, once open (docs/hangs.md)
        self._hangs: HangWatch | None = None  # with --hang-timeout
        self._reclaim: GpuReclaim | None = None  # GPU memory between attempts
        self._health: HealthWatch | None = None  # with --health-check (docs/health.md)
        self.root_cause: FailureReport | None = None

    # -- public ---------------------------------------------------------------

    async def run(self) -> int:
        """Run until the job ends; return the process exit code (CONTRACT.md).

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
        installed: dict[int, signals.Handler] = {}
        try:
            installed = signals.install_handlers(
                loop, self.cfg.signals_to_handle, self._on_signal, self.handle_signals
            )
            async with AsyncExitStack() as stack:
                logs = RunLogs.from_config(self.cfg)
                stack.callback(logs.close)
                if logs.temporary is not None:
                    reaper.register_dir(logs.temporary)  # removed even if we are SIGKILLed
                from corral.events.observe import Observers

                self.observers = await stack.enter_async_context(
                    Observers(self.cfg, node_id=self.node_id, sink=self._events,
                              run_dir=logs.run_dir if self.cfg.log_dir else None)
                )  # fmt: skip
                from corral.agent.health import watch_for

                # --health-check: the first check runs here, the rest beside the rounds
                self._health = await stack.enter_async_context(watch_for(self))
                from corral.workers.standby import pool_for

                self._standbys = await stack.enter_async_context(  # --prestart: standbys
                    pool_for(self.cfg, self.environ, reaper)  # import while nodes gather
                )
                rdzv = await self._open_rendezvous(stack)
                try:
                    await self._loop(rdzv, logs, reaper)
                    return dict(self.results)
                except (JobFailed, WorkerFailed):
                    await self._linger()
                    raise
                except Interrupted as exc:  # a handled signal: agent/preempt.py
                    if self._signum and not isinstance(exc, JobStopped):
                        exc = await self._tell_job(rdzv, None)
                    if isinstance(exc, JobStopped):
                        await self._linger()
                    raise exc from None
                finally:
                    self._job_ended(sys.exc_info()[1])
                    if self.machine.state is AgentState.SUCCEEDED:
                        await self._linger()
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

    async def _loop(self, rdzv: Rendezvous, logs: RunLogs, reaper: Reaper) -> int:
        from corral.workers.group import WorkerGroup
        from corral.workers.spec import WorkerSpec

        spec = WorkerSpec.from_config(self.cfg, self.environ)
        from corral.workers.gpu_reclaim import GpuReclaim

        self._reclaim = GpuReclaim.for_node(self.cfg, self.environ, self.clock)  # no-op sans GPUs
        attempt = 0
        while True:
            self.machine.to(AgentState.RENDEZVOUS)
            if self._health is not None:  # an unhealthy node does not join (docs/health.md)
                from corral.agent.health import wait_to_join

                await self._race(wait_to_join(self._health, rdzv))
            # A join that waits (a spare, a slow gathering) is idle time: the standbys
            # the pool deferred (nothing to pre-import) are made then, not later.
            filling = self._standbys.fill_later() if self._standbys is not None else None
            try:
                rnd = await self._race(rdzv.join())
                self._round_closed(rnd, spec.local_world_size)
            except RendezvousClosed:
                self.machine.to(AgentState.SUCCEEDED)
                return 0
            finally:
                if filling is not None:
                    filling.cancel()
            log.info(
                "round %d: node %d of %d, ranks %d..%d of %d, restarts %d/%d",
                rnd.round,
                rnd.group_rank,
                rnd.group_world_size,
                rnd.rank_offset,
                rnd.rank_offset + spec.local_world_size - 1,
                rnd.world_size,
                rnd.restart_count,
                rnd.restarts_allowed(self.cfg.max_restarts),
            )
            if self.hooks.before_start is not None:
                await self._before_start(rnd)  # it may refuse: NodeRefused
            group = WorkerGroup(
                spec,
                rnd,
                attempt=attempt,
                logs=logs,
                reaper=reaper,
                node_id=self.node_id,
                host=self.host,
                base_env=self.environ,
                env_builder=self.worker_env,
                standbys=self._standbys,
            )
            attempt += 1
            self._group = group
            self.machine.to(AgentState.RUNNING)
            try:
                await self._reclaim.wait()  # the previous attempt's GPU memory is freed
                await group.start()
                self._workers_started(group, rnd, attempt - 1)
                outcome = await self._race_group(group, rdzv, rnd)
            except BaseException:
                await group.stop(self.cfg.shutdown_timeout)
                raise
            if isinstance(outcome, RoundChange):
                self.machine.to(AgentState.STOPPING)
                if outcome.stop_signal:  # a handled signal on another node stopped the job
                    from corral.agent.preempt import stop_for_change

                    raise await stop_for_change(group, outcome, self.cfg.shutdown_timeout)
                log.info(
                    "round %d over (%s%s): stopping workers",
                    rnd.round,
                    outcome.kind.value,
                    f": {outcome.detail}" if outcome.detail else "",
                )
                self._round_over(rnd, outcome.kind.value, outcome.detail)
                await self._stop(group)
                await self._notify(rnd, outcome.kind.value, [])
                self._restart(rnd, outcome.kind.value, outcome.detail)
                continue
            if outcome.succeeded:
                self.results = results.read_results(group)
                self._round_over(rnd, "succeeded", "", exited=group.pids)
                await self._notify(rnd, "succeeded", [])
                self.machine.to(AgentState.STOPPING)
                change = await self._race(rdzv.report_success(rnd))
                if change is None:
                    self.machine.to(AgentState.SUCCEEDED)
                    return 0
                log.info(
                    "round %d superseded after local success (%s)", rnd.round, change.kind.value
                )
                continue
            # a local failure: the job restarts (continue) or fails (raised)
            await self._on_failure(group, rdzv, rnd, list(outcome.failures))

    async def _stop(self, group: WorkerGroup, kill: Collection[int] = ()) -> None:
        """Stop ``group`` (``kill``: hung local ranks, SIGKILLed at once: docs/hangs.md)."""
        t0 = self.clock.now()
        if self._reclaim is not None:
            self._reclaim.remember(group)  # its processes, while they are alive
        await group.stop(self.cfg.shutdown_timeout, kill=kill)
        self._emit(ev.WorkersStopped, group.rnd.round, seconds=self.clock.now() - t0)
        if self._group is group:
            self._group = None

    # -- bound from the modules of one idea --------------------------------------
    # Plain functions of the agent, bound here as methods, not wrapped in coroutines
    # that only await them (each such layer costs every suspension of a race).

    _race = races.race  # a step against the handled signals
    _race_group = races.race_group  # a running group against its round
    _on_failure = failure.on_failure  # a local failure: publish, stop, restart or fail
    _on_signal = signals.on_signal  # the loop's signal handler
    _tell_job = signals.tell_job  # --on-signal stop|leave, once
    _before_start = agent_hooks.before_start  # AgentHooks (docs/api.md)
    _notify = agent_hooks.notify
    _open_rendezvous = opening.open_rendezvous
    _linger = opening.linger
    # events (docs/events.md)
    _emit = emitting.emit
    _round_closed = emitting.round_closed
    _restart = emitting.restart_decided
    _workers_started = agent_events.workers_started
    _round_over = agent_events.round_over
    _job_ended = agent_events.job_ended
