"""Node health checks (``--health-check CMD``): run beside the workers, never in their way.

:func:`run_check` runs one command through the shell in a process group of its
own, bounded by a timeout (a timeout counts as unhealthy; the whole group is
SIGKILLed, at the timeout or when the caller is cancelled). :class:`HealthWatch`
runs the node's checks in a background task of the agent run's task group (an
error of it ends the run) and keeps the latest verdict: the agent waits for a healthy verdict before it
joins a round, and races ``unhealthy()`` against its running workers, so a
slow check delays neither a step nor a restart (docs/health.md).

Time is an argument (a :class:`~corral.core.clock.Clock`): the intervals and the
timeout are driven by a fake clock in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from corral.agent.features import KnowsOutcome, StepsOut
from corral.core.aio import first_of
from corral.core.clock import Clock
from corral.core.compat import TaskGroup
from corral.core.errors import ConfigError
from corral.core.model import ChangeKind, RoundChange, RoundInfo
from corral.rendezvous.api import Rendezvous

__all__ = [
    "RETRY_S",
    "CheckResult",
    "HealthWatch",
    "Unhealthy",
    "health_watch",
    "leave_unhealthy",
    "run_check",
    "wait_to_join",
]

log = logging.getLogger("corral.agent")

#: Seconds between checks of an unhealthy node when --health-check-interval is 0.
RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One run of one check: ``exit_code`` (None: killed at its timeout) and its reason."""

    check: str
    exit_code: int | None
    reason: str  # the last line it printed; else what ended it

    @property
    def healthy(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True, slots=True)
class Unhealthy:
    """The verdict on an unhealthy node: which check, and why."""

    check: str
    reason: str


def _last_line(output: bytes) -> str:
    lines = [ln.strip() for ln in output.decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:500] if lines else ""


async def run_check(cmd: str, timeout: float, clock: Clock) -> CheckResult:
    """Run ``cmd`` through ``/bin/sh`` in its own process group, for at most ``timeout`` s.

    Whatever happens (exit, timeout, cancellation), the check's process group
    is SIGKILLed before this returns, so no child of a check outlives it.
    """
    proc = await asyncio.create_subprocess_shell(
        cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group: killed whole
    )
    try:
        i, out = await first_of(proc.communicate(), clock.sleep(timeout))
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            await asyncio.shield(proc.wait())
    if i == 1:
        return CheckResult(cmd, None, f"no answer within {timeout:g} s (killed)")
    code = proc.returncode if proc.returncode is not None else -1
    reason = _last_line(out[0] or b"")
    if not reason and code != 0:
        reason = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
    return CheckResult(cmd, code, reason)


