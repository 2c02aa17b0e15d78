"""A node's report of a failed round, as a reducer: ``failing_step(state, event) -> (state, [effect])``.

A node whose workers failed in round r publishes its failure reports, then
decides job-wide with the round pointer (compare-and-set, so every node agrees):
restart as round r+1 (one restart counted), or end the job in failure, or
follow a decision already made (a later round, the job's end). The turn of the
loop is :func:`corral.rendezvous.protocol.budget.failure_action`; this reducer
holds the loop around it: the fencing of a node that is no longer a member,
``--no-restart-exit-code``, the quarantine verdict, the outcome a late final
report fixes, and the bound on attempts when the pointer keeps changing.

The driver (:meth:`corral.rendezvous.driver.ending.Ending.report_failure`)
performs each effect and feeds back what the store said. Pure: no I/O, no clock
reads, no asyncio, no logging.
"""

from __future__ import annotations

from msgspec import Struct
from msgspec.structs import replace

from corral.core.failures import FailureReport
from corral.core.model import Decision
from corral.rendezvous.protocol.budget import (
    FailureAction,
    end_pointer,
    ends_without_restart,
    failure_action,
    failure_step,
    next_pointer,
)
from corral.rendezvous.protocol.records import (
    REASON_FAILURE,
    REASON_JOB_ENDED,
    Outcome,
    Quarantine,
    RoundPointer,
)

__all__ = [
    "ATTEMPTS",
    "CasPointer",
    "CasResult",
    "CheckMember",
    "Decided",
    "Effect",
    "EndedRead",
    "Event",
    "FailingState",
    "FixOutcome",
    "GiveUp",
    "Judge",
    "Judged",
    "MemberChecked",
    "Opened",
    "PointerRead",
    "Publish",
    "ReadEnded",
    "ReadPointer",
    "ReadRoot",
    "RecordQuarantine",
    "RootRead",
    "Stopped",
    "Warn",
    "failing_step",
    "start_failing",
]

ATTEMPTS = 100  # pointer reads before giving up (it kept changing)


class FailingState(Struct, frozen=True, gc=False):
    """One failure report's loop for round ``round``.

    Attributes:
        node_id: this node.
        max_restarts, no_restart_code: the job's budget.
        final: end the job now, whatever the budget (a policy gave up, or
            ``--no-restart-exit-code``).
        attempts: pointer reads so far.
        pointer, revision: the pointer as last read.
        end: the terminal pointer this node wrote (its outcome is the answer).
        detail: the restart's detail (with the quarantine), once judged.
    """

    round: int
    node_id: str
    max_restarts: int
    no_restart_code: int
    final: bool
    attempts: int = 0
    pointer: RoundPointer | None = None
    revision: int = 0
    end: RoundPointer | None = None
    detail: str = ""


# --- events -----------------------------------------------------------------------------


class MemberChecked(Struct, frozen=True, gc=False):
    """Whether this node is still a member (its lease, its membership)."""

    member: bool


class RootRead(Struct, frozen=True, gc=False):
    """The round's root cause, read after this node's reports are in."""

    root: FailureReport | None


class PointerRead(Struct, frozen=True, gc=False):
    pointer: RoundPointer
    revision: int


class EndedRead(Struct, frozen=True, gc=False):
    """The job's outcome (its pointer is terminal)."""

    outcome: Outcome


class Judged(Struct, frozen=True, gc=False):
    """The quarantine verdict on the round's root cause (its address, failures in a
    row, and the record when it is quarantined now)."""

    cause: str = ""
    streak: int = 0
    record: Quarantine | None = None


class CasResult(Struct, frozen=True, gc=False):
    succeeded: bool


Event = MemberChecked | RootRead | PointerRead | EndedRead | Judged | CasResult


# --- effects ----------------------------------------------------------------------------


class CheckMember(Struct, frozen=True, gc=False):
    """Is this node still a member? (-> MemberChecked)"""


class Publish(Struct, frozen=True, gc=False):
    """Create this node's failure reports of the round (nothing comes back)."""


class ReadRoot(Struct, frozen=True, gc=False):
    """Read the round's root cause (-> RootRead)."""


class ReadPointer(Struct, frozen=True, gc=False):
    """Read the round pointer (-> PointerRead)."""


class ReadEnded(Struct, frozen=True, gc=False):
    """Read (or complete) the outcome of the job ended at ``pointer`` (-> EndedRead)."""

    pointer: RoundPointer


class FixOutcome(Struct, frozen=True, gc=False):
    """Write the outcome from the round's failures (create-only; nothing comes back)."""


class Judge(Struct, frozen=True, gc=False):
    """Judge the round's root cause for quarantine, before moving ``pointer`` (-> Judged)."""

    pointer: RoundPointer


class RecordQuarantine(Struct, frozen=True, gc=False):
    """Write ``record`` before the pointer moves to ``next_round`` (nothing comes back)."""

    record: Quarantine
    next_round: int


class CasPointer(Struct, frozen=True, gc=False):
    """Move the pointer to ``new`` if it is still at ``revision`` (-> CasResult)."""

    new: RoundPointer
    revision: int


