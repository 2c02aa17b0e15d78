"""The command line: argv and the ``PET_*`` environment -> :class:`LaunchConfig`, nothing else.

Every option has a dash and an underscore spelling and can also come from the
environment as ``PET_<NAME>`` (on/off flags take ``PET_STANDALONE=1``), exactly
as in torchrun (``torch/distributed/argparse_util.py``): the command line wins
over the environment, which wins over the default.

Bad input is reported as one line, ``corral: error: <option> <value>: <what is
allowed>``, with exit code 2. This module imports argparse only (startup time is
benchmarked); the agent is imported lazily by :func:`main`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from corral.config import (
    DEFAULT_SIGNALS,
    RDZV_BACKENDS,
    LaunchConfig,
    RdzvConf,
    parse_bool,
    parse_signals,
    parse_std_spec,
    resolve_standalone,
)
from corral.errors import ConfigError, LauncherError

__all__ = ["build_parser", "main", "parse_args", "resolve_nproc_per_node"]

PROG = "corral"

_DEFAULT_SIGNALS_TEXT = ",".join(signal.Signals(s).name for s in DEFAULT_SIGNALS)
_BACKEND_ALIASES = {"etcd-v3": "etcd"}


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting (one-line errors)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


class _Env(argparse.Action):
    """torchrun's ``env`` action: the default comes from ``PET_<DEST>`` when set."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        given = getattr(namespace, "_given", None)  # dests given on the command line
        if given is None:
            given = set()
            namespace._given = given
        given.add(self.dest)


