"""The embedded ``tcp://`` store server: an asyncio Protocol around one StoreCore.

It runs inside the hosting agent (``await server.start(host, port)``, then
``server.local_store()`` for the agent's own use) or alone (``corral store``,
:func:`main`). Leases granted over a connection end the moment it closes; TTL
expiry runs on a timer task. With a token, every peer must answer an
HMAC-SHA256 challenge first (store/tcp/auth.py). Every peer
(store/tcp/peer.py: a protocol, no task per connection) is bounded
(:class:`ServerLimits`); a peer that breaks a bound or the protocol is dropped
with a logged reason and never disturbs the others.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from corral.core.clock import Clock, MonotonicClock
from corral.core.compat import Runner as _CompatRunner
from corral.core.compat import timeout as _compat_timeout
from corral.core.errors import (
    ConfigError,
    StoreError,
    StoreUnavailable,
)
from corral.store.api import Store, WatchEvent
from corral.store.core import StoreCore
from corral.store.memory import MemoryStore, SharedCore
from corral.store.tcp import protocol as p
from corral.store.tcp.peer import Peer

__all__ = ["ServerLimits", "StoreServer", "main", "tcp_url"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Bounds that keep one bad or slow peer from hurting the rest.

    Attributes:
        max_frame: largest frame body accepted from an authenticated peer (bytes).
        max_connections: connections open at once; more are refused.
        max_watches_per_connection: open watches per connection.
        max_leases_per_connection: live leases granted per connection.
        max_keys: keys in the whole store; a write that would add one more fails.
        max_write_buffer: bytes queued for a peer that does not read; beyond it, dropped.
        handshake_timeout: seconds a peer has to complete the challenge.
    """

    max_frame: int = p.DEFAULT_MAX_FRAME
    max_connections: int = 1024
    max_watches_per_connection: int = 4096
    max_leases_per_connection: int = 1024
    max_keys: int = 1_000_000
    max_write_buffer: int = 32 * 1024 * 1024
    handshake_timeout: float = 10.0


