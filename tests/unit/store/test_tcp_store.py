"""The tcp server and client: connection leases, auth, bounds, loss, and the standalone entry."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from tests.helpers import cancel_watch_opens

from corral.core.clock import FakeClock
from corral.core.errors import (
    AuthenticationFailed,
    LeaseNotFound,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from corral.store.api import EventType
from corral.store.registry import open_store
from corral.store.tcp import protocol as p
from corral.store.tcp.auth import hmac_answer
from corral.store.tcp.client import connect
from corral.store.tcp.server import ServerLimits, StoreServer, _is_loopback

WAIT = 10.0
TOKEN = "s3cret"


@pytest.fixture
async def server() -> AsyncIterator[StoreServer]:
    srv = StoreServer(clock=FakeClock())
    await srv.start("127.0.0.1", 0, token=TOKEN)
    yield srv
    await srv.close()


async def test_closing_a_client_ends_its_leases_at_once(server: StoreServer) -> None:
    host, port = server.address
    owner = await connect(host, port, token=TOKEN, timeout=5)
    other = await connect(host, port, token=TOKEN, timeout=5)
    lease = await owner.grant(3600)
    await owner.put("/node/a", b"alive", lease=lease)
    async with other.watch("/node/", prefix=True) as events:
        await owner.close()
        ev = await asyncio.wait_for(anext(events), WAIT)
        assert ev.type is EventType.DELETE and ev.kv.key == "/node/a"
    assert server.core.lease(lease) is None
    with pytest.raises(LeaseNotFound):
        await other.keep_alive(lease)
    await other.close()


async def test_open_store_url_and_lease_expiry_on_server_clock(server: StoreServer) -> None:
    host, port = server.address
    store = await open_store(f"tcp://{host}:{port}", token=TOKEN, timeout=5)
    lease = await store.grant(5)
    await store.put("k", b"v", lease=lease)
    async with store.watch("k") as events:
        clock = server.shared.clock
        assert isinstance(clock, FakeClock)
        clock.advance(5)
        assert (await asyncio.wait_for(anext(events), WAIT)).type is EventType.DELETE
    await store.close()


async def test_local_store_shares_data_and_owns_its_leases(server: StoreServer) -> None:
    host, port = server.address
    local = server.local_store()
    assert local.characteristics.connection_leases
    remote = await connect(host, port, token=TOKEN, timeout=5)
    lease = await local.grant(3600)
    async with remote.watch("/agent/", prefix=True) as events:
        rev = await local.put("/agent/me", b"x", lease=lease)
        ev = await asyncio.wait_for(anext(events), WAIT)
        assert ev.revision == rev and ev.type is EventType.PUT
        await local.close()
        ev = await asyncio.wait_for(anext(events), WAIT)
        assert ev.type is EventType.DELETE
    await remote.close()


async def test_wrong_or_missing_token_is_refused(server: StoreServer) -> None:
    host, port = server.address
    with pytest.raises(AuthenticationFailed):
        await connect(host, port, token="wrong", timeout=5)
    with pytest.raises(AuthenticationFailed):
        await connect(host, port, token=None, timeout=5)
    good = await connect(host, port, token=TOKEN, timeout=5)
    assert await good.put("k", b"") > 0
    await good.close()


async def test_server_close_fails_pending_and_ends_watches() -> None:
    srv = StoreServer()
    await srv.start("127.0.0.1", 0)
    store = await connect(*srv.address, timeout=5, request_timeout=0.3)
    async with store.watch("k") as events:
        await srv.close()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(anext(events), WAIT)
    with pytest.raises(StoreUnavailable):
        await store.get("k")  # reconnect fails: nobody listens
    await store.close()


async def test_connect_gives_up_with_address_and_duration() -> None:
    srv = StoreServer()
    await srv.start("127.0.0.1", 0)
    host, port = srv.address
    await srv.close()  # the port is now (very likely) closed
    with pytest.raises(StoreUnavailable, match=rf"{port}.*tried for"):
        await connect(host, port, timeout=0.3)


@pytest.mark.parametrize("how", ["connect", "registry"])
async def test_request_timeout(how: str) -> None:
    """Each request ends with StoreTimeout; through open_store, the store's one
    ``timeout`` bounds each request too (it declares bounded_requests)."""
    transports: list[asyncio.Transport] = []

    class Mute(asyncio.Protocol):
        """Completes the handshake, then never answers."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transports.append(transport)
            transport.write(p.encode(p.Challenge(p.VERSION, "n", False)))

        def data_received(self, data: bytes) -> None:
            if data.find(b"hello") >= 0:
                transports[-1].write(p.encode(p.Welcome(p.VERSION)))

    loop = asyncio.get_running_loop()
    srv = await loop.create_server(Mute, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    if how == "connect":
        store = await connect("127.0.0.1", port, timeout=5, request_timeout=0.2)
    else:
        store = await open_store(f"tcp://127.0.0.1:{port}", timeout=1.0)
        assert store.characteristics.bounded_requests
    with pytest.raises(StoreTimeout, match="no answer"):
        await asyncio.wait_for(store.get("k"), 10)
    await store.close()
    for t in transports:
        t.abort()
    srv.close()
    await srv.wait_closed()


def test_loopback_detection() -> None:
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("10.1.2.3")
    assert not _is_loopback("")


async def test_limits_on_watches_and_leases() -> None:
    srv = StoreServer(
        limits=ServerLimits(max_watches_per_connection=2, max_leases_per_connection=1)
    )
    await srv.start("127.0.0.1", 0)
    store = await connect(*srv.address, timeout=5)
    async with store.watch("a"), store.watch("b"):
        with pytest.raises(StoreError, match="max_watches"):
            async with store.watch("c"):
                pass
    lease = await store.grant(10)
    with pytest.raises(StoreError, match="max_leases"):
        await store.grant(10)
    await store.revoke(lease)
    await store.grant(10)  # a revoked lease frees its slot
    await store.close()
    await srv.close()


async def test_standalone_main_subprocess() -> None:
    env = dict(os.environ, CORRAL_TOKEN=TOKEN)
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.store.tcp.server", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        text = line.decode().strip()
        assert text.startswith("corral store listening on tcp://127.0.0.1:"), text
        url = text.rsplit(" ", 1)[1]
        store = await open_store(url, token=TOKEN, timeout=10)
        assert await store.put("k", b"v") == 1
        await store.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_loopback_without_token_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    srv = StoreServer()
    caplog.set_level(logging.WARNING, logger="corral.store.tcp.server")
    # 127.0.0.1 is loopback: no warning.
    await srv.start("127.0.0.1", 0)
    await srv.close()
    assert not [r for r in caplog.records if "without a token" in r.message]


def test_hmac_answer_is_hex_sha256() -> None:
    assert len(hmac_answer("t", "n")) == 64


async def test_watch_cancelled_while_opening_leaves_no_watch(server: StoreServer) -> None:
    host, port = server.address
    client = await connect(host, port, token=TOKEN, timeout=5)
    try:
        await cancel_watch_opens(client, "k")
        async with client.watch("last"):  # the server answers requests in order
            assert server.core.watch_count == 1
    finally:
        await client.close()
