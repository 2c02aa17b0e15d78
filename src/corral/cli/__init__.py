"""The command line: argv and the ``PET_*`` environment -> :class:`LaunchConfig`, nothing else.

Every option has a dash and an underscore spelling and can also come from the
environment as ``PET_<NAME>`` (on/off flags take ``PET_STANDALONE=1``), exactly
as in torchrun (``torch/distributed/argparse_util.py``): the command line wins
over the environment, which wins over the default.

Bad input is reported as one line, ``corral: error: <option> <value>: <what is
allowed>``, with exit code 2. The package imports argparse only (startup time is
benchmarked); the agent is imported lazily by :func:`main`.

Its modules: :mod:`~corral.cli._options` (the option table, the argparse parser),
:mod:`~corral.cli._values` (text -> values: nodes, workers and GPUs, backend, ports,
timeouts), :mod:`~corral.cli._parse` (:func:`parse_args` -> :class:`LaunchConfig`);
:func:`main` here (subcommands, one-line errors, exit codes).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from corral.cli._options import PROG, build_parser
from corral.cli._parse import check_entrypoint, parse_args
from corral.cli._values import parse_nnodes, resolve_nproc_per_node
from corral.core.errors import ConfigError, LauncherError

__all__ = [
    "PROG",
    "build_parser",
    "check_entrypoint",
    "main",
    "parse_args",
    "parse_nnodes",
    "resolve_nproc_per_node",
]


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
    if args and args[0] == "health":  # built-in node health checks (docs/health.md)
        from corral.health import main as health_main

        sys.exit(health_main(args[1:]))
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
    # torchrun passes every key on and ignores what no one reads: so does corral, saying so
    for line in (
        cfg.rdzv_conf.unknown_warning(backend=cfg.rdzv_backend),
        cfg.rdzv_conf.unread_warning(cfg.rdzv_backend),
    ):
        if line:
            sys.stderr.write(f"{PROG}: warning: {line}\n")

    from corral.launcher import run

    try:
        code = run(cfg)
    except ConfigError as exc:
        _fail(str(exc), 2)
    except LauncherError as exc:
        _fail(f"{type(exc).__name__}: {exc}", 1)
    sys.exit(code)
