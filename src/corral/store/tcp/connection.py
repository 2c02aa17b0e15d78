"""The byte-moving half of the tcp store client: one connection to the server.

:class:`Connection` is an ``asyncio.Protocol``: it answers the challenge
(store/tcp/auth.py), routes replies to the requests waiting for them (by id)
and watch events to their streams, fails every request and watch with
``StoreUnavailable`` the moment the connection is lost, and times requests out
with one timer for the oldest (:meth:`Connection.track`); a failure of that
timer (a bug) fails the connection like a loss, with a StoreError that names it.
The store-facing half,
:class:`~corral.store.tcp.client.TcpStore`, builds requests and reads replies.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, cast

from corral.core.aio import guarded
from corral.core.errors import (
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
from corral.store.stream import WatchStream
from corral.store.tcp import protocol as p
from corral.store.tcp.auth import hmac_answer

if TYPE_CHECKING:
    from corral.store.tcp.client import TcpStore

__all__ = ["Connection", "error_of", "expire"]


def error_of(code: str, message: str) -> LauncherError:
    """The exception for an error reply's code (unknown codes: StoreError)."""
    cls: type[LauncherError] = {
        "lease_not_found": LeaseNotFound,
        "compacted": StoreCompacted,
        "invalid": ConfigError,
        "auth": AuthenticationFailed,
        "protocol": ProtocolError,
        "version": ProtocolError,
    }.get(code, StoreError)
    return cls(message)


class Connection(asyncio.Protocol):
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
        self._sweep_cb = guarded(
            self._sweep, self._sweep_failed, f"store {store.address_text}: request-deadline sweep"
        )

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
            self.timer = self.loop.call_at(deadline, self._sweep_cb)

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
                expire(fut, self.store, rid)
            dq.popleft()
        if dq:
            self.timer = self.loop.call_at(dq[0][0], self._sweep_cb)

    def _sweep_failed(self, exc: Exception) -> None:
        """The deadline timer failed (a bug): without it requests could wait forever.

        The connection ends: its pending requests and watches fail with an error
        that names the bug, and the store connects afresh on its next request.
        """
        self._fail(
            StoreError(
                f"store {self.store.address_text}: the request-deadline sweep failed "
                f"(a bug in corral): {exc!r}"
            )
        )

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
                    s.fail(error_of(m.code, m.message))  # type: ignore[union-attr]
            elif t is p.Challenge:
                self._on_challenge(m)  # type: ignore[arg-type]
            elif t is p.Welcome:
                if not self.ready.done():
                    self.ready.set_result(None)
            elif t is p.ErrorReply:
                self._fail(error_of(m.code, f"store {self.store.address_text}: {m.message}"))  # type: ignore[union-attr]
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


def expire(fut: asyncio.Future[p.Message], store: TcpStore, rid: int) -> None:
    """Fail an unanswered request with StoreTimeout."""
    if not fut.done():
        fut.set_exception(
            StoreTimeout(
                f"store {store.address_text}: no answer to request {rid} "
                f"within {store.request_timeout}s"
            )
        )
