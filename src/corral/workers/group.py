"""The node's worker group for one round: start, wait for the outcome, stop, forward signals.

States (all transitions in :meth:`WorkerGroup._to`; the table is
:data:`corral.workers.group_state.TRANSITIONS`)::

    CREATED -> RUNNING -> SUCCEEDED | FAILED -> STOPPING -> STOPPED
               RUNNING -> STOPPING (stopped by the agent: a signal, a round change)

A worker that exits non-zero or dies of a signal while the group is RUNNING
is a failure; workers that die because :meth:`WorkerGroup.stop` signalled them
are not. Always call :meth:`stop` when done with a group, also after success:
it reaps everything, kills leftovers in the workers' process groups and
releases pipes and files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Collection, Mapping
from contextlib import AsyncExitStack

from corral.core.aio import task_scope
from corral.core.compat import TaskGroup
from corral.core.compat import timeout as _compat_timeout
from corral.core.errors import LauncherError
from corral.core.failures import FailureReport
from corral.core.model import RoundInfo
from corral.core.render import read_error_file
from corral.workers.group_state import TRANSITIONS, GroupResult, GroupState, failure_report
from corral.workers.logs import AttemptLogs, RunLogs
from corral.workers.prestart import sys_argv
from corral.workers.process import WorkerProcess
from corral.workers.reaper import Reaper
from corral.workers.spec import WorkerSpec, worker_argv, worker_env
from corral.workers.standby import StandbyPool
from corral.workers.sweep import MARKER_VAR, sweep

__all__ = ["GroupResult", "GroupState", "WorkerGroup"]

log = logging.getLogger(__name__)

#: After SIGKILL, how long to wait for the kernel to reap before giving up loudly.
_KILL_GRACE = 10.0
#: With detached stops: how often the running workers' error files are looked at.
ERROR_FILE_POLL = 0.05
#: The exit code reported for a worker whose error file came before its exit:
#: what the uncaught exception that ``record`` re-raises makes of it.
EARLY_EXITCODE = 1


class WorkerGroup:
    """This node's workers for one round.

    Args:
        spec: what to run. rnd: the round (ranks, master address, restart count).
        attempt: this agent's group-start counter (informational; the log
            directory comes from ``logs``).
        logs: the run's :class:`RunLogs` (a new ``attempt_<n>`` directory is
            made for this group) or an :class:`AttemptLogs` already made.
        reaper: the started :class:`Reaper`; every worker group is registered on it.
        node_id, host: for failure reports.
        base_env: the agent's environment, which the workers inherit.
        console_out, console_err: the agent's console descriptors (tee, pass-through).
        env_builder: builds each worker's environment, with :func:`worker_env`'s
            signature (default :func:`worker_env`; the agent passes its
            overridable ``Agent.worker_env``).
        standbys: ``--prestart``: the pool whose standbys become this group's
            workers (a fresh spawn where none is alive); refilled in the
            background once the workers started. With its ``detach_stops``,
            :meth:`stop` leaves the dying workers to the pool.
        tasks: the task group the group's background task (the error-file poll
            of detached stops) runs in: the agent run's. Without it the group
            opens a task scope of its own at :meth:`start` and leaves it at
            :meth:`stop`.

    Use from the event-loop thread only.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        rnd: RoundInfo,
        *,
        attempt: int,
        logs: RunLogs | AttemptLogs,
        reaper: Reaper,
        node_id: str,
        host: str,
        base_env: Mapping[str, str],
        console_out: int = 1,
        console_err: int = 2,
        env_builder: Callable[[Mapping[str, str], WorkerSpec, RoundInfo, int, str], dict[str, str]]
        | None = None,
        standbys: StandbyPool | None = None,
        tasks: TaskGroup | None = None,
    ) -> None:
        self.spec = spec
        self.rnd = rnd
        self.attempt = attempt
        self._logs_src = logs
        self.logs: AttemptLogs | None = logs if isinstance(logs, AttemptLogs) else None
        self.reaper = reaper
        self.node_id = node_id
        self.host = host
        self.base_env = dict(base_env)
        self.console_out = console_out
        self.console_err = console_err
        self._env_builder = env_builder or worker_env
        self.standbys = standbys
        self.state = GroupState.CREATED
        self.workers: list[WorkerProcess] = []
        self._exit_order: list[WorkerProcess] = []
        self._failures: list[FailureReport] = []
        self._changed = asyncio.Event()
        self._registered: set[int] = set()
        #: ``CORRAL_WORKER_TOKEN`` of this group's processes (set by :meth:`start`).
        self.marker = ""
        self._error: LauncherError | None = None  # what wait() raises: a pump's, the poll's
        self._early: set[int] = set()  # local ranks whose error file was their failure
        self._tasks = tasks
        self._scope: AsyncExitStack | None = None  # the group's own task scope (no ``tasks``)
        self._poll: asyncio.Task[None] | None = None

    # --- state ----------------------------------------------------------------

    def _to(self, new: GroupState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise RuntimeError(f"worker group cannot go from {self.state.name} to {new.name}")
        log.debug("worker group (round %d): %s -> %s", self.rnd.round, self.state.name, new.name)
        self.state = new
        poll = self._poll
        if (
            new is not GroupState.RUNNING
            and poll is not None
            and poll is not asyncio.current_task()
        ):
            poll.cancel()  # its look is for a running group: the run's end need not wait its sleep

    def error_file(self, local_rank: int) -> str:
        """The error file of worker ``local_rank`` (the group must have been started)."""
        assert self.logs is not None, "the worker group was never started"
        return self.logs.error_file(local_rank)

    @property
    def pids(self) -> dict[int, int]:
        """local rank -> pid of every worker that was started."""
        return {w.local_rank: w.pid for w in self.workers if w.pid is not None}

    @property
    def failures(self) -> list[FailureReport]:
        """Every genuine failure so far, in exit-notice order (also those noticed after :meth:`wait`)."""
        return list(self._failures)

    # --- start ----------------------------------------------------------------

    async def start(self) -> None:
        """Spawn every worker and register its process group with the reaper.

        Raises:
            ConfigError: the environment cannot be built (``--virtual-local-rank``),
                or ``--numa-binding`` finds no CPUs for a worker (nothing is started).
            RuntimeError: the group was already started.
        """
        if self.state is not GroupState.CREATED:
            raise RuntimeError(f"worker group already {self.state.name}")
        cpus = self._numa_cpus()
        if self.logs is None:
            assert isinstance(self._logs_src, RunLogs)
            self.logs = self._logs_src.new_attempt(
                self.spec.local_world_size, on_error=self._on_collapse_error
            )
        logs = self.logs
        self.marker = self.reaper.new_marker("g")
        self.workers = []
        for local_rank in range(self.spec.local_world_size):
            out_plan, err_plan = logs.plans(local_rank)
            env = self._env_builder(
                self.base_env, self.spec, self.rnd, local_rank, logs.error_file(local_rank)
            )
            env[MARKER_VAR] = self.marker  # finds every descendant, whatever its session
            self.workers.append(
                WorkerProcess(
                    local_rank,
                    worker_argv(self.spec, local_rank),
                    env,
                    out_plan,
                    err_plan,
                    console_out=self.console_out,
                    console_err=self.console_err,
                    cpus=None if cpus is None else cpus[local_rank],
                    on_pump_error=self._on_pump_error,
                )
            )
        self._to(GroupState.RUNNING)
        for w in self.workers:
            standby = await self.standbys.take() if self.standbys is not None else None
            w.spawn(
                self._on_exit, None if standby is None else (standby, sys_argv(self.spec, w.argv))
            )
            if w.pid is not None:
                if not w.prestarted:  # a standby's group is registered since its start
                    self.reaper.register(w.pid)
                self._registered.add(w.pid)
        if self.standbys is not None:
            self.standbys.fill()  # the next attempt's, in the background
            if self.standbys.detach_stops:
                tasks = self._tasks
                if tasks is None:
                    self._scope = AsyncExitStack()
                    tasks = await self._scope.enter_async_context(task_scope())
                self._poll = tasks.create_task(
                    self._watch_error_files(), name=f"error-file poll, round {self.rnd.round}"
                )
        log.info(
            "started %d worker(s)%s for round %d (ranks %d..%d): pids %s; logs in %s",
            len(self.workers),
            f" ({sum(w.prestarted for w in self.workers)} pre-started)"
            if self.standbys is not None and self.standbys.prestarting
            else "",
            self.rnd.round,
            self.rnd.rank_offset,
            self.rnd.rank_offset + len(self.workers) - 1,
            list(self.pids.values()),
            logs.dir,
        )

    def _numa_cpus(self) -> list[frozenset[int]] | None:
        """``--numa-binding``: each local rank's CPUs (ConfigError where torch's binding fails)."""
        from corral.workers.numa import cpu_ranges, group_cpus

        cpus = group_cpus(
            self.spec.numa_binding,
            self.spec.local_world_size,
            allowed=os.sched_getaffinity(0),
            environ=self.base_env,
            sysfs_root=self.spec.numa_sysfs_root,
        )
        if cpus is not None:
            log.info(
                "--numa-binding %s: local rank -> CPUs %s",
                self.spec.numa_binding,
                ", ".join(f"{r}: {cpu_ranges(c)}" for r, c in enumerate(cpus)),
            )
        return cpus

    # --- exits ----------------------------------------------------------------

    async def _watch_error_files(self) -> None:
        """A running worker's error file is its failure: known before its (slow) exit.

        Only with detached stops (``--prestart``, no GPU): the agent then goes
        on at once, while the worker finishes dying. Its exit code is taken as
        :data:`EARLY_EXITCODE`; a different one at its exit is logged.

        Every :data:`ERROR_FILE_POLL` s while the group runs. A look that fails
        with an OSError is tried again, with a warning; any other error ends
        the poll and is raised by :meth:`wait` (a LauncherError), never silently.
        """
        while self.state is GroupState.RUNNING:
            try:
                found = self._error_files()
            except OSError as exc:
                log.warning(
                    "round %d: looking at the workers' error files failed (%s); trying again",
                    self.rnd.round,
                    exc,
                )
            except Exception as exc:
                failed = LauncherError(f"watching the workers' error files failed: {exc!r}")
                failed.__cause__ = exc
                self._fail(failed)
                return
            else:
                if found:  # several in one look (a peer failed of the first): the earliest first
                    for w in found:
                        self._early.add(w.local_rank)
                        log.debug("worker %d wrote its error file: a failure", w.local_rank)
                        self._failures.append(self._report(w, EARLY_EXITCODE))
                    self._to(GroupState.FAILED)
                    self._changed.set()
                    return
            await asyncio.sleep(ERROR_FILE_POLL)

    def _error_files(self) -> list[WorkerProcess]:
        """The running workers (not yet reported) whose error file is there, earliest first."""
        found: list[tuple[int, WorkerProcess]] = []
        for w in self.workers:
            if w.running and w.local_rank not in self._early:
                path = self.error_file(w.local_rank)
                if read_error_file(path) is not None:
                    try:
                        found.append((os.stat(path).st_mtime_ns, w))
                    except OSError:
                        continue
        return [w for _, w in sorted(found, key=lambda f: f[0])]

    def _on_exit(self, w: WorkerProcess) -> None:
        self._exit_order.append(w)
        rc = w.returncode
        assert rc is not None
        log.debug("worker %d (pid %s) exited: %d", w.local_rank, w.pid, rc)
        if w.local_rank in self._early:  # reported when its error file appeared
            if rc != EARLY_EXITCODE:  # -15/-9: the stop the agent sent it, during its teardown
                stopped = rc in (-signal.SIGTERM, -signal.SIGKILL)
                log.log(
                    logging.DEBUG if stopped else logging.INFO,
                    "worker %d, reported failed, exited with %d",
                    w.local_rank,
                    rc,
                )
            self._changed.set()
            return
        if self.state is GroupState.RUNNING or (
            self.state in (GroupState.SUCCEEDED, GroupState.FAILED) and rc != 0
        ):
            if rc != 0:
                self._failures.append(self._report(w))
                if self.state is GroupState.RUNNING:
                    self._to(GroupState.FAILED)
            elif all(x.returncode == 0 for x in self.workers):
                self._to(GroupState.SUCCEEDED)
                for x in self.workers:  # the agent may never stop a group that succeeded:
                    x.signal(signal.SIGKILL)  # its leftovers, while the group id is held
                    x.reap()
        self._changed.set()

    def _on_pump_error(self, w: WorkerProcess, exc: BaseException) -> None:
        failed = LauncherError(
            f"copying the output of worker {w.local_rank} (pid {w.pid}) failed: {exc!r}"
        )
        failed.__cause__ = exc
        self._fail(failed)

    def _on_collapse_error(self, exc: Exception) -> None:
        failed = LauncherError(f"collapsing the workers' console lines failed: {exc!r}")
        failed.__cause__ = exc
        self._fail(failed)

    def _fail(self, error: LauncherError) -> None:
        """A failure of corral's own work for the group: :meth:`wait` raises the first;
        a later one is logged (an error)."""
        if self._error is None:
            self._error = error
        else:
            log.error("round %d: also: %s", self.rnd.round, error)
        self._changed.set()

    def _report(self, w: WorkerProcess, early: int | None = None) -> FailureReport:
        """The failure of ``w``: at its exit, or ``early`` (its exit code to be) at its error file."""
        return failure_report(
            w,
            self.rnd,
            host=self.host,
            node_id=self.node_id,
            err_path=self.error_file(w.local_rank),
            early=early,
        )

    def _exitcodes(self) -> dict[int, int]:
        return {w.local_rank: w.returncode for w in self._exit_order if w.returncode is not None}

    async def wait(self) -> GroupResult:
        """Wait for the group's outcome.

        Returns the moment a worker fails (``succeeded=False``, the failures
        noticed so far, root cause first), or when every worker exited 0
        (``succeeded=True``). If the group is being or has been stopped by the
        agent, returns ``succeeded=False`` with only the genuine failures.

        Raises:
            RuntimeError: the group was never started.
            LauncherError: copying a worker's output (log file, console) failed,
                collapsing their console lines (``--collapse-logs``) failed, or
                watching the error files (detached stops) failed.
        """
        if self.state is GroupState.CREATED:
            raise RuntimeError("wait() on a worker group that was not started")
        while self.state is GroupState.RUNNING and self._error is None:
            self._changed.clear()
            await self._changed.wait()
        if self._error is not None:
            raise self._error
        return GroupResult(
            succeeded=self.state is GroupState.SUCCEEDED,
            failures=list(self._failures),
            exitcodes=self._exitcodes(),
        )

    # --- signals and stop -------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        """Forward ``sig`` to every running worker's process group."""
        for w in self.workers:
            if w.running:
                w.signal(sig)

    async def _wait_exited(self, timeout: float) -> bool:
        try:
            async with _compat_timeout(max(0.0, timeout)):
                while any(w.running for w in self.workers):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    async def stop(
        self,
        timeout: float,
        first_signal: int | None = signal.SIGTERM,
        *,
        kill: Collection[int] = (),
    ) -> None:
        """Stop the group: SIGTERM each worker's process group, SIGKILL after ``timeout`` s.

        ``first_signal`` replaces SIGTERM (None: send nothing first, e.g. when a
        handled signal was already forwarded to the workers, as torchrun does).
        A worker stopped by a signal (state ``T``, e.g. SIGSTOP) gets SIGCONT
        right after it, so that it can act on it. ``kill``: local ranks that get
        SIGKILL at once instead, with no grace (hung ranks, docs/hangs.md).

        Reaps every worker, SIGKILLs what is left in their process groups,
        unregisters them from the reaper and closes pipes and files. Workers
        that die because of this are not failures. Idempotent; safe at any state.

        With a pool whose ``detach_stops`` is on (``--prestart`` without GPUs),
        returns once the first signal is sent: the rest runs in the pool's task
        group (a second ``stop()`` waits for it).
        """
        if self.state in (GroupState.STOPPING, GroupState.STOPPED):
            while self.state is GroupState.STOPPING:
                self._changed.clear()
                await self._changed.wait()
            return
        self._to(GroupState.STOPPING)
        await self._stop_poll()
        running = any(w.running for w in self.workers)
        sent = first_signal if running else None  # what went to the workers, if anything
        self._signal_stop(sent, frozenset(kill))
        if self.standbys is not None and self.standbys.detach_stops:
            if self.standbys.detach(self._finish_stop(timeout, sent)):
                log.debug(
                    "round %d: stopped workers finish dying in the background", self.rnd.round
                )
                return
        await self._finish_stop(timeout, sent)

    async def _stop_poll(self) -> None:
        """End the error-file poll, and leave the group's own task scope if it has one."""
        poll, self._poll = self._poll, None
        if poll is not None:
            poll.cancel()
            await asyncio.wait({poll})
        scope, self._scope = self._scope, None
        if scope is not None:
            await scope.aclose()

    def _signal_stop(self, sent: int | None, kill: frozenset[int]) -> None:
        """The first signals of a stop: SIGKILL to ``kill``, ``sent`` (+SIGCONT if stopped) to the rest."""
        killed = [w.local_rank for w in self.workers if w.running and w.local_rank in kill]
        if killed:
            log.warning("round %d: SIGKILL to hung worker(s) %s at once", self.rnd.round, killed)
        for w in self.workers:
            if not w.running:
                continue
            if w.local_rank in kill:
                w.signal(signal.SIGKILL)
            elif sent is not None:
                stopped = w.stopped  # read before the signal: a SIGTERM may end it at once
                w.signal(sent)
                if stopped and sent not in (signal.SIGKILL, signal.SIGSTOP):
                    log.info(
                        "worker %d (pid %s) is stopped (state T): SIGCONT after %s",
                        w.local_rank,
                        w.pid,
                        signal.Signals(sent).name,
                    )
                    w.signal(signal.SIGCONT)

    async def _finish_stop(self, timeout: float, sent: int | None) -> None:
        """The rest of :meth:`stop` once ``sent`` (or nothing) was sent: wait, kill, reap, sweep."""
        try:
            if any(w.running for w in self.workers):
                if not await self._wait_exited(timeout):
                    laggards = [w.local_rank for w in self.workers if w.running]
                    log.warning(
                        "worker(s) %s did not exit %.1fs after %s; sending SIGKILL",
                        laggards,
                        timeout,
                        signal.Signals(sent).name if sent else "the signal",
                    )
                    self.send_signal(signal.SIGKILL)
                    if not await self._wait_exited(_KILL_GRACE):  # pragma: no cover
                        log.error("worker(s) still alive after SIGKILL: %s", self.pids)
        finally:
            for w in self.workers:
                await w.aclose()  # an unreaped worker (a cancelled stop) is killed and reaped
            for pgid in sorted(self._registered):
                self.reaper.unregister(pgid)
            self._registered.clear()
            if self.marker:  # descendants that left the process group (setsid, daemons)
                token = self.reaper.token
                swept = await sweep(
                    self.marker,
                    known=self.reaper.known_children(),
                    spare=(f"{token}.s", f"{token}.z"),  # standbys (a fork not registered yet)
                )
                if swept:
                    log.info("ended %d leftover process(es) of the workers: %s", len(swept), swept)
            self._to(GroupState.STOPPED)
            self._changed.set()
