"""The agent's hang detector: raced against the worker group, it returns only on a hang.

Per worker group (one attempt), :meth:`HangWatch.watch`:

1. reads each running worker's progress file and asks the pure
   :func:`corral.hangs.detect.judge` which ranks are hung, sleeping until the
   next moment the answer could change; while marks arrive it publishes the
   node's last step per rank (``.../r/<round>/progress/<node id>``, at most
   every ``publish_every`` s) for ``corral status``;
2. on a local hang, or as soon as another node publishes one (its ranks stall
   the others in their collectives), dumps every local worker's stacks
   (py-spy, in parallel) and publishes this node's :class:`NodeHangs` record
   under ``.../r/<round>/stacks/<node id>`` and its summary (no stacks, a few
   hundred bytes a rank) under ``.../r/<round>/hangs/<node id>``;
3. waits (at most ``gather`` s) for every member's record, names the
   job-wide culprit (:func:`corral.hangs.report.culprits`) and returns the
   culprit's :class:`FailureReport` (``hang=True``, the whole report in its
   ``traceback``) if it is one of this node's ranks. A node without a culprit
   lets the culprit's node restart the job (its round watch ends the race);
   only if that does not happen within ``defer`` s does it report its own
   stalled ranks.

The agent takes the returned reports through its normal failure path
(``report_failure``: the restart counts against ``--max-restarts``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from corral.core.aio import first_of, task_scope
from corral.core.clock import Clock, MonotonicClock
from corral.core.errors import StoreError, StoreUnavailable
from corral.core.failures import FailureReport
from corral.core.keys import Keys
from corral.core.model import RoundInfo
from corral.hangs import progress_file
from corral.hangs.detect import Limits, RankState, judge
from corral.hangs.report import (
    NodeHangs,
    NodeProgress,
    RankDump,
    clip,
    culprits,
    render,
    summary,
)
from corral.hangs.stacks import dump, proc_state
from corral.progress import Mark, read_mark
from corral.store.api import Store

if TYPE_CHECKING:
    from corral.config import LaunchConfig

__all__ = [
    "HANG_EXIT_CODE",
    "HangWatch",
    "WatchedGroup",
    "WatchedWorker",
    "hangs_prefix",
    "progress_prefix",
    "stacks_prefix",
]

log = logging.getLogger("corral.hangs")

#: The exit code of a job whose root cause is a hang (as coreutils' ``timeout``).
HANG_EXIT_CODE = 124

Dumper = Callable[[int], Awaitable[tuple[str | None, str]]]


class WatchedWorker(Protocol):
    """What :class:`HangWatch` reads of one worker (a :class:`~corral.workers.process.WorkerProcess`)."""

    @property
    def local_rank(self) -> int: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def running(self) -> bool: ...


class WatchedGroup(Protocol):
    """What :class:`HangWatch` reads of a started worker group
    (a :class:`~corral.workers.group.WorkerGroup`; hangs imports nothing of workers)."""

    @property
    def workers(self) -> Sequence[WatchedWorker]: ...

    def error_file(self, local_rank: int) -> str:
        """The worker's error file; its progress file lies beside it (:func:`progress_file`)."""
        ...


#: Called with the round and ``{local rank: mark}`` at each read of the progress files.
OnMarks = Callable[[RoundInfo, dict[int, Mark]], None]
#: Called with the round and this node's hung ranks at the verdict.
OnHang = Callable[[RoundInfo, list[RankDump]], None]


def hangs_prefix(base: str, round_: int) -> str:
    """``<prefix>/<run id>/r/<round>/hangs/``: one :class:`NodeHangs` per node."""
    return f"{base}r/{round_}/hangs/"


def stacks_prefix(base: str, round_: int) -> str:
    """``<prefix>/<run id>/r/<round>/stacks/``: each node's record with every stack."""
    return f"{base}r/{round_}/stacks/"


def progress_prefix(base: str, round_: int) -> str:
    """``<prefix>/<run id>/r/<round>/progress/``: one :class:`NodeProgress` per node."""
    return f"{base}r/{round_}/progress/"


