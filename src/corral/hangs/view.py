"""``corral status``'s view of progress: each rank's last step and seconds since it.

The agents publish a :class:`~corral.hangs.report.NodeProgress` per node while
marks arrive (at most every 2 s, only with ``--hang-timeout``); the seconds
since the last progress are computed from the wall time of the last mark,
for humans only (hosts' clocks may differ a little).
"""

from __future__ import annotations

from corral.hangs.report import NodeProgress
from corral.store.api import Store

__all__ = ["progress_lines", "read_progress"]


async def read_progress(store: Store, base: str, round_: int) -> list[tuple[int, int, float]]:
    """Every rank's ``(rank, step, wall time of its last mark)`` in round ``round_``, by rank."""
    from corral.hangs.watch import progress_prefix

    kvs, _ = await store.range(progress_prefix(base, round_))
    rows: list[tuple[int, int, float]] = []
    for kv in kvs:
        try:
            rows.extend(NodeProgress.from_json(kv.value).ranks)
        except (ValueError, KeyError, TypeError):
            continue  # a record of another version: not shown
    return sorted(rows)


def progress_lines(rows: list[tuple[int, int, float]], now: float) -> list[str]:
    """``progress (--hang-timeout): rank 0 step 40 (1.2 s ago), ...`` as status lines."""
    if not rows:
        return []
    cells = [f"rank {r} step {s} ({max(0.0, now - t):.1f} s ago)" for r, s, t in rows]
    lines = ["progress (last step, seconds since):"]
    for i in range(0, len(cells), 4):
        lines.append("  " + ", ".join(cells[i : i + 4]))
    return lines
