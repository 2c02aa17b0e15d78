"""The stores' background tasks live in task scopes their owners open and close.

The memory store's lease timer runs in the scope the store opens (``async with``,
``open_memory_store``, ``StoreServer.start``, or a bare store's first grant) and
ends with ``close``; an etcd watch stream's helpers run in its own scope, inside
the connection's. A failure is never silent: it is logged (each one) and told
to whoever waits (every later store call; every watch on the stream).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import pytest

from corral.core.clock import FakeClock
from corral.core.compat import TaskGroup
from corral.core.errors import StoreError
from corral.store.memory import MemoryStore, open_memory_store
from corral.store.tcp.server import StoreServer


async def test_the_lease_timer_runs_in_the_store_scope_and_ends_with_close() -> None:
    async with MemoryStore(FakeClock()) as store:
        await store.grant(5)
        timer = store._shared.timer
        assert timer is not None and not timer.done()
    assert timer.cancelled()


async def test_open_memory_store_opens_the_scope_and_a_bare_store_opens_it_at_its_first_grant() -> (
    None
):
    opened = await open_memory_store("memory://")
    bare = MemoryStore(FakeClock())
    try:
        for store in (opened, bare):
            await store.grant(5)
            assert store._shared.timer is not None and not store._shared.timer.done()
    finally:
        await opened.close()
        await bare.close()


async def test_the_server_opens_the_timer_scope_at_start_and_leaves_it_at_close() -> None:
    server = StoreServer(clock=FakeClock())
    await server.start("127.0.0.1", 0)
    local = server.local_store()
    await local.grant(5)
    timer = server.shared.timer
    assert timer is not None and not timer.done()
    await local.close()
    await server.close()
    assert timer.cancelled()
    server.shared.kick()  # after stop: nothing starts
    assert server.shared.timer is None


class _BrokenClock(FakeClock):
    def sleep(self, seconds: float) -> Awaitable[None]:
        raise RuntimeError("clock broke")


async def test_a_failed_lease_timer_is_logged_kept_and_told_to_every_later_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore(_BrokenClock())
    with caplog.at_level(logging.ERROR, logger="corral.store"):
        await store.grant(5)  # starts the timer, which fails on its first sleep
        timer = store._shared.timer
        assert timer is not None
        await asyncio.wait({timer})
    assert "lease timer failed" in caplog.text and "clock broke" in caplog.text
    assert [repr(e) for e in store._shared.errors] == ["RuntimeError('clock broke')"]
    for _ in range(3):
        with pytest.raises(StoreError, match="lease timer failed"):
            await store.get("k")
    store._shared.kick()  # a broken timer is not restarted (every call says so instead)
    assert store._shared.timer is timer
    await store.close()  # the scope ends cleanly: the error was told, not raised here


# --- the etcd watch stream -----------------------------------------------------


class _Call:
    """A gRPC Watch call: reads wait for ``incoming``; ``write`` may fail."""

    def __init__(self, write_error: BaseException | None = None) -> None:
        self.incoming: asyncio.Queue[Any] = asyncio.Queue()
        self.write_error = write_error
        self.cancelled = False

    async def read(self) -> Any:
        if self.cancelled:
            raise asyncio.CancelledError()
        return await self.incoming.get()

    async def write(self, request: Any) -> None:
        if self.write_error is not None:
            raise self.write_error

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.incoming.put_nowait(None)  # wakes the read, which then sees the cancel


class _Stub:
    def __init__(self, call: _Call) -> None:
        self.call = call

    def Watch(self, metadata: Any) -> _Call:
        return self.call


class _Session:
    def __init__(self, call: _Call) -> None:
        self.endpoint = "fake:2379"
        self.metadata = ()
        self.watch = _Stub(call)
        self.watch_hub: Any = None
        self.users = 0


class _Connection:
    """What a WatchHub uses of its Connection, with the connection's task scope."""

    watch_idle = 10.0
    request_attempt = 5.0

    def __init__(self, tg: TaskGroup) -> None:
        self.tg = tg
        self.released = 0
        self.failed: list[object] = []

    def acquire(self, session: _Session) -> None:
        session.users += 1

    async def release(self, session: _Session) -> None:
        session.users -= 1
        self.released += 1

    async def fail(self, session: _Session, reason: object) -> None:
        self.failed.append(reason)

    def spawn(self, coro: Any, *, name: str) -> asyncio.Task[None]:
        return self.tg.create_task(coro, name=name)


class _Watch:
    def __init__(self) -> None:
        self.downs: list[Any] = []

    def hub_down(self, hub: Any, down: Any) -> None:
        self.downs.append(down)


async def test_a_failed_watch_stream_helper_ends_the_stream_logged_and_told_to_its_watches(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("aetcd")
    from corral.store.etcd.watch import hub_of

    call = _Call(write_error=RuntimeError("writer broke"))
    session = _Session(call)
    async with TaskGroup() as tg:  # the connection's scope
        conn = _Connection(tg)
        with caplog.at_level(logging.ERROR, logger="corral.store"):
            hub = hub_of(conn, session)  # type: ignore[arg-type]
            watch = _Watch()
            hub.add(watch)  # type: ignore[arg-type]
            hub.send(object())  # the writer fails on it
            assert hub.task is not None
            await asyncio.wait({hub.task})
    assert hub.task.exception() is None  # the connection's scope is not failed by it
    assert "watch stream writer" in caplog.text and "writer broke" in caplog.text
    assert hub.down is not None and hub.down.failover  # the watches move to another member
    assert [d.failover for d in watch.downs] == [True]
    assert session.users == 0 and conn.released == 1
