"""Find and end every process descended from a worker, wherever it moved.

A worker's child may leave the worker's process group and session (``setsid``,
a double-forked daemon): ``killpg`` and PDEATHSIG no longer reach it. Two
things still do:

* **The marker.** Every worker is started with ``CORRAL_WORKER_TOKEN=<run
  token>.<tag>`` in its environment (``<run token>``: random, one per agent;
  ``<tag>``: one per worker group or standby). Children inherit the
  environment, and ``/proc/<pid>/environ`` shows the environment a process was
  *started* with, so every descendant that did not start with an environment of
  its own carries the marker, in any session. :func:`scan` finds them.
* **The subreaper.** The agent is a child subreaper (``PR_SET_CHILD_SUBREAPER``,
  :func:`claim_children`): an orphaned descendant is re-parented to the agent,
  not to init, so the agent sees it among its own children even if it cleared
  its environment.

:func:`scan` and :func:`kill_marked` use nothing but ``os`` and ``select``:
the watchdog (:mod:`corral.workers.reaper`) calls them after a fork, where no
import or lock may be taken. Reading another process's environment needs the
same user (or ptrace rights): processes of other users are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import select
import signal
from collections.abc import Collection

__all__ = [
    "MARKER_VAR",
    "children_owned",
    "claim_children",
    "kill_marked",
    "proc_stat",
    "scan",
    "sweep",
    "wait_gone",
]

#: The environment variable that marks every process of a worker (or standby).
MARKER_VAR = "CORRAL_WORKER_TOKEN"

_PR_SET_CHILD_SUBREAPER = 36
_owns_children = False


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state letter, ppid, session id) of ``pid``, or None when it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 1024)
    except OSError:
        return None
    finally:
        os.close(fd)
    fields = data[data.rfind(b")") + 2 :].split(b" ")
    if len(fields) < 4:
        return None
    return fields[0].decode(), int(fields[1]), int(fields[3])


def _environ(pid: int) -> bytes:
    try:
        fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY)
    except OSError:
        return b""
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        return b""
    finally:
        os.close(fd)
    return b"".join(chunks)


def scan(needle: bytes, exclude: Collection[int] = ()) -> list[int]:
    """Pids of the live processes whose start-up environment contains ``needle``.

    ``needle`` is ``b"\\0CORRAL_WORKER_TOKEN=<value>"`` (a prefix of the value
    matches several groups: the watchdog passes ``<run token>.``). Zombies
    (their environment is gone) and ``exclude`` are skipped, and so is the
    calling process.
    """
    me = os.getpid()
    found: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == me or pid in exclude:
            continue
        env = _environ(pid)
        if env and needle in b"\0" + env:
            found.append(pid)
    return found


def kill_marked(needle: bytes, exclude: Collection[int] = (), rounds: int = 200) -> int:
    """SIGKILL every process carrying ``needle`` until a scan finds none; return how many.

    A process may fork between a scan and its kill: the next scan finds the
    child. Killed processes drop out of the scan once they are zombies. Safe
    after ``fork`` (``os`` and ``select`` only); waits 5 ms between scans.
    """
    killed: set[int] = set()
    for _ in range(rounds):
        pids = scan(needle, exclude)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        with contextlib.suppress(OSError):
            select.select([], [], [], 0.005)
    return len(killed)


def marker_needle(value: str) -> bytes:
    """The bytes :func:`scan` looks for: the marker variable set to ``value`` (a prefix)."""
    return b"\0" + MARKER_VAR.encode() + b"=" + value.encode()


def claim_children() -> bool:
    """Make this process a child subreaper that owns all its children (the CLI agent).

    Orphaned descendants of workers are then re-parented here, and
    :func:`sweep` ends any child of this process that it did not start
    itself (``known``). Only for a process that runs nothing but the agent:
    :func:`corral.launch` inside a user's program does not call it. Returns
    False where the kernel refuses (not Linux): the marker alone remains.
    """
    global _owns_children
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # libc, loaded (find_library runs ldconfig)
        ok = bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        ok = False
    _owns_children = ok
    return ok


def children_owned() -> bool:
    """True when :func:`claim_children` made this process the owner of its children."""
    return _owns_children


def _own_children() -> list[int]:
    """Children of this process that came from the workers: re-parented orphans.

    The agent's own children (a stack dumper, a tool it runs) stay in its
    session; everything a worker started is in another one (each worker leads
    its own session, and a process cannot join a session it is not in).
    """
    me = os.getpid()
    my_session = os.getsid(0)
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and st[1] == me and st[2] != my_session:
                out.append(int(name))
    return out


async def wait_gone(pids: Collection[int], timeout: float) -> list[int]:
    """Wait (without blocking the loop) until every pid has exited; return those still alive.

    Exits are pidfd notifications; a child of this process is reaped here
    (an orphan re-parented to the subreaper agent: nobody else waits for it).
    """
    loop = asyncio.get_running_loop()
    pending: dict[int, int] = {}
    for pid in pids:
        try:
            pending[pid] = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        except (AttributeError, OSError):  # pragma: no cover - no pidfd: poll /proc instead
            pending[pid] = -1
    me = os.getpid()
    done = asyncio.Event()
    gone: set[int] = set()

    def on_exit(pid: int) -> None:
        gone.add(pid)
        loop.remove_reader(pending[pid])
        if len(gone) == len(pending):
            done.set()

    try:
        for pid, fd in pending.items():
            if fd >= 0:
                loop.add_reader(fd, on_exit, pid)
        deadline = loop.time() + timeout
        while len(gone) < len(pending) and loop.time() < deadline:
            if all(fd >= 0 for fd in pending.values()):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), deadline - loop.time())
            else:  # pragma: no cover
                for pid in pending:
                    st = proc_stat(pid)
                    if st is None or st[0] in ("Z", "X"):
                        gone.add(pid)
                await asyncio.sleep(0.01)
    finally:
        for fd in pending.values():
            if fd >= 0:
                with contextlib.suppress(Exception):
                    loop.remove_reader(fd)
                os.close(fd)
    for pid in gone:
        st = proc_stat(pid)
        if st is not None and st[1] == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
    return [pid for pid in pending if pid not in gone]


async def sweep(
    value: str,
    known: Collection[int] = (),
    timeout: float = 5.0,
    spare: Collection[str] = (),
) -> list[int]:
    """End every process that carries marker ``value`` (a prefix), and wait until they are gone.

    When this process owns its children (:func:`claim_children`), every child
    that is not in ``known`` (the live workers, standbys and the watchdog) is
    an orphan of a worker and is ended too, marked or not, unless it carries
    a marker starting with one of ``spare`` (a standby forked by the zygote,
    re-parented here a moment before the pool registers it). Children of this
    process are reaped. Returns the pids that were killed.
    """
    spared = [marker_needle(v) for v in spare]
    needle = marker_needle(value)
    killed: set[int] = set()
    for _ in range(100):
        pids = set(scan(needle, known))
        if children_owned():
            for pid in _own_children():
                st = proc_stat(pid)
                if pid not in known and st is not None and st[0] not in ("Z", "X"):
                    env = b"\0" + _environ(pid)
                    if not any(n in env for n in spared):
                        pids.add(pid)
        pids -= killed
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
    if children_owned():  # orphans that exited by themselves, still unreaped
        for pid in _own_children():
            st = proc_stat(pid)
            if pid not in known and st is not None and st[0] == "Z":
                killed.add(pid)
    if killed:
        await wait_gone(killed, timeout)
    return sorted(killed)
