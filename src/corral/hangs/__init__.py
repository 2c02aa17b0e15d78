"""Hang detection (docs/hangs.md): progress marks in, a named culprit and a restart out.

- :mod:`corral.progress` (worker side): optimizer steps and ``corral.progress()``
  write marks into a small per-rank file.
- :mod:`corral.hangs.detect` (pure): ``judge(ranks, now, limits)`` says which
  local ranks are hung.
- :mod:`corral.hangs.report` (pure): the per-node records published to the
  store, the job-wide culprit and the report text.
- :mod:`corral.hangs.stacks`: every thread's Python stack of a worker (py-spy).
- :mod:`corral.hangs.watch`: the agent's detector, raced against the worker group.

This module holds only what the worker environment needs (pure, cheap to import).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["PROGRESS_ENV", "SITE_DIR", "progress_env", "progress_file"]

#: The variable naming a worker's progress file (:data:`corral.progress.ENV`).
PROGRESS_ENV = "CORRAL_PROGRESS_FILE"
#: The directory prepended to a worker's PYTHONPATH: its ``sitecustomize`` installs the hook.
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_site")


def progress_file(error_file: str) -> str:
    """A worker's progress file: ``progress`` beside its error file (its log directory)."""
    return os.path.join(os.path.dirname(error_file), "progress")


def progress_env(base_env: Mapping[str, str], error_file: str) -> dict[str, str]:
    """What hang detection adds to one worker's environment (only when it is on).

    ``CORRAL_PROGRESS_FILE`` (this worker's progress file) and ``PYTHONPATH``
    with :data:`SITE_DIR` first (the inherited value after it). The injected
    ``sitecustomize`` puts ``PYTHONPATH`` and ``sys.path`` back as they were
    before the script runs (see docs/contract.md).
    """
    inherited = base_env.get("PYTHONPATH")
    return {
        PROGRESS_ENV: progress_file(error_file),
        "PYTHONPATH": SITE_DIR if inherited is None else SITE_DIR + os.pathsep + inherited,
    }
