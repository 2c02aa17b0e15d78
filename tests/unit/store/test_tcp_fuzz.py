"""Hostile peers: garbage, truncated and oversized frames, wrong tokens, floods, and a peer
that never reads. Each is dropped; the server stays up and a well-behaved client keeps working."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator

import pytest

from corral.store.tcp import protocol as p
from corral.store.tcp.auth import hmac_answer
from corral.store.tcp.client import connect
from corral.store.tcp.peer import Peer as PeerProtocol
from corral.store.tcp.server import ServerLimits, StoreServer

WAIT = 10.0
TOKEN = "fuzz-token"

Peer = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def server() -> AsyncIterator[StoreServer]:
    limits = ServerLimits(
        max_connections=20,
        handshake_timeout=0.5,
        max_write_buffer=256 * 1024,
        max_frame=64 * 1024,
    )
    srv = StoreServer(limits=limits)
    await srv.start("127.0.0.1", 0, token=TOKEN)
    yield srv
    await srv.close()


async def read_frame(reader: asyncio.StreamReader) -> p.Message:
    head = await asyncio.wait_for(reader.readexactly(4), WAIT)
    body = await asyncio.wait_for(reader.readexactly(int.from_bytes(head, "big")), WAIT)
    return p.decode_body(body)


async def raw_peer(server: StoreServer, *, auth: bool) -> Peer:
    reader, writer = await asyncio.open_connection(*server.address)
    if auth:
        ch = await read_frame(reader)
        assert isinstance(ch, p.Challenge) and ch.auth
        writer.write(p.encode(p.Hello(p.VERSION, hmac_answer(TOKEN, ch.nonce))))
        assert isinstance(await read_frame(reader), p.Welcome)
    return reader, writer


async def dropped(peer: Peer) -> bool:
    """True once the server has closed the connection (EOF or reset)."""
    reader, writer = peer
    try:
        while await asyncio.wait_for(reader.read(65536), WAIT):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionResetError, BrokenPipeError):
        pass
    return True


async def still_serves(server: StoreServer) -> None:
    store = await connect(*server.address, token=TOKEN, timeout=WAIT)
    rev = await store.put("/ok", b"fine")
    kv = await store.get("/ok")
    assert kv is not None and kv.mod_revision == rev
    await store.close()


async def test_random_garbage_before_and_after_auth(server: StoreServer) -> None:
    rng = random.Random(1234)
    peers: list[Peer] = []
    for i in range(30):
        peer = await raw_peer(server, auth=i % 2 == 1)
        body = rng.randbytes(rng.randint(1, 300))
        # After auth: a whole frame whose body is garbage; before: anything at all.
        peer[1].write(len(body).to_bytes(4, "big") + body if i % 2 else body)
        peers.append(peer)
    for peer in peers:
        assert await dropped(peer)
    await still_serves(server)


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'["get"]',
        b'["get", "x", "k"]',
        b'["put", 1, "k", "not base64!", 0]',
        b'["nope", 1]',
        b'{"get": 1}',
        b"\xff\xfe",
        b'["hello", 1, ""]',
        b'["watch", 1, "k", "yes", 0]',
    ],
)
async def test_malformed_frames_after_auth(server: StoreServer, body: bytes) -> None:
    peer = await raw_peer(server, auth=True)
    peer[1].write(len(body).to_bytes(4, "big") + body)
    assert await dropped(peer)
    await still_serves(server)


async def test_oversized_length_prefix(server: StoreServer) -> None:
    authed = await raw_peer(server, auth=True)
    authed[1].write(b"\xff\xff\xff\xff")
    fresh = await raw_peer(server, auth=False)
    fresh[1].write((10_000).to_bytes(4, "big"))  # beyond the handshake frame bound
    assert await dropped(authed) and await dropped(fresh)
    await still_serves(server)


async def test_truncated_frames_then_hang_up(server: StoreServer) -> None:
    for cut in (1, 3, 4, 7):
        peer = await raw_peer(server, auth=True)
        frame = p.encode(p.Put(1, "/trunc", b"x" * 20))
        peer[1].write(frame[:cut])
        peer[1].close()
        await peer[1].wait_closed()
    await still_serves(server)
    assert len(server.conns) <= 1


async def test_wrong_token_is_told_and_dropped(server: StoreServer) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    ch = await read_frame(reader)
    assert isinstance(ch, p.Challenge)
    writer.write(p.encode(p.Hello(p.VERSION, hmac_answer("guess", ch.nonce))))
    reply = await read_frame(reader)
    assert isinstance(reply, p.ErrorReply) and reply.code == "auth"
    assert await dropped((reader, writer))
    await still_serves(server)


async def test_silent_peer_dropped_after_handshake_timeout(server: StoreServer) -> None:
    peer = await raw_peer(server, auth=False)
    assert await dropped(peer)  # within handshake_timeout (0.5 s)


async def test_connection_flood(server: StoreServer) -> None:
    flood = [await raw_peer(server, auth=False) for _ in range(60)]
    # Beyond max_connections (20) peers are refused at once; the rest never
    # authenticate and are dropped at the handshake timeout. A good client's
    # connect retries until a slot is free.
    await still_serves(server)
    for peer in flood:
        assert await dropped(peer)
    await still_serves(server)


async def test_peer_that_never_reads_is_dropped(server: StoreServer) -> None:
    reader, writer = await raw_peer(server, auth=True)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(p.encode(p.Watch(1, "/big")))
    assert isinstance(await read_frame(reader), p.DoneReply)
    # From here the peer reads nothing.
    writer_store = await connect(*server.address, token=TOKEN, timeout=WAIT)
    blob = b"z" * 32 * 1024
    for _ in range(2000):
        await writer_store.put("/big", blob)
        if len(server.conns) == 1:
            break
    assert len(server.conns) == 1, "the non-reading peer was not dropped"
    assert await writer_store.get("/big") is not None
    await writer_store.close()
    writer.transport.abort()
    await still_serves(server)


class _BuggyTimer(PeerProtocol):
    """A peer whose handshake timer has a bug."""

    def _handshake_late(self) -> None:
        raise RuntimeError("timer bug")


async def test_a_peer_whose_handshake_timer_fails_is_dropped_with_the_reason(
    server: StoreServer, caplog: pytest.LogCaptureFixture
) -> None:
    # the timer's error would reach only the loop's exception handler, and a silent
    # peer would hold its connection slot for ever: the peer is dropped instead
    loop = asyncio.get_running_loop()
    peers: list[_BuggyTimer] = []

    def make() -> _BuggyTimer:
        peers.append(_BuggyTimer(server))
        return peers[-1]

    buggy = await loop.create_server(make, "127.0.0.1", 0)
    try:
        with caplog.at_level(logging.WARNING, logger="corral"):
            peer = await asyncio.open_connection(*buggy.sockets[0].getsockname()[:2])
            assert isinstance(await read_frame(peer[0]), p.Challenge)
            assert await dropped(peer)  # the timer fired (0.5 s) and failed
        (bug,) = peers
        assert bug.closed and bug not in server.conns
        assert any(
            r.levelno == logging.ERROR and "handshake timer failed" in r.getMessage()
            for r in caplog.records
        )
        assert any(
            "dropping" in r.getMessage() and "handshake timer failed" in r.getMessage()
            for r in caplog.records
        )
        await still_serves(server)
    finally:
        buggy.close()
        await buggy.wait_closed()
