"""How a round and the job end: failures, success, a stop, leaving, the outcome record.

:class:`Outcomes` reads (and completes) the job's outcome; :class:`Ending` does
what the agent reports: a failure, a success, a stop, leaving on a signal,
stepping out when unhealthy. The decisions are the budget's
(:mod:`corral.rendezvous.protocol.budget`); a failure report's loop is the reducer
:mod:`corral.rendezvous.protocol.failing`, which :meth:`Ending.report_failure` drives.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from corral.core.errors import JobFailed, JobStopped, RendezvousClosed, RendezvousError, signal_name
from corral.core.events import RoundOpened
from corral.core.failures import FailureReport
from corral.core.model import ChangeKind, Decision, RoundChange, RoundInfo
from corral.rendezvous.driver.quarantine import Quarantines
from corral.rendezvous.driver.session import Session
from corral.rendezvous.protocol import budget, failing
from corral.rendezvous.protocol.records import (
    REASON_FAILURE,
    REASON_JOB_ENDED,
    REASON_MEMBER_LOST,
    REASON_NODE_WAITING,
    Outcome,
    RoundPointer,
)

if TYPE_CHECKING:
    from corral.rendezvous.driver.running import Running

__all__ = ["Ending", "Outcomes", "change_for"]

log = logging.getLogger("corral.rendezvous.dynamic")  # one logger for the rendezvous

_KINDS = {
    REASON_FAILURE: ChangeKind.FAILURE,
    REASON_MEMBER_LOST: ChangeKind.MEMBER_LOST,
    REASON_NODE_WAITING: ChangeKind.NODE_WAITING,
    REASON_JOB_ENDED: ChangeKind.JOB_ENDED,
}


def change_for(p: RoundPointer) -> RoundChange:
    """The change a pointer means to the agent (its reason, round and detail)."""
    return RoundChange(_KINDS.get(p.reason, ChangeKind.MEMBER_LOST), p.round, p.detail)


class Outcomes:
    """The job's outcome as this node reads it."""

    def __init__(self, session: Session) -> None:
        self._s = session

    async def change_of(self, ptr: RoundPointer) -> RoundChange:
        """The change a new pointer means; a job stopped by a signal carries the signal."""
        change = change_for(ptr)
        if ptr.reason == REASON_JOB_ENDED and ptr.detail == "stopped":
            out = await self._s.store.outcome()
            if out is not None and out.stopped:
                return replace(
                    change, detail=out.stop_text, stop_signal=out.signal, stop_node=out.node
                )
        return change

    async def outcome(self) -> Outcome | None:
        """The job's outcome, if it has one (completing a half-written end)."""
        ptr, _ = await self._s.store.pointer()
        if ptr.reason != REASON_JOB_ENDED:
            return None
        return await self._s.store.outcome_of(ptr)

    async def raise_outcome(self, ptr: RoundPointer) -> None:
        """Raise what a join of an ended job raises (``ptr``: the terminal pointer)."""
        out = await self._s.store.outcome_of(ptr)
        run_id = self._s.run_id
        if out.succeeded:
            raise RendezvousClosed(f"run {run_id!r} already succeeded (round {out.round})")
        if out.stopped:
            raise JobStopped(out.signal, out.node)
        rc = out.root_cause
        if rc is not None and rc.lost and rc.message:
            cause = f": {rc.message}"  # a whole node lost, named in the message
        elif rc is not None:
            cause = f": rank {rc.rank} on {rc.host or rc.node_id} (exit {rc.exitcode})"
        else:
            cause = ""
        raise JobFailed(f"run {run_id!r} failed in round {out.round}{cause}", rc, out.exit_code)


