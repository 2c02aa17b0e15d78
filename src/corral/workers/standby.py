"""Pre-started workers (``--prestart``): standby interpreters that become the next attempt's workers.

A standby is the worker's interpreter with the ``--prestart-import`` modules
imported (:mod:`corral.workers._standby_boot`), waiting on a socket for its
assignment. When a round closes, :class:`~corral.workers.process.WorkerProcess`
hands a standby the worker's argv, environment, working directory and
stdout/stderr descriptors, and the standby becomes that worker.

Where the agent owns its children (the CLI: :func:`corral.workers.sweep.claim_children`)
the standbys come from a **zygote**: one standby process that imports once and
then forks a standby per request (a fork of an interpreter that has imported
torch costs a few milliseconds, not the seconds of importing again, so a new
standby for the next attempt is ready at once and the running training does
not feel it). Each fork double-forks so that it is re-parented to the agent
(the subreaper): the agent reaps it and reads its exit status like any child.
Elsewhere (``corral.launch`` inside a user's program) each standby is its own
interpreter, and those started while a training runs import at idle priority.

The pool keeps one standby per local rank: started before the first
rendezvous (importing overlaps the nodes' gathering) and again after each
group start. A standby is a worker-to-be for the no-orphan guarantee: its own
session, PDEATHSIG, a marker (``CORRAL_WORKER_TOKEN``), its group registered
with the watchdog. One that dies before its assignment is dropped and the
worker is spawned fresh.

One standby, as the agent holds it (its socket, the hand-off of its
assignment), is :class:`~corral.workers.standby_link.Standby`.

The pool also owns the agent's detached stops (:meth:`StandbyPool.detach`;
docs/workers.md): they live in its task group, awaited when the agent leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from corral.core.aio import RunTasks, run_scope
from corral.core.compat import timeout as _compat_timeout
from corral.workers.prestart import (
    Child,
    PrestartPlan,
    Proc,
    gpus_present,
    prestart_plan,
    sys_argv,
)
from corral.workers.reaper import Reaper, worker_preexec
from corral.workers.spec import WorkerSpec, needs_omp_notice
from corral.workers.standby_link import Standby
from corral.workers.sweep import MARKER_VAR, children_owned

if TYPE_CHECKING:
    from corral.config import LaunchConfig

__all__ = [
    "Child",
    "PrestartPlan",
    "Proc",
    "Standby",
    "StandbyPool",
    "pool_for",
    "prestart_plan",
    "sys_argv",
]

log = logging.getLogger(__name__)

#: How long a group start waits for a standby that has no pid yet (the zygote importing).
TAKE_TIMEOUT = 120.0
#: A join still waiting after this long makes the standbys the pool has not made yet.
FILL_AFTER = 0.5


class StandbyPool:
    """This node's standbys, one per local rank, and the agent's detached stops.

    Use as ``async with StandbyPool(...) as pool`` (the agent enters it in its
    exit stack); on the loop thread only (PDEATHSIG follows the forking thread).

    Args:
        plan: what the standbys run (:func:`prestart_plan`); None: no standbys
            (the pool only holds detached stops).
        spec: the worker spec (local world size, OMP rule).
        base_env: the agent's environment.
        reaper: the watchdog; every standby's group is registered on it.
        zygote: fork standbys from one zygote (default: where this process owns
            its children, :func:`~corral.workers.sweep.children_owned`).
        idle: without a zygote, standbys started while workers run import at
            idle CPU priority (when they can come back from it).
        detach_stops: stopped groups finish dying in the background
            (:meth:`detach`); False: the agent waits for them.
    """

    def __init__(
        self,
        plan: PrestartPlan | None,
        spec: WorkerSpec,
        base_env: Mapping[str, str],
        reaper: Reaper,
        *,
        zygote: bool | None = None,
        idle: bool = True,
        detach_stops: bool = False,
    ) -> None:
        self.plan = plan
        self.spec = spec
        self.reaper = reaper
        self.use_zygote = children_owned() if zygote is None else zygote
        self.idle = idle
        self.detach_stops = detach_stops
        #: pre-starting was asked for and is possible here (a pool may hold only detached stops)
        self.prestarting = plan is not None
        env = dict(base_env)
        # Variables a library may read while being imported (libgomp reads
        # OMP_NUM_THREADS when it loads) are set as the worker will have them.
        if needs_omp_notice(base_env, spec):
            env["OMP_NUM_THREADS"] = "1"
        env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        self._env = env
        self._standbys: list[Standby] = []
        self._zygote: Standby | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: RunTasks | None = None
        self._closed = False

    @property
    def failure(self) -> BaseException | None:
        """The error of the pool's first failed task (a detached stop, a reap), as soon
        as it cancels the owner's block: what ended the agent's run."""
        return self._tg.failure if self._tg is not None else None

    async def __aenter__(self) -> StandbyPool:
        self._stack = contextlib.AsyncExitStack()
        return await self._stack.enter_async_context(self._running())

    async def __aexit__(self, *exc: Any) -> None:
        assert self._stack is not None
        await self._stack.__aexit__(*exc)

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[StandbyPool]:
        """The pool's life: its task group (detached stops and reaps run in it:
        docs/design.md) around the block.

        The children (stops finishing, standbys being reaped) end by themselves
        within their timeouts: they are waited for whatever ends the block, and
        the block's own exception passes unchanged after them (a task group would
        cancel them). A child's error is raised, bare (it cancels the block first).
        """
        error: BaseException | None = None
        async with run_scope() as tg:
            self._tg = tg
            self._start()
            try:
                yield self
            except BaseException as exc:  # the owner's: raised once the children are done
                error = exc
            finally:
                self._close()
        if error is not None:
            raise error

    def _start(self) -> None:
        # Before the first rendezvous: importing overlaps the gathering. Where the
        # first attempt will not wait for it, it imports at idle priority.
        # Where nothing is to be imported, a standby saves only an interpreter's
        # start: the first attempt spawns fresh (no process competes with it)
        # and the standbys are made at its start, for the next one.
        if self.plan is not None and self.plan.imports:
            first_idle = not self.plan.wait
            if self.use_zygote:
                self._zygote = self._spawn(idle=first_idle, zygote=True)
            self.fill(idle=first_idle)

    def _close(self) -> None:
        self._closed = True
        for sb in self._standbys:
            self._drop(sb)
        self._standbys.clear()
        if self._zygote is not None:
            self._drop(self._zygote)

    # --- standbys ---------------------------------------------------------------

    def fill(self, idle: bool = True) -> None:
        """Start (or fork) standbys until one per local rank is alive; returns at once.

        ``idle``: a training runs meanwhile (for standbys that import themselves).
        """
        if self._closed or self.plan is None:
            return
        self._standbys = [sb for sb in self._standbys if not sb.dead]
        if (
            self.use_zygote
            and self._zygote is None
            and len(self._standbys) < (self.spec.local_world_size)
        ):
            self._zygote = self._spawn(idle=idle, zygote=True)
        while len(self._standbys) < self.spec.local_world_size:
            zygote = self._zygote
            sb = self._fork(zygote) if zygote is not None and not zygote.dead else None
            if sb is None:
                sb = self._spawn(idle=idle and self.idle)
            if sb is None:
                return
            self._standbys.append(sb)

    def fill_later(self, delay: float = FILL_AFTER) -> asyncio.Task[None] | None:
        """:meth:`fill` in ``delay`` s, in the pool's task group, unless cancelled first
        (a join that returned by then); None when the pool is closed.

        For a join that waits: what a spare or a slow gathering waits is idle
        time, and the standbys made then are ready for the round that comes.
        """
        if self._tg is None or self._closed:
            return None

        async def later() -> None:
            await asyncio.sleep(delay)
            self.fill()

        return self._tg.create_task(later(), name="standby-fill")

    async def take(self, timeout: float = TAKE_TIMEOUT) -> Standby | None:
        """A live standby for one worker, or None (spawn it fresh then).

        Where the plan says the worker imports what the standbys import
        (:attr:`PrestartPlan.wait`), a standby still on its way is waited for,
        up to ``timeout`` s: it started earlier than a fresh spawn would, so it
        is ready sooner. Otherwise only a standby that is ready now is taken,
        and the others stay for a later attempt. The caller owns the standby after.
        """
        wait = self.plan is not None and self.plan.wait
        while self._standbys:
            sb = self._standbys[0]
            if not wait and not sb.dead and not sb.ready:
                return None  # importing still: a fresh spawn is quicker
            self._standbys.pop(0)
            if not sb.dead and not sb.known.is_set():
                try:
                    async with _compat_timeout(timeout):
                        await sb.known.wait()
                except TimeoutError:
                    log.warning("no standby after %.0fs; spawning the worker fresh", timeout)
                    self._drop(sb)
                    continue
            if sb.dead or sb.proc is None:
                continue
            self._unwatch(sb)
            if sb.proc.poll() is not None:  # died just now
                self._forget(sb)
                continue
            if sb.held:
                bytes_, _, packages = sb.held.partition(" ")
                log.debug(
                    "standby %d: %s bytes printed while importing %s, shown only if the "
                    "worker imports them",
                    sb.pid,
                    bytes_,
                    packages,
                )
            return sb
        return None

    @property
    def alive(self) -> list[int]:
        """Pids of the standbys waiting for an assignment (those known so far)."""
        return [sb.pid for sb in self._standbys if not sb.dead and sb.proc is not None]

    def _spawn(self, *, idle: bool, zygote: bool = False) -> Standby | None:
        assert self.plan is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        marker = self.reaper.new_marker("z" if zygote else "s")
        env = {**self._env, MARKER_VAR: marker}
        argv = self.plan.argv(theirs.fileno(), idle=idle, zygote=zygote)
        try:
            with (
                tempfile.TemporaryFile(prefix="corral-standby-out") as out,
                tempfile.TemporaryFile(prefix="corral-standby-err") as err,
            ):
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    stdout=out,
                    stderr=err,
                    pass_fds=(theirs.fileno(),),
                    start_new_session=True,
                    preexec_fn=functools.partial(worker_preexec, os.getpid()),
                    close_fds=True,
                )
        except OSError as exc:
            ours.close()
            log.warning("cannot start a standby worker (%s); workers are spawned fresh", exc)
            self._closed = True  # do not retry forever
            return None
        finally:
            theirs.close()
        self.reaper.register(proc.pid)
        sb = Standby(ours, marker, proc)
        self._watch(sb)
        log.debug("%s started: pid %d", "zygote" if zygote else "standby worker", proc.pid)
        return sb

    def _fork(self, zygote: Standby) -> Standby | None:
        """Ask the zygote for a standby: it gets one end of a new socket and forks."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            zygote.sock.setblocking(True)
            socket.send_fds(zygote.sock, [b"F"], [theirs.fileno()])
        except OSError as exc:
            log.info("the standby zygote is gone (%s); standbys start on their own", exc)
            ours.close()
            self._drop(zygote)
            return None
        finally:
            zygote.sock.setblocking(False)
            theirs.close()
        sb = Standby(ours, zygote.marker)
        self._watch(sb)
        return sb

    def _watch(self, sb: Standby) -> None:
        sb.sock.setblocking(False)
        loop = asyncio.get_running_loop()
        loop.add_reader(sb.sock.fileno(), self._on_message, sb)
        if sb.proc is not None:
            self._watch_pid(sb)

    def _watch_pid(self, sb: Standby) -> None:
        assert sb.proc is not None
        with contextlib.suppress(OSError):
            sb.pidfd = os.pidfd_open(sb.proc.pid)
            asyncio.get_running_loop().add_reader(sb.pidfd, self._on_death, sb)

    def _on_message(self, sb: Standby) -> None:
        """``R<pid>\\n`` when a standby is ready (a fork's pid arrives so); EOF when it is gone.

        Also ``H<bytes> <packages>`` (import-time output held back) and ``X<why>``
        (its imports initialized a device runtime: :meth:`_refuse`).
        """
        while not sb.dead:
            try:
                data = sb.sock.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_reader(sb.sock.fileno())
                if sb is self._zygote:
                    self._zygote_gone(sb)
                elif sb.proc is None:  # a fork that never came
                    self._drop(sb)
                return
            sb._buf += data
            while b"\n" in sb._buf:
                line, sb._buf = sb._buf.split(b"\n", 1)
                if line.startswith(b"H"):  # what it printed while importing, held back
                    sb.held = line[1:].decode(errors="replace")
                elif line.startswith(b"X"):  # it holds a device runtime: never hand it a worker
                    self._refuse(sb, line[1:].decode(errors="replace"))
                    return
                elif line.startswith(b"R"):
                    sb.ready = True
                    if sb.proc is None and line[1:].isdigit():  # a fork: now re-parented here
                        sb.proc = Child(int(line[1:]))
                        self.reaper.register(sb.proc.pid)
                        self._watch_pid(sb)
                        sb.known.set()

    def _zygote_gone(self, zygote: Standby) -> None:
        """The zygote is gone: the forks it never made are dropped; standbys start on their own."""
        self._drop(zygote)
        for other in self._standbys:
            if other.proc is None:
                self._drop(other)  # its fork will never come

    def _refuse(self, sb: Standby, why: str) -> None:
        """A standby initialized a device runtime while importing: pre-starting ends here.

        Every standby imports the same modules, so every one would: the workers
        are spawned fresh from now on (one warning line).
        """
        log.warning(
            "--prestart: importing %s initialized a device runtime in the standby (%s); "
            "workers are spawned fresh",
            ",".join(self.plan.imports) if self.plan is not None else "",
            why,
        )
        self.plan = None
        for other in [*self._standbys, *([self._zygote] if self._zygote is not None else [])]:
            self._drop(other)
        self._standbys.clear()
        self._zygote = None
        self._drop(sb)

    def _on_death(self, sb: Standby) -> None:
        assert sb.proc is not None
        self._on_message(sb)  # what it said before it died (a refusal) comes first
        if sb.dead:
            return
        log.info("standby %d exited before its assignment (%s)", sb.pid, sb.proc.poll())
        if sb is self._zygote:
            self._zygote_gone(sb)
        else:
            self._drop(sb)

    def _unwatch(self, sb: Standby) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            loop.remove_reader(sb.sock.fileno())
        if sb.pidfd is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(sb.pidfd)
            os.close(sb.pidfd)
            sb.pidfd = None

    def _drop(self, sb: Standby) -> None:
        """Stop watching ``sb``, kill it, reap it (in the background)."""
        self._unwatch(sb)
        if sb.dead:
            return
        self._forget(sb)

    def _forget(self, sb: Standby) -> None:
        sb.dead = True
        sb.known.set()  # a take() waiting for it goes on
        sb.kill()
        if sb.proc is None:
            return
        sb.proc.poll()
        self.reaper.unregister(sb.pid)
        if self._tg is not None and sb.proc.returncode is None:
            self._tg.create_task(self._reap(sb.proc))

    async def _reap(self, proc: Proc) -> None:
        from corral.workers.sweep import wait_gone

        await wait_gone([proc.pid], 5.0)  # reaps it: it is our child
        if proc.returncode is None:
            proc.returncode = -9

    # --- detached stops -----------------------------------------------------------

    def detach(self, coro: Coroutine[Any, Any, None]) -> bool:
        """Run ``coro`` (the end of a group's stop) in the pool's task group.

        Returns False (and closes ``coro``) when stops are not detached here:
        the caller then awaits it itself.
        """
        if not self.detach_stops or self._tg is None or self._closed:
            coro.close()
            return False
        self._tg.create_task(coro)
        return True


def pool_for(cfg: LaunchConfig, environ: Mapping[str, str], reaper: Reaper) -> StandbyPool:
    """The agent's pool for ``cfg``: standbys with ``--prestart`` (where the entrypoint allows).

    With ``--prestart`` the stops are detached too (the agent goes on to the
    next round while the stopped workers finish dying), except where GPUs are
    visible: their memory must be free before the next attempt allocates it.
    ``CORRAL_WAIT_FOR_TEARDOWN=1`` (or ``0``) forces waiting (or not).
    """
    spec = WorkerSpec.from_config(cfg, environ)
    roots = tuple(r for r in environ.get("PYTHONPATH", "").split(os.pathsep) if r)
    plan = prestart_plan(spec, cfg.prestart_imports, extra_roots=roots) if cfg.prestart else None
    forced = environ.get("CORRAL_WAIT_FOR_TEARDOWN")
    if forced in ("0", "1"):
        detach = forced == "0"
    else:
        detach = cfg.prestart and not gpus_present(environ)
    if cfg.prestart and plan is None and not spec.no_python:
        log.info("--prestart: %s is not a regular file; workers are spawned fresh", spec.entrypoint)
    return StandbyPool(plan, spec, environ, reaper, detach_stops=detach)
