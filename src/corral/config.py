"""The launch configuration: frozen, validated once at the edge, passed down.

``cli.parse_args`` builds a :class:`LaunchConfig` from argv and the ``PET_*``
environment; nothing below the CLI reads argv or the environment for options.
Every check raises :class:`corral.errors.ConfigError` with one line that names
the option, the value and what is allowed.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from corral.errors import ConfigError

__all__ = [
    "DEFAULT_SIGNALS",
    "LaunchConfig",
    "RdzvConf",
    "Std",
    "StdSpec",
    "parse_bool",
    "parse_signals",
    "parse_std_spec",
    "split_host_port",
]

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
BOOL_VALUES = "1/0, true/false, yes/no"


def parse_bool(text: str) -> bool | None:
    """``1/0``, ``true/false``, ``yes/no`` (and torch's ``t/f``, ``y/n``, ``on/off``); None if neither."""
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    return None


def split_host_port(endpoint: str, default_port: int) -> tuple[str, int]:
    """Split ``host[:port]`` (``[v6]:port`` for IPv6) into (host, port).

    Raises:
        ValueError: the port is not an integer in 0..65535, or the brackets do not close.
    """
    if endpoint.startswith("["):
        host, closed, rest = endpoint[1:].partition("]")
        if not closed:
            raise ValueError("an IPv6 address must be written [addr] or [addr]:port")
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError("expected :port after [addr]")
        port_text = rest[1:]
    else:
        if endpoint.count(":") > 1:  # a bare IPv6 address, no port
            return endpoint, default_port
        host, sep, port_text = endpoint.rpartition(":")
        if not sep:
            return endpoint, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not an integer in 0..65535")
    return host, int(port_text)


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


def parse_std_spec(option: str, text: str) -> StdSpec:
    """Parse ``-r``/``-t``: ``0``-``3``, or per local rank ``0:1,1:2`` (ranks not named get 0).

    Raises:
        ConfigError: naming ``option`` and ``text``.
    """
    allowed = (
        "expected 0-3 (0 none, 1 stdout, 2 stderr, 3 both) or <local rank>:<0-3>,... e.g. 0:1,1:2"
    )
    text = text.strip()
    if text in {"0", "1", "2", "3"}:
        return StdSpec(default=Std(int(text)))
    per_rank: dict[int, Std] = {}
    for item in text.split(","):
        rank_text, sep, std_text = item.strip().partition(":")
        if not sep or not rank_text.isdigit() or std_text not in {"0", "1", "2", "3"}:
            raise ConfigError(f"{option} {text}: {allowed}")
        if int(rank_text) in per_rank:
            raise ConfigError(f"{option} {text}: local rank {int(rank_text)} is given twice")
        per_rank[int(rank_text)] = Std(int(std_text))
    return StdSpec(default=Std.NONE, per_rank=tuple(sorted(per_rank.items())))


_UNCATCHABLE = frozenset({"SIGKILL", "SIGSTOP"})


def parse_signals(option: str, text: str) -> tuple[int, ...]:
    """Parse a comma-separated list of signal names (``SIGTERM`` or ``TERM``, any case) or numbers.

    Raises:
        ConfigError: an unknown or uncatchable signal, naming ``option`` and ``text``.
    """
    out: list[int] = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        sig: signal.Signals | None = None
        if name.isdigit():
            try:
                sig = signal.Signals(int(name))
            except ValueError:
                sig = None
        else:
            upper = name.upper()
            full = upper if upper.startswith("SIG") else "SIG" + upper
            sig = getattr(signal.Signals, full, None)
        if sig is None or sig.name in _UNCATCHABLE:
            raise ConfigError(
                f"{option} {text}: {name!r} is not a signal that can be handled; "
                "expected comma-separated names such as SIGTERM,SIGINT,SIGUSR1"
            )
        if int(sig) not in out:
            out.append(int(sig))
    if not out:
        raise ConfigError(
            f"{option} {text!r}: expected at least one signal name, e.g. SIGTERM,SIGINT"
        )
    return tuple(out)


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
    # This node's address when --local-addr is not given (torchrun takes it only as --local-addr).
    local_addr: str | None = None
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
    # Keys of the text that no one reads (parse): named in one warning line, never an error.
    unknown: tuple[str, ...] = field(default=(), compare=False)

    def resolve_token(self, environ: Mapping[str, str]) -> str | None:
        """The store's shared secret: ``token``, else the ``token_file``'s content, else
        ``CORRAL_TOKEN`` from ``environ``; None for none.

        Raises: ConfigError if ``token_file`` cannot be read.
        """
        if self.token:
            return self.token
        if self.token_file:
            try:
                with open(self.token_file, encoding="utf-8") as f:
                    return f.read().strip()
            except OSError as exc:
                raise ConfigError(f"--rdzv-conf token_file={self.token_file}: {exc}") from exc
        return environ.get("CORRAL_TOKEN") or None

    @property
    def lease_ttl(self) -> float:
        """How long a silent node stays a member: keep_alive_interval x keep_alive_max_attempt."""
        return self.keep_alive_interval * self.keep_alive_max_attempt

    def __post_init__(self) -> None:
        for name in _POSITIVE_FLOATS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"--rdzv-conf {name}={value}: expected a number of seconds > 0")
        if not self.settle_time >= 0:
            raise ConfigError(f"--rdzv-conf settle_time={self.settle_time}: expected seconds >= 0")
        if self.keep_alive_max_attempt < 1:
            raise ConfigError(
                f"--rdzv-conf keep_alive_max_attempt={self.keep_alive_max_attempt}: expected an integer >= 1"
            )
        if self.protocol not in ("http", "https"):
            raise ConfigError(f"--rdzv-conf protocol={self.protocol}: expected http or https")
        if self.token is not None and self.token_file is not None:
            raise ConfigError(
                "--rdzv-conf token=...,token_file=...: give the token or a token file, not both"
            )

    @classmethod
    def known_keys(cls) -> tuple[str, ...]:
        """Every key ``parse`` accepts: corral's fields, then torch's other names."""
        own = tuple(f.name for f in fields(cls) if f.name != "unknown")
        return own + tuple(_TORCH_ALIASES) + tuple(_TORCH_ONLY)

    def unknown_warning(self, option: str = "--rdzv-conf") -> str | None:
        """The one warning line for keys no one reads (None: there are none)."""
        if not self.unknown:
            return None
        keys = ", ".join(repr(k) for k in self.unknown)
        return (
            f"{option}: ignoring unknown key{'s' if len(self.unknown) > 1 else ''} {keys}; "
            f"corral reads {', '.join(self.known_keys())}"
        )

    @classmethod
    def parse(cls, text: str, option: str = "--rdzv-conf") -> RdzvConf:
        """Parse ``k=v,k=v`` into typed fields (floats, ints, bools, strings).

        Accepts what torchrun accepts (docs/contract.md): corral's keys, and every key
        that torch 2.13's rendezvous handlers or launcher read, with their meaning
        (:data:`_TORCH_ALIASES`, :data:`_TORCH_ONLY`). A key that no one reads is
        kept in ``unknown`` (:meth:`unknown_warning`), never an error.

        Raises:
            ConfigError: malformed text, or a bad value for a known key.
        """
        text = text.strip()
        if not text:
            return cls()
        types = {f.name: str(f.type) for f in fields(cls) if f.name != "unknown"}
        values: dict[str, object] = {}
        aliased: dict[str, tuple[str, object]] = {}  # canonical key -> (torch's key, value)
        unknown: list[str] = []
        for item in text.split(","):
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or not value:
                raise ConfigError(
                    f"{option} {text}: expected <key>=<value>,<key>=<value>,... "
                    f"with keys among {', '.join(cls.known_keys())}"
                )
            if key in _TORCH_ONLY:
                _check_torch_only(option, key, value)
                continue
            if key in _TORCH_ALIASES:
                target = _TORCH_ALIASES[key]
                aliased[target] = (key, _convert(option, key, value, types[target]))
                continue
            if key not in types:
                if key not in unknown:
                    unknown.append(key)
                continue
            values[key] = _convert(option, key, value, types[key])
        for target, (key, converted) in aliased.items():
            if target not in values:
                values[target] = converted
            elif key != "timeout" and values[target] != converted:
                raise ConfigError(
                    f"{option} {key}={converted},{target}={values[target]}: "
                    f"{key} is torch's name for {target}; give one value"
                )
        return cls(**values, unknown=tuple(unknown))  # type: ignore[arg-type]


