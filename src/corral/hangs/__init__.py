"""Hang detection (docs/hangs.md): progress marks in, a named culprit and a restart out.

- :mod:`corral.progress` (worker side): optimizer steps and ``corral.progress()``
  write marks into a small per-rank file.
- :mod:`corral.hangs.detect` (pure): ``judge(ranks, now, limits)`` says which
  local ranks are hung.
- :mod:`corral.hangs.report` (pure): the per-node records published to the
  store, the job-wide culprit and the report text.
- :mod:`corral.hangs.stacks`: every thread's Python stack of a worker (py-spy).
- :mod:`corral.hangs.watch`: the agent's detector, raced against the worker group.

The worker environment it needs (:func:`progress_env`) lives in :mod:`corral.progress`,
beside the file format, and is re-exported here.
"""

from __future__ import annotations

from corral.progress import ENV as PROGRESS_ENV
from corral.progress import SITE_DIR, progress_env, progress_file

__all__ = ["PROGRESS_ENV", "SITE_DIR", "progress_env", "progress_file"]
