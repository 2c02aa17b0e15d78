"""The store contract (corral.store.api), run against every backend in conftest.BACKENDS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import pytest

from corral.core.errors import ConfigError, LeaseNotFound, StoreCompacted
from corral.store.api import EventType, Store, WatchEvent

if TYPE_CHECKING:
    from tests.contract.conftest import Backend

WAIT = 10.0  # seconds: bound on any single await of an event


async def nxt(events: AsyncIterator[WatchEvent]) -> WatchEvent:
    return await asyncio.wait_for(anext(events), WAIT)


async def test_satisfies_protocol(store: Store) -> None:
    assert isinstance(store, Store)
    assert store.characteristics.leases


async def test_get_absent(store: Store, ns: str) -> None:
    assert await store.get(ns + "nope") is None


async def test_put_revisions(store: Store, ns: str) -> None:
    r1 = await store.put(ns + "a", b"1")
    r2 = await store.put(ns + "a", b"2")
    r3 = await store.put(ns + "b", b"3")
    assert r1 < r2 < r3
    kv = await store.get(ns + "a")
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease) == (
        ns + "a",
        b"2",
        r1,
        r2,
        0,
    )


async def test_values_are_bytes_roundtrip(store: Store, ns: str) -> None:
    blob = bytes(range(256)) * 4
    await store.put(ns + "bin", blob)
    kv = await store.get(ns + "bin")
    assert kv is not None and kv.value == blob
    await store.put(ns + "empty", b"")
    kv = await store.get(ns + "empty")
    assert kv is not None and kv.value == b""


async def test_unicode_keys(store: Store, ns: str) -> None:
    await store.put(ns + "clé/ü", b"x")
    kvs, _ = await store.range(ns)
    assert [kv.key for kv in kvs] == [ns + "clé/ü"]


async def test_create_first_write_wins(store: Store, ns: str) -> None:
    won = await store.create(ns + "k", b"first")
    assert won.succeeded and won.kv is not None and won.kv.value == b"first"
    assert won.revision == won.kv.mod_revision == won.kv.create_revision
    lost = await store.create(ns + "k", b"second")
    assert not lost.succeeded
    assert lost.kv == won.kv
    assert lost.revision >= won.revision
    kv = await store.get(ns + "k")
    assert kv is not None and kv.value == b"first"


async def test_compare_and_set(store: Store, ns: str) -> None:
    k = ns + "cas"
    absent = await store.compare_and_set(k, b"v0", 0)
    assert absent.succeeded and absent.kv is not None
    again = await store.compare_and_set(k, b"v0b", 0)
    assert not again.succeeded and again.kv == absent.kv
    ok = await store.compare_and_set(k, b"v1", absent.kv.mod_revision)
    assert ok.succeeded and ok.kv is not None and ok.kv.value == b"v1"
    assert ok.kv.create_revision == absent.kv.create_revision
    assert ok.revision == ok.kv.mod_revision > absent.kv.mod_revision
    stale = await store.compare_and_set(k, b"v2", absent.kv.mod_revision)
    assert not stale.succeeded and stale.kv == ok.kv
    missing = await store.compare_and_set(ns + "missing", b"x", 7)
    assert not missing.succeeded and missing.kv is None
    assert await store.get(ns + "missing") is None


async def test_delete_key_and_prefix(store: Store, ns: str) -> None:
    for k in ("p/a", "p/b", "p/c/d", "q"):
        await store.put(ns + k, b"")
    before = (await store.range(ns))[1]
    assert await store.delete(ns + "absent") == 0
    assert await store.delete(ns + "q") == 1
    assert await store.delete(ns + "p/", prefix=True) == 3
    kvs, rev = await store.range(ns)
    assert kvs == [] and rev > before
    assert await store.delete(ns + "p/", prefix=True) == 0


async def test_range_sorted_with_revision(store: Store, ns: str) -> None:
    for k in ("b", "a", "c/x", "ab"):
        await store.put(ns + k, k.encode())
    last = await store.put(ns + "zz", b"")
    kvs, rev = await store.range(ns)
    assert [kv.key for kv in kvs] == [ns + k for k in ("a", "ab", "b", "c/x", "zz")]
    assert rev >= last
    sub, _ = await store.range(ns + "a")
    assert [kv.key for kv in sub] == [ns + "a", ns + "ab"]


async def test_range_then_watch_from_next_revision_misses_nothing(
    store_factory: Callable[[], Awaitable[Store]], ns: str
) -> None:
    reader, writer = await store_factory(), await store_factory()
    await writer.put(ns + "x/1", b"1")
    _, rev = await reader.range(ns + "x/")
    # Written between the read and the watch: must still be seen.
    r2 = await writer.put(ns + "x/2", b"2")
    r3 = await writer.delete(ns + "x/1")
    async with reader.watch(ns + "x/", prefix=True, start_revision=rev + 1) as events:
        e1 = await nxt(events)
        e2 = await nxt(events)
        assert (e1.type, e1.kv.key, e1.revision, e1.kv.value) == (
            EventType.PUT,
            ns + "x/2",
            r2,
            b"2",
        )
        assert (e2.type, e2.kv.key) == (EventType.DELETE, ns + "x/1")
        assert r3 == 1 and e2.revision > e1.revision


async def test_watch_prefix_orders_events(
    store_factory: Callable[[], Awaitable[Store]], ns: str
) -> None:
    watcher, writer = await store_factory(), await store_factory()
    async with watcher.watch(ns + "w/", prefix=True) as events:
        revs = []
        for i in range(20):
            revs.append(await writer.put(ns + f"w/{i % 3}", str(i).encode()))
        await writer.put(ns + "other", b"not seen")
        await writer.delete(ns + "w/", prefix=True)
        seen = [await nxt(events) for _ in range(23)]
    puts = seen[:20]
    assert [e.revision for e in puts] == revs
    assert [e.kv.value for e in puts] == [str(i).encode() for i in range(20)]
    assert all(e.type is EventType.PUT for e in puts)
    deletes = seen[20:]
    assert {e.kv.key for e in deletes} == {ns + "w/0", ns + "w/1", ns + "w/2"}
    assert all(e.type is EventType.DELETE and e.kv.value == b"" for e in deletes)
    assert [e.revision for e in seen] == sorted(e.revision for e in seen)


async def test_watch_single_key_ignores_others(store: Store, ns: str) -> None:
    async with store.watch(ns + "k") as events:
        await store.put(ns + "k2", b"no")
        await store.put(ns + "k", b"yes")
        ev = await nxt(events)
        assert ev.kv.key == ns + "k" and ev.kv.value == b"yes"


async def test_watch_from_zero_sees_only_later_changes(store: Store, ns: str) -> None:
    await store.put(ns + "k", b"old")
    async with store.watch(ns + "k") as events:
        r = await store.put(ns + "k", b"new")
        ev = await nxt(events)
        assert ev.revision == r and ev.kv.value == b"new"


async def test_many_watchers_one_put(
    store_factory: Callable[[], Awaitable[Store]], ns: str
) -> None:
    watcher, writer = await store_factory(), await store_factory()
    async with (
        watcher.watch(ns + "k") as a,
        watcher.watch(ns + "k") as b,
        watcher.watch(ns, prefix=True) as c,
    ):
        r = await writer.put(ns + "k", b"v")
        for events in (a, b, c):
            assert (await nxt(events)).revision == r


async def test_lease_keys_vanish_on_revoke(
    store_factory: Callable[[], Awaitable[Store]], ns: str
) -> None:
    owner, other = await store_factory(), await store_factory()
    lease = await owner.grant(30)
    assert lease > 0
    await owner.put(ns + "eph/a", b"", lease=lease)
    created = await owner.create(ns + "eph/b", b"", lease=lease)
    assert created.kv is not None and created.kv.lease == lease
    await owner.put(ns + "durable", b"")
    async with other.watch(ns + "eph/", prefix=True) as events:
        await owner.revoke(lease)
        gone = {(await nxt(events)).kv.key for _ in range(2)}
    assert gone == {ns + "eph/a", ns + "eph/b"}
    assert (await other.range(ns + "eph/"))[0] == []
    assert await other.get(ns + "durable") is not None
    await owner.revoke(lease)  # already ended: not an error


async def test_lease_keys_vanish_on_expiry(
    backend: Backend, store_factory: Callable[[], Awaitable[Store]], ns: str
) -> None:
    owner, other = await store_factory(), await store_factory()
    lease = await owner.grant(2)
    await owner.put(ns + "eph", b"x", lease=lease)
    async with other.watch(ns + "eph") as events:
        await backend.let_time_pass(3)
        ev = await nxt(events)
        assert ev.type is EventType.DELETE and ev.kv.key == ns + "eph"
    assert await other.get(ns + "eph") is None
    with pytest.raises(LeaseNotFound):
        await owner.keep_alive(lease)


async def test_keep_alive_returns_ttl(store: Store) -> None:
    lease = await store.grant(20)
    ttl = await store.keep_alive(lease)
    assert 15 <= ttl <= 20
    await store.revoke(lease)


@pytest.mark.parametrize("ttl", [0, -1.5])
async def test_a_bad_ttl_is_a_config_error_on_every_backend(store: Store, ttl: float) -> None:
    # one error tree: never a bare ValueError from a backend
    with pytest.raises(ConfigError, match="ttl"):
        await store.grant(ttl)


async def test_lease_not_found(store: Store, ns: str) -> None:
    lease = await store.grant(20)
    await store.revoke(lease)
    with pytest.raises(LeaseNotFound):
        await store.keep_alive(lease)
    with pytest.raises(LeaseNotFound):
        await store.put(ns + "k", b"", lease=lease)
    with pytest.raises(LeaseNotFound):
        await store.create(ns + "k", b"", lease=lease)
    with pytest.raises(LeaseNotFound):
        await store.compare_and_set(ns + "k", b"", 0, lease=lease)
    assert await store.get(ns + "k") is None


async def test_watch_compacted(backend: Backend, store: Store, ns: str) -> None:
    first = await store.put(ns + "k", b"0")
    for i in range(5):
        last = await store.put(ns + "k", str(i).encode())
    await backend.compact(last)
    with pytest.raises(StoreCompacted):
        async with store.watch(ns + "k", start_revision=first) as events:
            await nxt(events)
    # Still usable afterwards, and a watch at the current revision + 1 works.
    async with store.watch(ns + "k", start_revision=last + 1) as events:
        r = await store.put(ns + "k", b"after")
        assert (await nxt(events)).revision == r


async def test_put_many(store: Store, ns: str) -> None:
    # more keys than one etcd transaction holds (128)
    items = [(f"{ns}many/{i:04d}", f"v{i}".encode()) for i in range(300)]
    before = await store.put(ns + "before", b"")
    revision = await store.put_many(items)
    kvs, now = await store.range(ns + "many/")
    assert [(kv.key, kv.value, kv.lease) for kv in kvs] == [(k, v, 0) for k, v in items]
    assert all(before < kv.mod_revision <= revision for kv in kvs)
    assert revision <= now
    assert await store.put_many([]) == 0
    with pytest.raises(ValueError, match="distinct"):
        await store.put_many([(ns + "x", b"1"), (ns + "x", b"2")])
    assert await store.get(ns + "x") is None


async def test_create_and_read(store: Store, ns: str) -> None:
    lease = await store.grant(30)
    taken = await store.put(ns + "r/taken", b"old")
    results, (r, other), rev = await store.create_and_read(
        [(ns + "r/mine", b"m", lease), (ns + "r/taken", b"new", 0)], [ns + "r/", ns + "q/"]
    )
    mine, conflict = results
    # each create on its own: the first wins, the second finds the key there
    assert mine.succeeded and mine.kv is not None
    assert (mine.kv.key, mine.kv.value, mine.kv.lease) == (ns + "r/mine", b"m", lease)
    assert mine.kv.create_revision == mine.revision > taken
    assert not conflict.succeeded and conflict.kv is not None
    assert (conflict.kv.value, conflict.kv.mod_revision) == (b"old", taken)
    # the reads come after the creates and see them
    assert [(kv.key, kv.value) for kv in r] == [(ns + "r/mine", b"m"), (ns + "r/taken", b"old")]
    assert r[0] == mine.kv  # the key a create returns is the key as stored
    assert other == []
    assert rev >= mine.revision
    # a watch from rev + 1 misses nothing written after the read
    async with store.watch(ns + "r/", prefix=True, start_revision=rev + 1) as events:
        after = await store.put(ns + "r/z", b"z")
        ev = await nxt(events)
        assert (ev.kv.key, ev.revision) == (ns + "r/z", after)
    # the created key is under the lease
    await store.revoke(lease)
    assert await store.get(ns + "r/mine") is None
    # a second call: the key exists now only if created again
    again, _, _ = await store.create_and_read([(ns + "r/mine", b"2", 0)], [])
    assert again[0].succeeded
    with pytest.raises(ValueError, match="distinct"):
        await store.create_and_read([(ns + "x", b"1", 0), (ns + "x", b"2", 0)], [])
    assert await store.get(ns + "x") is None
    with pytest.raises(LeaseNotFound):
        await store.create_and_read([(ns + "y", b"1", lease)], [ns])
    assert await store.get(ns + "y") is None


async def test_get_with_min_revision(store: Store, ns: str) -> None:
    first = await store.put(ns + "m", b"1")
    second = await store.put(ns + "m", b"2")
    for seen in (first, second):
        kv = await store.get(ns + "m", min_revision=seen)
        assert kv is not None and kv.mod_revision >= seen
    # a revision the store has not reached yet: the latest state (etcd: the
    # member's own read is too old, so it reads through the leader)
    kv = await store.get(ns + "m", min_revision=second + 1000)
    assert kv is not None and kv.value == b"2"
    assert await store.get(ns + "absent", min_revision=second) is None
