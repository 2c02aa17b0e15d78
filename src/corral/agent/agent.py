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
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, TypeVar, cast

from corral._aio import first_of, task_scope
from corral.agent.policy import ImmediatePolicy, RestartPolicy
from corral.agent.state import AgentState, StateMachine
from corral.clock import Clock, MonotonicClock
from corral.config import LaunchConfig
from corral.errors import (
    ConfigError,
    Interrupted,
    JobFailed,
    JobStopped,
    LauncherError,
    NodeRefused,
    RendezvousClosed,
    WorkerFailed,
)
from corral.events import types as ev
from corral.net import local_address_towards, numeric_host
from corral.rendezvous.api import Decision, NodeDesc, Rendezvous, RoundChange, RoundInfo
from corral.rendezvous.liveness import PeerLiveness
from corral.reporting.failures import FailureReport

if TYPE_CHECKING:  # annotations only: these load lazily, when the agent first needs them
    from corral.events.observe import Observers
    from corral.hangs.watch import HangWatch
    from corral.store.api import Store
    from corral.store.tcp.server import StoreServer
    from corral.workers.group import GroupResult, WorkerGroup
    from corral.workers.logs import RunLogs
    from corral.workers.reaper import Reaper
    from corral.workers.spec import WorkerSpec
    from corral.workers.standby import StandbyPool

__all__ = ["Agent", "AgentHooks"]

log = logging.getLogger("corral.agent")

T = TypeVar("T")
# what signal.getsignal returns and signal.signal takes back
_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


def _summary(root: FailureReport | None) -> str:
    """One line for WorkerFailed: which worker failed the job, how and why."""
    if root is None:
        return "job failed (no failure report available)"
    if root.lost and root.message:
        return f"job failed: {root.message}"  # a whole node lost, named in the message
    how = (
        "hung (no progress within --hang-timeout)"
        if root.hang
        else f"died of {root.signal_name}"
        if root.exitcode < 0
        else f"exited with code {root.exitcode}"
    )
    why = f": {root.message}" if root.message else ""
    return (
        f"job failed: worker rank {root.rank} (node {root.group_rank}, host {root.host}) {how}{why}"
    )


