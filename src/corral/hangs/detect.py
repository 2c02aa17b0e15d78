"""The detector's decision: which local ranks are hung, as a pure function of (state, now).

No clock reads, no I/O: :class:`corral.hangs.watch.HangWatch` reads the
progress files and the clock and calls :func:`judge`; tests drive it with
plain numbers (docs/hangs.md explains the rules).

Rules:

- Detection is *armed* by the first progress mark seen on this node in this
  attempt, or by any mark in an earlier attempt of the job on this node. A
  script that never marks progress (no optimizer, no ``corral.progress``) is
  never declared hung.
- Once armed, a rank that has marked progress is hung when ``timeout``
  seconds have passed since its last mark; a rank with no mark yet in this
  attempt is hung when ``startup`` seconds have passed since it started (a
  slow start, an import, a data load or a compilation, is not a hang).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Limits", "RankState", "Verdict", "judge"]


@dataclass(frozen=True)
class Limits:
    """``--hang-timeout`` and ``--hang-startup-timeout``, in seconds (both > 0)."""

    timeout: float
    startup: float = 600.0

    def __post_init__(self) -> None:
        if not self.timeout > 0 or not self.startup > 0:
            raise ValueError(
                f"hang limits must be > 0 (timeout {self.timeout}, startup {self.startup})"
            )


@dataclass(frozen=True)
class RankState:
    """One running local worker as the detector sees it.

    Attributes:
        local_rank: the worker's local rank.
        started: when the agent started it (monotonic seconds).
        last: monotonic time of its last progress mark in this attempt; None
            when it has marked none yet.
        step: the step of that mark (informational here).
    """

    local_rank: int
    started: float
    last: float | None = None
    step: int | None = None


@dataclass(frozen=True)
class Verdict:
    """What :func:`judge` decided.

    Attributes:
        hung: the local ranks judged hung, in local-rank order (empty: none).
        armed: whether detection is armed (see the module docstring).
        next_check: the earliest moment at which, with no new mark, a rank
            would become hung; None when nothing can become hung without a
            new mark (not armed, or no running rank).
    """

    hung: tuple[int, ...]
    armed: bool
    next_check: float | None


def deadline(rank: RankState, limits: Limits, now: float) -> float:
    """When ``rank`` becomes hung if it marks nothing more (marks from the future count as now)."""
    if rank.last is None:
        return rank.started + limits.startup
    return min(rank.last, now) + limits.timeout


def judge(
    ranks: Sequence[RankState], now: float, limits: Limits, *, armed_before: bool = False
) -> Verdict:
    """Decide which of ``ranks`` (the running local workers) are hung at ``now``.

    Args:
        ranks: the running workers of this node, with their last marks.
        now: the monotonic time of the decision (the same clock as the marks').
        limits: the two timeouts.
        armed_before: progress was seen on this node in an earlier attempt.

    Returns:
        A :class:`Verdict`; ``hung`` is empty unless detection is armed.
    """
    armed = armed_before or any(r.last is not None for r in ranks)
    if not armed or not ranks:
        return Verdict((), armed, None)
    hung: list[int] = []
    pending: list[float] = []
    for r in sorted(ranks, key=lambda r: r.local_rank):
        due = deadline(r, limits, now)
        if now >= due:
            hung.append(r.local_rank)
        else:
            pending.append(due)
    return Verdict(tuple(hung), True, min(pending) if pending else None)
