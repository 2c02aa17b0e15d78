"""What a scheduler's environment says about a job, as values of corral's options.

Each scheduler module has one pure function, ``read(environ, given)``: the
process environment and the options already given (on the command line or as
``PET_*``) in, a :class:`Found` and one-line notes out. Nothing here reads
``os.environ``, resolves a name or runs a program.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["DEFAULT_RDZV_PORT", "Found", "Read", "endpoint", "positive_int"]

#: The rendezvous port a scheduler's first host serves on unless one is given (torchrun's).
DEFAULT_RDZV_PORT = 29400


@dataclass(frozen=True)
class Found:
    """One scheduler's reading of the environment.

    Attributes:
        scheduler: ``slurm``, ``kubernetes`` or ``skypilot``.
        values: option values by argparse dest (``nnodes``, ``rdzv_backend``,
            ``rdzv_endpoint``, ``rdzv_id``, ``node_rank``, ``master_addr``,
            ``master_port``), as strings, as the command line would give them.
        sources: for each value, the variables it was read from (for the log line).
        nproc_auto: workers per node for ``--nproc-per-node auto``, if the
            scheduler says (None: torchrun's ``auto``).
        nproc_source: the variable ``nproc_auto`` came from.
    """

    scheduler: str
    values: Mapping[str, str] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    nproc_auto: str | None = None
    nproc_source: str = ""


@dataclass(frozen=True)
class Read:
    """What ``read`` returns: the reading (None: nothing usable) and notes, one line each,
    for variables that were present but not used (a half-set environment)."""

    found: Found | None = None
    ignored: tuple[str, ...] = ()


def positive_int(text: str | None, minimum: int = 1) -> int | None:
    """``text`` as an integer >= ``minimum``, else None."""
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit():
        return None
    value = int(text)
    return value if value >= minimum else None


def endpoint(host: str, port: int = DEFAULT_RDZV_PORT) -> str:
    """``host:port`` (``[v6]:port`` for an IPv6 address)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"
