"""The shell's pure decisions, table-driven (corral.rendezvous.protocol)."""

from __future__ import annotations

import pytest

from corral.core.errors import RendezvousError
from corral.rendezvous.protocol import (
    AfterJoin,
    FailureAction,
    FailureStep,
    JoinStep,
    PredecessorGone,
    after_join,
    failure_action,
    join_step,
    predecessor_gone,
    waiting_target,
)
from corral.rendezvous.protocol.records import REASON_FAILURE, REASON_JOB_ENDED, RoundPointer

P3 = RoundPointer(3, 1, REASON_FAILURE)
ENDED = RoundPointer(4, 1, REASON_JOB_ENDED, "failed")


@pytest.mark.parametrize(
    ("r", "created", "existing", "pointer", "want"),
    [
        (3, True, None, P3, JoinStep.JOINED),
        (3, False, 7, P3, JoinStep.JOINED),  # our own key from a join cut short: same lease
        (3, False, 8, P3, JoinStep.ID_IN_USE),  # another live agent holds this id
        (2, True, None, P3, JoinStep.MOVE),  # the job is at round 3
        (5, True, None, P3, JoinStep.MOVE),  # a guess too far ahead
        (4, True, None, ENDED, JoinStep.JOB_ENDED),
        (3, True, None, ENDED, JoinStep.JOB_ENDED),
        (3, False, 8, ENDED, JoinStep.ID_IN_USE),  # the conflict is named first
    ],
)
def test_join_step(
    r: int, created: bool, existing: int | None, pointer: RoundPointer, want: JoinStep
) -> None:
    assert join_step(r, 7, created, existing, pointer) is want


@pytest.mark.parametrize(
    ("closed", "closer", "want"),
    [
        (True, True, AfterJoin.CLOSED),
        (True, False, AfterJoin.CLOSED),
        (False, True, AfterJoin.CLOSE),
        (False, False, AfterJoin.FOLLOW),
    ],
)
def test_after_join(closed: bool, closer: bool, want: AfterJoin) -> None:
    assert after_join(closed, closer) is want


MEMBERS = ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("gone", "rank", "gone_done", "done", "coord", "want"),
    [
        ("a", 1, False, False, False, PredecessorGone(lost=True)),
        ("a", 1, False, True, False, PredecessorGone(lost=True)),
        ("a", 1, True, False, False, PredecessorGone(False, "d")),  # wraps around the ring
        ("c", 3, True, False, False, PredecessorGone(False, "b")),
        ("c", 3, True, True, False, PredecessorGone(False, "b", coordinate=True)),
        ("c", 3, True, True, True, PredecessorGone(False, "b")),  # coordinates already
        ("a", 1, True, True, False, PredecessorGone(False, "d", coordinate=True)),
    ],
)
def test_predecessor_gone(
    gone: str, rank: int, gone_done: bool, done: bool, coord: bool, want: PredecessorGone
) -> None:
    assert predecessor_gone(MEMBERS, gone, rank, gone_done, done, coord) == want


def test_a_done_predecessor_not_in_the_list_is_an_error() -> None:
    with pytest.raises(RendezvousError, match="not in the member list"):
        predecessor_gone(MEMBERS, "z", 1, True, False, False)
    assert predecessor_gone([], "z", 1, False, False, False).lost  # lost: no list needed


def test_predecessor_gone_with_nobody_left_before_me() -> None:
    assert predecessor_gone(["a", "b"], "a", 1, True, True, False) == PredecessorGone(
        False, None, coordinate=True
    )


@pytest.mark.parametrize(
    ("step", "final", "want"),
    [
        (FailureStep.RESTART, False, FailureAction.RESTART),
        (FailureStep.RESTART, True, FailureAction.END),  # a policy gave up
        (FailureStep.FAIL, False, FailureAction.END),
        (FailureStep.FAIL, True, FailureAction.END),
        (FailureStep.ALREADY_MOVED, False, FailureAction.JOB_MOVED_ON),
        (FailureStep.ALREADY_MOVED, True, FailureAction.FIX_OUTCOME),
    ],
)
def test_failure_action(step: FailureStep, final: bool, want: FailureAction) -> None:
    assert failure_action(step, final) is want


@pytest.mark.parametrize(
    ("members", "live", "want"),
    [
        (["a", "b"], ["a", "b"], "a"),
        (["a", "b"], ["x", "b", "a"], "b"),  # x joined a later round: not a member
        (["a", "b"], ["x"], None),  # every member gone: start the next round itself
        (["a"], [], None),
    ],
)
def test_waiting_target(members: list[str], live: list[str], want: str | None) -> None:
    assert waiting_target(members, live) == want