class _CheckEnv(argparse.Action):
    """torchrun's ``check_env`` action: an on/off flag, default from ``PET_<DEST>``."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, const=True, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, True)


# (option strings, default as torchrun's parser gives it, help). The dest is argparse's:
# the first long option with dashes as underscores; PET_<DEST upper> is its env name.
_VALUE_OPTIONS: tuple[tuple[tuple[str, ...], str | None, str], ...] = (
    (("--nnodes",), "1:1", "Number of nodes, or MIN:MAX for an elastic job."),
    (
        ("--nproc-per-node", "--nproc_per_node"),
        "1",
        "Workers per node: an integer, auto, cpu or gpu.",
    ),
    (
        ("--rdzv-backend", "--rdzv_backend"),
        "static",
        "Rendezvous backend: static, c10d, etcd (etcd-v3).",
    ),
    (("--rdzv-endpoint", "--rdzv_endpoint"), "", "Rendezvous endpoint, host[:port] (port 29400)."),
    (("--rdzv-id", "--rdzv_id"), "none", "Job id shared by every node of the job."),
    (("--rdzv-conf", "--rdzv_conf"), "", "Rendezvous settings, <key>=<value>,<key>=<value>."),
    (("--max-restarts", "--max_restarts"), "0", "Worker group restarts before failing."),
    (("--monitor-interval", "--monitor_interval"), "0.1", "Seconds between worker checks."),
    (("--start-method", "--start_method"), "spawn", "spawn, fork or forkserver (accepted)."),
    (("--event-log-handler", "--event_log_handler"), "null", "Accepted for torchrun; ignored."),
    (("--role",), "default", "Role name of the workers."),
    (("--log-dir", "--log_dir"), None, "Base directory for log files."),
    (("-r", "--redirects"), "0", "Redirect std streams to files: 0-3 or 0:1,1:2."),
    (("-t", "--tee"), "0", "Tee std streams to files and console: 0-3 or 0:1,1:2."),
    (
        ("--local-ranks-filter", "--local_ranks_filter"),
        "",
        "Show only these local ranks on the console, e.g. 0,1.",
    ),
    (
        ("--duplicate-stdout-filters", "--duplicate_stdout_filters"),
        "",
        "Accepted for torchrun; ignored.",
    ),
    (
        ("--duplicate-stderr-filters", "--duplicate_stderr_filters"),
        "",
        "Accepted for torchrun; ignored.",
    ),
    (("--node-rank", "--node_rank"), "0", "Rank of this node (static backend)."),
    (("--master-addr", "--master_addr"), "127.0.0.1", "Address of node 0 (static backend)."),
    (("--master-port", "--master_port"), None, "Port on node 0 (static backend; 29500)."),
    (("--local-addr", "--local_addr"), None, "Address of this node."),
    (
        ("--signals-to-handle", "--signals_to_handle"),
        _DEFAULT_SIGNALS_TEXT,
        "Signals forwarded to the workers.",
    ),
    (
        ("--shutdown-timeout", "--shutdown_timeout"),
        None,
        "Seconds from SIGTERM to SIGKILL (else TORCH_ELASTIC_SHUTDOWN_TIMEOUT, else 30).",
    ),
    (
        ("--on-signal", "--on_signal"),
        None,
        "On a handled signal: stop (the whole job) or leave (this node leaves; the others "
        "go on). Default: stop when MIN == MAX, leave when MIN < MAX.",
    ),
    (
        ("--scheduler",),
        "auto",
        "Read the job from a scheduler's environment: auto, none, slurm, kubernetes, skypilot.",
    ),
    (
        ("--hang-timeout", "--hang_timeout"),
        None,
        "Seconds without progress after which a rank is hung (off when unset; docs/hangs.md).",
    ),
    (
        ("--hang-startup-timeout", "--hang_startup_timeout"),
        "600",
        "Seconds allowed before a rank's first progress when --hang-timeout is on.",
    ),
    (
        ("--events-file", "--events_file"),
        None,
        "Append the agent's events to this file as JSON Lines; - logs them (docs/events.md).",
    ),
    (
        ("--metrics-port", "--metrics_port"),
        None,
        "Serve Prometheus metrics on this port (off when unset; docs/events.md).",
    ),
    (
        ("--prestart-import", "--prestart_import"),
        "torch,torch._dynamo",
        "With --prestart: modules imported in advance, comma-separated (skipped if not "
        "installed; torch._dynamo is what torch's first optimizer imports).",
    ),
    (
        ("--metrics-addr", "--metrics_addr"),
        "0.0.0.0",
        "Address the metrics endpoint binds (127.0.0.1: this host only).",
    ),
)
# Options torchrun reads from neither the environment nor with an env action.
_PLAIN_OPTIONS: tuple[tuple[tuple[str, ...], str | None, str], ...] = (
    (("--logs-specs", "--logs_specs"), None, "Accepted for torchrun; must be unset."),
    (("--numa-binding", "--numa_binding"), None, "Accepted for torchrun; ignored."),
)
_FLAG_OPTIONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("--standalone",), "Single node: a local rendezvous store on a free port, a fresh id."),
    (("-m", "--module"), "Run the script as a module, like python -m."),
    (("--no-python", "--no_python"), "Run the script itself, not with python."),
    (("--run-path", "--run_path"), "Run the script with runpy.run_path."),
    (("--virtual-local-rank", "--virtual_local_rank"), "LOCAL_RANK 0, one device per worker."),
    (
        ("--collapse-logs", "--collapse_logs"),
        "Print a line several local ranks print at once only once, as [role0-7]: (docs/events.md).",
    ),
    (
        ("--prestart",),
        "Pre-start the workers' interpreters (imports done) while waiting for a round "
        "(docs/workers.md); --no-prestart turns it off.",
    ),
)


def _dest(option_strings: Sequence[str]) -> str:
    long = next((o for o in option_strings if o.startswith("--")), option_strings[0])
    return long.lstrip("-").replace("-", "_")


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The argparse parser, with defaults taken from ``PET_*`` in ``environ``.

    Values stay strings here; :func:`parse_args` converts and checks them.
    """
    parser = _Parser(
        prog=PROG,
        description="corral: a fault-tolerant, elastic launcher for distributed training "
        "(a drop-in for torchrun).",
    )
    for flags, default, help_text in _VALUE_OPTIONS:
        dest = _dest(flags)
        parser.add_argument(
            *flags,
            dest=dest,
            action=_Env,
            default=environ.get(f"PET_{dest.upper()}", default),
            help=f"{help_text} Env PET_{dest.upper()}.",
        )
    for flags, default, help_text in _PLAIN_OPTIONS:
        parser.add_argument(*flags, dest=_dest(flags), default=default, help=help_text)
    for flags, help_text in _FLAG_OPTIONS:
        dest = _dest(flags)
        env_name = f"PET_{dest.upper()}"
        env_value = environ.get(env_name)
        on = False
        if env_value is not None and env_value != "":
            parsed = parse_bool(env_value)
            if parsed is None:
                raise ConfigError(
                    f"{env_name} {env_value}: expected 1 or 0 (or true/false, yes/no)"
                )
            on = parsed
        parser.add_argument(
            *flags, dest=dest, action=_CheckEnv, default=on, help=f"{help_text} Env {env_name}=1."
        )
    parser.add_argument(
        "--no-prestart",
        "--no_prestart",
        dest="prestart",
        action="store_false",
        help="Start every worker fresh (the default).",
    )
    parser.add_argument(
        "training_script", help="The script (or module, or command) each worker runs."
    )
    parser.add_argument("training_script_args", nargs=argparse.REMAINDER)
    return parser


