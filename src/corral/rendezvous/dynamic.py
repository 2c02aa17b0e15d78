"""The dynamic rendezvous: rounds of nodes over any :class:`~corral.store.api.Store`.

The protocol, keys and costs are described in ``docs/rendezvous.md``; the
decisions are the pure functions of :mod:`corral.rendezvous.machine`; this
module only reads the store, calls them, and writes what they decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace

from corral._aio import Background
from corral.clock import Clock, MonotonicClock
from corral.config import RdzvConf
from corral.errors import (
    ConfigError,
    JobFailed,
    JobStopped,
    LeaseNotFound,
    RendezvousClosed,
    RendezvousError,
    RendezvousTimeout,
    StoreCompacted,
    StoreError,
    StoreUnavailable,
)
from corral.events.types import Event, NodeJoined, NodeWaiting, RoundOpened, stamp
from corral.rendezvous import machine as m
from corral.rendezvous._aio import Mux, clock_timeout, free_port, watching
from corral.rendezvous._ops import Ops
from corral.rendezvous.api import ChangeKind, Decision, NodeDesc, RoundChange, RoundInfo
from corral.rendezvous.state import (
    REASON_FAILURE,
    REASON_JOB_ENDED,
    REASON_MEMBER_LOST,
    REASON_NODE_WAITING,
    Assignment,
    ClosedRound,
    Outcome,
    RankTable,
    RoundPointer,
    decode_node,
    encode_node,
    rank_table_count,
    rank_table_of,
)
from corral.reporting.failures import FailureReport
from corral.store.api import EventType, KeyValue, Store, WatchEvent, WriteResult

__all__ = ["DynamicRendezvous"]

log = logging.getLogger(__name__)

_KINDS = {
    REASON_FAILURE: ChangeKind.FAILURE,
    REASON_MEMBER_LOST: ChangeKind.MEMBER_LOST,
    REASON_NODE_WAITING: ChangeKind.NODE_WAITING,
    REASON_JOB_ENDED: ChangeKind.JOB_ENDED,
}


# Closed and member records are immutable, so one decode per value serves
# every handle in this process: simulated nodes (tests, bench) and an agent
# that rejoins. A real node decodes each record once anyway.
_CLOSED_CACHE: dict[bytes, ClosedRound] = {}


def _decode_closed(kv: KeyValue) -> ClosedRound:
    ident = kv.value  # the bytes themselves: never confused across stores
    rec = _CLOSED_CACHE.get(ident)
    if rec is None:
        rec = ClosedRound.from_json(kv.value)
        if len(_CLOSED_CACHE) >= 16:
            _CLOSED_CACHE.pop(next(iter(_CLOSED_CACHE)))
        _CLOSED_CACHE[ident] = rec
    return rec


def _index(members: Sequence[NodeDesc], node_id: str) -> int:
    for i, mm in enumerate(members):
        if mm.node_id == node_id:
            return i
    raise RendezvousError(f"node {node_id!r} is not in the member list")


class _Spare(Exception):  # a signal to join(), not an error
    """Round r runs without this node and no round will admit it while the restart
    budget is spent: join() leaves the join_timeout and waits (``args``: those of
    ``_wait_next_round``), then joins with a fresh join_timeout."""


def _change(p: RoundPointer) -> RoundChange:
    return RoundChange(_KINDS.get(p.reason, ChangeKind.MEMBER_LOST), p.round, p.detail)


class DynamicRendezvous:
    """One node's handle on a job's rendezvous, over any store (see docs/rendezvous.md).

    Args:
        store: the coordination store (shared by every node of the job).
        run_id: the job's id; keys live under ``<conf.prefix>/<run_id>/``.
        node: this node. ``master_port`` 0 means: offer a fresh free port each
            round (found by binding port 0 on ``node.addr``); non-zero is
            offered as is every round (the static backend).
        min_nodes, max_nodes: the round closes with MAX nodes, or MIN after
            the last call, or MIN when every expected node is back.
        max_restarts: restarts of the whole job's worker group, whatever their
            cause (a failure, a lost node, a node that joins); round 0 is none.
        conf: timeouts (join_timeout, last_call_timeout, keep_alive_*,
            read_timeout, settle_time) and the key prefix.
        clock: monotonic clock for the last call, settle window, keep-alive
            and join_timeout (a FakeClock in tests).

        fixed_ranks: group rank = the integer before the first ``-`` of the
            node id (``"3-host-pid"`` is rank 3): the static backend.

    Use as ``async with DynamicRendezvous(...) as rdzv`` or call :meth:`close`.
    """

    def __init__(
        self,
        store: Store,
        *,
        run_id: str,
        node: NodeDesc,
        min_nodes: int,
        max_nodes: int,
        max_restarts: int,
        conf: RdzvConf,
        clock: Clock | None = None,
        fixed_ranks: bool = False,
    ) -> None:
        if min_nodes < 1:
            raise ConfigError(f"min_nodes ({min_nodes}) must be >= 1")
        if max_nodes < min_nodes:
            raise ConfigError(f"max_nodes ({max_nodes}) must be >= min_nodes ({min_nodes})")
        if max_restarts < 0:
            raise ConfigError(f"max_restarts ({max_restarts}) must be >= 0")
        if "/" in node.node_id or not node.node_id:
            raise ConfigError(f"node id {node.node_id!r} must be non-empty and contain no '/'")
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._ops = Ops(store, run_id, conf, max_restarts=max_restarts)
        self._k = self._ops.keys
        self._run_id = run_id
        self._node = node
        self._min = min_nodes
        self._max = max_nodes
        self._max_restarts = max_restarts
        self._conf = conf
        self._params = m.CloseParams(
            min_nodes=min_nodes,
            max_nodes=max_nodes,
            last_call_timeout=conf.last_call_timeout,
            settle_time=conf.settle_time,
            settle_cap=max(conf.settle_time * 10, conf.settle_time),
        )
        self._fixed_ranks = fixed_ranks
        self._expect = 0  # the round this node expects to join next (a guess)
        self._lease = 0
        self._evicted = asyncio.Event()
        # The rendezvous owns its keep-alive task: close() ends it; an unexpected error
        # of it ends this node's current wait at once (every watching() block below).
        self._tasks = Background(f"rendezvous node {node.node_id}")
        self._bg: asyncio.Task[None] | None = None
        self._waiting = False
        # Per round this node has seen: the pointer (value, mod revision); per round it
        # is a member of: the closed summary, its mod revision and this node's assignment.
        self._pointers: dict[int, tuple[RoundPointer, int]] = {}
        self._closed: dict[int, tuple[ClosedRound, int, Assignment]] = {}
        # Full member lists read or written by this node (few: see _members_of).
        self._members: dict[int, ClosedRound] = {}
        self._closed_flag = False
        # The agent's EventSink (docs/events.md), set after construction; None: silent.
        self.events: Callable[[Event], None] | None = None
        # This node's watch of close/ (see _close_events).
        self._close_watch: contextlib.AsyncExitStack | None = None
        self._close_iter: AsyncIterator[WatchEvent] | None = None

    def _emit(self, cls: type[Event], round: int, **fields: object) -> None:
        if self.events:  # an empty Fanout is false: nothing is built
            self.events(stamp(cls, self._node.node_id, round, **fields))

    # --- public API -----------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._node.node_id

    @property
    def lease(self) -> int:
        """This node's current lease id (0 before the first join or after eviction)."""
        return self._lease

    async def __aenter__(self) -> DynamicRendezvous:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def join(self) -> RoundInfo:
        """Join the next round and wait until it closes with this node in it.

        Raises: RendezvousTimeout (join_timeout), RendezvousClosed (the job
        succeeded), JobFailed (the job failed; carries the root cause),
        StoreError.
        """
        if self._closed_flag:
            raise RendezvousClosed("this rendezvous handle is closed")
        state: dict[str, int] = {"round": -1}
        while True:
            try:
                async with clock_timeout(self._clock, self._conf.join_timeout):
                    return await self._join(state)
            except TimeoutError:
                raise RendezvousTimeout(
                    f"join_timeout ({self._conf.join_timeout} s) passed in round {state['round']} "
                    f"before it closed with this node (min_nodes {self._min}, max_nodes {self._max})"
                ) from None
            except _Spare as spare:  # out of the deadline: a spare waits as long as the job runs
                try:
                    await self._wait_next_round(*spare.args)
                except LeaseNotFound:
                    self._evicted.set()  # the next join takes a new lease

    async def watch_round(self, rnd: RoundInfo) -> RoundChange:
        """Return when ``rnd`` is superseded: a new round, a lost member, eviction, the job's end."""
        return await self._watch(rnd, done=False)

    async def report_failure(
        self, rnd: RoundInfo, failures: list[FailureReport], *, final: bool = False
    ) -> tuple[Decision, FailureReport | None]:
        """Publish failures of ``rnd`` and decide job-wide (see :class:`Rendezvous`).

        ``final``: end the job in failure now, whatever the budget (a policy gave up).
        """
        r = rnd.round
        for f in failures:
            await self._ops.create(
                self._k.failure(r, self._node.node_id, f.local_rank), f.to_json()
            )
        for _ in range(100):
            ptr, rev = await self._ops.pointer()
            if ptr.reason == REASON_JOB_ENDED:
                out = await self._ops.outcome_of(ptr)
                if out.succeeded:
                    return Decision.RESTART, None  # cannot happen: a success needs every member
                if out.stopped:  # a handled signal stopped the job meanwhile: not a failure
                    raise JobStopped(out.signal, out.node)
                return Decision.FAIL, out.root_cause
            step = m.failure_step(r, ptr, self._max_restarts)
            if step is m.FailureStep.ALREADY_MOVED and final:
                # the job moved on without this round's outcome: fix the outcome on
                # round r's failures first, then end the job from where it is now
                kvs, _ = await self._ops.range(self._k.failures(r))
                rc = m.root_cause(
                    (kv.create_revision, FailureReport.from_json(kv.value)) for kv in kvs
                )
                out = Outcome("failed", r, rc, rc.exit_code if rc is not None else 1)
                await self._ops.create(self._k.outcome, out.to_json())
            elif step is m.FailureStep.ALREADY_MOVED:
                return Decision.RESTART, None
            if step is m.FailureStep.RESTART and not final:
                detail = f"failure on {self._node.node_id} in round {r}"
                new = m.next_pointer(ptr, REASON_FAILURE, detail)
                if await self._ops.cas_pointer(new, rev):
                    log.info("round %d failed; job restarts as round %d", r, new.round)
                    self._emit(RoundOpened, new.round, reason=REASON_FAILURE, detail=detail)
                    return Decision.RESTART, None
                continue
            end = m.end_pointer(ptr, "failed")
            if await self._ops.cas_pointer(end, rev):
                out = await self._ops.outcome_of(end)
                return Decision.FAIL, out.root_cause
        raise RendezvousError("report_failure: the round pointer kept changing (100 attempts)")

    async def report_success(self, rnd: RoundInfo) -> RoundChange | None:
        """Mark this node done in ``rnd``; wait until every member is (None) or the round changes."""
        await self._ops.create(self._k.done_key(rnd.round, self._node.node_id), b"{}")
        change = await self._watch(rnd, done=True)
        if change.kind is ChangeKind.JOB_ENDED:
            out = await self._ops.outcome()
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
        ptr, _ = await self._ops.pointer()
        out = Outcome("stopped", ptr.round, None, 128 + signum, signal=signum, node=node)
        res = await self._ops.create(self._k.outcome, out.to_json())
        if not res.succeeded and res.kv is not None:
            out = Outcome.from_json(res.kv.value)
        for _ in range(100):
            ptr, rev = await self._ops.pointer()
            if ptr.reason == REASON_JOB_ENDED:
                return out
            end = replace(ptr, round=ptr.round + 1, reason=REASON_JOB_ENDED, detail="stopped")
            if await self._ops.cas_pointer(end, rev):
                log.debug("job %s", out.stop_text if out.stopped else out.status)
                return out
        raise RendezvousError("report_stop: the round pointer kept changing (100 attempts)")

    async def leave(self, rnd: RoundInfo, signum: int, node: str) -> Outcome | None:
        """Leave the job on handled signal ``signum`` (``--on-signal leave``), then close.

        A scale-down: the others restart without this node (a restart, counted
        as any other). When the members of ``rnd`` not gone on a signal would
        be fewer than MIN, or no restart is left, the job is stopped instead
        (:meth:`report_stop`) and its outcome returned; None when the node left.
        Each leaver marks itself under ``r/<r>/left/`` before it counts, so of
        several leaving at once the last to count sees them all.
        """
        r = rnd.round
        me = self._node.node_id
        await self._ops.create(self._k.left_key(r, me), node.encode())
        left, _ = await self._ops.range(self._k.left(r))
        ptr, rev = self._pointers.get(r) or await self._ops.pointer()
        if rnd.group_world_size - len(left) < self._min or ptr.restart_count >= self._max_restarts:
            return await self.report_stop(signum, node)
        if ptr.round == r:
            name = signal.Signals(signum).name
            new = m.next_pointer(ptr, REASON_MEMBER_LOST, f"node {node} left on {name}")
            if await self._ops.cas_pointer(new, rev):
                log.info("node %s leaves round %d on %s; the job goes on", node, r, name)
        await self.close()
        return None

    async def _change_of(self, ptr: RoundPointer) -> RoundChange:
        """The change a new pointer means; a job stopped by a signal carries the signal."""
        change = _change(ptr)
        if ptr.reason == REASON_JOB_ENDED and ptr.detail == "stopped":
            out = await self._ops.outcome()
            if out is not None and out.stopped:
                return replace(change, detail=out.stop_text, stop_signal=out.signal)
        return change

    async def outcome(self) -> Outcome | None:
        """The job's outcome, if it has one (completing a half-written end)."""
        ptr, _ = await self._ops.pointer()
        if ptr.reason != REASON_JOB_ENDED:
            return None
        return await self._ops.outcome_of(ptr)

    async def close(self) -> None:
        """Leave: stop the keep-alive and revoke the lease (its keys vanish). Idempotent."""
        if self._closed_flag:
            return
        self._closed_flag = True
        await self._stop_keepalive()
        await self._drop_close_events()  # before the revoke: it deletes a closer key
        if self._lease:
            lease, self._lease = self._lease, 0
            with contextlib.suppress(StoreError):
                await self._ops.revoke(lease)

    # --- liveness ---------------------------------------------------------------

    async def _ensure_lease(self) -> int:
        if self._lease and not self._evicted.is_set():
            return self._lease
        await self._stop_keepalive()
        self._evicted = asyncio.Event()
        self._lease = await self._ops.grant(self._conf.lease_ttl)
        # The rendezvous owns its keep-alive task; close() cancels it.
        self._bg = self._tasks.start(self._keepalive(self._lease), name="keep-alive")
        return self._lease

    async def _keepalive(self, lease: int) -> None:
        interval = self._conf.keep_alive_interval
        while True:
            await self._clock.sleep(interval)
            try:
                await self._ops.keep_alive(lease)
            except LeaseNotFound:
                log.warning("lease %d of node %s ended: evicted", lease, self._node.node_id)
                self._evicted.set()
                return
            except StoreError as exc:
                # Keep trying: the lease survives keep_alive_max_attempt missed beats.
                log.warning("keep-alive of lease %d failed: %s", lease, exc)

    async def _stop_keepalive(self) -> None:
        bg, self._bg = self._bg, None
        await self._tasks.stop(bg)

    # --- join -----------------------------------------------------------------

    async def _join(self, state: dict[str, int]) -> RoundInfo:
        while True:
            lease = await self._ensure_lease()
            try:
                info = await self._join_round(lease, state)
            except LeaseNotFound:
                self._evicted.set()  # our lease ended under us: take a new one
                continue
            if info is not None:
                self._expect = info.round + 1
                return info

    async def _raise_outcome(self, ptr: RoundPointer) -> None:
        out = await self._ops.outcome_of(ptr)
        if out.succeeded:
            raise RendezvousClosed(f"run {self._run_id!r} already succeeded (round {out.round})")
        if out.stopped:
            raise JobStopped(out.signal, out.node)
        rc = out.root_cause
        if rc is not None and rc.lost and rc.message:
            cause = f": {rc.message}"  # a whole node lost, named in the message
        elif rc is not None:
            cause = f": rank {rc.rank} on {rc.host or rc.node_id} (exit {rc.exitcode})"
        else:
            cause = ""
        raise JobFailed(
            f"run {self._run_id!r} failed in round {out.round}{cause}",
            rc,
            out.exit_code,
        )

    async def _join_round(self, lease: int, state: dict[str, int]) -> RoundInfo | None:
        me = self._node.node_id
        k = self._k
        port = self._node.master_port or free_port(self._node.addr)
        desc = encode_node(replace(self._node, master_port=port))
        # This node's watch of close/ (every round's closer and closed), opened
        # before its first join step and kept while it lives. Then one request
        # joins round r (the round this node expects): it creates this node's
        # key and, if there is none, the closer's key (the first joiner
        # closes), and reads the pointer and close/<r>/. If the pointer names
        # another round, take back what was created and join that round the
        # same way.
        events = await self._close_events()
        r = self._expect
        while True:
            mine, closer, ptr, ptr_rev, close_kvs, rev = await self._ops.join_step(
                r, me, desc, lease
            )
            if not mine.succeeded and mine.kv is not None and mine.kv.lease != lease:
                raise RendezvousError(f"node id {me!r} is already used by another live agent")
            if ptr.round == r and ptr.reason != REASON_JOB_ENDED:
                break
            await self._retract(r, mine, closer)
            if ptr.reason == REASON_JOB_ENDED:
                await self._raise_outcome(ptr)
            r = self._expect = ptr.round
        self._pointers[r] = (ptr, ptr_rev)
        state["round"] = r
        self._emit(NodeJoined, r, addr=self._node.addr)
        closed_kv = next((kv for kv in close_kvs if kv.key == k.closed(r)), None)
        if closed_kv is not None:
            # Closed before this join: a member only if this node had joined
            # under this lease before (a join cut short by a timeout); an
            # evicted node has not.
            await self._retract(r, mine, closer)
            member = not mine.succeeded
            return await self._after_close(r, closed_kv, ptr_rev, lease, member=member)
        if self._waiting:
            self._waiting = False
            await self._ops.delete(k.waiting_key(me))
        full: ClosedRound | None = None
        if not closer.succeeded:
            # Someone is closing: follow (and take over if that closer leaves).
            closed_kv = await self._follow(r, lease, events, rev)
        if closed_kv is None:  # this node closes
            closed_kv, full = await self._close_round(ptr, lease)
        return await self._after_close(r, closed_kv, ptr_rev, lease, full=full)

    async def _close_events(self) -> AsyncIterator[WatchEvent]:
        """This node's watch of close/ (from now), opened on first use."""
        if self._close_watch is None:
            stack = contextlib.AsyncExitStack()
            self._close_iter = await stack.enter_async_context(
                self._ops.watch(self._k.closes, prefix=True)
            )
            self._close_watch = stack
        assert self._close_iter is not None
        return self._close_iter

    async def _drop_close_events(self) -> None:
        stack, self._close_watch, self._close_iter = self._close_watch, None, None
        if stack is not None:
            with contextlib.suppress(StoreError):
                await stack.aclose()

    async def _retract(self, r: int, mine: WriteResult, closer: WriteResult) -> None:
        """Delete the keys a join step created in round r (a round this node is not joining)."""
        if mine.succeeded:
            await self._ops.delete(self._k.node(r, self._node.node_id))
        if closer.succeeded:
            await self._ops.delete(self._k.closer(r))

    async def _after_close(
        self,
        r: int,
        closed_kv: KeyValue,
        ptr_rev: int,
        lease: int,
        *,
        member: bool = True,
        full: ClosedRound | None = None,
    ) -> RoundInfo | None:
        """This node's place in closed round r: O(1) bytes unless it wrote the member list.

        ``full``: the member list this node wrote as the closer (used only if its
        ``closed`` is the one that won).
        """
        me = self._node.node_id
        closed = _decode_closed(closed_kv)
        if full is not None and full.tag != closed.tag:
            full = None
        if closed.members:
            full = closed  # a record that carries its members
        assignment: Assignment | None = None
        if member and full is not None:
            idx = full.rank_of(me)
            if idx is not None:
                assignment = m.assignments(full.members)[idx]
        elif member:
            if closed.rank_tables < 1:
                raise RendezvousError(
                    f"round {r} was closed with no rank tables (by another corral version?)"
                )
            # Written before closed: any state as of closed's revision has it.
            index = rank_table_of(me, closed.rank_tables)
            tkv = await self._ops.get(
                self._k.rank_table(r, closed.tag, index), min_revision=closed_kv.mod_revision
            )
            if tkv is not None:
                assignment = RankTable.from_json(tkv.value).assignments.get(me)
        if full is not None:
            self._members[r] = full
        if assignment is not None:
            self._closed[r] = (closed, closed_kv.mod_revision, assignment)
            info = m.round_info_of(
                self._run_id, closed, assignment, full.members if full is not None else ()
            )
            log.debug(
                "round %d closed: node %s is group rank %d of %d (restart %d)",
                r, me, info.group_rank, info.group_world_size, info.restart_count,
            )  # fmt: skip
            return info
        members = await self._members_of(r, closed)
        wait = (r, members, closed_kv.mod_revision, ptr_rev, lease)
        used = self._pointers[r][0].restart_count
        if m.is_spare(closed.node_count, self._max, used, self._max_restarts):
            raise _Spare(*wait)  # join() waits, with no join_timeout, then joins again
        await self._wait_next_round(*wait)
        return None

    async def _members_of(self, r: int, closed: ClosedRound) -> ClosedRound:
        """The full member list of round r (closed summary ``closed``): one read, cached.

        Only a few nodes need it: the closer of round r+1, rank 0 for scale-up and
        success, a waiting node, and a member whose predecessor left after success.
        """
        if closed.members:
            return closed
        have = self._members.get(r)
        if have is not None and have.tag == closed.tag:
            return have
        kv = await self._ops.get(self._k.members(r, closed.tag))
        if kv is None:
            raise RendezvousError(f"round {r} is closed but its member list is missing")
        full = _decode_closed(kv)
        self._members[r] = full
        return full

    async def _write_members(self, full: ClosedRound) -> None:
        """As the closer: store the member list once and the rank tables."""
        r, tag, k = full.round, full.tag, self._k
        writes = [(k.members(r, tag), full.to_json())]
        writes += [
            (k.rank_table(r, tag, i), t.to_json())
            for i, t in enumerate(m.rank_tables(full.members))
        ]
        await self._ops.put_many(writes)

    async def _follow(
        self, r: int, lease: int, events: AsyncIterator[WatchEvent], seen: int
    ) -> KeyValue | None:
        """Wait for ``closed`` of round r; None if this node must close it instead.

        ``events``: this node's watch of close/, opened before the join step
        that read close/<r>/ at revision ``seen`` (no ``closed``, a closer
        other than this node): events up to ``seen``, and of other rounds, are
        skipped. When the closer's key goes before ``closed`` comes (its lease
        ended), every follower tries to create it: the one that does is the
        new closer.

        The watch is kept between joins, so it may have to resume (on another
        etcd member) from a revision the store has compacted since: then it is
        made again from now, and close/<r>/ read again.
        """
        closed_key, closer_key = self._k.closed(r), self._k.closer(r)
        me = self._node.node_id
        gone = False  # the closer's key was seen to go
        while True:
            if gone:
                gone = False
                res = await self._ops.create(closer_key, me.encode(), lease=lease)
                if res.succeeded:
                    log.info("closer of round %d left; %s closes it", r, me)
                    return None
            try:
                async for ev in events:
                    if ev.revision <= seen:
                        continue
                    if ev.kv.key == closed_key and ev.type is EventType.PUT:
                        kv: KeyValue = ev.kv
                        return kv
                    if ev.kv.key == closer_key and ev.type is EventType.DELETE:
                        gone = True
                        break
                else:
                    raise StoreUnavailable(f"the watch of {self._k.closes} ended")
            except StoreCompacted:
                log.info("watch of %s resumed too late (compacted); watching again", self._k.closes)
                await self._drop_close_events()
                events = await self._close_events()
                kvs, seen = await self._ops.range(self._k.close_prefix(r))
                state = {kv.key: kv for kv in kvs}
                if closed_key in state:
                    return state[closed_key]
                gone = closer_key not in state
            except StoreError:
                await self._drop_close_events()  # the next join opens a new one
                raise

    async def _close_round(
        self, ptr: RoundPointer, lease: int
    ) -> tuple[KeyValue, ClosedRound | None]:
        """As the closer: watch the joins and close when machine.close_decision says so.

        Writes the member list and the assignments first, then ``closed``
        (create-only: the first closer wins; its tag names its lists). Returns
        the ``closed`` key and, if this node's record won, its full record.
        """
        r = ptr.round
        k = self._k
        nodes_prefix = k.nodes(r)
        prev_prefix = k.nodes(r - 1)
        prev: ClosedRound | None = None
        expected: set[str] = set()
        # Each watch is in place before the read it follows (events up to the
        # read's revision are skipped). A watch from a past revision would do
        # too, but etcd serves one from its "unsynced" watchers, caught up
        # every 100 ms: that delay would be the close's.
        seen: dict[str, int] = {}
        async with watching() as mux:
            # the pointer from the join's read on: a job that ends meanwhile (a
            # stop recorded on a signal) ends this close, and with it the join
            since = self._pointers[r][1] + 1 if r in self._pointers else 0
            await mux.start_all(
                {
                    "nodes": self._ops.watch(nodes_prefix, prefix=True),
                    "closed": self._ops.watch(k.closed(r)),
                    "round": self._ops.watch(k.round, start_revision=since),
                }
            )
            kvs, seen["nodes"] = await self._ops.range(nodes_prefix)
            joined = {kv.key[len(nodes_prefix) :]: self._joiner(kv) for kv in kvs}
            pkv = await self._ops.get(k.closed(r - 1)) if r > 0 else None
            if pkv is not None:
                # A restart: every live member of round r-1, and every waiting
                # node, is expected (see machine.close_decision).
                prev = await self._members_of(r - 1, _decode_closed(pkv))
                await mux.start_all(
                    {
                        "prev": self._ops.watch(prev_prefix, prefix=True),
                        "waiting": self._ops.watch(k.waiting, prefix=True),
                    }
                )
                live, seen["prev"] = await self._ops.range(prev_prefix)
                prev_ids = {mm.node_id for mm in prev.members}
                expected = {kv.key[len(prev_prefix) :] for kv in live} & prev_ids
                wkvs, seen["waiting"] = await self._ops.range(k.waiting)
                expected |= {kv.key[len(k.waiting) :] for kv in wkvs}
            mux.add_event("evicted", self._evicted)
            mux.add_failure(self._tasks)
            now = self._clock.now()
            min_at: float | None = now if len(joined) >= self._min else None
            last_arrival = now
            while True:
                now = self._clock.now()
                if len(joined) >= self._min:
                    min_at = now if min_at is None else min_at
                else:
                    min_at = None
                present = prev is not None and expected <= joined.keys()
                d = m.close_decision(
                    joined=len(joined),
                    expected_present=present,
                    now=now,
                    min_reached_at=min_at,
                    last_arrival_at=last_arrival,
                    p=self._params,
                )
                if d.close:
                    if self._fixed_ranks:
                        members = m.fixed_ranks(list(joined.values()))
                    else:
                        members = m.assign_ranks(list(joined.values()), prev, self._max)
                    full = ClosedRound(
                        r,
                        ptr.restart_count,
                        members,
                        members[0].addr,
                        members[0].master_port,
                        tag=f"{self._node.node_id}.{lease:x}",
                        rank_tables=rank_table_count(len(members)),
                    )
                    await self._write_members(full)
                    res = await self._ops.create(k.closed(r), full.summary().to_json())
                    assert res.kv is not None
                    if not res.succeeded:
                        return res.kv, None
                    log.debug("closed round %d with %d nodes (%s)", r, len(members), d.why)
                    if r >= 2:
                        # Assignments of round r-2 are read by no one now (a node that
                        # still looks finds none and rejoins); member lists stay.
                        with contextlib.suppress(StoreError):
                            await self._ops.delete(k.ranks(r - 2), prefix=True)
                    return res.kv, full
                item = await mux.next(self._clock, None if d.wake_at is None else d.wake_at - now)
                if item is None:
                    continue
                tag, ev = item
                if isinstance(ev, StoreError):
                    raise ev
                if tag == "evicted":
                    raise LeaseNotFound(f"lease {lease} ended while closing round {r}")
                assert ev is not None
                if ev.revision <= seen.get(tag, 0):
                    continue  # the read already had it
                if tag == "closed" and ev.type is EventType.PUT:
                    return ev.kv, None
                if tag == "round" and ev.type is EventType.PUT:
                    moved = RoundPointer.from_json(ev.kv.value)
                    if moved.reason == REASON_JOB_ENDED:
                        await self._raise_outcome(moved)
                if tag == "nodes":
                    nid = ev.kv.key[len(nodes_prefix) :]
                    if ev.type is EventType.PUT:
                        joined[nid] = self._joiner(ev.kv)
                        last_arrival = self._clock.now()
                    else:
                        joined.pop(nid, None)
                elif tag == "prev" and ev.type is EventType.DELETE:
                    expected.discard(ev.kv.key[len(prev_prefix) :])
                elif tag == "waiting" and ev.type is EventType.DELETE:
                    nid = ev.kv.key[len(k.waiting) :]
                    if nid not in joined:
                        expected.discard(nid)

    @staticmethod
    def _joiner(kv: KeyValue) -> m.Joiner:
        return m.Joiner(decode_node(kv.value), kv.create_revision)

    async def _wait_next_round(
        self, r: int, closed: ClosedRound, closed_rev: int, ptr_rev: int, lease: int
    ) -> None:
        """Round r closed without this node: wait in ``waiting/`` until the pointer moves.

        Running members see the waiting key and start a new round while below
        max. If every member of round r is gone, nobody would: this node then
        starts the next round itself.
        """
        me = self._node.node_id
        await self._ops.put(self._k.waiting_key(me), encode_node(self._node), lease=lease)
        self._waiting = True
        self._emit(NodeWaiting, r, subject=me, detail=f"round {r} closed without this node")
        ptr = self._pointers[r][0]
        n, cap, used = len(closed.members), self._max, ptr.restart_count
        log.info("%s", m.waiting_line(me, r, n, cap, used, self._max_restarts))
        nodes_prefix = self._k.nodes(r)
        async with watching() as mux:
            mux.add("round", self._ops.watch(self._k.round, start_revision=ptr_rev + 1))
            mux.add_event("evicted", self._evicted)
            mux.add_failure(self._tasks)
            while True:
                kvs, rev = await self._ops.range(nodes_prefix)
                members = {mm.node_id for mm in closed.members}
                live = sorted(
                    (kv for kv in kvs if kv.key[len(nodes_prefix) :] in members),
                    key=lambda kv: kv.create_revision,
                )
                if not live:
                    first = closed.members[0].node_id
                    await self._lost(r, closed, first, f"every member of round {r} left")
                    return
                mux.add("member", self._ops.watch(live[0].key, start_revision=rev + 1))
                while True:
                    item = await mux.next(self._clock)
                    assert item is not None
                    tag, ev = item
                    if isinstance(ev, StoreError):
                        raise ev
                    if tag == "evicted":
                        raise LeaseNotFound(f"lease {lease} ended while waiting")
                    if tag == "round":
                        return
                    if tag == "member" and ev is not None and ev.type is EventType.DELETE:
                        break

    # --- running rounds -------------------------------------------------------------

    async def _watch(self, rnd: RoundInfo, *, done: bool) -> RoundChange:
        r = rnd.round
        if self._evicted.is_set() or r not in self._closed:
            return RoundChange(ChangeKind.MEMBER_LOST, None, "this node is no longer a member")
        closed, closed_rev, assignment = self._closed[r]
        start = closed_rev + 1
        n = closed.node_count
        rank = assignment.group_rank
        pred_id = assignment.pred
        coordinator = done and rank == 0
        done_ids: set[str] = set()
        # The member list, read only when needed (rank 0's scale-up and success
        # checks, a predecessor that left after success): O(1) bytes otherwise.
        member_ids: set[str] = set()
        async with watching() as mux:
            mux.add("round", self._ops.watch(self._k.round, start_revision=start))
            mux.add_event("evicted", self._evicted)
            mux.add_failure(self._tasks)
            if n > 1:
                mux.add("pred", self._ops.watch(self._k.node(r, pred_id), start_revision=start))
            if rank == 0 and n < self._max:
                mux.add(
                    "waiting", self._ops.watch(self._k.waiting, prefix=True, start_revision=start)
                )
            if coordinator:
                members = (await self._members_of(r, closed)).members
                member_ids = {mm.node_id for mm in members}
                done_ids = await self._watch_done(mux, r)
            while True:
                if coordinator and done_ids >= member_ids:
                    return await self._finish_success(r)
                item = await mux.next(self._clock)
                assert item is not None
                tag, ev = item
                if tag == "evicted":
                    return RoundChange(ChangeKind.MEMBER_LOST, None, "this node's lease ended")
                if isinstance(ev, StoreError):
                    raise ev
                assert ev is not None
                if tag == "round" and ev.type is EventType.PUT:
                    ptr = RoundPointer.from_json(ev.kv.value)
                    if ptr.round > r:
                        return await self._change_of(ptr)
                elif tag == "pred" and ev.type is EventType.DELETE:
                    gone = pred_id
                    if await self._ops.get(self._k.done_key(r, gone)) is None:
                        return await self._lost(r, closed, gone)
                    # A done node leaving is not lost; watch the one before it. It
                    # may have been the success coordinator: take that role too.
                    members = (await self._members_of(r, closed)).members
                    pred = (_index(members, gone) - 1) % n
                    if pred == rank:
                        mux.drop("pred")
                    else:
                        pred_id = members[pred].node_id
                        key = self._k.node(r, pred_id)
                        mux.add("pred", self._ops.watch(key, start_revision=ev.revision))
                    if done and not coordinator:
                        coordinator = True
                        member_ids = {mm.node_id for mm in members}
                        done_ids = await self._watch_done(mux, r)
                elif tag == "waiting" and ev.type is EventType.PUT:
                    nid = ev.kv.key[len(self._k.waiting) :]
                    members = (await self._members_of(r, closed)).members
                    ptr = self._pointers[r][0]
                    step = m.scale_up_step(members, nid, self._max, ptr, self._max_restarts)
                    if step is m.ScaleUp.ADMIT:
                        return await self._bump(r, REASON_NODE_WAITING, f"node {nid} waiting")
                    if step is m.ScaleUp.SPARE:
                        log.info(
                            "node %s waits to join round %d; not admitted: restart budget spent "
                            "(%s restarts)", nid, r, m.restarts_text(ptr.restart_count, self._max_restarts),
                        )  # fmt: skip
                elif tag == "done" and ev.type is EventType.PUT:
                    done_ids.add(ev.kv.key[len(self._k.done(r)) :])

    async def _watch_done(self, mux: Mux, r: int) -> set[str]:
        prefix = self._k.done(r)
        kvs, rev = await self._ops.range(prefix)
        mux.add("done", self._ops.watch(prefix, prefix=True, start_revision=rev + 1))
        return {kv.key[len(prefix) :] for kv in kvs}

    async def _finish_success(self, r: int) -> RoundChange:
        ptr, rev = self._pointers.get(r) or await self._ops.pointer()
        if ptr.round == r:
            end = m.end_pointer(ptr, "success")
            if await self._ops.cas_pointer(end, rev):
                await self._ops.outcome_of(end)
                log.info("every member of round %d succeeded: job succeeded", r)
                return _change(end)
        cur, _ = await self._ops.pointer()
        if cur.reason == REASON_JOB_ENDED:
            await self._ops.outcome_of(cur)
        return _change(cur)

    async def _lost(self, r: int, closed: ClosedRound, gone: str, detail: str = "") -> RoundChange:
        """Member ``gone`` of round r was lost (``detail``: how, if not its lease alone):
        restart (counts one), or with the budget spent end the job with a root
        cause that names the node as lost (machine.lost_node_report)."""
        ptr, rev = self._pointers[r]
        if m.budget_left(ptr, self._max_restarts):
            return await self._bump(r, REASON_MEMBER_LOST, detail or f"lost node {gone}")
        members = (await self._members_of(r, closed)).members
        why = [detail] if detail else []  # else: the lost node's lease ended
        report = m.lost_node_report(members, gone, r, ptr.restart_count, self._max_restarts, *why)
        await self._ops.create(self._k.lost(r, gone), report.to_json())
        end = m.end_pointer(ptr, "failed")
        if await self._ops.cas_pointer(end, rev):
            out = await self._ops.outcome_of(end)
            log.error("%s: the job fails", out.root_cause.message if out.root_cause else detail)
            return _change(end)
        cur, _ = await self._ops.pointer()
        return _change(cur)

    async def _bump(self, r: int, reason: str, detail: str) -> RoundChange:
        """Move the pointer from round r (only from r: fencing) and report the change."""
        ptr, rev = self._pointers[r]
        new = m.next_pointer(ptr, reason, detail)
        if await self._ops.cas_pointer(new, rev):
            log.info("round %d superseded by round %d: %s", r, new.round, detail)
            self._emit(RoundOpened, new.round, reason=reason, detail=detail)
            return _change(new)
        cur, _ = await self._ops.pointer()
        return _change(cur)