def _convert(option: str, key: str, value: str, kind: str) -> object:
    """``value`` of ``key`` as its field's type (``kind``, the annotation's text)."""
    if kind.startswith("float"):
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if number != number:  # not a number, or NaN
            raise ConfigError(f"{option} {key}={value}: expected a number of seconds")
        return number
    if kind.startswith("int"):
        if not value.lstrip("-").isdigit():
            raise ConfigError(f"{option} {key}={value}: expected an integer")
        return int(value)
    if kind.startswith("bool"):
        flag = parse_bool(value)
        if flag is None:
            raise ConfigError(f"{option} {key}={value}: expected a boolean ({BOOL_VALUES})")
        return flag
    return value


# torch's names for keys corral reads under its own name (torch 2.13): ``timeout`` is the
# legacy join timeout (launcher.api's rdzv_timeout; the etcd and static handlers read it;
# ``join_timeout`` wins when both are given); the etcd-v2 backend's TLS keys; the legacy
# etcd handler's key prefix.
_TORCH_ALIASES = {
    "timeout": "join_timeout",
    "etcd_prefix": "prefix",
    "ssl_cert": "cert",
    "ssl_cert_key": "key",
    "ca_cert": "cacert",
}

# Keys torch reads that have no effect in corral; their values are still checked.
_TORCH_ONLY = {
    "rank": "the static handler's node rank; torchrun sets it from --node-rank, as corral does",
    "use_libuv": "torch's TCPStore backend switch (ignored by torch 2.13 too)",
    "store_type": "the c10d store's type; corral's embedded store is TCP (tcp only)",
}


