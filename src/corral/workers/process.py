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
from typing import IO

from corral.workers.logs import Sink, StreamPlan, Tail, tail_of_file
from corral.workers.reaper import worker_preexec

__all__ = ["WorkerProcess"]

log = logging.getLogger(__name__)

_READ_SIZE = 65536


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            continue
        except OSError:
            return  # a closed console must not take the agent down
        view = view[n:]


class _Pump:
    """Copies one worker stream from its pipe to a file, the console, and a tail buffer."""

    def __init__(self, fd: int, plan: StreamPlan, console_fd: int) -> None:
        self.fd: int | None = fd
        self.plan = plan
        self.console_fd = console_fd
        self.file: IO[bytes] | None = open(plan.path, "ab", buffering=0) if plan.path else None
        self.tail = Tail() if plan.keep_tail else None
        self._partial = b""
        os.set_blocking(fd, False)

    def on_readable(self) -> None:
        self.drain()

    def drain(self) -> None:
        """Read everything available now (the loop callback, and once more at exit)."""
        while self.fd is not None:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.close()
                return
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        if self.file is not None:
            self.file.write(data)
        if self.tail is not None:
            self.tail.feed(data)
        if self.plan.console:
            if self.plan.prefix is None:
                _write_all(self.console_fd, data)
            else:
                *lines, self._partial = (self._partial + data).split(b"\n")
                if lines:
                    p = self.plan.prefix
                    _write_all(self.console_fd, b"".join(p + line + b"\n" for line in lines))

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = None
        if self._partial and self.plan.console and self.plan.prefix is not None:
            _write_all(self.console_fd, self.plan.prefix + self._partial + b"\n")
        self._partial = b""
        if self.file is not None:
            self.file.close()
            self.file = None


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
    ) -> None:
        self.local_rank = local_rank
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
        self._popen: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._pumps: list[_Pump] = []
        self._on_exit: Callable[[WorkerProcess], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self.pid is not None and self.returncode is None

    def spawn(self, on_exit: Callable[[WorkerProcess], None]) -> None:
        """Start the child; ``on_exit(self)`` is called (in the loop) once it has exited.

        A command that cannot be started (not found, not executable) counts as
        an exit with code 127 and ``spawn_error`` set, reported the same way.
        """
        self._loop = asyncio.get_running_loop()
        self._on_exit = on_exit
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
            self._popen = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=fds["stdout"],
                stderr=fds["stderr"],
                start_new_session=True,
                preexec_fn=functools.partial(worker_preexec, os.getpid()),
                close_fds=True,
            )
        except OSError as exc:
            for r, _, _ in pipes:
                os.close(r)
            self.spawn_error = f"{type(exc).__name__}: {exc}"
            log.error("worker %d could not be started: %s", self.local_rank, self.spawn_error)
            self._loop.call_soon(self._exited, 127)
            return
        finally:
            for fd in to_close:
                os.close(fd)
        self.pid = self._popen.pid
        for r, plan, console in pipes:
            pump = _Pump(r, plan, console)
            self._pumps.append(pump)
            self._loop.add_reader(r, pump.on_readable)
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            threading.Thread(
                target=self._wait_in_thread, name=f"corral-wait-{self.pid}", daemon=True
            ).start()
        else:
            self._loop.add_reader(self._pidfd, self._on_pidfd)

    def _on_pidfd(self) -> None:
        assert self._popen is not None and self._pidfd is not None
        rc = self._popen.poll()
        if rc is None:  # pragma: no cover - a pidfd is readable only once the child exited
            return
        assert self._loop is not None
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self._exited(rc)

    def _wait_in_thread(self) -> None:  # pragma: no cover - kernels without pidfd_open
        assert self._popen is not None and self._loop is not None
        rc = self._popen.wait()
        with contextlib.suppress(RuntimeError):  # the loop closed
            self._loop.call_soon_threadsafe(self._exited, rc)

    def _exited(self, rc: int) -> None:
        if self.returncode is not None:
            return
        self.returncode = rc
        self.exit_time = time.time()
        for pump in self._pumps:
            pump.drain()  # everything the worker wrote is in the pipe by now
        if self._on_exit is not None:
            self._on_exit(self)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the worker's process group (the worker and its children)."""
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:  # pragma: no cover
            log.warning("cannot signal worker %d (pgid %d): %s", self.local_rank, self.pid, exc)

    def stderr_tail(self) -> str | None:
        """The last lines of the worker's stderr: the pipe's ring buffer, else the log file."""
        for pump in self._pumps:
            if pump.tail is not None:
                return pump.tail.text() or None
        if self.stderr_plan.sink is Sink.FILE and self.stderr_plan.path:
            return tail_of_file(self.stderr_plan.path) or None
        return None

    def close(self) -> None:
        """Release pipes and files; call after the process (group) was signalled to die.

        A worker still unreaped here (a cancelled stop) is SIGKILLed and reaped
        synchronously: nothing is left as a zombie.
        """
        if self._popen is not None and self.returncode is None:
            self.signal(9)
            try:
                self._exited(self._popen.wait(timeout=5.0))
            except subprocess.TimeoutExpired:  # pragma: no cover - stuck in the kernel
                log.error("worker %d (pid %s) did not die on SIGKILL", self.local_rank, self.pid)
        for pump in self._pumps:
            pump.drain()
            pump.close()
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
