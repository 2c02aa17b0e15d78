"""What the job leaves behind for the caller: the workers' results and the root cause's text."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from corral.core.failures import FailureReport

if TYPE_CHECKING:
    from corral.workers.group import WorkerGroup

__all__ = ["print_root_cause", "read_results", "summary"]


def summary(root: FailureReport | None) -> str:
    """One line for WorkerFailed: which worker failed the job, how and why."""
    if root is None:
        return "job failed (no failure report available)"
    if root.lost and root.message:
        return f"job failed: {root.message}"  # a whole node lost, named in the message
    how = (
        "hung (no progress within --hang-timeout)"
        if root.hang
        else f"died of {root.signal_name}"
        if root.exitcode < 0
        else f"exited with code {root.exitcode}"
    )
    why = f": {root.message}" if root.message else ""
    return (
        f"job failed: worker rank {root.rank} (node {root.group_rank}, host {root.host}) {how}{why}"
    )


def print_root_cause(report: FailureReport | None, total: int = 1) -> None:
    """The root-cause block on stderr (``total``: how many workers failed)."""
    from corral.core.render import render_root_cause

    if report is None:
        print("corral: job failed (no failure report available)", file=sys.stderr, flush=True)
        return
    print(render_root_cause(report, max(total, 1)), file=sys.stderr, flush=True)


def read_results(group: WorkerGroup) -> dict[int, object]:
    """Each worker's result by global rank (None where it wrote none: a command)."""
    from corral.workers._fn_entry import read_result

    logs, offset = group.logs, group.rnd.rank_offset
    if logs is None:  # never started: no worker wrote a result
        return {}
    return {
        offset + local_rank: read_result(logs.rank_dir(local_rank))
        for local_rank in range(group.spec.local_world_size)
    }
