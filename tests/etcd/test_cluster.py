"""A 3-member etcd cluster losing members under a working client.

A writer creates keys and advances a counter by compare-and-set while a
watcher follows the prefix from another client. The test kills a follower
(restarts it), then kills the leader (restarts it). Afterwards every
acknowledged write is in the store, and the watch, resumed on other members
from its last revision, delivered every acknowledged write exactly once, in
order.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator

import pytest

from corral.store.api import WatchEvent
from corral.store.etcd.client import EtcdStore, open_etcd_store
from tests.etcd_fixtures import EtcdCluster, EtcdMember, find_leader, start_cluster

OPS = 60  # writer iterations (one create + one compare-and-set each)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    with start_cluster(3) as c:
        yield c


class Writer:
    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.done_ops = 0
        self.acked: dict[int, str] = {}  # revision -> key, of every acknowledged write
        self.progress = asyncio.Condition()

    async def wait_for(self, ops: int) -> None:
        async with self.progress:
            await asyncio.wait_for(self.progress.wait_for(lambda: self.done_ops >= ops), 30)

    async def run(self) -> None:
        mod = 0
        for i in range(OPS):
            created = await self.store.create(f"k/{i:03d}", f"v{i}".encode())
            assert created.succeeded and created.kv is not None, (i, created)
            self.acked[created.revision] = f"k/{i:03d}"
            cas = await self.store.compare_and_set("counter", str(i).encode(), mod)
            assert cas.succeeded and cas.kv is not None, (i, mod, cas)
            mod = cas.kv.mod_revision
            self.acked[mod] = "counter"
            async with self.progress:
                self.done_ops = i + 1
                self.progress.notify_all()


def _connected(store: EtcdStore) -> str | None:
    session = store._conn._session  # test-only peek: which member the client uses
    return session.endpoint if session is not None else None


async def test_kill_follower_then_leader(cluster: EtcdCluster) -> None:
    url = cluster.url("/corral-cluster")
    writer_store = await open_etcd_store(url, timeout=20)
    watcher_store = await open_etcd_store(url, timeout=20)
    try:
        await writer_store.delete("", prefix=True)
        _, start = await watcher_store.range("")
        leader = await asyncio.to_thread(find_leader, cluster)
        # Kill the member the clients use when it is a follower, else another follower.
        used = _connected(writer_store)
        followers = [m for m in cluster.members if m is not leader]
        follower = next((m for m in followers if m.endpoint == used), followers[0])

        seen: list[WatchEvent] = []
        writer = Writer(writer_store)

        async def watch() -> None:
            async with watcher_store.watch("", prefix=True, start_revision=start + 1) as events:
                async for ev in events:
                    seen.append(ev)
                    if len(seen) == 2 * OPS:
                        return

        async def faults() -> None:
            await writer.wait_for(10)
            await asyncio.to_thread(follower.kill)
            await writer.wait_for(20)
            await asyncio.to_thread(follower.start)
            await writer.wait_for(30)
            await asyncio.to_thread(_kill_leader, cluster)
            await writer.wait_for(40)
            await asyncio.to_thread(_restart_stopped, cluster)

        async with asyncio.timeout(60):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(writer.run())
                tg.create_task(faults())
                tg.create_task(watch())

        assert all(m.running for m in cluster.members)
        # Every acknowledged write is there.
        kvs, _ = await watcher_store.range("")
        by_key = {kv.key: kv for kv in kvs}
        assert sorted(by_key) == sorted({*writer.acked.values()})
        assert by_key["counter"].value == str(OPS - 1).encode()
        for i in range(OPS):
            assert by_key[f"k/{i:03d}"].value == f"v{i}".encode()
        # The watch saw each acknowledged write once, in revision order, no gaps.
        assert [ev.revision for ev in seen] == sorted(writer.acked)
        assert [ev.kv.key for ev in seen] == [writer.acked[r] for r in sorted(writer.acked)]
    finally:
        await writer_store.close()
        await watcher_store.close()


def _kill_leader(cluster: EtcdCluster) -> None:
    find_leader(cluster).kill()


async def _put_while_hung(
    cluster: EtcdCluster,
    watcher: EtcdStore,
    writer: EtcdStore,
    events: AsyncIterator[WatchEvent],
    wait: float,
) -> tuple[EtcdMember, int, WatchEvent]:
    """SIGSTOP the member ``watcher`` uses, put k=while-hung with ``writer``, and
    return that member (resumed), the put's revision and the next watch event."""
    victim = next(m for m in cluster.members if m.endpoint == _connected(watcher))
    await asyncio.to_thread(victim.kill, signal.SIGSTOP)
    try:
        rev = await writer.put("k", b"while-hung")
        ev = await asyncio.wait_for(anext(events), wait)
    finally:
        victim.resume()
    return victim, rev, ev


def _restart_stopped(cluster: EtcdCluster) -> None:
    stopped: list[EtcdMember] = [m for m in cluster.members if not m.running]
    for m in stopped:
        m.start()


async def test_hung_member_moves_calls_and_watches(cluster: EtcdCluster) -> None:
    """SIGSTOP the member in use: the next call fails over after its attempt
    timeout, and the same client's idle watch moves with it, missing nothing."""
    store = await open_etcd_store(cluster.url("/corral-hung"), timeout=20)
    try:
        async with store.watch("k") as events:
            victim, rev, ev = await _put_while_hung(cluster, store, store, events, 10)
        assert ev.revision == rev and ev.kv.value == b"while-hung"
        assert _connected(store) != victim.endpoint
        await asyncio.to_thread(find_leader, cluster)  # the member is back in the cluster
    finally:
        await store.close()


async def test_client_moves_to_the_leader(cluster: EtcdCluster) -> None:
    """Listed first or not, the leader is the member a client ends up on (when it
    is listed); a client given one follower only stays on it."""
    leader = await asyncio.to_thread(find_leader, cluster)
    follower = next(m for m in cluster.members if m is not leader)
    rest = [m.endpoint for m in cluster.members if m is not follower]
    store = await open_etcd_store(
        f"etcd://{','.join([follower.endpoint, *rest])}/corral-leader", timeout=20
    )
    try:
        await store.put("k", b"v")
        assert _connected(store) == leader.endpoint
    finally:
        await store.close()
    only = await open_etcd_store(f"etcd://{follower.endpoint}/corral-leader", timeout=20)
    try:
        assert (kv := await only.get("k")) is not None and kv.value == b"v"
        assert _connected(only) == follower.endpoint
    finally:
        await only.close()


async def test_idle_watch_leaves_a_hung_member(cluster: EtcdCluster) -> None:
    """A client that only watches notices its member hang by the progress probe
    (no call of its own fails) and resumes the watch on another member."""
    watcher = await open_etcd_store(cluster.url("/corral-idle"), timeout=20)
    writer = await open_etcd_store(cluster.url("/corral-idle"), timeout=20)
    watcher._conn.watch_idle = 0.3  # test-only: probe after 0.3 s of silence
    watcher._conn.request_attempt = 0.5
    try:
        async with watcher.watch("k") as events:
            # the writer's member may be the victim too: its put fails over
            victim, rev, ev = await _put_while_hung(cluster, watcher, writer, events, 15)
        assert (ev.revision, ev.kv.value) == (rev, b"while-hung")
        assert _connected(watcher) != victim.endpoint
        await asyncio.to_thread(find_leader, cluster)
    finally:
        await watcher.close()
        await writer.close()
