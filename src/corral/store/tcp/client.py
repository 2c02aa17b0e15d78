"""``tcp://host:port``: :class:`TcpStore`, the client of the embedded store server.

One connection carries every request (pipelined by id) and every watch
(multiplexed by id). The host name, if any, is resolved once at connect; every
later (re)connection uses the numeric address. When the connection is lost,
pending requests fail with StoreUnavailable and open watches end with it; the
next request reconnects (leases of the old connection are gone: the server
ended them, so their keep-alives raise LeaseNotFound).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar, cast
from urllib.parse import urlsplit

from corral._aio import task_scope
from corral._compat import timeout as _compat_timeout
from corral.errors import (
    AuthenticationFailed,
    ConfigError,
    LauncherError,
    LeaseNotFound,
    ProtocolError,
    StoreCompacted,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)
from corral.store.api import (
    Characteristics,
    KeyValue,
    WatchEvent,
    WriteResult,
    check_distinct,
)
from corral.store.stream import WatchStream
from corral.store.tcp import protocol as p
from corral.store.tcp.auth import hmac_answer

__all__ = ["DEFAULT_PORT", "TcpStore", "connect", "open_tcp_store"]

DEFAULT_PORT = 29400
_ATTEMPT_TIMEOUT = 10.0
_CHARACTERISTICS = Characteristics(
    linearizable=True,
    leases=True,
    connection_leases=True,
    replicated=False,
    bounded_requests=True,  # each request: request_timeout (Connection.track)
)
_R = TypeVar("_R")


def _error(code: str, message: str) -> LauncherError:
    cls: type[LauncherError] = {
        "lease_not_found": LeaseNotFound,
        "compacted": StoreCompacted,
        "invalid": ConfigError,
        "auth": AuthenticationFailed,
        "protocol": ProtocolError,
        "version": ProtocolError,
    }.get(code, StoreError)
    return cls(message)


class _Connection(asyncio.Protocol):
    """The byte-moving half: handshake, reply routing, event routing, loss."""

    def __init__(self, store: TcpStore, token: str | None) -> None:
        self.store = store
        self.token = token
        self.decoder = p.Decoder()
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending: dict[int, asyncio.Future[p.Message]] = {}
        self.streams: dict[int, WatchStream] = {}
        self.lost: StoreError | None = None
        self.loop = asyncio.get_running_loop()
        # Frames queued by requests made in one turn of the loop go out in one write.
        self.out: list[bytes] = []
        self.flush_scheduled = False
        # Request deadlines in the order they were made (one timeout per store, so
        # in time order too): one timer for the oldest instead of one per request.
        self.deadlines: deque[tuple[float, int, asyncio.Future[p.Message]]] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def send(self, frame: bytes) -> None:
        """Queue a frame; every frame queued in this turn of the loop is written at once."""
        self.out.append(frame)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def track(self, fut: asyncio.Future[p.Message], rid: int, timeout: float) -> None:
        """Fail ``fut`` with StoreTimeout if it has no answer within ``timeout`` seconds."""
        deadline = self.loop.time() + timeout
        self.deadlines.append((deadline, rid, fut))
        if self.timer is None:
            self.timer = self.loop.call_at(deadline, self._sweep)

    def untrack(self) -> None:
        """Forget the answered requests at the head of the deadline queue."""
        dq = self.deadlines
        while dq and dq[0][2].done():
            dq.popleft()

    def _sweep(self) -> None:
        self.timer = None
        now = self.loop.time()
        dq = self.deadlines
        while dq:
            deadline, rid, fut = dq[0]
            if not fut.done():
                if deadline > now:
                    break
                _expire(fut, self.store, rid)
            dq.popleft()
        if dq:
            self.timer = self.loop.call_at(dq[0][0], self._sweep)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they quack alike.
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        try:
            msgs = self.decoder.feed(data)
        except ProtocolError as exc:
            self._fail(ProtocolError(f"store {self.store.address_text}: {exc}"))
            return
        pending = self.pending
        for m in msgs:
            t = type(m)
            if t is p.Events:
                s = self.streams.get(m.watch_id)  # type: ignore[union-attr]
                if s is not None:
                    s.push(m.events)  # type: ignore[union-attr]
                continue
            rid = getattr(m, "id", None)
            if rid:
                fut = pending.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(m)
            elif t is p.WatchEnded:
                s = self.streams.pop(m.watch_id, None)  # type: ignore[union-attr]
                if s is not None:
                    s.fail(_error(m.code, m.message))  # type: ignore[union-attr]
            elif t is p.Challenge:
                self._on_challenge(m)  # type: ignore[arg-type]
            elif t is p.Welcome:
                if not self.ready.done():
                    self.ready.set_result(None)
            elif t is p.ErrorReply:
                self._fail(_error(m.code, f"store {self.store.address_text}: {m.message}"))  # type: ignore[union-attr]
                return

    def _on_challenge(self, m: p.Challenge) -> None:
        if m.version != p.VERSION:
            self._fail(ProtocolError(f"store speaks protocol {m.version}, we speak {p.VERSION}"))
            return
        mac = ""
        if m.auth:
            if self.token is None:
                self._fail(
                    AuthenticationFailed(
                        f"store {self.store.address_text} requires a token; none was given "
                        "(--token-file or CORRAL_TOKEN)"
                    )
                )
                return
            mac = hmac_answer(self.token, m.nonce)
        assert self.transport is not None
        self.transport.write(p.encode(p.Hello(p.VERSION, mac)))

    def _fail(self, exc: LauncherError) -> None:
        if self.lost is None:
            self.lost = exc if isinstance(exc, StoreError) else StoreError(str(exc))
        if not self.ready.done():
            self.ready.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()
        self._end()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            why = f": {exc}" if exc else ""
            self.lost = StoreUnavailable(f"connection to store {self.store.address_text} lost{why}")
        if not self.ready.done():
            self.ready.set_exception(self.lost)
        self._end()

    def _end(self) -> None:
        err = self.lost or StoreUnavailable("connection closed")
        self.out.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.deadlines.clear()
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(
                    err if isinstance(err, StoreUnavailable) else StoreUnavailable(str(err))
                )
        streams, self.streams = self.streams, {}
        for s in streams.values():
            s.fail(StoreUnavailable(str(err)))
        if self.store._conn is self:
            self.store._conn = None


class TcpStore:
    """A :class:`~corral.store.api.Store` over one connection to a corral store server.

    Create with :func:`connect` or ``open_store("tcp://host:port")``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: str | None,
        request_timeout: float,
        display: str | None = None,
    ) -> None:
        self._host = host  # numeric
        self._port = port
        self._token = token
        self.request_timeout = request_timeout
        self.address_text = display or f"{host}:{port}"
        self._conn: _Connection | None = None
        self._next_id = 0
        self._closed = False
        self._lock = asyncio.Lock()

    @property
    def characteristics(self) -> Characteristics:
        return _CHARACTERISTICS

    @property
    def address(self) -> tuple[str, int]:
        return self._host, self._port

    # --- connection ------------------------------------------------------------

    async def _connect(self, deadline: float) -> _Connection:
        """Connect with bounded exponential back-off until ``deadline`` (loop time)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        delay = 0.02
        attempts = 0
        last: BaseException | None = None
        while True:
            attempts += 1
            remaining = deadline - loop.time()
            try:
                # One attempt may not eat the whole budget: a peer that accepts
                # but never answers the handshake is retried.
                async with _compat_timeout(max(min(remaining, _ATTEMPT_TIMEOUT), 0.001)):
                    _, conn = await loop.create_connection(
                        lambda: _Connection(self, self._token), self._host, self._port
                    )
                    try:
                        await conn.ready
                    except BaseException:
                        if conn.transport is not None:
                            conn.transport.abort()
                        raise
                if conn.lost is not None:  # lost between its welcome and now: try again
                    raise conn.lost
                sock = conn.transport.get_extra_info("socket") if conn.transport else None
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return conn
            except (AuthenticationFailed, ProtocolError):
                raise
            except (OSError, StoreError, TimeoutError) as exc:
                last = exc
            if loop.time() + delay >= deadline:
                raise StoreUnavailable(
                    f"store at {self.address_text} unreachable: tried for "
                    f"{loop.time() - start:.1f}s ({attempts} attempts); last error: {last!r}"
                ) from last
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _ensure(self) -> _Connection:
        conn = self._conn
        if conn is not None:
            return conn
        if self._closed:
            raise StoreUnavailable(f"store client for {self.address_text} is closed")
        async with self._lock:
            if self._conn is None:
                loop = asyncio.get_running_loop()
                self._conn = await self._connect(loop.time() + self.request_timeout)
            return self._conn

    # --- requests ----------------------------------------------------------------

    def _live(self, conn: _Connection) -> _Connection:
        """``conn`` if it is still up; else forget it and raise StoreUnavailable at once.

        A connection can be lost after :meth:`_ensure` handed it out: a request
        registered on it would wait for ``request_timeout`` and end in StoreTimeout.
        """
        lost = conn.lost
        if lost is None:
            return conn
        if self._conn is conn:
            self._conn = None
        if isinstance(lost, StoreUnavailable):
            raise lost
        raise StoreUnavailable(str(lost)) from lost

    async def _call(self, msg: p.Message, rid: int) -> p.Message:
        conn = self._live(self._conn or await self._ensure())
        fut: asyncio.Future[p.Message] = conn.loop.create_future()
        conn.pending[rid] = fut
        assert conn.transport is not None
        conn.send(p.encode(msg))
        conn.track(fut, rid, self.request_timeout)
        try:
            reply = await fut
        finally:
            conn.pending.pop(rid, None)
            conn.untrack()
        if type(reply) is p.ErrorReply:
            raise _error(reply.code, reply.message)
        return reply

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def get(self, key: str, *, min_revision: int = 0) -> KeyValue | None:
        rid = self._id()  # the server always answers with the latest
        r = await self._call(p.Get(rid, key), rid)
        assert isinstance(r, p.KvReply)
        return r.kv

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        rid = self._id()
        r = await self._call(p.Range(rid, prefix), rid)
        assert isinstance(r, p.RangeReply)
        return list(r.kvs), r.revision

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        rid = self._id()
        r = await self._call(p.Put(rid, key, value, lease), rid)
        assert isinstance(r, p.RevisionReply)
        return r.revision

    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> int:
        # Pipelined on this connection: every request is sent before the first answer.
        # The first error cancels the other requests (their answers are then ignored).
        check_distinct(items)
        async with task_scope() as tg:
            puts = [tg.create_task(self.put(key, value)) for key, value in items]
        return max((t.result() for t in puts), default=0)

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> WriteResult:
        rid = self._id()
        r = await self._call(p.Create(rid, key, value, lease), rid)
        assert isinstance(r, p.WriteReply)
        return r.result

    async def create_and_read(
        self, creates: Sequence[tuple[str, bytes, int]], prefixes: Sequence[str]
    ) -> tuple[list[WriteResult], list[list[KeyValue]], int]:
        # Pipelined on this connection, in order: the server answers the creates
        # before it reads. Not atomic: other clients' writes may come between.
        # The first error cancels the other requests.
        check_distinct(creates)
        async with task_scope() as tg:
            writes = [tg.create_task(self.create(k, v, lease=ls)) for k, v, ls in creates]
            reads = [tg.create_task(self.range(prefix)) for prefix in prefixes]
        results = [t.result() for t in writes]
        ranges = [t.result() for t in reads]
        if not ranges:
            return results, [], max((r.revision for r in results), default=0)
        return results, [kvs for kvs, _ in ranges], min(rev for _, rev in ranges)

    async def compare_and_set(
        self, key: str, value: bytes, expected_mod_revision: int, *, lease: int = 0
    ) -> WriteResult:
        rid = self._id()
        r = await self._call(p.CompareAndSet(rid, key, value, expected_mod_revision, lease), rid)
        assert isinstance(r, p.WriteReply)
        return r.result

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        rid = self._id()
        r = await self._call(p.Delete(rid, key, prefix), rid)
        assert isinstance(r, p.CountReply)
        return r.count

    async def grant(self, ttl: float) -> int:
        rid = self._id()
        r = await self._call(p.Grant(rid, float(ttl)), rid)
        assert isinstance(r, p.LeaseReply)
        return r.lease

    async def keep_alive(self, lease: int) -> float:
        rid = self._id()
        r = await self._call(p.KeepAlive(rid, lease), rid)
        assert isinstance(r, p.LeaseReply)
        return r.ttl

    async def revoke(self, lease: int) -> None:
        rid = self._id()
        await self._call(p.Revoke(rid, lease), rid)

    def watch(
        self, key: str, *, prefix: bool = False, start_revision: int = 0
    ) -> AbstractAsyncContextManager[AsyncIterator[WatchEvent]]:
        return self._watch(key, prefix, start_revision)

    @asynccontextmanager
    async def _watch(
        self, key: str, prefix: bool, start_revision: int
    ) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        conn = self._live(self._conn or await self._ensure())
        wid = self._id()
        stream = WatchStream()
        # Registered before the request goes out: events may precede the reply.
        conn.streams[wid] = stream
        try:
            # A caller cancelled while waiting for the reply leaves a watch the
            # server may have made: the cancel below ends it too (same order).
            await self._call(p.Watch(wid, key, prefix, start_revision), wid)
            yield stream
        finally:
            if conn.streams.pop(wid, None) is not None and conn.transport is not None:
                if not conn.transport.is_closing():
                    conn.send(p.encode(p.CancelWatch(wid)))

    async def close(self) -> None:
        """Close the connection: the server ends this client's leases at once."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.lost = StoreUnavailable(f"store client for {self.address_text} is closed")
            conn.transport.close()
            conn._end()

    async def __aenter__(self) -> TcpStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _expire(fut: asyncio.Future[p.Message], store: TcpStore, rid: int) -> None:
    if not fut.done():
        fut.set_exception(
            StoreTimeout(
                f"store {store.address_text}: no answer to request {rid} "
                f"within {store.request_timeout}s"
            )
        )


