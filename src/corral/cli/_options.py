"""The option table and the argparse parser: argv and ``PET_*`` -> strings, unchecked.

Every option has a dash and an underscore spelling and can also come from the
environment as ``PET_<NAME>`` (on/off flags take ``PET_STANDALONE=1``), exactly
as in torchrun (``torch/distributed/argparse_util.py``): the command line wins
over the environment, which wins over the default. :mod:`corral.cli._parse`
converts and checks the values.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from corral.config import DEFAULT_SIGNALS, parse_bool
from corral.core.errors import ConfigError

__all__ = ["PROG", "build_parser"]

PROG = "corral"

_DEFAULT_SIGNALS_TEXT = ",".join(signal.Signals(s).name for s in DEFAULT_SIGNALS)


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
    (
        ("--max-restarts", "--max_restarts"),
        "0",
        "Restarts of the job's worker group (any cause, counted once for the job) before failing.",
    ),
    (
        ("--monitor-interval", "--monitor_interval"),
        "0.1",
        "Accepted for torchrun (seconds > 0, checked) and otherwise ignored: torchrun polls "
        "its workers this often; corral sees a worker's exit at once (pidfd).",
    ),
    (
        ("--start-method", "--start_method"),
        "spawn",
        "spawn, fork or forkserver: checked, else ignored: every worker is a new interpreter, "
        "as torchrun's for a script (torchrun's --run-path uses the method; corral's spawns).",
    ),
    (
        ("--event-log-handler", "--event_log_handler"),
        "null",
        "Accepted for torchrun; ignored (corral's events: --events-file).",
    ),
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
        None,
        "Also write the teed (-t) stdout lines holding any of these comma-separated strings "
        "(,, for a comma) to <attempt dir>/filtered_stdout.log, prefixed like the console.",
    ),
    (
        ("--duplicate-stderr-filters", "--duplicate_stderr_filters"),
        None,
        "Also write the teed (-t) stderr lines holding any of these comma-separated strings "
        "(,, for a comma) to <attempt dir>/filtered_stderr.log, prefixed like the console.",
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
        ("--no-restart-exit-code", "--no_restart_exit_code"),
        None,
        "A worker exit code (1-255) that ends the job without a restart when it is the "
        "failure's root cause; every agent then exits with it (docs/workers.md).",
    ),
    (
        ("--quarantine-after", "--quarantine_after"),
        "2",
        "Quarantine a node that is the root cause of this many failures of the job in a "
        "row, when the job can go on without it; 0 turns it off (docs/rendezvous.md).",
    ),
    (
        ("--gpu-reclaim-timeout", "--gpu_reclaim_timeout"),
        "30",
        "Seconds a restart waits for the previous attempt's processes to free GPU memory "
        "(NVIDIA GPUs only), then goes on with a warning (docs/workers.md).",
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
        "Modules the pre-started workers import in advance, comma-separated: only those "
        "the script imports (read from its source), skipped if not installed; "
        "torch._dynamo is what torch's first optimizer imports.",
    ),
    (
        ("--metrics-addr", "--metrics_addr"),
        "0.0.0.0",
        "Address the metrics endpoint binds (127.0.0.1: this host only).",
    ),
    (
        ("--health-check-timeout", "--health_check_timeout"),
        "30",
        "Seconds a --health-check may take; a timeout is unhealthy (docs/health.md).",
    ),
    (
        ("--health-check-interval", "--health_check_interval"),
        "60",
        "Seconds between health checks while the node runs; 0: only before joining.",
    ),
)
# Options torchrun reads from neither the environment nor with an env action.
_PLAIN_OPTIONS: tuple[tuple[tuple[str, ...], str | None, str], ...] = (
    (
        ("--logs-specs", "--logs_specs"),
        None,
        "torchrun's log-spec plug-ins are not supported: an error when given.",
    ),
    (
        ("--numa-binding", "--numa_binding"),
        None,
        "Bind each worker to the CPUs near its GPU (GPU index = local rank), as torchrun: "
        "node, socket, exclusive or core-complex (docs/workers.md). Default: off.",
    ),
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
        "(docs/workers.md). On by default; --no-prestart or PET_PRESTART=0 turns it off.",
    ),
)


#: Flags that are on unless turned off (their PET_ variable set to 0 or the --no- form).
_ON_BY_DEFAULT = frozenset({"prestart"})


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
        on = dest in _ON_BY_DEFAULT
        if env_value is not None and env_value != "":
            parsed = parse_bool(env_value)
            if parsed is None:
                raise ConfigError(
                    f"{env_name} {env_value}: expected 1 or 0 (or true/false, yes/no)"
                )
            on = parsed
        parser.add_argument(
            *flags,
            dest=dest,
            action=_CheckEnv,
            default=on,
            help=f"{help_text} Env {env_name}={0 if dest in _ON_BY_DEFAULT else 1}.",
        )
    parser.add_argument(
        "--no-prestart",
        "--no_prestart",
        dest="prestart",
        action="store_false",
        help="Start every worker fresh, without pre-started interpreters. Env PET_PRESTART=0.",
    )
    parser.add_argument(  # repeatable; PET_HEALTH_CHECK: one command a line (cli/_parse.py)
        "--health-check",
        "--health_check",
        dest="health_check",
        action="append",
        default=None,
        help="A shell command that exits 0 when this node is healthy; repeatable "
        "(docs/health.md). Env PET_HEALTH_CHECK, one command a line.",
    )
    parser.add_argument(
        "training_script", help="The script (or module, or command) each worker runs."
    )
    parser.add_argument("training_script_args", nargs=argparse.REMAINDER)
    return parser
