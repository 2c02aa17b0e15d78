"""Property: any sequence of operations gives the same observable results on tcp and memory."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.core.clock import FakeClock
from corral.core.errors import LauncherError
from corral.store.api import Store, WatchEvent
from corral.store.memory import MemoryStore
from corral.store.tcp.client import connect
from corral.store.tcp.server import StoreServer

KEYS = st.sampled_from(["a", "a/b", "a/c", "b", "é/x"])
VALUES = st.binary(max_size=8)
LEASES = st.integers(min_value=0, max_value=4)  # 0: none; 1..4: granted or not (yet)

OPS = st.one_of(
    st.tuples(st.just("get"), KEYS),
    st.tuples(st.just("range"), st.sampled_from(["", "a", "a/", "b", "z"])),
    st.tuples(st.just("put"), KEYS, VALUES, LEASES),
    st.tuples(st.just("create"), KEYS, VALUES, LEASES),
    st.tuples(st.just("cas"), KEYS, VALUES, st.integers(min_value=0, max_value=12), LEASES),
    st.tuples(st.just("delete"), KEYS, st.booleans()),
    st.tuples(st.just("grant"), st.sampled_from([1.0, 5.0, 30.0])),
    st.tuples(st.just("keep_alive"), LEASES),
    st.tuples(st.just("revoke"), LEASES),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 2.0, 10.0])),
)


async def apply(store: Store, clock: FakeClock, op: tuple[Any, ...]) -> object:
    name = op[0]
    try:
        if name == "get":
            return await store.get(op[1])
        if name == "range":
            return await store.range(op[1])
        if name == "put":
            return await store.put(op[1], op[2], lease=op[3])
        if name == "create":
            return await store.create(op[1], op[2], lease=op[3])
        if name == "cas":
            return await store.compare_and_set(op[1], op[2], op[3], lease=op[4])
        if name == "delete":
            return await store.delete(op[1], prefix=op[2])
        if name == "grant":
            return await store.grant(op[1])
        if name == "keep_alive":
            return await store.keep_alive(op[1])
        if name == "revoke":
            return await store.revoke(op[1])
        clock.advance(op[1])
        await asyncio.sleep(0)
        return None
    except LauncherError as exc:
        return type(exc).__name__


async def run(store: Store, clock: FakeClock, ops: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    results = []
    async with store.watch("", prefix=True) as events:
        for op in ops:
            results.append(await apply(store, clock, op))
        _, final_rev = await store.range("")
        seen: list[WatchEvent] = []
        while final_rev and (not seen or seen[-1].revision < final_rev):
            seen.append(await asyncio.wait_for(anext(events), 10))
    return results, await store.range(""), seen


async def both(ops: list[tuple[Any, ...]]) -> None:
    mem_clock = FakeClock()
    mem = MemoryStore(mem_clock)
    tcp_clock = FakeClock()
    server = StoreServer(clock=tcp_clock)
    await server.start("127.0.0.1", 0)
    tcp = await connect(*server.address, timeout=10)
    try:
        assert await run(mem, mem_clock, ops) == await run(tcp, tcp_clock, ops)
    finally:
        await tcp.close()
        await server.close()
        await mem.close()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(st.lists(OPS, max_size=30))
def test_tcp_and_memory_agree(ops: list[tuple[Any, ...]]) -> None:
    asyncio.run(both(ops))