class HangWatch:
    """This node's hang detector (one per agent; :meth:`watch` once per worker group).

    Args:
        limits: ``--hang-timeout`` and ``--hang-startup-timeout``.
        node_id, host: this node, for the records and reports.
        store: the job's store (None: a backend without one; reports stay local).
        base: the run's key prefix, ``<prefix>/<run id>/``.
        clock: monotonic clock; must be the system monotonic clock in real use
            (marks carry ``time.monotonic()``); tests may pass a FakeClock.
        poll: longest sleep between two reads of the progress files.
        gather: how long to wait for the other nodes' records.
        defer: how long a node without a culprit waits for the culprit's node.
        publish_every: least seconds between two progress records for ``status``.
        dumper: ``pid -> (stack, note)`` (default: py-spy, see :mod:`corral.hangs.stacks`).
        wall: wall clock for the progress records (humans only).
        on_marks: called with (round info, {local rank: mark}) at each read (events, metrics).
        on_hang: called with this node's hung ranks at the verdict (HangDeclared events).
    """

    def __init__(
        self,
        limits: Limits,
        *,
        node_id: str,
        host: str,
        store: Store | None,
        base: str,
        clock: Clock | None = None,
        poll: float = 1.0,
        gather: float = 2.0,
        defer: float = 10.0,
        publish_every: float = 2.0,
        dumper: Dumper | None = None,
        wall: Callable[[], float] = time.time,
        on_marks: OnMarks | None = None,
        on_hang: OnHang | None = None,
    ) -> None:
        self.limits = limits
        self.node_id = node_id
        self.host = host
        self.store = store
        self.base = base
        self.clock: Clock = clock or MonotonicClock()
        self.poll = poll
        self.gather = gather
        self.defer = defer
        self.publish_every = publish_every
        self._dump: Dumper = dumper or dump
        self._wall = wall
        self._seen_progress = False  # on this node, in any attempt: arms the next attempts
        self.on_marks = on_marks
        self.on_hang = on_hang

    @classmethod
    def from_config(
        cls,
        cfg: LaunchConfig,
        *,
        node_id: str,
        host: str,
        store: Store | None,
        on_marks: OnMarks | None = None,
        on_hang: OnHang | None = None,
    ) -> HangWatch:
        """The agent's detector for ``cfg`` (which must have ``hang_timeout`` set)."""
        if cfg.hang_timeout is None:
            raise ValueError("hang detection is off (hang_timeout is None)")
        limits = Limits(cfg.hang_timeout, cfg.hang_startup_timeout)
        base = Keys(cfg.rdzv_conf.store.prefix, cfg.rdzv_id).base
        # a timeout under a second wants its wake-ups (for marks) no rarer than it
        return cls(
            limits,
            node_id=node_id,
            host=host,
            store=store,
            base=base,
            poll=min(1.0, limits.timeout),
            on_marks=on_marks,
            on_hang=on_hang,
        )

    # -- the race entry ----------------------------------------------------------

    async def watch(self, group: WatchedGroup, rnd: RoundInfo) -> list[FailureReport]:
        """Return this node's hang failures once the job is hung; never returns otherwise.

        ``group`` is the started worker group
        (:class:`~corral.workers.group.WorkerGroup`), ``rnd`` its round. Store errors
        are logged and retried; the detector goes on locally meanwhile.
        """
        started = self.clock.now()
        remote = asyncio.Event()
        async with task_scope() as tg:
            watcher = tg.create_task(self._watch_remote(rnd, remote)) if self.store else None
            try:
                detected = await self._detect(group, rnd, started, remote)
                return await self._on_hang(group, rnd, started, detected)
            finally:
                if watcher is not None:
                    watcher.cancel()

    # -- detection ------------------------------------------------------------------

    def _read(self, group: WatchedGroup, started: float) -> tuple[list[RankState], dict[int, Mark]]:
        """The running workers that have not begun to exit, and their marks (if any)."""
        ranks: list[RankState] = []
        marks: dict[int, Mark] = {}
        for w in group.workers:
            if not w.running:
                continue
            mark = read_mark(progress_file(group.error_file(w.local_rank)))
            if mark is not None and mark.exiting:
                continue  # its script is done: the interpreter's teardown is not watched
            if mark is not None:
                marks[w.local_rank] = mark
            ranks.append(
                RankState(
                    w.local_rank,
                    started,
                    None if mark is None else mark.time,
                    None if mark is None else mark.step,
                )
            )
        return ranks, marks

    async def _detect(
        self, group: WatchedGroup, rnd: RoundInfo, started: float, remote: asyncio.Event
    ) -> bool:
        """Sleep-read-judge until a local hang (True) or another node's (False)."""
        published: dict[int, int] = {}
        last_publish = float("-inf")
        while True:
            now = self.clock.now()
            ranks, marks = self._read(group, started)
            if self.on_marks is not None and marks:
                self.on_marks(rnd, marks)
            verdict = judge(ranks, now, self.limits, armed_before=self._seen_progress)
            if marks:
                self._seen_progress = True
            if verdict.hung:
                log.warning(
                    "round %d: local rank(s) %s made no progress within the hang timeout",
                    rnd.round,
                    list(verdict.hung),
                )
                return True
            if remote.is_set():
                return False
            steps = {lr: m.step for lr, m in marks.items()}
            if steps != published and now - last_publish >= self.publish_every:
                await self._publish_progress(rnd, marks, now)
                published, last_publish = steps, now
            wait = self.poll
            if verdict.next_check is not None:
                wait = min(wait, max(0.0, verdict.next_check - now))
            await first_of(self.clock.sleep(wait), remote.wait())

    async def _publish_progress(self, rnd: RoundInfo, marks: dict[int, Mark], now: float) -> None:
        if self.store is None:
            return
        wall = self._wall()
        record = NodeProgress(
            self.node_id,
            tuple(
                (rnd.rank_offset + lr, m.step, wall - max(0.0, now - m.time))
                for lr, m in sorted(marks.items())
            ),
        )
        try:
            await self.store.put(
                progress_prefix(self.base, rnd.round) + self.node_id, record.to_json()
            )
        except StoreError as exc:
            log.debug("progress record not published: %s", exc)

    async def _watch_remote(self, rnd: RoundInfo, remote: asyncio.Event) -> None:
        """Set ``remote`` when another node publishes a hang record of this round.

        A store error, or a watch the store ends, is retried every ``poll`` s, with
        a warning at the first of each outage (an event the watch delivers ends
        it): the node never stops following the others' hangs silently.
        """
        assert self.store is not None
        prefix = hangs_prefix(self.base, rnd.round)
        warned = False
        while True:
            try:
                async with self.store.watch(prefix, prefix=True) as events:
                    kvs, _ = await self.store.range(prefix)
                    if any(self._other(kv.key) for kv in kvs):
                        remote.set()
                        return
                    async for event in events:
                        warned = False  # the watch delivers: a later outage is told again
                        if event.kv.value and self._other(event.kv.key):
                            remote.set()
                            return
                raise StoreUnavailable("the store ended the watch of hang records")
            except StoreError as exc:
                if not warned:
                    log.warning(
                        "round %d: hang records of other nodes not watched (%s); retrying",
                        rnd.round,
                        exc,
                    )
                    warned = True
                await self.clock.sleep(max(self.poll, 0.05))

    def _other(self, key: str) -> bool:
        """``key`` is another node's hang record."""
        return not key.endswith("/" + self.node_id)

    # -- on a hang ----------------------------------------------------------------------

    async def _dumps(
        self, group: WatchedGroup, rnd: RoundInfo, started: float, hung: Sequence[int]
    ) -> tuple[RankDump, ...]:
        now = self.clock.now()
        ranks, marks = self._read(group, started)
        watched = {r.local_rank for r in ranks}
        pids = [
            (w.local_rank, w.pid)
            for w in group.workers
            if w.local_rank in watched and w.pid is not None
        ]

        # every rank's dump at once, in a scope: an unexpected error ends the others too
        async def one(pid: int) -> tuple[str | None, str]:
            return await self._dump(pid)

        async with task_scope() as tg:
            dumps = [tg.create_task(one(pid)) for _, pid in pids]
        results = [d.result() for d in dumps]
        out: list[RankDump] = []
        for (local_rank, pid), (stack, note) in zip(pids, results, strict=True):
            mark = marks.get(local_rank)
            out.append(
                RankDump(
                    rank=rnd.rank_offset + local_rank,
                    local_rank=local_rank,
                    pid=pid,
                    step=None if mark is None else mark.step,
                    age=max(0.0, now - (started if mark is None else min(mark.time, now))),
                    state=proc_state(pid),
                    stack=clip(stack),
                    note=note,
                    hung=local_rank in hung,
                )
            )
        return tuple(out)

    async def _on_hang(
        self,
        group: WatchedGroup,
        rnd: RoundInfo,
        started: float,
        detected: bool,
    ) -> list[FailureReport]:
        now = self.clock.now()
        ranks, _ = self._read(group, started)
        hung = judge(ranks, now, self.limits, armed_before=self._seen_progress).hung
        mine = NodeHangs(
            self.node_id,
            rnd.group_rank,
            self.host,
            detected,
            await self._dumps(group, rnd, started, hung),
        )
        if self.on_hang is not None:
            self.on_hang(rnd, [d for d in mine.ranks if d.hung])
        nodes = await self._exchange(rnd, mine)
        every = [d for n in nodes for d in n.ranks]
        named = culprits(every)
        owner = {d.rank: n for n in nodes for d in n.ranks}
        text = render(nodes)
        local = [d for d in named if owner[d.rank].node_id == self.node_id]
        if local:
            log.error("round %d: hang\n%s", rnd.round, text)
            return [self._report(d, mine, rnd, text) for d in local]
        who = ", ".join(f"rank {d.rank}" for d in named) or "none"
        log.warning(
            "round %d: hang elsewhere in the job (culprit: %s); waiting for its node to restart the job",
            rnd.round,
            who,
        )
        await self.clock.sleep(self.defer)  # the round watch normally ends the race first
        log.warning(
            "round %d: the culprit's node did not restart the job; reporting here", rnd.round
        )
        stalled = [d for d in mine.ranks if d.hung] or list(mine.ranks)
        return [self._report(d, mine, rnd, text) for d in stalled]

    async def _exchange(self, rnd: RoundInfo, mine: NodeHangs) -> list[NodeHangs]:
        """Publish this node's record; gather every member's (at most ``gather`` s)."""
        store = self.store
        if store is None:
            return [mine]
        prefix = hangs_prefix(self.base, rnd.round)
        records: dict[str, NodeHangs] = {self.node_id: mine}
        try:
            # the summary (no stacks) for every node to read; every stack beside it
            await store.put(prefix + self.node_id, mine.summarised().to_json())
            await store.put(stacks_prefix(self.base, rnd.round) + self.node_id, mine.to_json())

            def add(value: bytes) -> None:
                rec = _parse(value)
                if rec is not None:
                    records.setdefault(rec.node_id, rec)

            async def collect() -> None:
                async with store.watch(prefix, prefix=True) as events:
                    kvs, _ = await store.range(prefix)
                    for kv in kvs:
                        add(kv.value)
                    if len(records) >= rnd.group_world_size:
                        return
                    async for event in events:
                        add(event.kv.value)
                        if len(records) >= rnd.group_world_size:
                            return

            if len(records) < rnd.group_world_size:
                await first_of(collect(), self.clock.sleep(self.gather))
        except StoreError as exc:
            log.warning("hang records not exchanged (%s): the report names local ranks only", exc)
        return list(records.values())

    def _report(self, d: RankDump, node: NodeHangs, rnd: RoundInfo, text: str) -> FailureReport:
        return FailureReport(
            rank=d.rank,
            local_rank=d.local_rank,
            group_rank=node.group_rank,
            host=node.host,
            node_id=node.node_id,
            pid=d.pid,
            exitcode=HANG_EXIT_CODE,
            message=summary(d, node),
            traceback=text,
            timestamp=self._wall(),
            round=rnd.round,
            restart_count=rnd.restart_count,
            hang=True,
        )


def _parse(value: bytes) -> NodeHangs | None:
    """A node's hang record, or None for a deleted key or an unreadable record."""
    if not value:
        return None
    try:
        return NodeHangs.from_json(value)
    except (ValueError, KeyError, TypeError):
        return None