def _check_torch_only(option: str, key: str, value: str) -> None:
    if key == "rank" and not value.isdigit():
        raise ConfigError(f"{option} {key}={value}: expected an integer >= 0")
    if key == "use_libuv" and parse_bool(value) is None:
        raise ConfigError(f"{option} {key}={value}: expected a boolean ({BOOL_VALUES})")
    if key == "store_type" and value.lower() != "tcp":
        raise ConfigError(
            f"{option} {key}={value}: corral's c10d store is served over TCP; expected tcp"
        )


_POSITIVE_FLOATS = (
    "join_timeout",
    "last_call_timeout",
    "close_timeout",
    "heartbeat_timeout",
    "keep_alive_interval",
    "read_timeout",
)


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
    events_file: str | None = None  # JSON Lines of the agent's events (docs/events.md)
    metrics_port: int | None = None  # None: no Prometheus endpoint
    metrics_addr: str = "0.0.0.0"  # where --metrics-port listens
    collapse_logs: bool = False  # one console line for a line many local ranks print
    prestart: bool = False  # pre-started workers (docs/workers.md)
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
        if self.hang_timeout is not None and not self.hang_timeout > 0:
            raise ConfigError(
                f"--hang-timeout {self.hang_timeout}: expected seconds > 0 (leave it unset for off)"
            )
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port {self.metrics_port}: expected a port in 0..65535")
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
    with a fresh run id, hosted by this agent (``rdzv_conf.is_host``). A config
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
        rdzv_conf=replace(config.rdzv_conf, is_host=True),
        standalone=True,
    )
