"""Copying worker output: pipe -> log file, console (tee, prefix), tail buffer, filtered file.

A pump is the event loop's reader callback on one worker pipe (no task per
stream). A console is shared by every pump that writes to it: when it is
non-blocking and full, what does not fit waits for the loop to see it
writable and the pumps feeding it pause, so the workers block on their own
writes (back-pressure), never the agent. A pump that fails hands its error to
its owner (the worker group fails with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections.abc import Callable
from typing import IO

from corral.workers.logs import StreamPlan, Tail

__all__ = ["Console", "Pump", "console_for"]

_READ_SIZE = 65536


class Console:
    """One console descriptor, shared by every pump that copies to it.

    A console may be non-blocking (a pipe set so by whoever reads the agent's
    output). When it is full, what does not fit waits here and goes out when
    the loop sees the descriptor writable; meanwhile the pumps that feed it
    stop reading their workers' pipes, so the workers block on their own
    writes (the back-pressure of a slow terminal) instead of the agent
    spinning or growing without bound. A closed console drops the data: it
    must not take the agent down.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = bytearray()
        self.paused: list[Pump] = []
        self.closed = False

    @property
    def backlogged(self) -> bool:
        return bool(self.pending)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.pending:
            data = data[self._try_write(data) :]
            if not data or self.closed:
                return
            asyncio.get_running_loop().add_writer(self.fd, self._on_writable)
        self.pending += data

    def _try_write(self, data: bytes | bytearray) -> int:
        view = memoryview(data)
        done = 0
        while done < len(view):
            try:
                done += os.write(self.fd, view[done:])
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:
                self._close()
                return len(view)
        return done

    def _on_writable(self) -> None:
        n = self._try_write(self.pending)
        del self.pending[:n]
        if not self.pending:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_writer(self.fd)
            self._resume_all()

    def _resume_all(self) -> None:
        paused, self.paused = self.paused, []
        for pump in paused:
            pump.resume()

    def _close(self) -> None:
        self.closed = True
        self.pending.clear()
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_writer(self.fd)
        self._resume_all()


# Per loop (gone with it: a program that calls corral.launch() again and again keeps
# none of the old loops), per descriptor.
_consoles: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, Console]] = (
    weakref.WeakKeyDictionary()
)


def console_for(fd: int) -> Console:
    """The :class:`Console` of ``fd`` for the running loop (one per loop and descriptor)."""
    per_fd = _consoles.setdefault(asyncio.get_running_loop(), {})
    c = per_fd.get(fd)
    if c is None:
        c = per_fd[fd] = Console(fd)
    return c


class Pump:
    """Copies one worker stream from its pipe to a file, the console, a tail buffer and
    the matching lines to the attempt's filtered file (``--duplicate-std*-filters``).

    Driven by the loop's reader callback (no task). An error while copying
    (the log file's disk full...) closes the pump and is handed to
    ``on_error``: the worker group fails with it, visibly.
    """

    def __init__(
        self,
        fd: int,
        plan: StreamPlan,
        console_fd: int,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.fd: int | None = fd
        self.plan = plan
        self.console = console_for(console_fd) if plan.console else None
        self.file: IO[bytes] | None = open(plan.path, "ab", buffering=0) if plan.path else None
        self.tail = Tail() if plan.keep_tail else None
        # the filtered file is shared by every rank's pump: appended to, a write per read
        self.dup: IO[bytes] | None = None
        if plan.dup is not None:
            assert plan.prefix is not None  # a teed stream
            try:
                self.dup = open(plan.dup.path, "ab", buffering=0)
            except OSError:
                if self.file is not None:
                    self.file.close()
                raise
        self._lines = plan.dup is not None or (self.console is not None and plan.prefix is not None)
        self.on_error = on_error
        self._partial = b""
        self._reading = False
        os.set_blocking(fd, False)

    def resume(self) -> None:
        """(Re)start copying as the loop sees data."""
        if self.fd is not None and not self._reading:
            asyncio.get_running_loop().add_reader(self.fd, self.on_readable)
            self._reading = True

    def _pause(self) -> None:
        if self.fd is not None and self._reading:
            asyncio.get_running_loop().remove_reader(self.fd)
            self._reading = False
        assert self.console is not None
        self.console.paused.append(self)

    def on_readable(self) -> None:
        self.drain(until_backlog=True)

    def drain(self, until_backlog: bool = False) -> None:
        """Read what is available now (the loop callback), or everything (at exit).

        With ``until_backlog``, stop reading (until resumed) while the console
        holds data it could not write yet. An error while copying closes the
        pump and goes to ``on_error``, whoever called: the reader callback, the
        worker's exit, or the group's close. Never a silently dead pump.
        """
        try:
            self._drain(until_backlog)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self.close()
            if self.on_error is not None:
                self.on_error(exc)

    def _drain(self, until_backlog: bool) -> None:
        while self.fd is not None:
            if until_backlog and self.console is not None and self.console.backlogged:
                self._pause()
                return
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
        if self.console is not None and self.plan.prefix is None:
            self.console.write(data)
        if not self._lines:
            return
        *lines, self._partial = (self._partial + data).split(b"\n")
        if not lines:
            return
        if self.console is not None and self.plan.prefix is not None:
            if self.plan.collapse is not None:  # --collapse-logs
                self.plan.collapse.feed(self.plan.rank, lines, self.console.write)
            else:
                p = self.plan.prefix
                self.console.write(b"".join(p + line + b"\n" for line in lines))
        self._dup(lines)

    def _dup(self, lines: list[bytes], last: bool = False) -> None:
        if self.dup is not None and self.plan.dup is not None and self.plan.prefix is not None:
            selected = self.plan.dup.select(self.plan.prefix, lines, last)
            if selected:
                self.dup.write(selected)

    def close(self) -> None:
        if self.fd is not None:
            if self._reading:
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_reader(self.fd)
                self._reading = False
            os.close(self.fd)
            self.fd = None
        if self._partial and self.console is not None and self.plan.collapse is not None:
            self.plan.collapse.feed(self.plan.rank, [self._partial], self.console.write)
        elif self._partial and self.console is not None and self.plan.prefix is not None:
            self.console.write(self.plan.prefix + self._partial + b"\n")
        partial, self._partial = self._partial, b""
        try:
            if partial:
                self._dup([partial], last=True)
        finally:
            if self.dup is not None:
                d, self.dup = self.dup, None
                d.close()
            if self.file is not None:
                f, self.file = self.file, None
                f.close()
