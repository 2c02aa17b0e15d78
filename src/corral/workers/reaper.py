"""The no-orphans guarantee: workers (and their children) never outlive the agent.

Two independent mechanisms:

* Each worker is the leader of its own session/process group, and gets
  ``PR_SET_PDEATHSIG=SIGKILL`` before exec (:func:`worker_preexec`), so the
  kernel kills the worker the moment the agent dies.
* A tiny watchdog process (:class:`Reaper`), forked early and living in its own
  session, holds the read end of a pipe from the agent. The agent registers
  each worker's process group on it. When the pipe reaches EOF, the agent is
  gone however it died (SIGKILL included): the watchdog SIGKILLs every
  registered process group, which takes down the workers' own children
  (data-loader processes) too, then every process that carries this agent's
  worker marker in its environment (:mod:`corral.workers.sweep`): a
  descendant that left its worker's session (``setsid``, a daemon) too.

The watchdog does nothing but ``os`` calls (read, kill, /proc reads) after
the fork: no imports, no locks, no logging, so forking from a process that
already has threads is safe.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import shutil
import signal
import warnings

from corral.workers.sweep import kill_marked, marker_needle

__all__ = ["Reaper", "worker_preexec"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1

_prctl: ctypes._NamedFuncPointer | None = None
try:
    _libc = ctypes.CDLL(None, use_errno=True)  # libc, loaded (find_library runs ldconfig)
    _prctl = _libc.prctl
    _prctl.restype = ctypes.c_int
    _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
except (OSError, AttributeError):  # not Linux: the watchdog alone keeps the guarantee
    _prctl = None


def worker_preexec(agent_pid: int) -> None:
    """Run in a worker child between fork and exec: die with the agent.

    The kernel delivers the death signal when the *thread* that forked the
    child exits, so workers must be spawned from the agent's event-loop thread.
    If the agent died before the signal was armed, the child kills itself.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != agent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def _watchdog_main(rfd: int, needle: bytes) -> None:  # pragma: no cover - the forked child
    """The watchdog loop: keep process groups and temporary directories; at EOF kill
    every group, then every process whose environment holds ``needle`` (the
    agent's marker prefix), and remove every directory."""
    # Signals aimed at the agent's process group or session (a scheduler's SIGTERM,
    # a terminal's SIGINT/SIGHUP, SIGUSR1...) must not kill the watchdog: it ends
    # when the agent's pipe closes, after killing whatever is still registered.
    for sig in (
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGPIPE,
        signal.SIGALRM,
    ):
        signal.signal(sig, signal.SIG_IGN)
    pgids: set[int] = set()
    dirs: set[str] = set()
    buf = b""
    while True:
        try:
            chunk = os.read(rfd, 4096)
        except InterruptedError:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            op, arg = line[:1], line[1:]
            if op == b"q":  # orderly close: the agent has stopped its workers itself
                os._exit(0)
            if op == b"d":
                dirs.add(os.fsdecode(arg))
            elif op in (b"+", b"-") and arg.isdigit():
                (pgids.add if op == b"+" else pgids.discard)(int(arg))
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    kill_marked(needle)
    for path in dirs:  # the agent's temporary directories: nobody else will remove them
        shutil.rmtree(path, ignore_errors=True)
    os._exit(0)


class Reaper:
    """The agent's handle on its watchdog process.

    Usage: ``reaper = Reaper(); reaper.start()`` once, early (before threads if
    possible); the worker group calls ``register(pgid)`` after spawning and
    ``unregister(pgid)`` after reaping a group; ``close()`` on orderly exit.
    """

    def __init__(self) -> None:
        self._wfd: int | None = None
        self._pid: int | None = None
        self._tags = 0
        self._known: set[int] = set()
        #: This agent's random marker token; see :meth:`new_marker`.
        self.token = secrets.token_hex(8)

    def new_marker(self, kind: str = "g") -> str:
        """A fresh marker value ``<token>.<kind><n>`` for one worker group or standby.

        Put it in the processes' environment as ``CORRAL_WORKER_TOKEN``; the
        watchdog kills every process whose value starts with ``<token>.``.
        """
        self._tags += 1
        return f"{self.token}.{kind}{self._tags}"

    def known_children(self) -> frozenset[int]:
        """The live children this agent started itself (the watchdog, workers, standbys)."""
        return frozenset(self._known | ({self._pid} if self._pid is not None else set()))

    @property
    def pid(self) -> int | None:
        """The watchdog's pid while it runs."""
        return self._pid

    def start(self) -> None:
        """Fork the watchdog. Idempotent."""
        if self._pid is not None:
            return
        rfd, wfd = os.pipe()  # both ends non-inheritable: workers never hold them
        with warnings.catch_warnings():
            # Python >= 3.12 warns on fork() with threads; the child is exec-free but lock-free.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the watchdog
            try:
                os.setsid()  # signal dispositions: _watchdog_main
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    if fd != rfd:
                        os.dup2(null, fd)
                # Drop every other inherited descriptor (store sockets, the write end, null).
                os.closerange(3, rfd)
                os.closerange(rfd + 1, 1 << 20)
                _watchdog_main(rfd, marker_needle(self.token + "."))
            finally:
                os._exit(0)
        os.close(rfd)
        self._wfd, self._pid = wfd, pid
        log.debug("reaper watchdog started: pid %d", pid)

    def _send(self, msg: bytes) -> None:
        if self._wfd is None:
            return
        try:
            os.write(self._wfd, msg)  # < PIPE_BUF: atomic
        except OSError as exc:  # the watchdog died: PDEATHSIG still holds
            log.warning("reaper watchdog unreachable (%s); relying on PDEATHSIG", exc)
            os.close(self._wfd)
            self._wfd = None

    def register(self, pgid: int) -> None:
        """Have the watchdog SIGKILL process group ``pgid`` if the agent dies.

        ``pgid`` is a child's pid (it leads its group): it counts among
        :meth:`known_children` until :meth:`unregister`.
        """
        self._known.add(pgid)
        self._send(b"+%d\n" % pgid)

    def unregister(self, pgid: int) -> None:
        """Forget ``pgid`` (call once its processes have been reaped)."""
        self._known.discard(pgid)
        self._send(b"-%d\n" % pgid)

    def register_dir(self, path: str) -> None:
        """Have the watchdog remove directory ``path`` if the agent dies (its temporary logs)."""
        data = os.fsencode(path)
        if b"\n" not in data and len(data) < 4000:  # one atomic write
            self._send(b"d" + data + b"\n")

    def close(self) -> None:
        """Orderly shutdown: the watchdog exits without killing anything. Idempotent."""
        if self._wfd is not None:
            self._send(b"q\n")
            if self._wfd is not None:
                os.close(self._wfd)
            self._wfd = None
        if self._pid is not None:
            try:
                os.waitpid(self._pid, 0)
            except ChildProcessError:
                pass
            self._pid = None