async def _resolve(host: str, port: int, deadline: float) -> str:
    """A numeric address for ``host`` (looked up once; numeric hosts are returned as is)."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        async with _compat_timeout(max(deadline - loop.time(), 0.001)):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise StoreUnavailable(f"cannot resolve store host {host!r}: {exc!r}") from exc
    return str(infos[0][4][0])


async def connect(
    host: str,
    port: int,
    *,
    token: str | None = None,
    timeout: float = 60.0,
    request_timeout: float = 30.0,
) -> TcpStore:
    """Connect to a corral store server, retrying with back-off for up to ``timeout`` seconds.

    Args:
        host: numeric address (preferred) or a name, resolved once here.
        port: server port.
        token: shared secret, when the server requires one.
        timeout: how long to keep trying to connect.
        request_timeout: deadline of each request (StoreTimeout beyond it).

    Raises:
        StoreUnavailable: not reachable within ``timeout`` (names the address and how long).
        AuthenticationFailed: the server refused the token (not retried).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    numeric = await _resolve(host, port, deadline)
    display = f"{host}:{port}" if numeric == host else f"{host} ({numeric}):{port}"
    store = TcpStore(numeric, port, token=token, request_timeout=request_timeout, display=display)
    store._conn = await store._connect(deadline)
    return store


async def open_tcp_store(url: str, *, token: str | None = None, timeout: float = 60.0) -> TcpStore:
    """Registry factory for ``tcp://host[:port]`` (default port 29400)."""
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigError(f"store URL {url!r}: bad port ({exc})") from exc
    if not parts.hostname:
        raise ConfigError(f"store URL {url!r} has no host; expected tcp://host:port")
    # ``timeout`` bounds the connect and each request (bounded_requests): the
    # agent opens the store with timeout=read_timeout.
    return await connect(
        parts.hostname, port, token=token, timeout=timeout, request_timeout=timeout
    )
