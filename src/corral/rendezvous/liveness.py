"""Peer liveness: see a dead agent at once on stores whose leases outlive connections.

On the embedded store a lease ends the moment its agent's connection closes, so
a killed agent is seen in milliseconds. etcd cannot know that: a lease lives
until its TTL passes (keep_alive_interval x keep_alive_max_attempt, 15 s by
default). This module closes that gap without touching the rendezvous:

* every agent listens on a TCP port of its own address;
* in each round it publishes ``live/<round>/<group rank>`` = its address, port
  and lease (under that lease), and connects to its ring predecessor's port
  (rank k watches rank k-1, rank 0 watches the last): one connection and O(1)
  store operations per node;
* when that connection reaches EOF or is reset, the predecessor's process is
  gone (the kernel closed its socket), and the watcher revokes the
  predecessor's lease: its rendezvous keys vanish and every survivor sees a
  lost member at once, exactly as if the lease had expired.

A hung or partitioned agent keeps its socket open: it is evicted by its
lease's TTL as before. The ring's connections are kept alive by TCP
(``corral.core.net.bound_silence``, SILENCE_BOUND): one that goes silent past that
bound ends with ETIMEDOUT, which is no verdict (the lease decides), unlike a
close or a reset. An agent that cannot be reached (a firewall) is watched
by its lease alone. A false alarm costs one rejoin: an evicted agent that is
alive finds its lease gone and joins as a new node.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import NoReturn

from corral.core.compat import timeout as _compat_timeout
from corral.core.errors import LauncherError
from corral.core.model import RoundInfo
from corral.core.net import SILENCE_BOUND, bound_silence
from corral.store.api import Store

__all__ = ["PeerLiveness"]

log = logging.getLogger("corral.agent")  # its lines are the agent's

_CONNECT_TIMEOUT = 5.0


class PeerLiveness:
    """One agent's side of the liveness ring.

    Args:
        store: the job's store (the same one the rendezvous uses).
        run_id: the rendezvous id; keys live under ``<prefix>/<run_id>/live/``.
        addr: this agent's numeric address (it listens there).
        lease: returns this node's current rendezvous lease (0: none yet).
        prefix: the rendezvous key prefix.
    """

    def __init__(
        self,
        store: Store,
        *,
        run_id: str,
        addr: str,
        lease: Callable[[], int],
        prefix: str = "/corral",
    ) -> None:
        self._store = store
        self._addr = addr
        self._lease = lease
        self._base = f"{prefix.rstrip('/')}/{run_id}/live/"
        self._server: asyncio.Server | None = None
        self._peers: set[asyncio.BaseTransport] = set()
        self._published: str | None = None
        self.port = 0

    async def start(self) -> None:
        """Listen on a free port of this agent's address.

        Accepted connections are plain protocols (no task per peer): each is
        held open until the peer closes it or :meth:`close` runs.
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Held(self._peers), self._addr, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._peers):
                t.close()
            await self._server.wait_closed()
            self._server = None

    def key(self, rnd: int, group_rank: int) -> str:
        return f"{self._base}{rnd}/{group_rank}"

    async def watch(self, rnd: RoundInfo) -> NoReturn:
        """Publish this node for ``rnd`` and watch its ring predecessor until cancelled.

        Never returns. A store or network error, or a bad record, turns the ring
        off for this round with a warning (the lease TTL still applies); any
        other error is raised, and fails the agent's race (its task scope).
        """
        try:
            await self._watch(rnd)
        except (LauncherError, OSError, ValueError) as exc:
            log.warning(
                "peer liveness for round %d off (leases alone watch the predecessor): %s",
                rnd.round,
                exc,
            )
        await asyncio.Event().wait()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _watch(self, rnd: RoundInfo) -> None:
        lease = self._lease()
        if not lease or rnd.group_world_size < 2:
            return
        mine = self.key(rnd.round, rnd.group_rank)
        if self._published and self._published != mine:
            await self._store.delete(self._published)
        value = json.dumps({"addr": self._addr, "port": self.port, "lease": lease})
        await self._store.put(mine, value.encode(), lease=lease)
        self._published = mine
        pred_rank = (rnd.group_rank - 1) % rnd.group_world_size
        pred = await self._read(self.key(rnd.round, pred_rank))
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None
        try:
            async with _compat_timeout(_CONNECT_TIMEOUT):
                conn = await asyncio.open_connection(pred["addr"], int(pred["port"]))
        except ConnectionRefusedError:
            conn = None  # nobody listens there any more: the agent is gone
        except (OSError, TimeoutError) as exc:
            log.debug(
                "cannot reach the agent of rank %d (%s); its lease watches it", pred_rank, exc
            )
            return
        if conn is not None:
            reader, writer = conn
            bound_silence(writer.get_extra_info("socket"), SILENCE_BOUND)
            try:
                await _drain(reader)
            except TimeoutError:  # silence, not a close: no verdict (a partition, or a blip)
                log.debug("the agent of rank %d went silent; its lease watches it", pred_rank)
                return
            finally:
                writer.close()
        log.warning(
            "the agent of node rank %d (%s) is gone: revoking its lease", pred_rank, pred["addr"]
        )
        await self._store.revoke(int(pred["lease"]))

    async def _read(self, key: str) -> dict[str, str]:
        """The record at ``key``, waiting for it to be written if need be."""
        kvs, rev = await self._store.range(key)
        value = next((kv.value for kv in kvs if kv.key == key), None)
        if value is None:
            async with self._store.watch(key, start_revision=rev + 1) as events:
                async for ev in events:
                    if ev.kv.value:
                        value = ev.kv.value
                        break
        if value is None:
            raise ValueError(f"no liveness record at {key}")
        data = json.loads(value)  # a JSONDecodeError is a ValueError
        if not isinstance(data, dict) or not {"addr", "port", "lease"} <= data.keys():
            raise ValueError(f"bad liveness record at {key}: {value[:200]!r}")
        return data


class _Held(asyncio.Protocol):
    """A successor's connection, held open: our death (the kernel closing it) is its signal."""

    def __init__(self, peers: set[asyncio.BaseTransport]) -> None:
        self._peers = peers
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._peers.add(transport)
        bound_silence(transport.get_extra_info("socket"), SILENCE_BOUND)  # a gone successor

    def data_received(self, data: bytes) -> None:
        pass  # the ring carries nothing

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._peers.discard(self._transport)
            self._transport.close()


async def _drain(reader: asyncio.StreamReader) -> None:
    """Read until the peer's end closes (EOF or reset): that is all the ring carries."""
    try:
        while await reader.read(1024):
            pass
    except TimeoutError:  # ETIMEDOUT: the silence bound passed (bound_silence); the caller decides
        raise
    except OSError:
        pass
