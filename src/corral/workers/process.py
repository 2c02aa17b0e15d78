"""One worker child: spawn, stream pumping, exit notification, signals, reaping.

The child leads its own session (so its process group holds its own children)
and carries ``PR_SET_PDEATHSIG=SIGKILL``. Its exit is a notification, not a
poll: a pidfd (``os.pidfd_open``) registered with the event loop becomes
readable when the child exits; only where pidfds are unavailable does a
thread block in ``waitpid`` instead. Must be used from the event-loop thread
(see :func:`corral.workers.reaper.worker_preexec`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from corral.core.compat import timeout as _compat_timeout
from corral.workers.logs import Sink, StreamPlan, tail_of_file
from corral.workers.pumps import Pump
from corral.workers.reaper import worker_preexec
from corral.workers.sweep import proc_stat

if TYPE_CHECKING:
    from corral.workers.standby import Proc, Standby

__all__ = ["WorkerProcess", "proc_stopped"]

log = logging.getLogger(__name__)


def _preexec(agent_pid: int, cpus: frozenset[int] | None) -> None:
    """Between fork and exec: :func:`worker_preexec`, then ``--numa-binding``'s CPUs
    (what ``numactl --physcpubind`` does in torch; the exec'ed program inherits them)."""
    worker_preexec(agent_pid)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


class WorkerProcess:
    """One worker: its command, environment and stream plans; spawned once.

    Attributes:
        local_rank: the worker's local rank.
        pid: set by :meth:`spawn` (None if the spawn failed).
        returncode: None while running; the exit code, or -N for signal N.
        exit_time: unix seconds when the exit was noticed (informational).
        spawn_error: ``"<Type>: <msg>"`` when the command could not be started.
    """

    def __init__(
        self,
        local_rank: int,
        argv: list[str],
        env: dict[str, str],
        stdout: StreamPlan,
        stderr: StreamPlan,
        *,
        console_out: int = 1,
        console_err: int = 2,
        cpus: frozenset[int] | None = None,
        on_pump_error: Callable[[WorkerProcess, BaseException], None] | None = None,
    ) -> None:
        self.local_rank = local_rank
        #: ``--numa-binding``: the CPUs the worker is bound to before its code runs
        self.cpus = cpus
        self.argv = argv
        self.env = env
        self.stdout_plan = stdout
        self.stderr_plan = stderr
        self.console_out = console_out
        self.console_err = console_err
        self.pid: int | None = None
        self.returncode: int | None = None
        self.exit_time = 0.0
        self.spawn_error: str | None = None
        self._popen: Proc | None = None
        self._pidfd: int | None = None
        self._pumps: list[Pump] = []
        self._on_exit: Callable[[WorkerProcess], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._noticed: asyncio.Event | None = None
        self._reaped = False
        #: the worker is a standby that took its assignment (``--prestart``)
        self.prestarted = False
        #: Called (in the loop) when a log pump fails; the group fails with it.
        self.on_pump_error = on_pump_error

    @property
    def running(self) -> bool:
        return self.pid is not None and self.returncode is None

    def spawn(
        self,
        on_exit: Callable[[WorkerProcess], None],
        standby: tuple[Standby, list[str]] | None = None,
    ) -> None:
        """Start the child; ``on_exit(self)`` is called (in the loop) once it has exited.

        With ``standby`` (``--prestart``: the pre-started interpreter, and the
        ``sys.argv`` the script must see), that interpreter becomes this worker
        (same argv as seen by the script, environment, cwd, streams); if it
        cannot take the assignment, the worker is spawned fresh.

        A command that cannot be started (not found, not executable) counts as
        an exit with code 127 and ``spawn_error`` set, reported the same way.
        """
        self._loop = asyncio.get_running_loop()
        self._on_exit = on_exit
        self._noticed = asyncio.Event()
        fds: dict[str, int | None] = {}
        to_close: list[int] = []
        pipes: list[tuple[int, StreamPlan, int]] = []
        try:
            for name, plan, console in (
                ("stdout", self.stdout_plan, self.console_out),
                ("stderr", self.stderr_plan, self.console_err),
            ):
                if plan.sink is Sink.INHERIT:
                    fds[name] = None
                elif plan.sink is Sink.DEVNULL:
                    fds[name] = subprocess.DEVNULL
                elif plan.sink is Sink.FILE:
                    assert plan.path is not None
                    fd = os.open(plan.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                    fds[name] = fd
                    to_close.append(fd)
                else:
                    r, w = os.pipe()
                    fds[name] = w
                    to_close.append(w)
                    pipes.append((r, plan, console))
            sb, sb_argv = standby if standby is not None else (None, [])
            if sb is not None and sb.proc is not None and self._adopt(sb, sb_argv, fds):
                self._popen = sb.proc
                self.prestarted = True
            else:
                self._popen = subprocess.Popen(
                    self.argv,
                    env=self.env,
                    stdout=fds["stdout"],
                    stderr=fds["stderr"],
                    start_new_session=True,
                    preexec_fn=functools.partial(_preexec, os.getpid(), self.cpus),
                    close_fds=True,
                )
        except (OSError, subprocess.SubprocessError) as exc:  # SubprocessError: _preexec's
            for r, _, _ in pipes:
                os.close(r)
            self.spawn_error = f"{type(exc).__name__}: {exc}"
            log.error("worker %d could not be started: %s", self.local_rank, self.spawn_error)
            self._loop.call_soon(self._exited, 127)
            return
        finally:
            for fd in to_close:
                os.close(fd)
        assert self._popen is not None
        self.pid = self._popen.pid
        for r, plan, console in pipes:
            pump = Pump(r, plan, console, self._pump_failed)
            self._pumps.append(pump)
            pump.resume()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            threading.Thread(
                target=self._wait_in_thread, name=f"corral-wait-{self.pid}", daemon=True
            ).start()
        else:
            self._loop.add_reader(self._pidfd, self._on_pidfd)

    def _adopt(self, standby: Standby, argv: list[str], fds: dict[str, int | None]) -> bool:
        """Hand ``standby`` this worker (``argv``: the script's ``sys.argv``); False (the
        standby killed) if it cannot take it."""
        opened: list[int] = []
        try:
            out_err: list[int] = []
            for name, inherited in (("stdout", 1), ("stderr", 2)):
                fd = fds[name]
                if fd is None:
                    fd = inherited
                elif fd == subprocess.DEVNULL:
                    fd = os.open(os.devnull, os.O_WRONLY)
                    opened.append(fd)
                out_err.append(fd)
            ok = standby.assign(
                argv=argv,
                orig_argv=self.argv,
                env=self.env,
                cwd=os.getcwd(),
                out_fd=out_err[0],
                err_fd=out_err[1],
                cpus=self.cpus,
            )
        finally:
            for fd in opened:
                os.close(fd)
        if not ok:
            standby.kill()
            with contextlib.suppress(ChildProcessError):
                if standby.proc is not None:
                    standby.proc.wait()  # killed: it exits at once
        return ok

    def _pump_failed(self, exc: BaseException) -> None:
        log.error("worker %d: copying its output failed: %r", self.local_rank, exc)
        if self.on_pump_error is not None:
            self.on_pump_error(self, exc)

    def _on_pidfd(self) -> None:
        """The worker exited: take its status but leave it a zombie (reaped by :meth:`aclose`).

        While the zombie is unreaped its pid, and so its process group id,
        cannot be reused: :meth:`signal` stays safe until the group is closed.
        """
        assert self._pidfd is not None and self.pid is not None and self._loop is not None
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        except ChildProcessError:  # pragma: no cover - reaped elsewhere
            info = None
        if info is None:  # pragma: no cover - a pidfd is readable only once the child exited
            assert self._popen is not None
            rc = self._popen.poll()
            if rc is None:
                return
            self._reaped = True
        elif info.si_code == os.CLD_EXITED:
            rc = info.si_status
        else:  # CLD_KILLED, CLD_DUMPED
            rc = -info.si_status
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self._exited(rc)

    def _wait_in_thread(self) -> None:  # pragma: no cover - kernels without pidfd_open
        assert self._popen is not None and self._loop is not None
        rc = self._popen.wait()
        self._reaped = True
        with contextlib.suppress(RuntimeError):  # the loop closed
            self._loop.call_soon_threadsafe(self._exited, rc)

    def _exited(self, rc: int) -> None:
        if self.returncode is not None:
            return
        self.returncode = rc
        self.exit_time = time.time()
        if self._noticed is not None:
            self._noticed.set()
        for pump in self._pumps:
            pump.drain()  # everything the worker wrote is in the pipe by now
        if self._on_exit is not None:
            self._on_exit(self)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the worker's process group (the worker and its children).

        Only until the worker is reaped (:meth:`aclose`): an exited worker is
        kept a zombie until then, so its pid and group id cannot have been
        reused by another process. After that nothing is sent; what is left of
        the worker's processes is found by its marker (:mod:`corral.workers.sweep`).
        """
        if self.pid is None or self._reaped:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:  # pragma: no cover
            log.warning("cannot signal worker %d (pgid %d): %s", self.local_rank, self.pid, exc)

    @property
    def stopped(self) -> bool:
        """The running worker is stopped by a signal (state ``T`` in ``/proc/<pid>/stat``).

        Such a process cannot act on SIGTERM until it is continued: :meth:`WorkerGroup.stop
        <corral.workers.group.WorkerGroup.stop>` sends it SIGCONT with the SIGTERM. False
        when it is not running or its state cannot be read.
        """
        if not self.running or self._reaped:
            return False
        return proc_stopped(self.pid)

    def stderr_tail(self) -> str | None:
        """The last lines of the worker's stderr: the pipe's ring buffer, else the log file."""
        for pump in self._pumps:
            if pump.tail is not None:
                return pump.tail.text() or None
        if self.stderr_plan.sink is Sink.FILE and self.stderr_plan.path:
            return tail_of_file(self.stderr_plan.path) or None
        return None

    def reap(self) -> None:
        """Reap an exited worker now (its zombie ends; :meth:`signal` no longer sends).

        For a group that succeeded, which nobody may stop afterwards.
        """
        if self._popen is not None and self.returncode is not None and not self._reaped:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._popen.pid, 0)  # a zombie: returns at once
            self._popen.returncode = self.returncode
            self._reaped = True

    async def aclose(self, kill_timeout: float = 5.0) -> None:
        """Kill what is left of the worker's process group, reap it, release pipes and files.

        Call after the group was signalled to die. A worker still running here
        (a cancelled stop) is SIGKILLed and its exit awaited (a pidfd
        notification, never a blocking wait on the loop) for up to
        ``kill_timeout`` s. Then the process group gets SIGKILL (its leftover
        members: the leader is still an unreaped zombie, so the id is still
        this group's) and the worker is reaped: nothing is left as a zombie.
        """
        if self._popen is not None:
            if self.returncode is None:
                self.signal(9)
                assert self._noticed is not None
                try:
                    async with _compat_timeout(kill_timeout):
                        await self._noticed.wait()
                except TimeoutError:  # pragma: no cover - stuck in the kernel
                    log.error(
                        "worker %d (pid %s) did not die on SIGKILL", self.local_rank, self.pid
                    )
            if self.returncode is not None and not self._reaped:
                self.signal(9)  # leftovers in the group, while the id is still ours
                self.reap()
        for pump in self._pumps:
            pump.drain()
            pump.close()
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def proc_stopped(pid: int | None) -> bool:
    """Whether ``pid`` is stopped by a signal: state ``T`` in ``/proc/<pid>/stat``.

    (``t``, a ptrace stop, is not: SIGCONT does not resume it.) False if unreadable.
    """
    stat = proc_stat(pid) if pid is not None else None  # the sweep's reading of /proc/<pid>/stat
    return stat is not None and stat[0] == "T"