class HealthWatch:
    """This node's health: its checks in a background task, and the latest verdict.

    Every ``interval`` seconds the checks run in order (each bounded by
    ``timeout``); the first failing one is the verdict. With ``interval`` 0 they
    run only until the node is first healthy (every :data:`RETRY_S` seconds
    while it is not). A change of verdict logs one line and calls ``on_change``
    (the agent's events). An error of the checking task itself fails its task
    in ``tasks`` (the agent run's group: the run ends with it) and is raised by
    every :meth:`wait_healthy` / :meth:`unhealthy`, never swallowed.

    Args:
        checks: shell commands; exit 0 is healthy.
        tasks: the task group the checks run in (the agent run's).
        timeout: seconds each check may take.
        interval: seconds between rounds of checks; 0: only before joining.
        clock: the clock the intervals and the timeout are measured on.
        on_change: called with the new verdict (None: healthy again).
    """

    def __init__(
        self,
        checks: tuple[str, ...],
        *,
        tasks: TaskGroup,
        timeout: float,
        interval: float,
        clock: Clock,
        on_change: Callable[[Unhealthy | None], None] | None = None,
    ) -> None:
        self.checks = checks
        self._tasks = tasks
        self.timeout = timeout
        self.interval = interval
        self.clock = clock
        self.on_change = on_change
        self.verdict: Unhealthy | None = None
        self.known = False  # a first round of checks has finished
        self.rounds = 0  # rounds of checks finished (tests wait on it)
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None  # the checking task's, once it failed

    async def start(self) -> None:
        """Run the first round of checks here (a check the shell cannot run is a
        ConfigError, raised to the caller), then the rest in the background."""
        self._record(await self.check_once())
        self._task = self._tasks.create_task(self._run(first_done=True), name="health checks")

    async def stop(self) -> None:
        """End the checking task (its group awaits it); an error it ended with stays
        the group's."""
        if self._task is not None:
            self._task.cancel()

    def _wake(self) -> None:
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()

    async def check_once(self) -> Unhealthy | None:
        """Run every check once, in order; the first failing one is the verdict.

        Raises:
            ConfigError: on the first round, a check the shell could not run
                (exit 126: not executable, 127: not found).
        """
        for cmd in self.checks:
            res = await run_check(cmd, self.timeout, self.clock)
            if res.healthy:
                continue
            if not self.known and res.exit_code in (126, 127):
                raise ConfigError(
                    f"--health-check {cmd!r}: the shell cannot run it "
                    f"(exit {res.exit_code}: {res.reason})"
                )
            return Unhealthy(cmd, res.reason)
        return None

    async def _run(self, *, first_done: bool = False) -> None:
        try:
            await self._checks(first_done=first_done)
        except Exception as exc:  # the group ends the run with it; the waiters raise it too
            log.error("health checks failed: %r", exc)
            self._error = exc
            self._wake()
            raise

    async def _checks(self, *, first_done: bool) -> None:
        verdict = self.verdict
        while True:
            if not first_done:
                verdict = await self.check_once()
                self._record(verdict)
            first_done = False
            if self.interval > 0:
                await self.clock.sleep(self.interval)
            elif verdict is None:
                return  # interval 0: checked before joining only
            else:
                await self.clock.sleep(RETRY_S)

    def _record(self, verdict: Unhealthy | None) -> None:
        first = not self.known
        old = self.verdict
        # a change: healthy <-> unhealthy, or another check failing (not a new reason text)
        changed = first or (verdict is None) != (old is None)
        changed = changed or (
            verdict is not None and old is not None and verdict.check != old.check
        )
        self.verdict, self.known = verdict, True
        self.rounds += 1
        if changed and verdict is not None:
            log.warning("health check %r failed: %s", verdict.check, verdict.reason)
        elif changed and not first:
            log.info("health checks pass again: this node offers itself to the job")
        if changed and not (first and verdict is None) and self.on_change is not None:
            self.on_change(verdict)
        self._wake()

    def _raise_failed(self) -> None:
        if self._error is not None:
            raise self._error

    async def wait_healthy(self, job_over: Callable[[], Awaitable[bool]] | None = None) -> None:
        """Return once the latest verdict is healthy (at once if it already is), or, when
        ``job_over`` (asked after each round of checks that finds the node unhealthy)
        says so, once the job has ended (the caller's join then raises its outcome)."""
        while True:
            ev = self._changed
            self._raise_failed()
            if self.known and self.verdict is None:
                return
            await ev.wait()
            if self.verdict is not None and job_over is not None and await job_over():
                return

    async def unhealthy(self) -> Unhealthy:
        """Return the verdict once the node is unhealthy (at once if it already is)."""
        while True:
            ev = self._changed
            self._raise_failed()
            if self.verdict is not None:
                return self.verdict
            await ev.wait()


@contextlib.asynccontextmanager
async def health_watch(
    checks: tuple[str, ...],
    *,
    tasks: TaskGroup,
    timeout: float,
    interval: float,
    clock: Clock,
    on_change: Callable[[Unhealthy | None], None] | None = None,
) -> AsyncIterator[HealthWatch | None]:
    """A started :class:`HealthWatch` for the block, its checks in ``tasks`` (None when
    there are no checks)."""
    if not checks:
        yield None
        return
    watch = HealthWatch(
        checks, tasks=tasks, timeout=timeout, interval=interval, clock=clock, on_change=on_change
    )
    await watch.start()
    try:
        yield watch
    finally:
        await watch.stop()


# -- the agent's side ---------------------------------------------------------------


async def wait_to_join(health: HealthWatch, rdzv: Rendezvous) -> None:
    """Before a join: wait until this node is healthy, or the job has ended meanwhile
    (asked of the store once per round of checks; the join then ends the agent)."""
    knows = rdzv if isinstance(rdzv, KnowsOutcome) else None

    async def job_over() -> bool:
        return knows is not None and await knows.outcome() is not None

    await health.wait_healthy(job_over)


async def leave_unhealthy(rdzv: Rendezvous, rnd: RoundInfo, verdict: Unhealthy) -> RoundChange:
    """This member turned unhealthy: leave round ``rnd`` (a restart for the job, counted);
    the agent's loop then stops the workers and waits until the node is healthy again.

    A backend without ``step_out`` (a plug-in) is not told: the others see this
    node's workers end.
    """
    detail = "this node is unhealthy"  # the check and its output: HealthWatch's one line
    if not isinstance(rdzv, StepsOut):  # beyond the Rendezvous protocol
        return RoundChange(ChangeKind.MEMBER_LOST, None, detail)
    change = await rdzv.step_out(rnd, f"{verdict.check}: {verdict.reason}")
    if change.kind is ChangeKind.JOB_ENDED:
        return change
    return RoundChange(ChangeKind.MEMBER_LOST, change.new_round, detail)