@dataclass
class AgentHooks:
    """Extension points (see docs/api.md).

    Attributes:
        before_start: awaited with the round before the worker group starts. To
            refuse to run (e.g. a failed health check) raise
            :class:`~corral.errors.NodeRefused` (any LauncherError is taken as a
            refusal): the agent leaves the rendezvous (the other nodes see a lost
            node) and ends with NodeRefused (the CLI: exit code 1 and the message).
        on_outcome: awaited with (round, kind, failures) after each group ends;
            kind is ``"succeeded"``, ``"failed"`` or a :class:`ChangeKind` value.
            Its exceptions are logged, never raised (alerting must not stop a job).
    """

    before_start: Callable[[RoundInfo], Awaitable[None]] | None = None
    on_outcome: Callable[[RoundInfo, str, list[FailureReport]], Awaitable[None]] | None = None


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
            self._print_root_cause(exc.root_cause, len(exc.failures))
            return exc.exit_code
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
        installed: dict[int, _Handler] = {}
        try:
            installed = self._install_signal_handlers(loop)
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
                from corral.workers.standby import pool_for

                self._standbys = await stack.enter_async_context(  # --prestart: standbys
                    pool_for(self.cfg, self.environ, reaper)  # import while nodes gather
                )
                rdzv = await self._open_rendezvous(stack)
                self.observers.attach_rendezvous(rdzv)  # its events (docs/events.md)
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
            self._remove_signal_handlers(loop, installed)
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

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> dict[int, _Handler]:
        handle = self.handle_signals
        if handle is None:
            handle = threading.current_thread() is threading.main_thread()
        installed: dict[int, _Handler] = {}
        if not handle:
            return installed
        try:
            for sig in self.cfg.signals_to_handle:
                previous = signal.getsignal(sig)
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed[sig] = previous
        except (ValueError, RuntimeError) as exc:
            self._remove_signal_handlers(loop, installed)
            raise ConfigError(
                f"handle_signals=True: cannot install signal handlers here ({exc}); "
                "signals can only be handled in the main thread"
            ) from exc
        return installed

    @staticmethod
    def _remove_signal_handlers(
        loop: asyncio.AbstractEventLoop, installed: dict[int, _Handler]
    ) -> None:
        for sig, previous in installed.items():
            loop.remove_signal_handler(sig)
            if previous is not None:  # restore the caller's handler (corral.launch)
                signal.signal(sig, previous)

    # -- the loop -------------------------------------------------------------

    async def _loop(self, rdzv: Rendezvous, logs: RunLogs, reaper: Reaper) -> int:
        from corral.workers.group import WorkerGroup
        from corral.workers.spec import WorkerSpec

        spec = WorkerSpec.from_config(self.cfg, self.environ)
        attempt = 0
        while True:
            self.machine.to(AgentState.RENDEZVOUS)
            try:
                rnd = await self._race(rdzv.join())
                self._round_closed(rnd, spec.local_world_size)
            except RendezvousClosed:
                self.machine.to(AgentState.SUCCEEDED)
                return 0
            log.info(
                "round %d: node %d of %d, ranks %d..%d of %d, restarts %d/%d",
                rnd.round,
                rnd.group_rank,
                rnd.group_world_size,
                rnd.rank_offset,
                rnd.rank_offset + spec.local_world_size - 1,
                rnd.world_size,
                rnd.restart_count,
                self.cfg.max_restarts,
            )
            if self.hooks.before_start is not None:
                try:
                    await self.hooks.before_start(rnd)
                except LauncherError as exc:
                    self.machine.to(AgentState.FAILED)
                    log.error("round %d: before_start refused to run: %s", rnd.round, exc)
                    if isinstance(exc, NodeRefused):
                        raise
                    raise NodeRefused(f"node refused round {rnd.round}: {exc}") from exc
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
                self.results = self._read_results(group)
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
            # local failure
            self.machine.to(AgentState.STOPPING)
            failures: list[FailureReport] = list(outcome.failures)
            first = failures[0]
            log.warning(
                "round %d: worker rank %d (local %d, pid %d) failed with %s; stopping the group",
                rnd.round,
                first.rank,
                first.local_rank,
                first.pid,
                "a hang" if first.hang else first.signal_name or f"exit code {first.exitcode}",
            )
            self._round_over(rnd, "failure", f"rank {first.rank} failed", failed=failures)
            await self._notify(rnd, "failed", failures)
            verdict = self.policy.on_failure(failures)
            if not verdict.restart:
                log.warning("restart policy gives up: %s; the job fails now", verdict.reason)
            async with task_scope() as tg:  # stop the siblings while the failures go out
                stop = tg.create_task(self._stop(group))
                try:
                    decision, root = await self._race(
                        rdzv.report_failure(rnd, failures, final=not verdict.restart)
                    )
                finally:
                    await stop  # every worker is stopped before the scope ends
            if decision is Decision.RESTART:
                self._restart(rnd, "failure", f"rank {first.rank} failed")
                if verdict.delay > 0:
                    log.info("waiting %.1fs before rejoining (%s)", verdict.delay, verdict.reason)
                await self._race(self.policy.before_rejoin(verdict))
                continue
            self.machine.to(AgentState.FAILED)
            root = root or first
            others = [
                f for f in failures if (f.node_id, f.local_rank) != (root.node_id, root.local_rank)
            ]
            raise WorkerFailed(_summary(root), [root, *others])

    async def _race_group(
        self, group: WorkerGroup, rdzv: Rendezvous, rnd: RoundInfo
    ) -> GroupResult | RoundChange:
        """Wait for the first of: a signal, the group's result, the round's end.

        The liveness watch (it never returns: it revokes a dead predecessor's
        lease, which ends the round for all) runs beside the race in the same
        task scope: an error of it fails this race at once, as itself.
        """
        async with task_scope() as tg:
            live = tg.create_task(self._liveness.watch(rnd)) if self._liveness else None
            try:
                hangs = self._hang_watch()  # with --hang-timeout: a 4th racer (docs/hangs.md)
                i, result = await first_of(
                    self._signal_event.wait(),
                    group.wait(),
                    rdzv.watch_round(rnd),
                    *([hangs.watch(group, rnd)] if hangs is not None else []),
                )
                if i == 3:  # a hang: the group fails with the hang's reports
                    from corral.workers.group import GroupResult

                    return GroupResult(
                        succeeded=False, failures=cast("list[FailureReport]", result)
                    )
                if i == 0:
                    # the signal was forwarded already; tell the job (--on-signal: stop
                    # it everywhere, or leave it), give the workers the shutdown timeout
                    # to act on it, then SIGKILL (torchrun's death_sig semantics)
                    async with task_scope() as tg:  # the store is told while they exit
                        told = tg.create_task(self._tell_job(rdzv, rnd))
                        await group.stop(self.cfg.shutdown_timeout, first_signal=None)
                    raise told.result()
                return cast("GroupResult | RoundChange", result)
            finally:
                if live is not None:
                    live.cancel()  # the scope awaits it

    def _hang_watch(self) -> HangWatch | None:
        """The node's hang detector (made once, at the first group), or None when off."""
        if self.cfg.hang_timeout is None:
            return None
        if self._hangs is None:
            from corral.hangs.watch import HangWatch

            self._hangs = HangWatch.from_config(
                self.cfg, node_id=self.node_id, host=self.host, store=self._store
            )
            if self.observers is not None:  # progress marks as events and metrics
                self._hangs.on_marks = self.observers.on_marks
        return self._hangs

    async def _tell_job(self, rdzv: Rendezvous, rnd: RoundInfo | None) -> Interrupted:
        """This node got a handled signal: stop the job or leave it, once (agent/preempt.py)."""
        if self._told is None:
            from corral.agent.preempt import tell_job

            hosts = self._server is not None  # the embedded store: it cannot leave
            self._told = await tell_job(
                rdzv, self.cfg, rnd, self._signum, self.host, hosts_store=hosts
            )
        return self._told

    async def _race(self, aw: Awaitable[T]) -> T:
        """Await ``aw`` unless a handled signal arrives first (then raise Interrupted)."""
        i, result = await first_of(aw, self._signal_event.wait())
        if i == 1:
            raise Interrupted(self._signum)
        return cast(T, result)

    async def _stop(self, group: WorkerGroup) -> None:
        t0 = self.clock.now()
        await group.stop(self.cfg.shutdown_timeout)
        self._emit(ev.WorkersStopped, group.rnd.round, seconds=self.clock.now() - t0)
        if self._group is group:
            self._group = None

    async def _notify(self, rnd: RoundInfo, kind: str, failures: list[FailureReport]) -> None:
        if self.hooks.on_outcome is not None:
            try:
                await self.hooks.on_outcome(rnd, kind, failures)
            except Exception:  # a hook must not take the job down
                log.exception("on_outcome hook failed")

    def _on_signal(self, signum: int) -> None:
        log.warning("received %s: forwarding to workers and stopping", signal.Signals(signum).name)
        if self._group is not None:
            self._group.send_signal(signum)
        if not self._signum:
            self._signum = signum
        self._emit(ev.SignalReceived, self._round, signal=signal.Signals(signum).name)
        self._signal_event.set()

    def _print_root_cause(self, report: FailureReport | None, total: int = 1) -> None:
        from corral.reporting.render import render_root_cause

        self.root_cause = report
        if report is None:
            print("corral: job failed (no failure report available)", file=sys.stderr, flush=True)
            return
        print(render_root_cause(report, max(total, 1)), file=sys.stderr, flush=True)

    def _read_results(self, group: WorkerGroup) -> dict[int, object]:
        """Each worker's result by global rank (None where it wrote none: a command)."""
        from corral.workers._fn_entry import read_result

        logs, offset = group.logs, group.rnd.rank_offset
        if logs is None:  # never started: no worker wrote a result
            return {}
        return {
            offset + local_rank: read_result(logs.rank_dir(local_rank))
            for local_rank in range(group.spec.local_world_size)
        }

    async def _linger(self) -> None:
        """The store's host stays until the other agents have read the job's outcome."""
        if self._server is not None:
            grace = min(self.cfg.rdzv_conf.read_timeout, 10.0)
            if not await self._server.wait_idle(grace):
                log.warning(
                    "agents still connected %.0fs after the job ended; closing the store", grace
                )

    # -- events (docs/events.md) ------------------------------------------------

    def _emit(self, cls: type[ev.Event], round: int, **fields: object) -> None:
        """Hand an event to the sinks; nothing is built when nobody listens."""
        if self.observers is not None and self.observers.sink:
            self.observers.emit(cls, round, **fields)

    def _round_closed(self, rnd: RoundInfo, local_world_size: int) -> None:
        from corral.events.agent import round_closed

        self._round = rnd.round
        round_closed(self, rnd, local_world_size)

    def _workers_started(self, group: WorkerGroup, rnd: RoundInfo, attempt: int) -> None:
        from corral.events.agent import workers_started

        workers_started(self, group, rnd, attempt)

    def _round_over(
        self,
        rnd: RoundInfo,
        cause: str,
        detail: str,
        *,
        exited: Mapping[int, int] | None = None,
        failed: Sequence[FailureReport] = (),
    ) -> None:
        from corral.events.agent import round_over

        round_over(self, rnd, cause, detail, exited=exited, failed=failed)

    def _restart(self, rnd: RoundInfo, cause: str, detail: str) -> None:
        if cause != "job_ended":
            self._emit(ev.RestartDecided, rnd.round, cause=cause, detail=detail,
                       restart_count=rnd.restart_count, max_restarts=self.cfg.max_restarts)  # fmt: skip

    def _job_ended(self, exc: BaseException | None) -> None:
        from corral.events.agent import job_ended

        job_ended(self, exc)

    # -- rendezvous and store -------------------------------------------------

    def _node_addr(self) -> str:
        cfg = self.cfg
        wait = cfg.rdzv_conf.read_timeout  # a name may not be in DNS yet (net.resolve_once)
        if cfg.local_addr:
            return numeric_host(cfg.local_addr) or local_address_towards(cfg.local_addr, wait)
        if cfg.rdzv_backend == "static":
            return local_address_towards(cfg.master_addr, wait)
        host, _ = cfg.endpoint_host_port
        return local_address_towards(host or "127.0.0.1", wait)

    async def _open_rendezvous(self, stack: AsyncExitStack) -> Rendezvous:
        """Open ``cfg.rdzv_backend`` through the registry (built-ins and plug-ins alike)."""
        from corral.rendezvous.registry import open_rendezvous

        cfg = self.cfg
        node = NodeDesc(
            node_id=self.node_id,
            addr=self._node_addr(),
            local_world_size=cfg.nproc_per_node,
            host=self.host,
            pid=os.getpid(),
            master_port=0,  # 0: a fresh free port each round (CONTRACT.md)
        )
        opened = await open_rendezvous(
            cfg, node, stack=stack, clock=self.clock, environ=self.environ
        )
        self._server = opened.server
        self._liveness = opened.liveness
        if opened.store is not None:
            self._store = opened.store
            if self.observers is not None:
                self.observers.attach_store(stack, opened.store)  # the journal (docs/events.md)
        if self.observers is not None:
            self.observers.attach_rendezvous(opened.rendezvous)
        return opened.rendezvous
