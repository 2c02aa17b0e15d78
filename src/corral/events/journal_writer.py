"""The job's journal in its store: each node's attempt records, written as they change.

Keys: ``<prefix>/<run id>/journal/<round, 8 digits>/<node id>``, one
:class:`~corral.events.journal.AttemptRecord` each (versioned JSON), written
without a lease so that they outlive the agents (``corral status`` and
``corral timeline`` read a finished job). A node writes its record of a round
a few times (round closed, workers spawned, first step, round ended): a
handful of small puts per restart, none in the monitor loop.

Writing is best-effort: a store error is logged (once per burst) and the
record is written again with the next change or at the final flush; the job
never waits on its journal except for a bounded final flush.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from corral.core.compat import timeout as _timeout
from corral.core.events import Event
from corral.core.keys import Keys
from corral.events.journal import AttemptRecord, Tracker
from corral.store.api import Store

__all__ = ["JournalWriter", "journal_key", "journal_prefix", "read_records"]

log = logging.getLogger("corral.events")


def journal_prefix(prefix: str, run_id: str) -> str:
    return Keys(prefix, run_id).base + "journal/"


def journal_key(prefix: str, run_id: str, round: int, node_id: str) -> str:
    return f"{journal_prefix(prefix, run_id)}{round:08d}/{node_id}"


async def read_records(store: Store, *, prefix: str, run_id: str) -> list[AttemptRecord]:
    """Every attempt record of the job, in round order, then store order (create revision)."""
    kvs, _ = await store.range(journal_prefix(prefix, run_id))
    kvs.sort(key=lambda kv: (kv.key.rsplit("/", 2)[-2], kv.create_revision))
    out: list[AttemptRecord] = []
    for kv in kvs:
        try:
            out.append(AttemptRecord.from_json(kv.value))
        except (ValueError, TypeError):
            continue  # a record of a newer schema: skipped
    return out


class JournalWriter:
    """An event sink that feeds a :class:`Tracker` and writes its changed records to the store.

    Args:
        prefix, run_id: the job's keys.
        on_latency: called with the seconds of each store write (metrics).
    """

    def __init__(
        self, *, prefix: str, run_id: str, on_latency: Callable[[float], None] | None = None
    ) -> None:
        self.tracker = Tracker()
        self.prefix, self.run_id = prefix, run_id
        self.on_latency = on_latency
        self._store: Store | None = None
        self._wake = asyncio.Event()
        self._retry: dict[int, AttemptRecord] = {}
        self._warned = False

    def __call__(self, event: Event) -> None:
        self.tracker(event)
        if self._store is not None:
            self._wake.set()

    def attach(self, store: Store) -> None:
        """Write to ``store`` from now on (records made before are written too)."""
        self._store = store
        self._wake.set()

    async def run(self) -> None:
        """Write changed records as they come; runs until cancelled (in a task group)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._write_pending()

    async def final_flush(self, timeout: float = 2.0) -> None:
        """Write what is left (bounded by ``timeout``), then stop writing (the store closes)."""
        try:
            async with _timeout(timeout):
                await self._write_pending()
        except TimeoutError:
            log.warning("journal: the final records were not written within %.1fs", timeout)
        finally:
            self._store = None

    async def _write_pending(self) -> None:
        store = self._store
        if store is None:
            return
        pending = dict(self._retry)
        self._retry.clear()
        for rec in self.tracker.take_dirty():
            pending[rec.round] = rec
        for r in sorted(pending):
            rec = pending[r]
            t0 = time.monotonic()
            try:
                await store.put(journal_key(self.prefix, self.run_id, r, rec.node), rec.to_json())
            except Exception as exc:  # best-effort: the job must not fail for its journal
                self._retry.update({rr: pending[rr] for rr in pending if rr >= r})
                if not self._warned:
                    log.warning("journal: cannot write to the store (%s); will retry", exc)
                    self._warned = True
                return
            self._warned = False
            if self.on_latency is not None:
                self.on_latency(time.monotonic() - t0)