# --- conversions (each raises ConfigError naming option and value) -----------


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


def parse_args(argv: list[str], environ: Mapping[str, str]) -> LaunchConfig:
    """Build the launch configuration from the command line and ``PET_*`` in ``environ``.

    Args:
        argv: the arguments after the program name.
        environ: the environment (``os.environ`` in :func:`main`).

    Returns:
        The validated, frozen :class:`LaunchConfig`. ``--standalone`` (and a static
        one-node job with neither endpoint nor ``--master-port``, as torch 2.13 does)
        becomes ``c10d`` at ``127.0.0.1:0`` with a fresh uuid4 run id and is_host.
        For ``static`` with no endpoint, the endpoint is ``master_addr:master_port``
        (29500), like torchrun.

    Raises:
        ConfigError: one line naming the option, the value and what is allowed.
    """
    ns = build_parser(environ).parse_args(argv)
    a: dict[str, Any] = vars(ns)
    from corral.schedulers import apply_scheduler  # docs/schedulers.md

    sched = apply_scheduler(a, a.pop("_given", set()), environ)
    a = sched.values

    if a["logs_specs"] is not None:
        raise ConfigError(
            f"--logs-specs {a['logs_specs']}: torchrun log-spec plugins are not supported; "
            "leave it unset (use --log-dir, -r, -t)"
        )

    min_nodes, max_nodes = parse_nnodes(a["nnodes"])
    nproc = resolve_nproc_per_node(a["nproc_per_node"], environ)
    max_restarts = _int("--max-restarts", a["max_restarts"], "expected an integer >= 0")
    monitor_interval = _float("--monitor-interval", a["monitor_interval"], "expected seconds > 0")
    node_rank = _int("--node-rank", a["node_rank"], "expected an integer >= 0")
    master_port = _port("--master-port", a["master_port"])
    rdzv_conf = RdzvConf.parse(a["rdzv_conf"])
    redirects = parse_std_spec("--redirects", a["redirects"])
    tee = parse_std_spec("--tee", a["tee"])
    signals = parse_signals("--signals-to-handle", a["signals_to_handle"])
    shutdown_timeout = _shutdown_timeout(a["shutdown_timeout"], environ)
    ranks_filter = _ranks_filter(a["local_ranks_filter"])
    hang_timeout = _hang_timeout(a["hang_timeout"])
    hang_startup_timeout = _float(
        "--hang-startup-timeout", a["hang_startup_timeout"], "expected seconds > 0"
    )

    standalone: bool = a["standalone"]
    endpoint: str = a["rdzv_endpoint"].strip()
    rdzv_id: str = a["rdzv_id"]
    backend = "static" if standalone else _backend(a["rdzv_backend"])
    one_node_static = backend == "static" and not endpoint and master_port is None
    if standalone:
        endpoint = ""  # --standalone overrides the endpoint and backend: resolve_standalone
    elif backend == "static" and not (one_node_static and max_nodes == 1):
        if master_port is None:
            master_port = 29500
        if not endpoint:
            endpoint = _endpoint_addr(a["master_addr"], master_port)

    cfg = LaunchConfig(
        entrypoint=a["training_script"],
        args=tuple(a["training_script_args"]),
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        nproc_per_node=nproc,
        rdzv_backend=backend,
        rdzv_endpoint=endpoint,
        rdzv_id=rdzv_id,
        rdzv_conf=rdzv_conf,
        standalone=standalone,
        max_restarts=max_restarts,
        monitor_interval=monitor_interval,
        start_method=a["start_method"],
        role=a["role"],
        module=a["module"],
        no_python=a["no_python"],
        run_path=a["run_path"],
        log_dir=a["log_dir"] or None,
        redirects=redirects,
        tee=tee,
        local_ranks_filter=ranks_filter,
        node_rank=node_rank,
        master_addr=a["master_addr"],
        master_port=master_port,
        local_addr=a["local_addr"] or rdzv_conf.local_addr or None,
        signals_to_handle=signals,
        shutdown_timeout=shutdown_timeout,
        virtual_local_rank=a["virtual_local_rank"],
        on_signal=(a["on_signal"] or "").strip().lower() or None,
        scheduler_summary=sched.summary,
        scheduler_ignored=sched.ignored,
        hang_timeout=hang_timeout,
        hang_startup_timeout=hang_startup_timeout,
        events_file=a["events_file"] or None,
        metrics_port=_port("--metrics-port", a["metrics_port"]),
        metrics_addr=a["metrics_addr"].strip() or "0.0.0.0",
        collapse_logs=a["collapse_logs"],
        prestart=a["prestart"],
        prestart_imports=tuple(m.strip() for m in a["prestart_import"].split(",") if m.strip()),
    )
    return resolve_standalone(cfg)  # the one standalone rule (corral.config)