class StoreServer:
    """The embedded store server.

    Args:
        clock: ends leases on TTL expiry (default: the real monotonic clock;
            tests pass a FakeClock).
        limits: per-peer and store-wide bounds.
        history: events retained for watches from a past revision.

    Use inside a running event loop: ``await start(host, port, token)``, then
    ``address``, ``local_store()``, and finally ``await close()``.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        limits: ServerLimits | None = None,
        history: int = 10_000,
    ) -> None:
        self.limits = limits or ServerLimits()
        self.core = StoreCore(history=history)
        self.shared = SharedCore(self.core, clock or MonotonicClock())
        self.token: str | None = None
        self.conns: set[Peer] = set()
        self._server: asyncio.Server | None = None
        self._address: tuple[str, int] | None = None
        self._dirty: list[Peer] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._frag_events: list[WatchEvent] | None = None
        self._frag = b""
        self._warned_open = False
        self._idle = asyncio.Event()

    @property
    def address(self) -> tuple[str, int]:
        """The (numeric host, port) the server listens on. Raises RuntimeError before start."""
        if self._address is None:
            raise RuntimeError("StoreServer.address: the server is not started")
        return self._address

    async def start(self, host: str, port: int, token: str | None = None) -> None:
        """Listen on ``host:port`` (port 0: a free port); return once listening.

        Args:
            host: address to bind (a numeric address is best; names are resolved once here).
            port: TCP port, 0 for any free one (read it back from :attr:`address`).
            token: shared secret; when set every peer must answer the HMAC challenge.

        Raises: StoreUnavailable if the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("StoreServer.start: already started")
        if token == "":
            raise ConfigError("store token is empty; pass a non-empty token or none")
        self.token = token
        self._loop = asyncio.get_running_loop()
        await self.shared.open()  # the lease timer's scope, left by close()
        try:
            self._server = await self._loop.create_server(
                lambda: Peer(self), host, port, backlog=1024, reuse_address=True
            )
        except OSError as exc:
            raise StoreUnavailable(f"store server cannot listen on {host}:{port}: {exc}") from exc
        sock = self._server.sockets[0].getsockname()
        self._address = (str(sock[0]), int(sock[1]))
        if token is None and not _is_loopback(host) and not self._warned_open:
            self._warned_open = True
            log.warning(
                "store: listening on %s:%d without a token: anyone who can reach it can "
                "read and write the job's state (set --token/CORRAL_TOKEN)",
                host,
                self._address[1],
            )
        log.debug("store: listening on %s:%d (auth %s)", *self._address, "on" if token else "off")

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no peer is connected, at most ``timeout`` seconds; True if idle.

        The hosting agent lingers here at the job's end so that every other agent
        reads the outcome before the store goes away.
        """
        try:
            async with _compat_timeout(max(0.0, timeout)):
                while self.conns:
                    self._idle.clear()
                    await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def local_store(self) -> Store:
        """An in-process client of this server's data, with no socket.

        Its leases last until revoked, expired, or until it is closed.
        """
        return MemoryStore.attach(self.shared, owns_leases=True)

    async def close(self) -> None:
        """Stop listening, drop every connection (their leases end) and stop the lease timer."""
        srv, self._server = self._server, None
        if srv is not None:
            srv.close()
        for c in list(self.conns):
            c.drop("server closing", abort=True)
        if srv is not None:
            await srv.wait_closed()
        await self.shared.stop()

    # --- plumbing used by connections ------------------------------------------

    def event_sink(self, conn: Peer, watch_id: int) -> Callable[[list[WatchEvent]], None]:
        """A core watch callback that queues Events frames to ``conn``.

        One write's event list is serialised once and shared by every watch it reaches.
        """

        def deliver(events: list[WatchEvent]) -> None:
            if events is not self._frag_events:
                self._frag_events = events
                self._frag = p.events_fragment(events)
            conn.queue(p.encode_events(watch_id, self._frag))

        return deliver

    def schedule_flush(self, conn: Peer) -> None:
        self._dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self._flush_dirty)

    def _flush_dirty(self) -> None:
        self._flush_scheduled = False
        self._frag_events = None
        dirty, self._dirty = self._dirty, []
        for c in dirty:
            c.queued = False
            c.flush()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tcp_url(host: str, port: int) -> str:
    """``tcp://host:port``, with an IPv6 host in brackets."""
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


async def _serve(host: str, port: int, token: str | None) -> int:
    server = StoreServer()
    await server.start(host, port, token)
    h, prt = server.address
    print(f"corral store listening on {tcp_url(h, prt)}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.close()
    return 0


def _parser() -> argparse.ArgumentParser:
    """``corral store``'s options."""
    parser = argparse.ArgumentParser(
        prog="corral store", description="Run the corral store server."
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=29400, help="port (0: any free port; default 29400)"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--token", help="shared secret for peers (prefer --token-file or CORRAL_TOKEN)"
    )
    group.add_argument("--token-file", help="file holding the shared secret")
    return parser


def main(argv: list[str]) -> int:
    """``corral store --host H --port P [--token-file F | --token T]``: run the server alone.

    The token may also come from ``CORRAL_TOKEN``. Runs on uvloop when it is
    importable, unless ``CORRAL_NO_UVLOOP`` is set. Prints
    ``corral store listening on tcp://H:P`` once listening; exits 0 on SIGTERM/SIGINT.
    """
    args = _parser().parse_args(argv)
    token: str | None = args.token
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            print(
                f"corral store: cannot read --token-file {args.token_file}: {exc}", file=sys.stderr
            )
            return 2
    if token is None:
        token = os.environ.get("CORRAL_TOKEN") or None
    if not token:
        token = None
    if not 0 <= args.port <= 65535:
        print(f"corral store: --port ({args.port}) must be in 0..65535", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if not os.environ.get("CORRAL_NO_UVLOOP"):  # uvloop is optional; this opts out of it
        try:
            import uvloop  # type: ignore[import-not-found,unused-ignore]

            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    try:
        with _CompatRunner(loop_factory=loop_factory) as runner:
            return runner.run(_serve(args.host, args.port, token))
    except StoreError as exc:
        print(f"corral store: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
