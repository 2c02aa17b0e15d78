"""Pre-started workers (``--prestart``): standby interpreters that become the next attempt's workers.

A standby is the worker's interpreter, started early with
:mod:`corral.workers._standby_boot`: it imports the ``--prestart-import``
modules (torch) and waits on a socket for its assignment. When a round
closes, :class:`~corral.workers.process.WorkerProcess` hands a standby the
worker's argv, environment, working directory and stdout/stderr descriptors,
and the standby becomes that worker (see the boot module for how exactly).
The pool keeps one standby per local rank ready: they are started before the
first rendezvous (so importing overlaps the nodes' gathering) and again in the
background after each group starts, at idle CPU priority.

A standby is an ordinary worker-to-be for the no-orphan guarantee: it leads
its own session, carries PDEATHSIG and a marker (``CORRAL_WORKER_TOKEN``), and
its process group is registered with the watchdog. A standby that dies before
its assignment is dropped (the worker is spawned fresh instead); one that
cannot be handed its assignment likewise.

The pool also owns the agent's detached stops: a stopped group whose
processes may finish dying in the background (see :meth:`StandbyPool.detach`
and docs/workers.md) lives in the pool's task group, which the agent awaits
when it leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
import subprocess
import tempfile
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from corral._compat import TaskGroup
from corral.config import LaunchConfig
from corral.workers.reaper import Reaper, worker_preexec
from corral.workers.spec import RUN_PATH_BOOTSTRAP, WorkerSpec, needs_omp_notice
from corral.workers.sweep import MARKER_VAR

__all__ = ["BOOT", "PrestartPlan", "Standby", "StandbyPool", "pool_for", "prestart_plan"]

log = logging.getLogger(__name__)

#: The standby's program, run by path (the worker interpreter need not import corral).
BOOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_standby_boot.py")


@dataclass(frozen=True)
class PrestartPlan:
    """What every standby of this node runs (nothing rank-dependent).

    Attributes:
        mode: ``script``, ``module`` or ``run_path``.
        entry: the script path or module name.
        path0: ``sys.path[0]`` as the worker's interpreter sets it.
        imports: modules to import in advance (those not installed are skipped).
        python: the worker interpreter.
    """

    mode: str
    entry: str
    path0: str
    imports: tuple[str, ...]
    python: str

    def argv(self, idle: bool) -> list[str]:
        conf = {
            "mode": self.mode,
            "entry": self.entry,
            "path0": self.path0,
            "imports": list(self.imports),
            "idle": idle,
            "run_path_code": RUN_PATH_BOOTSTRAP if self.mode == "run_path" else "",
        }
        return [self.python, "-u", BOOT, "{fd}", json.dumps(conf)]


def prestart_plan(
    spec: WorkerSpec, imports: tuple[str, ...], cwd: str | None = None
) -> PrestartPlan | None:
    """The standbys' plan for ``spec``; None when nothing can be pre-started.

    Nothing for ``--no-python``, nor for a script that is not a regular file
    (a directory or zip archive with ``__main__.py``: spawned fresh).
    """
    if spec.no_python:
        return None
    cwd = cwd or os.getcwd()
    if spec.module:
        return PrestartPlan("module", spec.entrypoint, cwd, imports, spec.python_exec)
    if spec.run_path:
        return PrestartPlan("run_path", spec.entrypoint, "", imports, spec.python_exec)
    path = os.path.join(cwd, spec.entrypoint)
    if not os.path.isfile(path):
        return None
    return PrestartPlan(
        "script",
        spec.entrypoint,
        os.path.dirname(os.path.realpath(path)),
        imports,
        spec.python_exec,
    )


def sys_argv(spec: WorkerSpec, argv: list[str]) -> list[str]:
    """``sys.argv`` of a worker started with command ``argv`` (:func:`worker_argv`)."""
    if spec.module:
        return ["-m", *argv[4:]]
    if spec.run_path:
        return ["-c", *argv[4:]]
    return argv[2:]


class Standby:
    """One standby process and the agent's end of its socket."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket, marker: str) -> None:
        self.proc = proc
        self.sock = sock
        self.marker = marker
        self.ready = False
        self.dead = False
        self.pidfd: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def assign(
        self,
        *,
        argv: list[str],
        orig_argv: list[str],
        env: Mapping[str, str],
        cwd: str,
        out_fd: int,
        err_fd: int,
        timeout: float = 5.0,
    ) -> bool:
        """Hand the standby its worker; False if it cannot take it (it died)."""
        if self.dead:
            return False
        body = json.dumps(
            {"argv": argv, "orig_argv": orig_argv, "env": dict(env), "cwd": cwd}
        ).encode()
        try:
            self.sock.settimeout(timeout)
            socket.send_fds(self.sock, [len(body).to_bytes(4, "little")], [out_fd, err_fd])
            self.sock.sendall(body)
        except OSError as exc:
            log.info("standby %d could not take its assignment: %s", self.pid, exc)
            return False
        finally:
            self.sock.close()
        return True

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, 9)  # unreaped here: the group id is still the standby's
        self.sock.close()


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
        idle: the standbys started while workers run (:meth:`fill` from a group
            start) import at idle CPU priority, when they can come back from it;
            those started before the first round do not (nothing to protect).
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
        idle: bool = True,
        detach_stops: bool = False,
    ) -> None:
        self.plan = plan
        self.spec = spec
        self.reaper = reaper
        self.idle = idle
        self.detach_stops = detach_stops
        env = dict(base_env)
        # Variables a library may read while being imported (libgomp reads
        # OMP_NUM_THREADS when it loads) are set as the worker will have them.
        if needs_omp_notice(base_env, spec):
            env["OMP_NUM_THREADS"] = "1"
        env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        self._env = env
        self._standbys: list[Standby] = []
        self._tg: TaskGroup | None = None
        self._closed = False
        self.started = 0  # standbys started (informational, tests)

    async def __aenter__(self) -> StandbyPool:
        self._tg = TaskGroup()
        await self._tg.__aenter__()
        self.fill(idle=False)  # before the first rendezvous: importing overlaps the gathering
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._closed = True
        for sb in self._standbys:
            self._drop(sb)
        self._standbys.clear()
        assert self._tg is not None
        # The children (stops finishing, standbys being reaped) end by themselves
        # within their timeouts: wait for them whatever ends the agent, and let
        # the agent's own exception pass unchanged. A child's error is raised.
        try:
            await self._tg.__aexit__(None, None, None)
        except BaseException as group:  # an ExceptionGroup: its first error, bare
            leaves = getattr(group, "exceptions", None)
            if leaves:
                raise leaves[0] from None
            raise

    # --- standbys ---------------------------------------------------------------

    def fill(self, idle: bool = True) -> None:
        """Start standbys until one per local rank is alive (returns at once).

        ``idle``: at idle CPU priority (a training runs meanwhile), if the pool's ``idle``.
        """
        if self._closed or self.plan is None:
            return
        self._standbys = [sb for sb in self._standbys if not sb.dead]
        while len(self._standbys) < self.spec.local_world_size:
            sb = self._start_one(idle and self.idle)
            if sb is None:
                return
            self._standbys.append(sb)

    def take(self) -> Standby | None:
        """A live standby (ready or still importing) for one worker, or None.

        The caller owns it afterwards: the pool stops watching it.
        """
        while self._standbys:
            sb = self._standbys.pop(0)
            if sb.dead:
                continue
            self._unwatch(sb)
            if sb.proc.poll() is not None:  # died just now
                self._forget(sb)
                continue
            return sb
        return None

    @property
    def alive(self) -> list[int]:
        """Pids of the standbys waiting for an assignment."""
        return [sb.pid for sb in self._standbys if not sb.dead]

    def _start_one(self, idle: bool) -> Standby | None:
        assert self.plan is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        marker = self.reaper.new_marker("s")
        env = {**self._env, MARKER_VAR: marker}
        argv = [a.replace("{fd}", str(theirs.fileno())) for a in self.plan.argv(idle)]
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
        self.started += 1
        self.reaper.register(proc.pid)
        sb = Standby(proc, ours, marker)
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        loop.add_reader(ours.fileno(), self._on_message, sb)
        with contextlib.suppress(OSError):
            sb.pidfd = os.pidfd_open(proc.pid)
            loop.add_reader(sb.pidfd, self._on_death, sb)
        log.debug("standby worker started: pid %d", proc.pid)
        return sb

    def _on_message(self, sb: Standby) -> None:
        try:
            data = sb.sock.recv(16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            sb.ready = True
            return
        # EOF: the standby is gone (or going)
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(sb.sock.fileno())

    def _on_death(self, sb: Standby) -> None:
        log.info("standby worker %d exited before its assignment (%s)", sb.pid, sb.proc.poll())
        self._unwatch(sb)
        self._forget(sb)

    def _unwatch(self, sb: Standby) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            loop.remove_reader(sb.sock.fileno())
        if sb.pidfd is not None:
            with contextlib.suppress(Exception):
                loop.remove_reader(sb.pidfd)
            os.close(sb.pidfd)
            sb.pidfd = None

    def _forget(self, sb: Standby) -> None:
        sb.dead = True
        sb.kill()
        with contextlib.suppress(ChildProcessError):
            sb.proc.poll()
        self.reaper.unregister(sb.pid)
        if self._tg is not None and sb.proc.returncode is None:
            self._tg.create_task(self._reap(sb))

    def _drop(self, sb: Standby) -> None:
        self._unwatch(sb)
        if not sb.dead:
            self._forget(sb)

    async def _reap(self, sb: Standby) -> None:
        from corral.workers.sweep import wait_gone

        await wait_gone([sb.pid], 5.0)  # reaps it: it is our child
        sb.proc.returncode = sb.proc.returncode if sb.proc.returncode is not None else -9

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


def gpus_present(environ: Mapping[str, str]) -> bool:
    """NVIDIA devices are visible to the workers (so device memory matters at a restart)."""
    if environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        return bool(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return os.path.exists("/dev/nvidia0")


def pool_for(cfg: LaunchConfig, environ: Mapping[str, str], reaper: Reaper) -> StandbyPool:
    """The agent's pool for ``cfg``: standbys with ``--prestart`` (where the entrypoint allows).

    With ``--prestart`` the stops are detached too (the agent goes on to the
    next round while the stopped workers finish dying), except where GPUs are
    visible: their memory must be free before the next attempt allocates it.
    ``CORRAL_WAIT_FOR_TEARDOWN=1`` (or ``0``) forces waiting (or not).
    """
    spec = WorkerSpec.from_config(cfg, environ)
    plan = prestart_plan(spec, cfg.prestart_imports) if cfg.prestart else None
    forced = environ.get("CORRAL_WAIT_FOR_TEARDOWN")
    if forced in ("0", "1"):
        detach = forced == "0"
    else:
        detach = cfg.prestart and not gpus_present(environ)
    if cfg.prestart and plan is None and not spec.no_python:
        log.info("--prestart: %s is not a regular file; workers are spawned fresh", spec.entrypoint)
    return StandbyPool(plan, spec, environ, reaper, detach_stops=detach)
