"""What one worker runs and with which environment: pure functions, no I/O.

:func:`worker_env` is *the* function that builds a worker's environment; the
table in ``docs/workers.md`` (and docs/contract.md, "The worker environment") is its
specification.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from corral.core.errors import ConfigError
from corral.core.model import RoundInfo
from corral.progress import progress_env
from corral.workers.numa import NumaMode, check_mode

if TYPE_CHECKING:
    from corral.config import LaunchConfig

__all__ = [
    "LOCAL_RANK_MACRO",
    "RUN_PATH_BOOTSTRAP",
    "WorkerSpec",
    "needs_omp_notice",
    "worker_argv",
    "worker_env",
]

#: Replaced by the local rank in the script's arguments (torch's ``macros.local_rank``).
LOCAL_RANK_MACRO = "${local_rank}"

#: ``--run-path``: run the script with ``runpy.run_path`` as torchrun's
#: ``run_script_path`` does (``sys.argv = [script, *args]``, ``__main__``), in a
#: fresh interpreter rather than a multiprocessing child.
RUN_PATH_BOOTSTRAP = (
    "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


@dataclass(frozen=True)
class WorkerSpec:
    """The node-local description of the worker group (same for every round).

    Attributes:
        entrypoint: the script, module (``module``) or executable (``no_python``).
        args: the script's arguments; ``${local_rank}`` is substituted per worker.
        module: run ``entrypoint`` as ``python -m``.
        no_python: exec ``entrypoint`` itself, without an interpreter.
        run_path: run the script through ``runpy.run_path``.
        local_world_size: workers on this node.
        role: ``--role`` (ROLE_NAME, and the ``[<role><local rank>]:`` log prefix).
        max_restarts: ``--max-restarts`` (TORCHELASTIC_MAX_RESTARTS).
        virtual_local_rank: LOCAL_RANK=0 and one device in CUDA_VISIBLE_DEVICES.
        python_exec: the interpreter (``PYTHON_EXEC``, else ``sys.executable``).
        progress: hang detection is on (``--hang-timeout``): workers get
            ``CORRAL_PROGRESS_FILE`` and corral's start-up hook (docs/hangs.md).
        numa_binding: ``--numa-binding`` mode (None: off); each worker is bound
            to the CPUs :func:`corral.workers.numa.group_cpus` gives it.
        numa_sysfs_root: where sysfs is read for ``numa_binding`` (internal:
            tests point it at a fake tree).
    """

    entrypoint: str
    args: tuple[str, ...] = ()
    module: bool = False
    no_python: bool = False
    run_path: bool = False
    local_world_size: int = 1
    role: str = "default"
    max_restarts: int = 0
    virtual_local_rank: bool = False
    python_exec: str = sys.executable
    progress: bool = False
    numa_binding: NumaMode | None = None
    numa_sysfs_root: str = "/sys"

    def __post_init__(self) -> None:
        check_mode(self.numa_binding)
        if self.local_world_size < 1:
            raise ConfigError(f"local_world_size ({self.local_world_size}) must be >= 1")
        if self.no_python and self.module:
            raise ConfigError("--no-python and --module cannot be used together")
        if self.no_python and self.run_path:
            raise ConfigError("--no-python and --run-path cannot be used together")
        if self.module and self.run_path:
            raise ConfigError("--module and --run-path cannot be used together")

    @classmethod
    def from_config(cls, cfg: LaunchConfig, environ: Mapping[str, str]) -> WorkerSpec:
        """Build the spec from the launch config; ``PYTHON_EXEC`` in ``environ`` picks the interpreter."""
        return cls(
            entrypoint=cfg.entrypoint,
            args=tuple(cfg.args),
            module=cfg.module,
            no_python=cfg.no_python,
            run_path=cfg.run_path,
            local_world_size=cfg.nproc_per_node,
            role=cfg.role,
            max_restarts=cfg.max_restarts,
            virtual_local_rank=cfg.virtual_local_rank,
            python_exec=environ.get("PYTHON_EXEC") or sys.executable,
            progress=cfg.hang_timeout is not None,
            numa_binding=cfg.numa_binding,
        )


def worker_argv(spec: WorkerSpec, local_rank: int) -> list[str]:
    """The command line of worker ``local_rank``.

    ``<python> -u [-m] script args`` (torchrun's command), ``script args`` with
    ``--no-python``, ``<python> -u -c <runpy bootstrap> script args`` with
    ``--run-path``. ``${local_rank}`` in the args becomes the local rank.
    """
    args = [a.replace(LOCAL_RANK_MACRO, str(local_rank)) for a in spec.args]
    if spec.no_python:
        return [spec.entrypoint, *args]
    if spec.run_path:
        return [spec.python_exec, "-u", "-c", RUN_PATH_BOOTSTRAP, spec.entrypoint, *args]
    if spec.module:
        return [spec.python_exec, "-u", "-m", spec.entrypoint, *args]
    return [spec.python_exec, "-u", spec.entrypoint, *args]


def needs_omp_notice(base_env: Mapping[str, str], spec: WorkerSpec) -> bool:
    """True when :func:`worker_env` sets ``OMP_NUM_THREADS=1`` (print torchrun's notice once)."""
    return "OMP_NUM_THREADS" not in base_env and spec.local_world_size > 1


def worker_env(
    base_env: Mapping[str, str],
    spec: WorkerSpec,
    rnd: RoundInfo,
    local_rank: int,
    error_file: str,
) -> dict[str, str]:
    """The environment of worker ``local_rank`` in round ``rnd``.

    The agent's environment (``base_env``) plus the torchrun variables:
    LOCAL_RANK, RANK and ROLE_RANK (``rnd.rank_offset + local_rank``, so nodes
    may differ in nproc), GROUP_RANK, LOCAL_WORLD_SIZE, WORLD_SIZE,
    ROLE_WORLD_SIZE, GROUP_WORLD_SIZE, ROLE_NAME, MASTER_ADDR, MASTER_PORT,
    TORCHELASTIC_RESTART_COUNT, TORCHELASTIC_MAX_RESTARTS, TORCHELASTIC_RUN_ID,
    TORCHELASTIC_USE_AGENT_STORE (``False``: worker rank 0 serves the store),
    TORCHELASTIC_ERROR_FILE, TORCH_NCCL_ASYNC_ERROR_HANDLING (inherited, else
    ``1``), OMP_NUM_THREADS (``1`` when unset and more than one worker runs here).

    With ``spec.virtual_local_rank``, LOCAL_RANK is ``0`` and CUDA_VISIBLE_DEVICES
    holds this worker's device: entry ``local_rank`` of the inherited
    CUDA_VISIBLE_DEVICES, else ``local_rank`` itself.

    Raises:
        ConfigError: ``local_rank`` is out of range, or ``--virtual-local-rank``
            has fewer devices in CUDA_VISIBLE_DEVICES than workers.
    """
    if not 0 <= local_rank < spec.local_world_size:
        raise ConfigError(f"local_rank ({local_rank}) must be in [0, {spec.local_world_size - 1}]")
    rank = rnd.rank_offset + local_rank
    env = dict(base_env)
    env.update(
        {
            "LOCAL_RANK": str(local_rank),
            "RANK": str(rank),
            "ROLE_RANK": str(rank),
            "GROUP_RANK": str(rnd.group_rank),
            "LOCAL_WORLD_SIZE": str(spec.local_world_size),
            "WORLD_SIZE": str(rnd.world_size),
            "ROLE_WORLD_SIZE": str(rnd.world_size),
            "GROUP_WORLD_SIZE": str(rnd.group_world_size),
            "ROLE_NAME": spec.role,
            "MASTER_ADDR": rnd.master_addr,
            "MASTER_PORT": str(rnd.master_port),
            "TORCHELASTIC_RESTART_COUNT": str(rnd.restart_count),
            "TORCHELASTIC_MAX_RESTARTS": str(spec.max_restarts),
            "TORCHELASTIC_RUN_ID": rnd.run_id,
            "TORCHELASTIC_USE_AGENT_STORE": str(False),
            "TORCHELASTIC_ERROR_FILE": error_file,
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": base_env.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
        }
    )
    if needs_omp_notice(base_env, spec):
        env["OMP_NUM_THREADS"] = "1"
    if spec.progress:  # only with --hang-timeout: nothing changes when it is off
        env.update(progress_env(base_env, error_file))
    if spec.virtual_local_rank:
        env["LOCAL_RANK"] = "0"
        visible = base_env.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            devices = visible.split(",")
            if local_rank >= len(devices):
                raise ConfigError(
                    f"--virtual-local-rank: local rank {local_rank} has no device in "
                    f"CUDA_VISIBLE_DEVICES={visible!r}; list at least "
                    f"{spec.local_world_size} devices or unset it"
                )
            env["CUDA_VISIBLE_DEVICES"] = devices[local_rank].strip()
        else:
            env["CUDA_VISIBLE_DEVICES"] = str(local_rank)
    return env
