"""The launch configuration: frozen, validated once at the edge, passed down.

``cli.parse_args`` builds a :class:`LaunchConfig` from argv and the ``PET_*``
environment; nothing below the CLI reads argv or the environment for options.
Every check raises :class:`corral.errors.ConfigError` with one line that names
the option, the value and what is allowed.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass, field

__all__ = ["LaunchConfig", "RdzvConf", "Std", "StdSpec"]


class Std(enum.IntFlag):
    """Which standard streams of a worker go to files (torch's ``Std``)."""

    NONE = 0
    OUT = 1
    ERR = 2
    ALL = 3


@dataclass(frozen=True)
class StdSpec:
    """``-r``/``-t`` values: a default and per-local-rank overrides (``0:1,1:2``)."""

    default: Std = Std.NONE
    per_rank: tuple[tuple[int, Std], ...] = ()

    def for_rank(self, local_rank: int) -> Std:
        for rank, std in self.per_rank:
            if rank == local_rank:
                return std
        return self.default


@dataclass(frozen=True)
class RdzvConf:
    """``--rdzv-conf`` keys, with torch's defaults; corral's own keys after them."""

    join_timeout: float = 600.0
    last_call_timeout: float = 30.0
    close_timeout: float = 30.0
    heartbeat_timeout: float = 5.0
    keep_alive_interval: float = 5.0
    keep_alive_max_attempt: int = 3
    read_timeout: float = 60.0
    is_host: bool | None = None  # None: auto (endpoint host is one of this node's addresses)
    # corral's keys
    token: str | None = None  # shared secret for the store (else CORRAL_TOKEN / token_file)
    token_file: str | None = None
    settle_time: float = 0.1  # settle window against a wave of arrivals (see docs/rendezvous.md)
    # etcd backend
    protocol: str = "http"
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None
    prefix: str = "/corral"

    @property
    def lease_ttl(self) -> float:
        """How long a silent node stays a member: keep_alive_interval x keep_alive_max_attempt."""
        return self.keep_alive_interval * self.keep_alive_max_attempt


DEFAULT_SIGNALS: tuple[int, ...] = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


@dataclass(frozen=True)
class LaunchConfig:
    """Everything one agent needs to run its part of a job.

    ``rdzv_backend`` is one of ``static``, ``c10d`` (the embedded store; also
    what ``--standalone`` becomes), ``etcd`` (``etcd-v3`` is normalised to it).
    For ``--standalone``, ``rdzv_endpoint`` is ``127.0.0.1:0`` (a free port),
    ``rdzv_id`` a fresh id and ``rdzv_conf.is_host`` True.
    """

    entrypoint: str
    args: tuple[str, ...] = ()
    min_nodes: int = 1
    max_nodes: int = 1
    nproc_per_node: int = 1
    rdzv_backend: str = "static"
    rdzv_endpoint: str = ""
    rdzv_id: str = "none"
    rdzv_conf: RdzvConf = field(default_factory=RdzvConf)
    standalone: bool = False
    max_restarts: int = 0
    monitor_interval: float = 0.1
    start_method: str = "spawn"
    role: str = "default"
    module: bool = False
    no_python: bool = False
    run_path: bool = False
    log_dir: str | None = None
    redirects: StdSpec = field(default_factory=StdSpec)
    tee: StdSpec = field(default_factory=StdSpec)
    local_ranks_filter: frozenset[int] | None = None  # None: show every rank
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    local_addr: str | None = None
    signals_to_handle: tuple[int, ...] = DEFAULT_SIGNALS
    shutdown_timeout: float = 30.0
    virtual_local_rank: bool = False

    @property
    def elastic(self) -> bool:
        return self.min_nodes != self.max_nodes

    @property
    def endpoint_host_port(self) -> tuple[str, int]:
        """``rdzv_endpoint`` split as (host, port); port 29400 when absent."""
        ep = self.rdzv_endpoint
        if ep.startswith("["):  # [v6]:port
            host, _, rest = ep[1:].partition("]")
            return host, int(rest[1:]) if rest.startswith(":") else 29400
        host, sep, port = ep.rpartition(":")
        if not sep:
            return ep, 29400
        return host, int(port)
