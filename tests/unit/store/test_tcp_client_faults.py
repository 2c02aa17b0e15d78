"""The tcp client against a scripted server: lost connections and failed pipelines.

The server here speaks the real protocol (corral.store.tcp.protocol) over a real
loopback socket, and answers as each test scripts it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from corral.core.errors import LeaseNotFound, StoreError, StoreUnavailable
from corral.store.tcp import protocol as p
from corral.store.tcp.client import connect
from corral.store.tcp.connection import Connection

pytestmark = pytest.mark.timeout(10)

# answer(message) -> frames to write back, and whether to drop the connection after them
Script = Callable[[p.Message], tuple[list[p.Message], bool]]


class _Scripted(asyncio.Protocol):
    def __init__(self, script: Script, after_welcome: list[p.Message], drop: bool) -> None:
        self.script = script
        self.after_welcome = after_welcome
        self.drop_after_welcome = drop
        self.decoder = p.Decoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(p.encode(p.Challenge(p.VERSION, "nonce", False)))

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        for m in self.decoder.feed(data):
            if isinstance(m, p.Hello):
                out = [p.Welcome(p.VERSION), *self.after_welcome]
                self.transport.write(b"".join(p.encode(x) for x in out))
                if self.drop_after_welcome:
                    self.transport.abort()
                    return
                continue
            replies, drop = self.script(m)
            if replies:
                self.transport.write(b"".join(p.encode(x) for x in replies))
            if drop:
                self.transport.abort()
                return


@asynccontextmanager
async def scripted(
    script: Script, *, after_welcome: list[p.Message] | None = None, drop: bool = False
) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    peers: list[_Scripted] = []

    def make() -> _Scripted:
        peers.append(_Scripted(script, after_welcome or [], drop))
        return peers[-1]

    server = await loop.create_server(make, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for peer in peers:
            if peer.transport is not None:
                peer.transport.abort()
        await server.wait_closed()


def _silent(m: p.Message) -> tuple[list[p.Message], bool]:
    return [], False


async def test_a_connection_lost_right_after_the_handshake_fails_requests_at_once() -> None:
    # The server welcomes, then ends the connection in the same write: the client
    # must not park requests on the dead connection until request_timeout.
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(StoreUnavailable):
        async with scripted(
            _silent, after_welcome=[p.ErrorReply(0, "internal", "going away")], drop=True
        ) as port:
            store = await connect("127.0.0.1", port, timeout=0.5, request_timeout=30.0)
            try:
                await store.get("k")
            finally:
                await store.close()
    assert loop.time() - start < 5.0  # not request_timeout (30 s): no StoreTimeout


async def test_a_request_on_a_connection_lost_meanwhile_fails_at_once() -> None:
    async with scripted(_silent) as port:
        store = await connect("127.0.0.1", port, timeout=2.0, request_timeout=30.0)
        try:
            conn = store._conn
            assert conn is not None
            # The loss is processed (pending requests failed, the store forgets the
            # connection) while _ensure() is still handing this connection out: its
            # caller then registers a request on a connection that is already gone.
            conn.connection_lost(ConnectionResetError("reset by peer"))
            store._conn = conn
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(StoreUnavailable):
                await store.get("k")
            assert loop.time() - start < 5.0
        finally:
            assert conn.transport is not None
            conn.transport.abort()  # the kernel's side of that loss, for this test's socket
            await store.close()


def _fail_first_create(m: p.Message) -> tuple[list[p.Message], bool]:
    # the first create is refused; nothing else is ever answered
    if isinstance(m, p.Create) and m.key == "a":
        return [p.ErrorReply(m.id, "lease_not_found", "lease 7 not found")], False
    return [], False


def _store_tasks() -> list[asyncio.Task[object]]:
    me = asyncio.current_task()
    return [
        t
        for t in asyncio.all_tasks()
        if t is not me and not t.done() and "TcpStore" in repr(t.get_coro())
    ]


async def test_create_and_read_cancels_its_siblings_after_the_first_error() -> None:
    async with scripted(_fail_first_create) as port:
        store = await connect("127.0.0.1", port, timeout=2.0, request_timeout=30.0)
        try:
            with pytest.raises(LeaseNotFound):
                await store.create_and_read(
                    [("a", b"1", 7), ("b", b"2", 7)], ["/prefix/", "/other/"]
                )
            assert _store_tasks() == []  # before the fix: three requests left waiting 30 s
            assert store._conn is not None and store._conn.pending == {}
        finally:
            await store.close()


def _fail_first_put(m: p.Message) -> tuple[list[p.Message], bool]:
    if isinstance(m, p.Put) and m.key == "a":
        return [p.ErrorReply(m.id, "limit", "store holds too many keys")], False
    return [], False


async def test_put_many_cancels_its_siblings_after_the_first_error() -> None:
    async with scripted(_fail_first_put) as port:
        store = await connect("127.0.0.1", port, timeout=2.0, request_timeout=30.0)
        try:
            with pytest.raises(Exception, match="too many keys"):
                await store.put_many([("a", b"1"), ("b", b"2"), ("c", b"3")])
            assert _store_tasks() == []
            assert store._conn is not None and store._conn.pending == {}
        finally:
            await store.close()


class _BuggySweep(Connection):
    """A connection whose request-deadline sweep has a bug."""

    def _sweep(self) -> None:
        raise RuntimeError("sweep bug")


async def test_a_failing_deadline_sweep_fails_the_connection_with_an_error_naming_it() -> None:
    # The sweep is a loop timer: its error would reach only the loop's exception
    # handler and requests would wait for ever. The connection fails them instead.
    loop = asyncio.get_running_loop()
    async with scripted(_silent) as port:
        store = await connect("127.0.0.1", port, timeout=2.0, request_timeout=0.01)
        try:
            _, conn = await loop.create_connection(
                lambda: _BuggySweep(store, None), "127.0.0.1", port
            )
            await conn.ready
            first, store._conn = store._conn, conn
            assert first is not None and first.transport is not None
            first.transport.abort()
            with pytest.raises(StoreUnavailable, match=r"request-deadline sweep failed.*sweep bug"):
                await store.get("k")  # never answered: its deadline passes
            assert isinstance(conn.lost, StoreError) and "sweep bug" in str(conn.lost)
            assert store._conn is None  # the next request connects afresh
            assert conn.transport is not None and conn.transport.is_closing()
        finally:
            await store.close()
