"""The dynamic rendezvous: rounds of nodes over any :class:`~corral.store.api.Store`.

The protocol, keys and costs are described in ``docs/rendezvous.md``; the
decisions are the pure functions of :mod:`corral.rendezvous.machine` and
:mod:`corral.rendezvous.decide`; the shell only reads the store, calls them,
and writes what they decide.

:class:`DynamicRendezvous` is a facade: its state lives here, its steps in
modules of one idea, functions of the handle (``rd``): ``_lease`` (the lease
and its keep-alive), ``_join`` (joining a round, following its closer, waiting
for the next), ``_closer`` (closing a round), ``_running`` (watching a running
round, a lost member, a bump) and ``_outcome`` (failures, success, stops, the
job's outcome); ``_common`` holds what they share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from corral.core.aio import Background
from corral.core.clock import Clock, MonotonicClock, clock_timeout
from corral.core.errors import (
    ConfigError,
    LeaseNotFound,
    RendezvousClosed,
    RendezvousTimeout,
    StoreError,
)
from corral.core.events import Event, stamp
from corral.core.model import NodeDesc, RoundChange, RoundInfo
from corral.rendezvous import _closer, _lease, _outcome, _quarantine, _running
from corral.rendezvous import _join as _joining
from corral.rendezvous import machine as m
from corral.rendezvous._common import Spare
from corral.rendezvous._ops import Ops
from corral.rendezvous.options import RendezvousOptions, StoreOptions
from corral.rendezvous.state import (
    Assignment,
    ClosedRound,
    RoundPointer,
)
from corral.store.api import Store, WatchEvent

__all__ = ["DynamicRendezvous"]

log = logging.getLogger(__name__)


class DynamicRendezvous:
    """One node's handle on a job's rendezvous, over any store (see docs/rendezvous.md).

    Args:
        store: the coordination store (shared by every node of the job).
        run_id: the job's id; keys live under ``<store_conf.prefix>/<run_id>/``.
        node: this node. ``master_port`` 0 means: offer a fresh free port each
            round (found by binding port 0 on ``node.addr``); non-zero is
            offered as is every round (the static backend).
        min_nodes, max_nodes: the round closes with MAX nodes, or MIN after
            the last call, or MIN when every expected node is back.
        max_restarts: restarts of the whole job's worker group, whatever their
            cause (a failure, a lost node, a node that joins); round 0 is none.
        conf: the rendezvous's timing (join_timeout, last_call_timeout,
            keep_alive_*, settle_time).
        store_conf: the key prefix and the store's read timeout.
        clock: monotonic clock for the last call, settle window, keep-alive
            and join_timeout (a FakeClock in tests).

        fixed_ranks: group rank = the integer before the first ``-`` of the
            node id (``"3-host-pid"`` is rank 3): the static backend.
        no_restart_code: ``--no-restart-exit-code`` (0: none): a round whose root
            cause is a worker that exited with it ends the job, with no restart.
            Like ``max_restarts``, the first round pointer records it and every
            node adopts the job's (the value of the node that started the job).
        quarantine_after: ``--quarantine-after`` (0: off): a node that is the
            root cause of that many failures of the job in a row is kept out,
            when the job can go on without it (docs/rendezvous.md).

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
        conf: RendezvousOptions,
        store_conf: StoreOptions,
        clock: Clock | None = None,
        fixed_ranks: bool = False,
        no_restart_code: int = 0,
        quarantine_after: int = 0,
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
        self._ops = Ops(
            store,
            run_id,
            store_conf,
            max_restarts=max_restarts,
            no_restart_code=no_restart_code,
        )
        self._k = self._ops.keys
        self._run_id = run_id
        self._node = node
        self._min = min_nodes
        self._max = max_nodes
        self._max_restarts = max_restarts
        self._no_restart_code = no_restart_code
        self._quarantine_after = quarantine_after
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
        # Clock time the last successful renewal of the lease was sent (_lease.py: self-fencing).
        self._renewed: float | None = None
        # The last store error a join retried past (_lease.unreachable), for its timeout's line.
        self._unreachable: StoreError | None = None
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
        JobStopped (a handled signal stopped it), NodeQuarantined (this node's
        address is quarantined: raised once the job has ended), StoreError.
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
                    f"{_lease.unreachable_text(self)}"
                ) from None
            except _quarantine.Refused as refused:  # out of the deadline: until the job ends
                raise await _quarantine.sit_out(self, refused.args[0]) from None
            except Spare as spare:  # out of the deadline: a spare waits as long as the job runs
                try:
                    await self._wait_next_round(*spare.args)
                except LeaseNotFound:
                    self._evicted.set()  # the next join takes a new lease

    async def watch_round(self, rnd: RoundInfo) -> RoundChange:
        """Return when ``rnd`` is superseded: a new round, a lost member, eviction, the job's end."""
        return await self._watch(rnd, done=False)

    # The job-wide outcomes (see :class:`Rendezvous`), each documented at its step in
    # _outcome.py: report_failure, report_success, report_stop (--on-signal stop),
    # leave (--on-signal leave) and the job's outcome.
    report_failure = _outcome.report_failure
    report_success = _outcome.report_success
    report_stop = _outcome.report_stop
    leave = _outcome.leave
    step_out = _outcome.step_out  # an unhealthy member (--health-check, docs/health.md)
    outcome = _outcome.outcome
    _change_of = _outcome.change_of

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

    # The steps live in the modules of one idea; they are bound here as methods
    # (plain functions of the handle), not wrapped in coroutines that only await
    # them: each extra coroutine layer costs every suspension and resumption of a
    # join, which K simulated nodes in one process (bench/rendezvous) pay K times.

    # --- liveness ---------------------------------------------------------------

    _ensure_lease = _lease.ensure_lease
    _keepalive = _lease.keepalive
    _stop_keepalive = _lease.stop_keepalive

    # --- join -----------------------------------------------------------------

    _join = _joining.join
    _raise_outcome = _outcome.raise_outcome
    _join_round = _joining.join_round
    _close_events = _joining.close_events
    _drop_close_events = _joining.drop_close_events
    _retract = _joining.retract
    _after_close = _joining.after_close
    _members_of = _joining.members_of
    _write_members = _joining.write_members
    _follow = _joining.follow
    _close_round = _closer.close_round
    _joiner = staticmethod(_closer.joiner)
    _wait_next_round = _joining.wait_next_round

    # --- running rounds -------------------------------------------------------------

    _watch = _running.watch
    _watch_done = _running.watch_done
    _finish_success = _running.finish_success
    _lost = _running.lost
    _bump = _running.bump
