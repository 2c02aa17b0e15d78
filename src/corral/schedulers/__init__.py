"""Zero-flag launches under a scheduler: Slurm, Kubernetes (Kubeflow), SkyPilot.

:func:`apply_scheduler` is the one entry (called by the CLI): it reads the
environment with each scheduler's pure ``read`` and fills in the options the
user did not give. Precedence: command line > ``PET_*`` > scheduler > default.
``--scheduler auto`` (the default) tries Slurm, then SkyPilot, then Kubernetes
(SkyPilot and Slurm can run inside Kubernetes pods) and takes the first that
reads; ``none`` turns detection off; a name asks for that one only and makes
its absence an error. A half-set environment is reported in one line and
ignored, never guessed. See docs/schedulers.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from typing import Any

from corral.core.errors import ConfigError
from corral.schedulers import kubernetes, skypilot, slurm
from corral.schedulers.base import Found, Read
from corral.schedulers.hostlist import HostlistError, expand_hostlist

__all__ = [
    "SCHEDULERS",
    "Applied",
    "Found",
    "HostlistError",
    "apply_scheduler",
    "detect",
    "expand_hostlist",
]

SCHEDULERS = ("auto", "none", "slurm", "kubernetes", "skypilot")
_ORDER = ("slurm", "skypilot", "kubernetes")
_READERS: dict[str, Callable[[Mapping[str, str], Mapping[str, str]], Read]] = {
    "slurm": slurm.read,
    "skypilot": skypilot.read,
    "kubernetes": kubernetes.read,
}


def detect(environ: Mapping[str, str], which: str, given: Mapping[str, str]) -> Read:
    """The first scheduler (of ``which``) whose variables read, and notes on the others.

    Args:
        environ: the process environment.
        which: one of :data:`SCHEDULERS`.
        given: option values given on the command line or as ``PET_*``, by dest.

    Raises:
        ConfigError: ``which`` is unknown, or names a scheduler whose variables
            are absent or do not read, or the environment is a misuse (Slurm:
            several tasks per node).
    """
    name = which.strip().lower()
    if name not in SCHEDULERS:
        raise ConfigError(f"--scheduler {which}: expected one of {', '.join(SCHEDULERS)}")
    if name == "none":
        return Read()
    ignored: list[str] = []
    for sched in _ORDER if name == "auto" else (name,):
        got = _READERS[sched](environ, given)
        ignored.extend(got.ignored)
        if got.found is not None:
            return Read(got.found, tuple(ignored))
    if name != "auto":
        why = ignored[0] if ignored else f"no {name} variables in the environment"
        raise ConfigError(f"--scheduler {name}: {why}")
    return Read(None, tuple(ignored))


@dataclass(frozen=True)
class Applied:
    """Option values after the scheduler's, and what to log about it.

    Attributes:
        values: the argparse values with the scheduler's filled in (strings).
        summary: one line, what was taken from where (empty: no scheduler).
        ignored: one line per half-set environment that was ignored.
    """

    values: dict[str, Any]
    summary: str = ""
    ignored: tuple[str, ...] = ()


def _host_of(endpoint: str) -> str:
    return endpoint.rpartition(":")[0]


def apply_scheduler(
    values: Mapping[str, Any], cli_given: Set[str], environ: Mapping[str, str]
) -> Applied:
    """Fill in, from the scheduler's variables, the options that were not given.

    Args:
        values: the parsed options by argparse dest (``scheduler`` among them).
        cli_given: the dests given on the command line (those given as
            ``PET_<DEST>`` are read from ``environ``).
        environ: the process environment.

    The rendezvous endpoint is filled in only for the c10d backend (the
    scheduler's first host runs the store); an endpoint given without a host
    (``:29500``) takes the scheduler's host. ``--nproc-per-node auto`` takes
    the scheduler's count of GPUs per node when it has one. ``--standalone``
    is one machine: no scheduler applies.
    """
    out = dict(values)
    if out.get("standalone"):
        return Applied(out)
    pet_given = {d for d in out if f"PET_{d.upper()}" in environ}
    given = {d: str(out[d]) for d in set(cli_given) | pet_given if d in out and out[d] is not None}
    read = detect(environ, str(out.get("scheduler") or "auto"), given)
    found = read.found
    if found is None:
        return Applied(out, "", read.ignored)
    origin: dict[str, str] = {}
    for dest in out:
        if dest in cli_given:
            origin[dest] = "--" + dest.replace("_", "-")
        elif dest in pet_given:
            origin[dest] = f"PET_{dest.upper()}"
    backend = given.get("rdzv_backend", found.values.get("rdzv_backend", "static"))
    for dest, value in found.values.items():
        if dest == "rdzv_endpoint":
            if backend.strip().lower() != "c10d":
                continue
            mine = given.get(dest, "").strip()
            if mine.startswith(":"):  # a port only: the scheduler's host
                out[dest] = _host_of(value) + mine
                origin[dest] = f"{found.sources[dest]} and {origin[dest]}"
                continue
        if dest in given:
            continue
        out[dest] = value
        origin[dest] = found.sources.get(dest, found.scheduler)
    nproc = ""
    if str(out.get("nproc_per_node", "")).strip() == "auto" and found.nproc_auto:
        out["nproc_per_node"] = found.nproc_auto
        nproc = f", {found.nproc_auto} workers per node"
        origin["nproc_per_node"] = found.nproc_source
    summary = _summary(found.scheduler, out, origin, nproc)
    return Applied(out, summary, read.ignored)


def _summary(name: str, out: Mapping[str, Any], origin: Mapping[str, str], nproc: str) -> str:
    """``slurm: 4 nodes, rdzv tcp://gpu001:29400, id 12345.0 (from ...)``."""
    backend = str(out.get("rdzv_backend", "static")).strip().lower()
    nodes = str(out.get("nnodes", "1"))
    if backend == "static":
        port = out.get("master_port") or "29500"
        what = f"{nodes} nodes, node rank {out.get('node_rank', '0')}, master {out.get('master_addr')}:{port}"
        keys: tuple[str, ...] = ("nnodes", "node_rank", "master_addr", "master_port")
    else:
        where = (
            f"tcp://{out.get('rdzv_endpoint')}"
            if backend == "c10d"
            else f"{backend} {out.get('rdzv_endpoint')}"
        )
        what = f"{nodes} nodes, rdzv {where}, id {out.get('rdzv_id')}"
        keys = ("nnodes", "rdzv_endpoint", "rdzv_id")
    if nproc:
        keys += ("nproc_per_node",)
    sources = ", ".join(origin.get(k, "default") for k in keys)
    return f"{name}: {what}{nproc} (from {sources})"
