"""How a round and the job end: failures, success, a stop, leaving, the outcome record.

Functions of a :class:`~corral.rendezvous.dynamic.DynamicRendezvous`
(``rd``), which delegates to them; they read and write its state.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from corral.core.errors import JobFailed, JobStopped, RendezvousClosed, RendezvousError, signal_name
from corral.core.events import RoundOpened
from corral.core.failures import FailureReport
from corral.core.model import ChangeKind, Decision, RoundChange, RoundInfo
from corral.rendezvous import _lease, _quarantine
from corral.rendezvous import decide as d
from corral.rendezvous import machine as m
from corral.rendezvous._common import change_for
from corral.rendezvous.state import (
    REASON_FAILURE,
    REASON_JOB_ENDED,
    REASON_MEMBER_LOST,
    Outcome,
    RoundPointer,
)

if TYPE_CHECKING:
    from corral.rendezvous.dynamic import DynamicRendezvous

log = logging.getLogger("corral.rendezvous.dynamic")  # one logger for the rendezvous


async def report_failure(
    rd: DynamicRendezvous, rnd: RoundInfo, failures: list[FailureReport], *, final: bool = False
) -> tuple[Decision, FailureReport | None]:
    """Publish failures of ``rnd`` and decide job-wide (see :class:`Rendezvous`).

    ``final``: end the job in failure now, whatever the budget (a policy gave up).
    """
    r = rnd.round
    if not await _lease.still_member(rd):  # a zombie (fenced, evicted) writes nothing
        log.warning(
            "round %d: this node is no longer a member; its failures are not published "
            "(it rejoins as a new node)",
            r,
        )
        return Decision.RESTART, None
    for f in failures:
        await rd._ops.create(rd._k.failure(r, rd._node.node_id, f.local_rank), f.to_json())
    if not final and rd._no_restart_code > 0:
        # The round's root cause, read after this node's reports are in, is final:
        # a report created later has a later revision. So every node decides alike.
        root = (await rd._ops.failed(r)).root_cause
        if root is not None and m.ends_without_restart(root, rd._no_restart_code):
            log.warning(
                "round %d: worker rank %d exited with %d (--no-restart-exit-code): "
                "the job ends without a restart",
                r, root.rank, root.exitcode,
            )  # fmt: skip
            final = True
    for _ in range(100):
        ptr, rev = await rd._ops.pointer()
        if ptr.reason == REASON_JOB_ENDED:
            out = await rd._ops.outcome_of(ptr)
            if out.succeeded:
                return Decision.RESTART, None  # cannot happen: a success needs every member
            if out.stopped:  # a handled signal stopped the job meanwhile: not a failure
                raise JobStopped(out.signal, out.node)
            return Decision.FAIL, out.root_cause
        action = d.failure_action(m.failure_step(r, ptr, rd._max_restarts), final)
        if action is d.FailureAction.JOB_MOVED_ON:
            return Decision.RESTART, None
        if action is d.FailureAction.FIX_OUTCOME:
            # the job moved on without this round's outcome: fix the outcome on
            # round r's failures first, then end the job from where it is now
            out = await rd._ops.failed(r)
            await rd._ops.create(rd._k.outcome, out.to_json())
        if action is d.FailureAction.RESTART:
            detail = f"failure on {rd._node.node_id} in round {r}"
            cause, streak, out_ = await _quarantine.judge(rd, rnd, ptr)  # --quarantine-after
            if out_ is not None:  # written before the pointer moves: it cannot rejoin
                await _quarantine.record(rd, out_, ptr.round + 1)
                detail += f"; node {out_.addr} quarantined"
            new = m.next_pointer(ptr, REASON_FAILURE, detail, cause=cause, streak=streak)
            if await rd._ops.cas_pointer(new, rev):
                log.info("round %d failed; job restarts as round %d", r, new.round)
                rd._emit(RoundOpened, new.round, reason=REASON_FAILURE, detail=detail)
                return Decision.RESTART, None
            continue
        end = m.end_pointer(ptr, "failed")
        if await rd._ops.cas_pointer(end, rev):
            out = await rd._ops.outcome_of(end)
            return Decision.FAIL, out.root_cause
    raise RendezvousError("report_failure: the round pointer kept changing (100 attempts)")


async def report_success(rd: DynamicRendezvous, rnd: RoundInfo) -> RoundChange | None:
    """Mark this node done in ``rnd``; wait until every member is (None) or the round changes."""
    await rd._ops.create(rd._k.done_key(rnd.round, rd._node.node_id), b"{}")
    change = await rd._watch(rnd, done=True)
    if change.kind is ChangeKind.JOB_ENDED:
        out = await rd._ops.outcome()
        if out is not None and out.succeeded:
            return None
    return change


async def report_stop(rd: DynamicRendezvous, signum: int, node: str) -> Outcome:
    """Stop the whole job: handled signal ``signum`` reached ``node`` (``--on-signal stop``).

    Writes the stopped outcome (create-only: an outcome already there wins
    and is returned), then moves the round pointer to the job's end, so
    that every agent's :meth:`watch_round` returns JOB_ENDED with
    ``stop_signal`` at once, and a join or a failure report raises
    JobStopped. No restart is attempted or counted.
    """
    ptr, _ = await rd._ops.pointer()
    out = Outcome("stopped", ptr.round, None, 128 + signum, signal=signum, node=node)
    res = await rd._ops.create(rd._k.outcome, out.to_json())
    if not res.succeeded and res.kv is not None:
        out = Outcome.from_json(res.kv.value)
    for _ in range(100):
        ptr, rev = await rd._ops.pointer()
        if ptr.reason == REASON_JOB_ENDED:
            return out
        if await rd._ops.cas_pointer(m.end_pointer(ptr, "stopped"), rev):
            log.debug("job %s", out.stop_text if out.stopped else out.status)
            return out
    raise RendezvousError("report_stop: the round pointer kept changing (100 attempts)")


async def leave(rd: DynamicRendezvous, rnd: RoundInfo, signum: int, node: str) -> Outcome | None:
    """Leave the job on handled signal ``signum`` (``--on-signal leave``), then close.

    A scale-down: the others restart without this node (a restart, counted
    as any other). When the members of ``rnd`` not gone on a signal would
    be fewer than MIN, or no restart is left, the job is stopped instead
    (:meth:`report_stop`) and its outcome returned; None when the node left.
    Each leaver marks itself under ``r/<r>/left/`` before it counts, so of
    several leaving at once the last to count sees them all.
    """
    r = rnd.round
    me = rd._node.node_id
    await rd._ops.create(rd._k.left_key(r, me), node.encode())
    left, _ = await rd._ops.range(rd._k.left(r))
    ptr, rev = rd._pointers.get(r) or await rd._ops.pointer()
    if rnd.group_world_size - len(left) < rd._min or not m.budget_left(ptr, rd._max_restarts):
        return await rd.report_stop(signum, node)
    if ptr.round == r:
        name = signal_name(signum)
        new = m.next_pointer(ptr, REASON_MEMBER_LOST, f"node {node} left on {name}")
        if await rd._ops.cas_pointer(new, rev):
            log.info("node %s leaves round %d on %s; the job goes on", node, r, name)
    await rd.close()
    return None


async def change_of(rd: DynamicRendezvous, ptr: RoundPointer) -> RoundChange:
    """The change a new pointer means; a job stopped by a signal carries the signal."""
    change = change_for(ptr)
    if ptr.reason == REASON_JOB_ENDED and ptr.detail == "stopped":
        out = await rd._ops.outcome()
        if out is not None and out.stopped:
            return replace(change, detail=out.stop_text, stop_signal=out.signal, stop_node=out.node)
    return change


async def outcome(rd: DynamicRendezvous) -> Outcome | None:
    """The job's outcome, if it has one (completing a half-written end)."""
    ptr, _ = await rd._ops.pointer()
    if ptr.reason != REASON_JOB_ENDED:
        return None
    return await rd._ops.outcome_of(ptr)


