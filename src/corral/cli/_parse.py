"""``parse_args``: the parsed options -> the validated :class:`LaunchConfig`; the script check."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import Any

from corral.cli._options import build_parser
from corral.cli._split import split_at_script
from corral.cli._values import (
    _backend,
    _endpoint_addr,
    _float,
    _hang_timeout,
    _int,
    _port,
    _ranks_filter,
    _shutdown_timeout,
    parse_nnodes,
    resolve_nproc_per_node,
)
from corral.config import (
    LaunchConfig,
    RdzvConf,
    parse_signals,
    parse_std_spec,
    resolve_standalone,
)
from corral.core.errors import ConfigError
from corral.workers.numa import check_mode
from corral.workers.std import split_filters

__all__ = ["check_entrypoint", "parse_args"]


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
    parser = build_parser(environ)
    launcher, script_args = split_at_script(parser, argv)  # what follows the script is its own
    a: dict[str, Any] = vars(parser.parse_args(launcher))
    a["training_script_args"] = [*a["training_script_args"], *script_args]
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
    no_restart_code = a["no_restart_exit_code"]
    if no_restart_code is not None:  # range: LaunchConfig
        no_restart_code = _int(
            "--no-restart-exit-code", no_restart_code, "expected an exit code in 1..255"
        )
    quarantine_after = _int("--quarantine-after", a["quarantine_after"], "expected an integer >= 0")
    gpu_reclaim_timeout = _float(
        "--gpu-reclaim-timeout", a["gpu_reclaim_timeout"], "expected seconds >= 0"
    )
    health_checks, health_timeout, health_interval = _health(a, environ)
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
        duplicate_stdout_filters=split_filters(a["duplicate_stdout_filters"]),
        duplicate_stderr_filters=split_filters(a["duplicate_stderr_filters"]),
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
        no_restart_exit_code=no_restart_code,
        quarantine_after=quarantine_after,
        gpu_reclaim_timeout=gpu_reclaim_timeout,
        hang_startup_timeout=hang_startup_timeout,
        events_file=a["events_file"] or None,
        metrics_port=_port("--metrics-port", a["metrics_port"]),
        metrics_addr=a["metrics_addr"].strip() or "0.0.0.0",
        collapse_logs=a["collapse_logs"],
        prestart=a["prestart"],
        health_checks=health_checks,
        health_check_timeout=health_timeout,
        health_check_interval=health_interval,
        numa_binding=check_mode(a["numa_binding"]),
        prestart_imports=tuple(m.strip() for m in a["prestart_import"].split(",") if m.strip()),
    )
    return resolve_standalone(cfg)  # the one standalone rule (corral.config)


def _health(a: dict[str, Any], environ: Mapping[str, str]) -> tuple[tuple[str, ...], float, float]:
    """``--health-check`` (repeatable; else ``PET_HEALTH_CHECK``, one command a line),
    its timeout and interval (docs/health.md)."""
    given: list[str] | None = a["health_check"]
    if given is not None:
        if any(not c.strip() for c in given):
            raise ConfigError("--health-check '': expected a shell command")
        checks = tuple(c.strip() for c in given)
    else:
        lines = environ.get("PET_HEALTH_CHECK", "").splitlines()
        checks = tuple(c.strip() for c in lines if c.strip())
    for cmd in checks:
        _builtin_checks(cmd)
    timeout = _float("--health-check-timeout", a["health_check_timeout"], "expected seconds > 0")
    interval = _float(
        "--health-check-interval", a["health_check_interval"], "expected seconds >= 0"
    )
    return checks, timeout, interval


def _builtin_checks(cmd: str) -> None:
    """A ``corral health CHECK...`` command is checked now: a malformed check is bad input
    (one line, exit 2), not a node that stays unhealthy for ever."""
    import shlex

    try:
        words = shlex.split(cmd)
    except ValueError:
        return  # the shell's business: its first run tells (exit 2 if it cannot run it)
    if words[:2] != ["corral", "health"] or any(w in ("|", "&&", "||", ";") for w in words):
        return
    from corral.health import BadCheck, parse_check

    for word in words[2:]:
        if word.startswith("--timeout") or (word and word[0].isdigit()):
            continue  # --timeout's value: checked when it runs
        try:
            parse_check(word)
        except BadCheck as exc:
            raise ConfigError(f"--health-check {cmd!r}: {exc}") from None


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
