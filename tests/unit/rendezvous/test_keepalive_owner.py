"""The rendezvous owns its keep-alive: an unexpected error of it fails the rendezvous at once."""

from __future__ import annotations

import asyncio

import pytest
from tests.unit.rendezvous.conftest import Job, advance, spin

pytestmark = pytest.mark.timeout(10)


async def test_an_unexpected_keep_alive_error_ends_watch_round_with_it(job: Job) -> None:
    r = job.node("a", min_nodes=1, max_nodes=1)
    info = await r.join()
    w = asyncio.ensure_future(r.watch_round(info))
    await spin()
    # The next store call is the keep-alive's: it hits a bug, not a StoreError. Before the
    # fix the task died silently: the lease ran out 15 s later and looked like an eviction.
    job.sessions["a"].fail_next(1, RuntimeError("keep-alive bug"))
    job.expected_failure = RuntimeError  # the run's task group ends with it too
    await advance(job.clock, 5)
    with pytest.raises(RuntimeError, match="keep-alive bug"):
        await asyncio.wait_for(w, 2)