class Ending:
    """What the agent reports about a round: failures, success, a stop, leaving."""

    def __init__(
        self, session: Session, running: Running, outcomes: Outcomes, quarantines: Quarantines
    ) -> None:
        self._s = session
        self._running = running
        self._outcomes = outcomes
        self._quarantines = quarantines

    async def report_failure(
        self, rnd: RoundInfo, failures: list[FailureReport], *, final: bool = False
    ) -> tuple[Decision, FailureReport | None]:
        """Publish failures of ``rnd`` and decide job-wide (see :class:`Rendezvous`).

        ``final``: end the job in failure now, whatever the budget (a policy gave up).
        """
        s, store, k = self._s, self._s.store, self._s.keys
        r = rnd.round
        state, effects = failing.start_failing(
            r, s.node_id, s.budget.max_restarts, s.budget.no_restart_code, final=final
        )
        while True:
            event: failing.Event | None = None
            for effect in effects:
                match effect:
                    case failing.CheckMember():
                        event = failing.MemberChecked(await s.lease.still_member())
                    case failing.Publish():
                        for f in failures:
                            await store.create(k.failure(r, s.node_id, f.local_rank), f.to_json())
                    case failing.ReadRoot():
                        event = failing.RootRead((await store.failed(r)).root_cause)
                    case failing.ReadPointer():
                        event = failing.PointerRead(*await store.pointer())
                    case failing.ReadEnded(pointer=ptr):
                        event = failing.EndedRead(await store.outcome_of(ptr))
                    case failing.FixOutcome():
                        out = await store.failed(r)
                        await store.create(k.outcome, out.to_json())
                    case failing.Judge(pointer=ptr):
                        verdict = await self._quarantines.judge(rnd, ptr)
                        event = failing.Judged(verdict.cause, verdict.streak, verdict.record)
                    case failing.RecordQuarantine(record=rec, next_round=nxt):
                        await self._quarantines.record(rec, nxt)
                    case failing.CasPointer(new=new, revision=rev):
                        event = failing.CasResult(await store.cas_pointer(new, rev))
                    case failing.Opened(round=nxt, detail=detail):
                        log.info("round %d failed; job restarts as round %d", r, nxt)
                        s.emit(RoundOpened, nxt, reason=REASON_FAILURE, detail=detail)
                    case failing.Warn(line=line):
                        log.warning("%s", line)
                    case failing.Decided(decision=decision, root=root):
                        return decision, root
                    case failing.Stopped(signal=signum, node=node):
                        raise JobStopped(signum, node)
                    case failing.GiveUp():
                        raise RendezvousError(
                            "report_failure: the round pointer kept changing "
                            f"({failing.ATTEMPTS} attempts)"
                        )
            assert event is not None, f"no event after {effects}"
            state, effects = failing.failing_step(state, event)

    async def report_success(self, rnd: RoundInfo) -> RoundChange | None:
        """Mark this node done in ``rnd``; wait until every member is (None) or the round changes."""
        s = self._s
        await s.store.create(s.keys.done_key(rnd.round, s.node_id), b"{}")
        change = await self._running.watch(rnd, done=True)
        if change.kind is ChangeKind.JOB_ENDED:
            out = await s.store.outcome()
            if out is not None and out.succeeded:
                return None
        return change

    async def report_stop(self, signum: int, node: str) -> Outcome:
        """Stop the whole job: handled signal ``signum`` reached ``node`` (``--on-signal stop``).

        Writes the stopped outcome (create-only: an outcome already there wins
        and is returned), then moves the round pointer to the job's end, so
        that every agent's :meth:`watch_round` returns JOB_ENDED with
        ``stop_signal`` at once, and a join or a failure report raises
        JobStopped. No restart is attempted or counted.
        """
        store = self._s.store
        ptr, _ = await store.pointer()
        out = Outcome("stopped", ptr.round, None, 128 + signum, signal=signum, node=node)
        res = await store.create(self._s.keys.outcome, out.to_json())
        if not res.succeeded and res.kv is not None:
            out = Outcome.from_json(res.kv.value)
        for _ in range(100):
            ptr, rev = await store.pointer()
            if ptr.reason == REASON_JOB_ENDED:
                return out
            if await store.cas_pointer(budget.end_pointer(ptr, "stopped"), rev):
                log.debug("job %s", out.stop_text if out.stopped else out.status)
                return out
        raise RendezvousError("report_stop: the round pointer kept changing (100 attempts)")

    async def leave(self, rnd: RoundInfo, signum: int, node: str) -> Outcome | None:
        """Leave the job on handled signal ``signum`` (``--on-signal leave``); the caller
        then closes the handle.

        A scale-down: the others restart without this node (a restart, counted
        as any other). When the members of ``rnd`` not gone on a signal would
        be fewer than MIN, or no restart is left, the job is stopped instead
        (:meth:`report_stop`) and its outcome returned; None when the node left.
        Each leaver marks itself under ``r/<r>/left/`` before it counts, so of
        several leaving at once the last to count sees them all.
        """
        s, store = self._s, self._s.store
        r = rnd.round
        await store.create(s.keys.left_key(r, s.node_id), node.encode())
        left, _ = await store.range(s.keys.left(r))
        ptr, rev = s.pointers.get(r) or await store.pointer()
        if rnd.group_world_size - len(left) < s.min_nodes or not budget.budget_left(
            ptr, s.budget.max_restarts
        ):
            return await self.report_stop(signum, node)
        if ptr.round == r:
            name = signal_name(signum)
            new = budget.next_pointer(ptr, REASON_MEMBER_LOST, f"node {node} left on {name}")
            if await store.cas_pointer(new, rev):
                log.info("node %s leaves round %d on %s; the job goes on", node, r, name)
        return None

    async def step_out(self, rnd: RoundInfo, reason: str) -> RoundChange:
        """Leave running round ``rnd`` because this node is unhealthy, but stay in the job.

        ``--health-check`` (docs/health.md): a membership change like a lost
        member, counted as a restart; the others restart without this node. The
        node marks itself under ``r/<r>/left/`` (its value: ``reason``, the check and
        its output, which only that node logs) first. Unlike
        :meth:`leave`, the handle stays open (its lease too): the node joins a later
        round once healthy, as a new node. With no restart left, the job fails with
        this node, lost, as its root cause. Returns the change that ended ``rnd``.
        """
        s = self._s
        r = rnd.round
        await s.store.create(s.keys.left_key(r, s.node_id), reason.encode())
        place = s.memberships.get(r)
        if place is None or r not in s.pointers:
            return RoundChange(ChangeKind.MEMBER_LOST, None, "this node is no longer a member")
        where = ", ".join(x for x in (s.node.host, s.node.addr) if x)
        detail = f"node {where} is unhealthy (its --health-check failed)"
        return await self._running.lost(r, place.closed, s.node_id, detail)
