"""Value conversions of the command line: text -> int, float, ports, nodes, workers, backend.

Each raises :class:`ConfigError` as one line naming the option, the value and
what is allowed. Nothing here imports torch: ``--nproc-per-node gpu`` counts the
NVIDIA GPUs from ``/proc`` (else ``nvidia-smi -L``) and ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

from corral.config import RDZV_BACKENDS
from corral.core.errors import ConfigError

__all__ = ["parse_nnodes", "resolve_nproc_per_node"]

_BACKEND_ALIASES = {"etcd-v3": "etcd"}


def _int(option: str, text: str, allowed: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"{option} {text}: {allowed}") from None


def _float(option: str, text: str, allowed: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ConfigError(f"{option} {text}: {allowed}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{option} {text}: {allowed}")
    return value


def parse_nnodes(text: str) -> tuple[int, int]:
    """``N`` or ``MIN:MAX`` -> (min, max); the range itself is checked by LaunchConfig."""
    allowed = "expected N or MIN:MAX with integers 1 <= MIN <= MAX, e.g. 2 or 1:4"
    parts = text.split(":")
    if len(parts) == 1:
        n = _int("--nnodes", text, allowed)
        return n, n
    if len(parts) == 2:
        return _int("--nnodes", parts[0], allowed), _int("--nnodes", parts[1], allowed)
    raise ConfigError(f"--nnodes {text}: {allowed}")


def _count_nvidia_gpus() -> int:
    """Physical NVIDIA GPUs, without torch: /proc/driver/nvidia/gpus, else ``nvidia-smi -L``."""
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    import subprocess

    try:
        out = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def _visible_gpus(physical: int, environ: Mapping[str, str]) -> int:
    """GPUs CUDA would expose: CUDA_VISIBLE_DEVICES up to its first invalid entry."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return physical
    count = 0
    seen: set[str] = set()
    for entry in visible.split(","):
        entry = entry.strip()
        if entry.lstrip("-").isdigit():
            if not 0 <= int(entry) < physical or str(int(entry)) in seen:
                break
            seen.add(str(int(entry)))
        elif entry.startswith(("GPU-", "MIG-")):
            if entry in seen:
                break
            seen.add(entry)
        else:
            break
        count += 1
    return min(count, physical)


def resolve_nproc_per_node(text: str, environ: Mapping[str, str]) -> int:
    """``--nproc-per-node`` as torchrun decides it, without importing torch.

    An integer is taken as is (checked by LaunchConfig); ``cpu`` is os.cpu_count();
    ``gpu`` the visible NVIDIA GPUs (an error if none); ``auto`` the GPUs if any,
    else os.cpu_count().
    """
    allowed = "expected an integer > 0, auto, cpu or gpu"
    value = text.strip()
    try:
        return int(value)
    except ValueError:
        pass
    if value == "cpu":
        return os.cpu_count() or 1
    if value in ("gpu", "auto"):
        gpus = _visible_gpus(_count_nvidia_gpus(), environ)
        if gpus:
            return gpus
        if value == "gpu":
            raise ConfigError(
                f"--nproc-per-node gpu: no NVIDIA GPU is visible "
                f"(CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
                "use an integer, auto or cpu"
            )
        return os.cpu_count() or 1
    raise ConfigError(f"--nproc-per-node {text}: {allowed}")


def _backend(text: str) -> str:
    name = text.strip().lower()
    name = _BACKEND_ALIASES.get(name, name)
    if name == "etcd-v2":
        raise ConfigError(
            "--rdzv-backend etcd-v2: the etcd v2 API is not supported; use etcd (etcd's v3 API)"
        )
    if name not in RDZV_BACKENDS:
        from corral.rendezvous.registry import is_plugin_backend

        if is_plugin_backend(text.strip()):
            return text.strip()
        raise ConfigError(
            f"--rdzv-backend {text}: expected one of {', '.join(RDZV_BACKENDS)} (or etcd-v3), "
            "or a name registered in the 'corral.rendezvous' entry-point group"
        )
    return name


def _ranks_filter(text: str) -> frozenset[int] | None:
    if not text.strip():
        return None
    try:
        ranks = frozenset(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--local-ranks-filter {text}: expected comma-separated local ranks, e.g. 0,1"
        ) from None
    return ranks


def _shutdown_timeout(text: str | None, environ: Mapping[str, str]) -> float:
    allowed = "expected seconds >= 0"
    if text is not None:
        return _float("--shutdown-timeout", text, allowed)
    env = environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT")
    if env:
        return _float("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", env, allowed)
    return 30.0


def _hang_timeout(text: str | None) -> float | None:
    """``--hang-timeout``: unset, empty, ``0`` or ``off`` is off; else seconds > 0."""
    if text is None or text.strip().lower() in ("", "0", "off"):
        return None
    return _float("--hang-timeout", text, "expected seconds > 0, or 0/off for no hang detection")


def _port(option: str, text: str | None) -> int | None:
    if text is None or text == "":
        return None
    port = _int(option, text, "expected a port in 0..65535")
    if not 0 <= port <= 65535:
        raise ConfigError(f"{option} {text}: expected a port in 0..65535")
    return port


def _endpoint_addr(addr: str, port: int) -> str:
    if ":" in addr and not addr.startswith("["):  # bare IPv6
        addr = f"[{addr}]"
    return f"{addr}:{port}"
