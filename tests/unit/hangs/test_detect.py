"""The detector's decision, table-tested: (ranks, now, limits) -> verdict, no clock, no I/O."""

from __future__ import annotations

import pytest

from corral.hangs.detect import Limits, RankState, Verdict, judge

L = Limits(timeout=5.0, startup=60.0)


def r(local_rank: int, last: float | None = None, started: float = 0.0) -> RankState:
    return RankState(local_rank, started, last, None if last is None else 1)


CASES: list[tuple[str, list[RankState], float, bool, Verdict]] = [
    # (what, ranks, now, armed_before, verdict)
    ("no rank", [], 100.0, True, Verdict((), True, None)),
    ("nothing marked ever: never hung", [r(0), r(1)], 10_000.0, False, Verdict((), False, None)),
    ("marks, all fresh", [r(0, 10.0), r(1, 12.0)], 13.0, False, Verdict((), True, 15.0)),
    ("one rank past the timeout", [r(0, 10.0), r(1, 5.0)], 10.0, False, Verdict((1,), True, 15.0)),
    ("exactly at the timeout is hung", [r(0, 5.0)], 10.0, False, Verdict((0,), True, None)),
    ("just before the timeout", [r(0, 5.0)], 9.999, False, Verdict((), True, 10.0)),
    # the startup allowance: a rank with no mark yet, once another rank marked
    ("slow first step < startup", [r(0, 30.0), r(1)], 31.0, False, Verdict((), True, 35.0)),
    ("no first step within startup", [r(0, 58.0), r(1)], 60.0, False, Verdict((1,), True, 63.0)),
    # armed by an earlier attempt: the startup allowance runs from the start
    ("earlier attempt: slow start", [r(0), r(1)], 59.0, True, Verdict((), True, 60.0)),
    (
        "earlier attempt: stuck start",
        [r(0, started=1.0), r(1)],
        60.0,
        True,
        Verdict((1,), True, 61.0),
    ),
    # a mark stamped after `now` (clock read order) counts as now, not as the future
    ("mark from the future", [r(0, 20.0)], 10.0, False, Verdict((), True, 15.0)),
    ("every rank hung", [r(1, 1.0), r(0, 2.0)], 8.0, False, Verdict((0, 1), True, None)),
]


@pytest.mark.parametrize(
    ("ranks", "now", "armed", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_judge(ranks: list[RankState], now: float, armed: bool, expected: Verdict) -> None:
    assert judge(ranks, now, L, armed_before=armed) == expected


def test_a_slow_start_is_not_a_hang_until_the_startup_allowance() -> None:
    """Walk a fake timeline: a first step longer than the timeout but shorter than startup."""
    limits = Limits(timeout=2.0, startup=20.0)
    ranks = [r(0), r(1)]
    for now in (0.0, 2.0, 4.0, 10.0, 19.0):  # nobody marked yet (the slow first step)
        assert judge(ranks, now, limits, armed_before=True).hung == ()
    ranks = [r(0, 19.5), r(1, 19.5)]
    assert judge(ranks, 21.0, limits).hung == ()
    assert judge(ranks, 21.5, limits).hung == (0, 1)


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        Limits(timeout=0.0)
    with pytest.raises(ValueError, match="must be > 0"):
        Limits(timeout=1.0, startup=-1.0)