async def raise_outcome(rd: DynamicRendezvous, ptr: RoundPointer) -> None:
    out = await rd._ops.outcome_of(ptr)
    if out.succeeded:
        raise RendezvousClosed(f"run {rd._run_id!r} already succeeded (round {out.round})")
    if out.stopped:
        raise JobStopped(out.signal, out.node)
    rc = out.root_cause
    if rc is not None and rc.lost and rc.message:
        cause = f": {rc.message}"  # a whole node lost, named in the message
    elif rc is not None:
        cause = f": rank {rc.rank} on {rc.host or rc.node_id} (exit {rc.exitcode})"
    else:
        cause = ""
    raise JobFailed(f"run {rd._run_id!r} failed in round {out.round}{cause}", rc, out.exit_code)


async def step_out(rd: DynamicRendezvous, rnd: RoundInfo, reason: str) -> RoundChange:
    """Leave running round ``rnd`` because this node is unhealthy, but stay in the job.

    ``--health-check`` (docs/health.md): a membership change like a lost
    member, counted as a restart; the others restart without this node. The
    node marks itself under ``r/<r>/left/`` (its value: ``reason``, the check and
    its output, which only that node logs) first. Unlike
    :func:`leave`, the handle stays open (its lease too): the node joins a later
    round once healthy, as a new node. With no restart left, the job fails with
    this node, lost, as its root cause. Returns the change that ended ``rnd``.
    """
    r = rnd.round
    me = rd._node.node_id
    await rd._ops.create(rd._k.left_key(r, me), reason.encode())
    entry = rd._closed.get(r)
    if entry is None or r not in rd._pointers:
        return RoundChange(ChangeKind.MEMBER_LOST, None, "this node is no longer a member")
    where = ", ".join(x for x in (rd._node.host, rd._node.addr) if x)
    return await rd._lost(r, entry[0], me, f"node {where} is unhealthy (its --health-check failed)")
