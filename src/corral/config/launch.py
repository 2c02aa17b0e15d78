"""The launch configuration: frozen, validated once at the edge, passed down.

``cli.parse_args`` builds a :class:`LaunchConfig` from argv and the ``PET_*``
environment; nothing below the CLI reads argv or the environment for options.
Every check raises :class:`corral.core.errors.ConfigError` with one line that names
the option, the value and what is allowed.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from corral.config.rdzv import RdzvConf
from corral.config.values import DEFAULT_SIGNALS, StdSpec, split_host_port
from corral.core.errors import ConfigError
from corral.workers.numa import NumaMode, check_mode

__all__ = ["RDZV_BACKENDS", "START_METHODS", "LaunchConfig", "resolve_standalone"]


@dataclass(frozen=True)
class LaunchConfig:
    """Everything one agent needs to run its part of a job.

    ``rdzv_backend`` is one of ``static``, ``c10d`` (the embedded store; also
    what ``--standalone`` becomes), ``etcd`` (``etcd-v3`` is normalised to it).
    For ``--standalone``, ``rdzv_endpoint`` is ``127.0.0.1:0`` (a free port),
    ``rdzv_id`` a fresh id and ``rdzv_conf.tcp.is_host`` True.
    """

    entrypoint: str = ""  # corral.launch() may give it instead; the launch path checks it
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
    # torchrun's: lines of teed streams holding any of these go to attempt_<n>/filtered_*.log
    duplicate_stdout_filters: tuple[str, ...] = ()
    duplicate_stderr_filters: tuple[str, ...] = ()
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    local_addr: str | None = None
    signals_to_handle: tuple[int, ...] = DEFAULT_SIGNALS
    shutdown_timeout: float = 30.0
    virtual_local_rank: bool = False
    on_signal: str | None = None  # stop | leave; None: stop when MIN == MAX, else leave
    scheduler_summary: str = ""  # what a scheduler's environment gave (docs/schedulers.md)
    scheduler_ignored: tuple[str, ...] = ()  # half-set environments, one line each
    hang_timeout: float | None = None  # None: hang detection off (docs/hangs.md)
    hang_startup_timeout: float = 600.0
    no_restart_exit_code: int | None = None  # a root cause exiting with it ends the job
    quarantine_after: int = 2  # failures in a row as root cause that quarantine a node; 0: off
    gpu_reclaim_timeout: float = 30.0  # a restart waits this long for GPU memory to be freed
    events_file: str | None = None  # JSON Lines of the agent's events (docs/events.md)
    metrics_port: int | None = None  # None: no Prometheus endpoint
    metrics_addr: str = "0.0.0.0"  # where --metrics-port listens
    collapse_logs: bool = False  # one console line for a line many local ranks print
    prestart: bool = True  # pre-started workers (docs/workers.md); off: --no-prestart
    health_checks: tuple[str, ...] = ()  # --health-check: shell commands (docs/health.md)
    health_check_timeout: float = 30.0
    health_check_interval: float = 60.0  # 0: only before joining
    # --numa-binding: bind each worker to the CPUs near its GPU; None: off (docs/workers.md)
    numa_binding: NumaMode | None = None
    # imported in advance when installed; torch._dynamo: what torch's first optimizer imports
    prestart_imports: tuple[str, ...] = ("torch", "torch._dynamo")

    def __post_init__(self) -> None:
        nnodes = f"{self.min_nodes}:{self.max_nodes}"
        if self.min_nodes < 1:
            raise ConfigError(f"--nnodes {nnodes}: min nodes ({self.min_nodes}) must be >= 1")
        if self.max_nodes < self.min_nodes:
            raise ConfigError(
                f"--nnodes {nnodes}: max nodes ({self.max_nodes}) must be >= min nodes ({self.min_nodes})"
            )
        if self.nproc_per_node < 1:
            raise ConfigError(
                f"--nproc-per-node {self.nproc_per_node}: expected an integer > 0, auto, cpu or gpu"
            )
        if not self.rdzv_backend.strip():
            # Names beyond the built-ins are plug-ins: the registry that opens them
            # (corral.rendezvous.registry) checks them, and the CLI does at parse time.
            raise ConfigError(
                f"--rdzv-backend '': expected one of {', '.join(RDZV_BACKENDS)} "
                "or a name registered in the 'corral.rendezvous' entry-point group"
            )
        if self.rdzv_endpoint:
            try:
                split_host_port(self.rdzv_endpoint, 29400)
            except ValueError as exc:
                raise ConfigError(
                    f"--rdzv-endpoint {self.rdzv_endpoint}: expected host[:port] with port in 0..65535 ({exc})"
                ) from exc
        elif self.rdzv_backend in ("c10d", "etcd"):
            raise ConfigError(
                f"--rdzv-endpoint '': the {self.rdzv_backend} backend needs host[:port] "
                "(or use --standalone)"
            )
        if not self.rdzv_id:
            raise ConfigError("--rdzv-id '': expected a non-empty job id")
        if self.max_restarts < 0:
            raise ConfigError(f"--max-restarts {self.max_restarts}: expected an integer >= 0")
        if not self.monitor_interval > 0:
            raise ConfigError(f"--monitor-interval {self.monitor_interval}: expected seconds > 0")
        if self.start_method not in START_METHODS:
            raise ConfigError(
                f"--start-method {self.start_method}: expected one of {', '.join(START_METHODS)}"
            )
        if self.module and self.no_python:
            raise ConfigError(
                f"--no-python -m {self.entrypoint}: use one of --no-python and -m/--module, not both"
            )
        if not self.role:
            raise ConfigError("--role '': expected a non-empty role name")
        if self.node_rank < 0:
            raise ConfigError(f"--node-rank {self.node_rank}: expected an integer >= 0")
        if self.rdzv_backend == "static" and self.node_rank >= self.max_nodes:
            raise ConfigError(
                f"--node-rank {self.node_rank}: expected 0..{self.max_nodes - 1} for --nnodes {nnodes}"
            )
        if self.master_port is not None and not 0 <= self.master_port <= 65535:
            raise ConfigError(f"--master-port {self.master_port}: expected a port in 0..65535")
        if not self.master_addr:
            raise ConfigError("--master-addr '': expected a host name or address")
        if self.local_ranks_filter is not None:
            if not self.local_ranks_filter or min(self.local_ranks_filter) < 0:
                shown = ",".join(str(r) for r in sorted(self.local_ranks_filter))
                raise ConfigError(
                    f"--local-ranks-filter {shown}: expected comma-separated local ranks >= 0, e.g. 0,1"
                )
        if not self.signals_to_handle:
            raise ConfigError("--signals-to-handle '': expected at least one signal, e.g. SIGTERM")
        for sig in self.signals_to_handle:
            try:
                signal.Signals(sig)
            except ValueError as exc:
                raise ConfigError(f"--signals-to-handle {sig}: not a signal number") from exc
        if self.on_signal not in (None, "stop", "leave"):
            raise ConfigError(f"--on-signal {self.on_signal}: expected stop or leave")
        if not self.shutdown_timeout >= 0:
            raise ConfigError(f"--shutdown-timeout {self.shutdown_timeout}: expected seconds >= 0")
        if self.no_restart_exit_code is not None and not 1 <= self.no_restart_exit_code <= 255:
            raise ConfigError(
                f"--no-restart-exit-code {self.no_restart_exit_code}: "
                "expected an exit code in 1..255"
            )
        if self.quarantine_after < 0:
            raise ConfigError(
                f"--quarantine-after {self.quarantine_after}: expected an integer >= 0 (0: off)"
            )
        if not self.gpu_reclaim_timeout >= 0:
            raise ConfigError(
                f"--gpu-reclaim-timeout {self.gpu_reclaim_timeout}: expected seconds >= 0"
            )
        if self.hang_timeout is not None and not self.hang_timeout > 0:
            raise ConfigError(
                f"--hang-timeout {self.hang_timeout}: expected seconds > 0 (leave it unset for off)"
            )
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port {self.metrics_port}: expected a port in 0..65535")
        check_mode(self.numa_binding)
        if not 0 < self.health_check_timeout < float("inf"):
            raise ConfigError(
                f"--health-check-timeout {self.health_check_timeout}: expected seconds > 0"
            )
        if not 0 <= self.health_check_interval < float("inf"):
            raise ConfigError(
                f"--health-check-interval {self.health_check_interval}: expected seconds >= 0"
            )
        if not self.hang_startup_timeout > 0:
            raise ConfigError(
                f"--hang-startup-timeout {self.hang_startup_timeout}: expected seconds > 0"
            )

    @property
    def elastic(self) -> bool:
        return self.min_nodes != self.max_nodes

    @property
    def signal_action(self) -> str:
        """What a handled signal does: ``--on-signal``, else stop (MIN == MAX) or leave."""
        return self.on_signal or ("leave" if self.elastic else "stop")

    @property
    def endpoint_host_port(self) -> tuple[str, int]:
        """``rdzv_endpoint`` split as (host, port); port 29400 when absent."""
        return split_host_port(self.rdzv_endpoint, 29400)


RDZV_BACKENDS = ("static", "c10d", "etcd")
START_METHODS = ("spawn", "fork", "forkserver")


def resolve_standalone(config: LaunchConfig) -> LaunchConfig:
    """The standalone rule, for the CLI and for configs built in code alike.

    ``standalone=True``, or a one-node static job with neither endpoint nor
    master port (torch 2.13), runs on a private store at ``127.0.0.1:<free port>``
    with a fresh run id, hosted by this agent (``rdzv_conf.tcp.is_host``). A config
    the rule was applied to already is returned as it is (its run id kept).
    """
    one_node_static = (
        config.rdzv_backend == "static"
        and not config.rdzv_endpoint
        and config.master_port is None
        and config.max_nodes == 1
    )
    already = config.rdzv_backend == "c10d" and config.rdzv_endpoint == "127.0.0.1:0"
    if not (config.standalone or one_node_static) or already:
        return config
    import uuid
    from dataclasses import replace

    return replace(
        config,
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        rdzv_id=str(uuid.uuid4()),
        rdzv_conf=config.rdzv_conf.with_host(),
        standalone=True,
    )
