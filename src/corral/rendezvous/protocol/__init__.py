"""The rendezvous protocol: records and pure reducers, one module per role.

Nothing in this package does I/O, reads a clock (time comes in events), uses
asyncio or logs. The driver (:mod:`corral.rendezvous.driver`) runs their
effects through the store and feeds what the store says back in.

* :mod:`.records`: the values kept in the store (versioned JSON), frozen dataclasses;
* the reducers' states, events and effects are frozen ``msgspec.Struct`` values,
  not dataclasses: docs/design.md, "The values they exchange", says why;
* :mod:`.ranks`: how a closed round's members are ranked, what each member reads;
* :mod:`.joiner`: the joiner's reducer (a node's path from the pointer to its place,
  a spare's wait, the wait for the next round);
* :mod:`.closer`: the closer's reducer (when a round closes, with whom);
* :mod:`.member`: a running member's reducer (predecessor, success, scale-up);
* :mod:`.failing`: a failure report's reducer (publish, then restart or end the job);
* :mod:`.budget`: the restart budget (pointer moves, failure steps, spares, the
  job's budget adopted from the first pointer).

The names below are an index of the package (``protocol.close_decision``).
"""

from corral.rendezvous.protocol.budget import (
    RESTART_REASONS,
    Budget,
    BudgetDiffers,
    FailureAction,
    FailureStep,
    ScaleUp,
    adopt_budget,
    budget_left,
    end_pointer,
    ends_without_restart,
    failure_action,
    failure_step,
    failure_streak,
    is_spare,
    job_budget,
    lost_node_report,
    next_pointer,
    quarantine_wanted,
    restart_step,
    restarts_text,
    root_cause,
    scale_up_step,
    scale_up_wanted,
    waiting_line,
)
from corral.rendezvous.protocol.closer import (
    CloseDecision,
    CloseParams,
    CloserState,
    close_decision,
    close_step,
    start_closing,
)
from corral.rendezvous.protocol.failing import FailingState, failing_step, start_failing
from corral.rendezvous.protocol.joiner import (
    AfterJoin,
    JoinerState,
    JoinStep,
    after_join,
    join_step,
    joiner_step,
    start_join,
    start_waiting,
    waiting_target,
)
from corral.rendezvous.protocol.member import (
    MemberState,
    PredecessorGone,
    member_step,
    predecessor_gone,
    start_member,
)
from corral.rendezvous.protocol.ranks import (
    Joiner,
    assign_ranks,
    assignments,
    fixed_ranks,
    rank_tables,
    round_info,
    round_info_of,
    slot_holders,
)

__all__ = [
    "RESTART_REASONS",
    "AfterJoin",
    "Budget",
    "BudgetDiffers",
    "CloseDecision",
    "CloseParams",
    "CloserState",
    "FailingState",
    "FailureAction",
    "FailureStep",
    "JoinStep",
    "Joiner",
    "JoinerState",
    "MemberState",
    "PredecessorGone",
    "ScaleUp",
    "adopt_budget",
    "after_join",
    "assign_ranks",
    "assignments",
    "budget_left",
    "close_decision",
    "close_step",
    "end_pointer",
    "ends_without_restart",
    "failing_step",
    "failure_action",
    "failure_step",
    "failure_streak",
    "fixed_ranks",
    "is_spare",
    "job_budget",
    "join_step",
    "joiner_step",
    "lost_node_report",
    "member_step",
    "next_pointer",
    "predecessor_gone",
    "quarantine_wanted",
    "rank_tables",
    "restart_step",
    "restarts_text",
    "root_cause",
    "round_info",
    "round_info_of",
    "scale_up_step",
    "scale_up_wanted",
    "slot_holders",
    "start_closing",
    "start_failing",
    "start_join",
    "start_member",
    "start_waiting",
    "waiting_line",
    "waiting_target",
]
