"""This node's lease: taken when a join needs one, kept alive by a task, ended by close.

:class:`Lease` owns the lease id, the time of its last renewal, its eviction
flag and its keep-alive task. The task runs in a task group it is given (the
agent's, one per run, or the rendezvous handle's own): it never outlives it.
An unexpected error of the task is kept (:attr:`Lease.error`), logged, and
told to every waiter that subscribed (:meth:`Lease.subscribe`: the node's
current wait, :class:`~corral.rendezvous.waits.Mux`, ends with it at once);
the task then ends with it, so the group that runs it sees it too.

Self-fencing (docs/rendezvous.md, "Silence"): the store drops a node whose
lease has not been renewed for its TTL (``keep_alive_interval x
keep_alive_max_attempt``, the *membership timeout*). A node that cannot reach
the store cannot know whether that happened, so it assumes it did: when no
renewal has succeeded for the TTL, counted on this node's monotonic clock from
the moment the last successful renewal was *sent* (the store extended the
lease from when it received it, no earlier), the node counts itself evicted.
Its agent stops its workers, and its next join takes a new lease: it comes
back as a newcomer and never resumes its old membership. An agent frozen
(SIGSTOP) past the TTL finds the same on its first turn of the loop after
SIGCONT, before it sends anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from corral.core.clock import Clock, clock_timeout
from corral.core.compat import TaskGroup
from corral.core.errors import LeaseNotFound, StoreError
from corral.rendezvous.driver.store import RunStore
from corral.rendezvous.options import RendezvousOptions

__all__ = ["Lease"]

log = logging.getLogger("corral.rendezvous.dynamic")  # one logger for the rendezvous


class Lease:
    """One node's lease on the store, and the task that keeps it alive.

    Args:
        store: the run's store requests.
        node_id: this node (for log lines).
        conf: keep_alive_interval and the lease's TTL.
        clock: the node's monotonic clock.
        tasks: returns the task group the keep-alive runs in (called when a
            lease is taken).
    """

    def __init__(
        self,
        store: RunStore,
        node_id: str,
        conf: RendezvousOptions,
        clock: Clock,
        tasks: Callable[[], Awaitable[TaskGroup]],
    ) -> None:
        self._store = store
        self._node_id = node_id
        self._conf = conf
        self._clock = clock
        self._tasks = tasks
        self.id = 0  # 0: none (before the first join, after close)
        # The leases this node held before ``id`` (it fenced itself or was evicted).
        self._former: frozenset[int] = frozenset()
        self.evicted = asyncio.Event()
        # Clock time the last successful renewal was sent (self-fencing).
        self._renewed: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self._listeners: list[Callable[[BaseException], None]] = []

    # --- state ---------------------------------------------------------------

    @property
    def renewed(self) -> float | None:
        """Clock time the last successful renewal was sent (None: never)."""
        return self._renewed

    def held(self) -> frozenset[int]:
        """Every lease this node has held (the last 8), the current one included: a key
        under one of them is this node's own, not another agent's (see Joining)."""
        return self._former | {self.id} if self.id else self._former

    def expired(self) -> bool:
        """Whether this node's membership may have ended: no renewal for the lease's TTL."""
        sent = self._renewed
        return sent is not None and self._clock.now() - sent >= self._conf.lease_ttl

    def evict(self) -> None:
        """Count this node evicted: the next join takes a new lease."""
        self.evicted.set()

    # --- failures of the keep-alive task ----------------------------------------

    def subscribe(self, listener: Callable[[BaseException], None]) -> None:
        """Call ``listener(error)`` when the keep-alive task fails (at once if it has).

        A callback, not a waiting task: a node waits often (a watch multiplexer per
        step), and pays nothing until a failure.
        """
        if self.error is not None:
            listener(self.error)
        else:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[BaseException], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    # --- requests ------------------------------------------------------------

    async def ensure(self) -> int:
        """The live lease, taken (and its keep-alive started) if there is none."""
        if self.id and not self.evicted.is_set() and not self.expired():
            return self.id
        await self.stop()
        if self.id:  # a lease it held before: a key under it is this node's own
            self._former = (self._former if len(self._former) < 8 else frozenset()) | {self.id}
        self.evicted = asyncio.Event()
        sent = self._clock.now()
        self.id = await self._store.grant(self._conf.lease_ttl)
        self._renewed = sent
        group = await self._tasks()
        self._task = group.create_task(self._run(self.id), name="keep-alive")
        return self.id

    async def still_member(self) -> bool:
        """Whether this node may still write for its round: its lease is live on the store.

        False, and the node counts itself evicted, when its membership expired on
        its own clock (it does not ask) or the store no longer has its lease. A store
        that cannot be asked leaves the answer True: the pointer's compare-and-set
        still fences what this node would move.
        """
        if not self.id or self.evicted.is_set() or self.expired():
            self.evicted.set()
            return False
        sent = self._clock.now()
        try:
            await self._store.keep_alive(self.id)
        except LeaseNotFound:
            self.evicted.set()
            return False
        except StoreError:
            return True
        self._renewed = sent
        return True

    async def stop(self) -> None:
        """End the keep-alive task (and wait for it)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def close(self) -> None:
        """Stop the keep-alive and revoke the lease (its keys vanish); errors are ignored."""
        await self.stop()
        if self.id:
            lease, self.id = self.id, 0
            with contextlib.suppress(StoreError):
                await self._store.revoke(lease)

    # --- the keep-alive task -------------------------------------------------------

    async def _run(self, lease: int) -> None:
        """The keep-alive task: one coroutine (a K-node join in one process keeps K of
        them). A failure is logged and told to the listeners, then raised into its group."""
        interval = self._conf.keep_alive_interval
        ttl = self._conf.lease_ttl
        clock = self._clock
        try:
            while True:
                await clock.sleep(interval)
                # First, before any request: a node frozen past the TTL fences itself at once.
                if self.expired():
                    return await self._fence(lease)
                sent = clock.now()
                left = (self._renewed or sent) + ttl - sent
                try:
                    async with clock_timeout(clock, left):
                        await self._store.keep_alive(lease)
                except TimeoutError:
                    return await self._fence(lease)
                except LeaseNotFound:
                    log.warning("lease %d of node %s ended: evicted", lease, self._node_id)
                    self.evicted.set()
                    return
                except StoreError as exc:
                    # Keep trying: the lease survives keep_alive_max_attempt missed beats.
                    log.warning("keep-alive of lease %d failed: %s", lease, exc)
                    continue
                self._renewed = sent
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            log.error("node %s: keep-alive of lease %d failed: %r", self._node_id, lease, exc)
            if self.error is None:
                self.error = exc
                for listener in list(self._listeners):
                    listener(exc)
            raise

    async def _fence(self, lease: int) -> None:
        since = self._clock.now() - (self._renewed or 0.0)
        log.warning(
            "node %s: lease %d not renewed for %.1f s (the membership timeout, keep_alive_interval "
            "x keep_alive_max_attempt = %g s): assuming this node was dropped; it stops its "
            "workers and rejoins as a new node",
            self._node_id,
            lease,
            since,
            self._conf.lease_ttl,
        )
        self.evicted.set()
        # Give the lease up if the store can be told (bounded): its keys go at once.
        with contextlib.suppress(StoreError, TimeoutError):
            async with clock_timeout(self._clock, self._conf.keep_alive_interval):
                await self._store.revoke(lease)