class Opened(Struct, frozen=True, gc=False):
    """This node moved the job to restart round ``round`` (a log line, RoundOpened)."""

    round: int
    detail: str


class Warn(Struct, frozen=True, gc=False):
    line: str


class Decided(Struct, frozen=True, gc=False):
    """The end: the decision, and the job's root cause when it failed."""

    decision: Decision
    root: FailureReport | None = None


class Stopped(Struct, frozen=True, gc=False):
    """A handled signal stopped the job meanwhile: raise JobStopped."""

    signal: int
    node: str


class GiveUp(Struct, frozen=True, gc=False):
    """The pointer kept changing: raise RendezvousError."""


Effect = (
    CheckMember
    | Publish
    | ReadRoot
    | ReadPointer
    | ReadEnded
    | FixOutcome
    | Judge
    | RecordQuarantine
    | CasPointer
    | Opened
    | Warn
    | Decided
    | Stopped
    | GiveUp
)


def start_failing(
    r: int, node_id: str, max_restarts: int, no_restart_code: int, *, final: bool
) -> tuple[FailingState, list[Effect]]:
    """The loop for failures of round ``r`` (``final``: end the job whatever the budget)."""
    return FailingState(r, node_id, max_restarts, no_restart_code, final), [CheckMember()]


def failing_step(state: FailingState, event: Event) -> tuple[FailingState, list[Effect]]:
    """Decide on one event of the failure report (see the module docstring)."""
    r = state.round
    if isinstance(event, MemberChecked):
        if not event.member:  # a zombie (fenced, evicted) writes nothing
            line = (
                f"round {r}: this node is no longer a member; its failures are not "
                "published (it rejoins as a new node)"
            )
            return state, [Warn(line), Decided(Decision.RESTART)]
        if not state.final and state.no_restart_code > 0:
            # The round's root cause, read after this node's reports are in, is final:
            # a report created later has a later revision. So every node decides alike.
            return state, [Publish(), ReadRoot()]
        return state, [Publish(), ReadPointer()]
    if isinstance(event, RootRead):
        root = event.root
        if root is not None and ends_without_restart(root, state.no_restart_code):
            line = (
                f"round {r}: worker rank {root.rank} exited with {root.exitcode} "
                "(--no-restart-exit-code): the job ends without a restart"
            )
            return replace(state, final=True), [Warn(line), ReadPointer()]
        return state, [ReadPointer()]
    if isinstance(event, PointerRead):
        return _turn(replace(state, pointer=event.pointer, revision=event.revision))
    if isinstance(event, EndedRead):
        out = event.outcome
        if state.end is not None:  # this node ended the job
            return state, [Decided(Decision.FAIL, out.root_cause)]
        if out.succeeded:
            return state, [Decided(Decision.RESTART)]  # cannot happen: a success needs every member
        if out.stopped:  # a handled signal stopped the job meanwhile: not a failure
            return state, [Stopped(out.signal, out.node)]
        return state, [Decided(Decision.FAIL, out.root_cause)]
    ptr = state.pointer
    assert ptr is not None
    if isinstance(event, Judged):
        detail = f"failure on {state.node_id} in round {r}"
        effects: list[Effect] = []
        if event.record is not None:  # written before the pointer moves
            effects.append(RecordQuarantine(event.record, ptr.round + 1))
            detail += f"; node {event.record.addr} quarantined"
        new = next_pointer(ptr, REASON_FAILURE, detail, cause=event.cause, streak=event.streak)
        return replace(state, detail=detail), [*effects, CasPointer(new, state.revision)]
    # CasResult
    if not event.succeeded:
        return _read_again(state)
    if state.end is not None:
        return state, [ReadEnded(state.end)]
    return state, [Opened(ptr.round + 1, state.detail), Decided(Decision.RESTART)]


def _read_again(state: FailingState) -> tuple[FailingState, list[Effect]]:
    state = replace(state, end=None, detail="")
    if state.attempts >= ATTEMPTS:
        return state, [GiveUp()]
    return state, [ReadPointer()]


def _turn(state: FailingState) -> tuple[FailingState, list[Effect]]:
    """One turn of the loop, with the pointer just read."""
    ptr = state.pointer
    assert ptr is not None
    state = replace(state, attempts=state.attempts + 1)
    if ptr.reason == REASON_JOB_ENDED:
        return state, [ReadEnded(ptr)]
    step = failure_step(state.round, ptr, state.max_restarts)
    action = failure_action(step, state.final)
    if action is FailureAction.JOB_MOVED_ON:
        return state, [Decided(Decision.RESTART)]
    if action is FailureAction.RESTART:
        return state, [Judge(ptr)]  # --quarantine-after
    effects: list[Effect] = []
    if action is FailureAction.FIX_OUTCOME:
        # the job moved on without this round's outcome: fix the outcome on round
        # r's failures first, then end the job from where it is now
        effects.append(FixOutcome())
    end = end_pointer(ptr, "failed")
    return replace(state, end=end), [*effects, CasPointer(end, state.revision)]
