"""The tcp server and client on uvloop, whose transports are not ``asyncio.Transport`` subclasses."""

from __future__ import annotations

import asyncio

import pytest

from corral.store.api import EventType
from corral.store.tcp.client import connect
from corral.store.tcp.server import StoreServer

uvloop = pytest.importorskip("uvloop")

pytestmark = pytest.mark.timeout(30)


async def _round_trip() -> None:
    server = StoreServer()
    await server.start("127.0.0.1", 0)
    try:
        store = await connect(*server.address, timeout=5, request_timeout=5)
        try:
            async with store.watch("/k") as events:
                it = aiter(events)
                rev = await store.put("/k", b"v")
                ev = await asyncio.wait_for(anext(it), 5)
            assert (ev.type, ev.kv.value, ev.revision) == (EventType.PUT, b"v", rev)
            lease = await store.grant(5)
            res = await store.create("/leased", b"x", lease=lease)
            assert res.succeeded
            got = await store.get("/k")
            assert got is not None and got.value == b"v"
        finally:
            await store.close()
    finally:
        await server.close()


def test_server_and_client_on_uvloop() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert "uvloop" in type(runner.get_loop()).__module__
        runner.run(_round_trip())
