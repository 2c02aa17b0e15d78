"""What the standbys of ``--prestart`` run (nothing rank-dependent), and their process handles."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from corral.workers.script_imports import scan_imports
from corral.workers.spec import RUN_PATH_BOOTSTRAP, WorkerSpec

__all__ = ["BOOT", "Child", "PrestartPlan", "Proc", "gpus_present", "prestart_plan", "sys_argv"]

#: The standby's program, run by path (the worker interpreter need not import corral).
BOOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_standby_boot.py")


@dataclass(frozen=True)
class PrestartPlan:
    """What every standby of this node runs (nothing rank-dependent).

    Attributes:
        mode: ``script``, ``module`` or ``run_path``.
        entry: the script path or module name.
        path0: ``sys.path[0]`` as the worker's interpreter sets it.
        imports: modules to import in advance (those not installed are skipped):
            the ``--prestart-import`` ones the entrypoint imports
            (:func:`~corral.workers.script_imports.scan_imports`).
        python: the worker interpreter.
        wait: a group start waits for a standby still on its way (the scan was
            conclusive: the worker would import the same modules itself, later);
            False: only a ready standby is taken, the rest are spawned fresh.
    """

    mode: str
    entry: str
    path0: str
    imports: tuple[str, ...]
    python: str
    wait: bool = True

    def argv(self, fd: int, *, idle: bool = False, zygote: bool = False) -> list[str]:
        """The standby's command line; ``fd``: its end of the agent's socket.

        ``zygote``: import, then fork a standby for each request (see the boot
        module); ``idle``: import at idle CPU priority.
        """
        conf = {
            "mode": self.mode,
            "entry": self.entry,
            "path0": self.path0,
            "imports": list(self.imports),
            "idle": idle,
            "zygote": zygote,
            "agent_pid": os.getpid(),
            "run_path_code": RUN_PATH_BOOTSTRAP if self.mode == "run_path" else "",
        }
        return [self.python, "-u", BOOT, str(fd), json.dumps(conf)]


def prestart_plan(
    spec: WorkerSpec,
    imports: tuple[str, ...],
    cwd: str | None = None,
    *,
    extra_roots: tuple[str, ...] = (),
) -> PrestartPlan | None:
    """The standbys' plan for ``spec``; None when nothing can be pre-started.

    Nothing for ``--no-python``, nor for a script that is not a regular file
    (a directory or zip archive with ``__main__.py``: spawned fresh). Of
    ``imports``, only those the entrypoint's sources import are pre-imported;
    where the sources cannot be read, all of them, and the first attempt does
    not wait for them (:attr:`PrestartPlan.wait`).
    """
    if spec.no_python:
        return None
    cwd = cwd or os.getcwd()
    if spec.module:
        mode, entry, path0 = "module", spec.entrypoint, cwd
    elif spec.run_path:
        mode, entry, path0 = "run_path", os.path.join(cwd, spec.entrypoint), ""
    else:
        path = os.path.join(cwd, spec.entrypoint)
        if not os.path.isfile(path):
            return None
        mode, entry, path0 = "script", path, os.path.dirname(os.path.realpath(path))
    scan = scan_imports(
        mode,
        entry,
        path0 or os.path.dirname(os.path.realpath(entry)),
        imports,
        extra_roots=extra_roots,
    )
    return PrestartPlan(
        mode,
        spec.entrypoint,
        path0,
        scan.imports if scan.conclusive else imports,
        spec.python_exec,
        wait=scan.conclusive,
    )


def sys_argv(spec: WorkerSpec, argv: list[str]) -> list[str]:
    """``sys.argv`` of a worker started with command ``argv`` (:func:`worker_argv`)."""
    if spec.module:
        return ["-m", *argv[4:]]
    if spec.run_path:
        return ["-c", *argv[4:]]
    return argv[2:]


def gpus_present(environ: Mapping[str, str]) -> bool:
    """NVIDIA devices are visible to the workers (so device memory matters at a restart)."""
    if environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        return bool(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return os.path.exists("/dev/nvidia0")


class Proc(Protocol):
    """What a worker needs of its process object: ``subprocess.Popen`` or :class:`Child`."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class Child:
    """A child this process did not spawn (a zygote's fork, re-parented here): Popen's few calls."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                self.returncode = -9
        return self.returncode
