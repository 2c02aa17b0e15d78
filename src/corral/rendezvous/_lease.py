"""The rendezvous's lease: taken when a join needs one, kept alive, ended by close.

Functions of a :class:`~corral.rendezvous.dynamic.DynamicRendezvous`
(``rd``), which delegates to them; they read and write its state.

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
from typing import TYPE_CHECKING

from corral.core.clock import clock_timeout
from corral.core.errors import LeaseNotFound, StoreError

if TYPE_CHECKING:
    from corral.rendezvous.dynamic import DynamicRendezvous

log = logging.getLogger("corral.rendezvous.dynamic")  # one logger for the rendezvous


def expired(rd: DynamicRendezvous) -> bool:
    """Whether this node's membership may have ended: no renewal for the lease's TTL."""
    sent = rd._renewed
    return sent is not None and rd._clock.now() - sent >= rd._conf.lease_ttl


async def still_member(rd: DynamicRendezvous) -> bool:
    """Whether this node may still write for its round: its lease is live on the store.

    False, and the node counts itself evicted, when its membership expired on
    its own clock (it does not ask) or the store no longer has its lease. A store
    that cannot be asked leaves the answer True: the pointer's compare-and-set
    still fences what this node would move.
    """
    if not rd._lease or rd._evicted.is_set() or expired(rd):
        rd._evicted.set()
        return False
    sent = rd._clock.now()
    try:
        await rd._ops.keep_alive(rd._lease)
    except LeaseNotFound:
        rd._evicted.set()
        return False
    except StoreError:
        return True
    rd._renewed = sent
    return True


async def ensure_lease(rd: DynamicRendezvous) -> int:
    if rd._lease and not rd._evicted.is_set() and not expired(rd):
        return rd._lease
    await rd._stop_keepalive()
    rd._evicted = asyncio.Event()
    sent = rd._clock.now()
    rd._lease = await rd._ops.grant(rd._conf.lease_ttl)
    rd._renewed = sent
    # The rendezvous owns its keep-alive task; close() cancels it.
    rd._bg = rd._tasks.start(rd._keepalive(rd._lease), name="keep-alive")
    return rd._lease


async def keepalive(rd: DynamicRendezvous, lease: int) -> None:
    interval = rd._conf.keep_alive_interval
    ttl = rd._conf.lease_ttl
    clock = rd._clock
    while True:
        await clock.sleep(interval)
        # First, before any request: a node frozen past the TTL fences itself at once.
        if expired(rd):
            return await _fence(rd, lease)
        sent = clock.now()
        left = (rd._renewed or sent) + ttl - sent
        try:
            async with clock_timeout(clock, left):
                await rd._ops.keep_alive(lease)
        except TimeoutError:
            return await _fence(rd, lease)
        except LeaseNotFound:
            log.warning("lease %d of node %s ended: evicted", lease, rd._node.node_id)
            rd._evicted.set()
            return
        except StoreError as exc:
            # Keep trying: the lease survives keep_alive_max_attempt missed beats.
            log.warning("keep-alive of lease %d failed: %s", lease, exc)
            continue
        rd._renewed = sent


async def _fence(rd: DynamicRendezvous, lease: int) -> None:
    since = rd._clock.now() - (rd._renewed or 0.0)
    log.warning(
        "node %s: lease %d not renewed for %.1f s (the membership timeout, keep_alive_interval x "
        "keep_alive_max_attempt = %g s): assuming this node was dropped; it stops its workers "
        "and rejoins as a new node",
        rd._node.node_id,
        lease,
        since,
        rd._conf.lease_ttl,
    )
    rd._evicted.set()
    # Give the lease up if the store can be told (bounded): its keys go at once.
    with contextlib.suppress(StoreError, TimeoutError):
        async with clock_timeout(rd._clock, rd._conf.keep_alive_interval):
            await rd._ops.revoke(lease)


async def unreachable(rd: DynamicRendezvous, exc: StoreError) -> None:
    """A join's request got no answer (a partition, the store's host down): wait a
    moment and let the join try again, within its join_timeout; nobody gives up before.

    The first such error of a join is logged; the last one names the store in the
    join's timeout (:func:`unreachable_text`).
    """
    if rd._unreachable is None:
        log.warning("node %s: the store cannot be reached (trying until join_timeout): %s",
                    rd._node.node_id, exc)  # fmt: skip
    rd._unreachable = exc
    await rd._clock.sleep(min(1.0, rd._conf.keep_alive_interval))


def unreachable_text(rd: DynamicRendezvous) -> str:
    """``"; the store could not be reached: <its last error>"`` after a join's failed
    requests, else empty."""
    return f"; the store could not be reached: {rd._unreachable}" if rd._unreachable else ""


async def stop_keepalive(rd: DynamicRendezvous) -> None:
    bg, rd._bg = rd._bg, None
    await rd._tasks.stop(bg)