def check_entrypoint(cfg: LaunchConfig, environ: Mapping[str, str]) -> None:
    """Fail early when the script to run does not exist.

    A plain script (or ``--run-path``) must be a file; ``--no-python`` must name a
    file or a command on PATH; ``-m`` modules are left to the worker's interpreter.

    Raises:
        ConfigError: naming the script.
    """
    script = cfg.entrypoint
    if cfg.module:
        return
    if cfg.no_python and not cfg.run_path:
        if os.sep in script or os.path.exists(script):
            if not os.path.exists(script):
                raise ConfigError(f"--no-python {script}: no such file")
            return
        if shutil.which(script, path=environ.get("PATH", os.defpath)) is None:
            raise ConfigError(f"--no-python {script}: no such command on PATH or file")
        return
    if not os.path.isfile(script):
        what = "no such file" if not os.path.exists(script) else "not a file"
        raise ConfigError(f"training_script {script}: {what}; expected a Python script path")


def _fail(message: str, code: int) -> NoReturn:
    first = " ".join(message.split("\n")).strip()
    sys.stderr.write(f"{PROG}: error: {first}\n")
    sys.stderr.flush()
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``corral`` console script and ``python -m corral``.

    ``corral store ...`` runs a standalone TCP store server; anything else launches
    workers. Exits 2 on a configuration error, 1 on another launcher error, else
    with the code the agent returns.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] == "status":
        from corral.status import main as status_main

        sys.exit(status_main(args[1:]))
    if args and args[0] == "timeline":
        from corral.timeline import main as timeline_main

        sys.exit(timeline_main(args[1:]))
    if args and args[0] == "store":
        from corral.store.tcp.server import (  # type: ignore[import-not-found,unused-ignore]
            main as store_main,
        )

        sys.exit(store_main(args[1:]))
    try:
        cfg = parse_args(args, os.environ)
        check_entrypoint(cfg, os.environ)
    except ConfigError as exc:
        _fail(str(exc), 2)
    unknown = cfg.rdzv_conf.unknown_warning()
    if unknown:  # torchrun passes every key on and ignores what no one reads: so does corral
        sys.stderr.write(f"{PROG}: warning: {unknown}\n")

    from corral.launcher import run

    try:
        code = run(cfg)
    except ConfigError as exc:
        _fail(str(exc), 2)
    except LauncherError as exc:
        _fail(f"{type(exc).__name__}: {exc}", 1)
    sys.exit(code)
