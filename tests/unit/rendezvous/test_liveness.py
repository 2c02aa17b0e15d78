"""The liveness ring on a store whose leases outlive connections (memory://, like etcd)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from corral.core.compat import timeout
from corral.core.model import RoundInfo
from corral.rendezvous.liveness import PeerLiveness
from corral.store.memory import MemoryStore

pytestmark = pytest.mark.timeout(10)


def _rnd(rank: int, size: int = 2) -> RoundInfo:
    return RoundInfo("job", 0, rank, size, (), rank, size, "127.0.0.1", 1, 0)


async def _until(cond: object, what: str) -> None:
    async with timeout(5):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_a_dead_predecessor_has_its_lease_revoked_at_once() -> None:
    store = MemoryStore()
    leases = [await store.grant(60), await store.grant(60)]
    ring = [
        PeerLiveness(store, run_id="job", addr="127.0.0.1", lease=lambda i=i: leases[i])
        for i in range(2)
    ]
    for live in ring:
        await live.start()
    await store.put("/corral/job/member/0", b"x", lease=leases[0])
    watches = [asyncio.ensure_future(ring[i].watch(_rnd(i))) for i in range(2)]
    try:
        # rank 1 holds a connection to rank 0; rank 0 "dies": its listener and peers close
        await _until(lambda: ring[0]._peers, "rank 1 connected to rank 0")
        watches[0].cancel()
        await ring[0].close()
        await _until(lambda: store.core.lease(leases[0]) is None, "rank 0's lease revoked")
        assert await store.get("/corral/job/member/0") is None
        assert store.core.lease(leases[1]) is not None
    finally:
        for w in watches:
            w.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        for live in ring:
            await live.close()


async def test_a_bad_record_turns_the_ring_off_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    lease = await store.grant(60)
    live = PeerLiveness(store, run_id="job", addr="127.0.0.1", lease=lambda: lease)
    await live.start()
    await store.put(live.key(0, 0), b'{"port": 1}')  # no addr: written by something else
    task = asyncio.ensure_future(live.watch(_rnd(1)))
    try:
        with caplog.at_level(logging.WARNING, logger="corral.agent"):
            await _until(lambda: "peer liveness for round 0 off" in caplog.text, "warning")
        assert "bad liveness record" in caplog.text
        assert not task.done()  # off, not failed: the lease still watches the predecessor
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await live.close()
