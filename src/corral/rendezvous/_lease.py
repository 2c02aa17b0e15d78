"""The rendezvous's lease: taken when a join needs one, kept alive, ended by close.

Functions of a :class:`~corral.rendezvous.dynamic.DynamicRendezvous`
(``rd``), which delegates to them; they read and write its state.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from corral.errors import LeaseNotFound, StoreError

if TYPE_CHECKING:
    from corral.rendezvous.dynamic import DynamicRendezvous

log = logging.getLogger("corral.rendezvous.dynamic")  # one logger for the rendezvous


async def ensure_lease(rd: DynamicRendezvous) -> int:
    if rd._lease and not rd._evicted.is_set():
        return rd._lease
    await rd._stop_keepalive()
    rd._evicted = asyncio.Event()
    rd._lease = await rd._ops.grant(rd._conf.lease_ttl)
    # The rendezvous owns its keep-alive task; close() cancels it.
    rd._bg = rd._tasks.start(rd._keepalive(rd._lease), name="keep-alive")
    return rd._lease


async def keepalive(rd: DynamicRendezvous, lease: int) -> None:
    interval = rd._conf.keep_alive_interval
    while True:
        await rd._clock.sleep(interval)
        try:
            await rd._ops.keep_alive(lease)
        except LeaseNotFound:
            log.warning("lease %d of node %s ended: evicted", lease, rd._node.node_id)
            rd._evicted.set()
            return
        except StoreError as exc:
            # Keep trying: the lease survives keep_alive_max_attempt missed beats.
            log.warning("keep-alive of lease %d failed: %s", lease, exc)


async def stop_keepalive(rd: DynamicRendezvous) -> None:
    bg, rd._bg = rd._bg, None
    await rd._tasks.stop(bg)
