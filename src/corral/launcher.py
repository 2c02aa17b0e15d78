"""The CLI's launch: one agent for a LaunchConfig, run to the end; its exit code.

Above the library API (:mod:`corral.api`), which it runs: the CLI (:mod:`corral.cli`)
parses, this module sets up logging and the process, ``corral.api.run_cli`` launches.
"""

from __future__ import annotations

import gc
import logging
import os
import sys

from corral.config import LaunchConfig
from corral.core.compat import run as _compat_run

__all__ = ["run"]


def _setup_logging() -> None:
    level = os.environ.get("LOGLEVEL", os.environ.get("CORRAL_LOGLEVEL", "INFO")).upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[corral %(asctime)s] %(message)s", "%H:%M:%S"))
    root = logging.getLogger("corral")
    root.addHandler(handler)
    root.setLevel(getattr(logging, level, logging.INFO))
    root.propagate = False


def run(cfg: LaunchConfig) -> int:
    """Run this node's agent to the end of the job; return the exit code (docs/contract.md, "Failures, errors and exit").

    The same launch path as :func:`corral.launch` (see :func:`corral.api.run_cli`).
    """
    from corral.api import run_cli
    from corral.workers.sweep import claim_children

    _setup_logging()
    log = logging.getLogger("corral")
    if cfg.scheduler_summary:  # the first line: what a scheduler gave (docs/schedulers.md)
        log.info("%s", cfg.scheduler_summary)
    for line in cfg.scheduler_ignored:
        log.warning("%s", line)
    claim_children()  # this process runs only the agent: orphans of workers come back to it
    # What the imports made lives as long as the agent: the collector need not walk it
    # again, in the run's collections nor in the interpreter's last one at exit.
    gc.freeze()
    return _compat_run(run_cli(cfg))
