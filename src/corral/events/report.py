"""Incidents and goodput for ``corral status``: read from the job's journal, rendered as text."""

from __future__ import annotations

import time
from typing import Any

from corral.events.journal import PHASES, goodput, job_incidents
from corral.events.journal_writer import read_records
from corral.store.api import Store

__all__ = ["incident_lines", "read_incidents"]


async def read_incidents(
    store: Store, *, prefix: str, run_id: str
) -> tuple[list[dict[str, Any]], float | None]:
    """(the job's incidents as dicts, in round order; its goodput or None)."""
    records = await read_records(store, prefix=prefix, run_id=run_id)
    incidents = [i.to_dict() for i in job_incidents(records)]
    return incidents, goodput(records, time.time())


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s"


def incident_lines(incidents: list[dict[str, Any]], good: float | None, last: int = 5) -> list[str]:
    """The last ``last`` incidents, one line of phases each and one of its root cause."""
    if not incidents and good is None:
        return []
    shown = incidents[-last:]
    gp = "n/a" if good is None else f"{100 * good:.1f}%"
    lines = [f"incidents (last {len(shown)} of {len(incidents)}; goodput {gp}):"]
    for inc in shown:
        phases = "  ".join(f"{p} {_s(inc['phases'].get(p))}" for p in PHASES)
        lines.append(
            f"  round {inc['round']:<3} {inc['cause']:<12}  down {_s(inc['downtime'])}  {phases}"
        )
        why = inc["root_cause"] or inc["detail"]
        if why:
            lines.append(f"            {why}")
    return lines
