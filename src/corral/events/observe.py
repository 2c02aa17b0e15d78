"""What watches one agent: its event sinks and the tasks behind them, set up from the config.

:class:`Observers` is an async context manager the agent enters once. It
owns the agent's :class:`~corral.events.sinks.Fanout` (the caller's sink,
the JSON Lines files of ``--events-file`` and ``--log-dir``, the job
journal, the metrics) and a task group for the journal writer and the
metrics endpoint. Leaving it cancels those tasks and closes the files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Protocol

from corral.core.compat import TaskGroup
from corral.core.events import Event, HangDeclared, ProgressStep, stamp
from corral.events.journal_writer import JournalWriter
from corral.events.sinks import EventSink, Fanout, JsonlSink, LoggingSink

if TYPE_CHECKING:
    from corral.config import LaunchConfig
    from corral.core.model import RoundInfo
    from corral.events.metrics import Metrics
    from corral.progress import Mark
    from corral.store.api import Store

__all__ = ["HungRank", "Observers"]

log = logging.getLogger("corral.events")


class HungRank(Protocol):
    """What :meth:`Observers.on_hang` reads of a hung rank (a
    :class:`~corral.hangs.report.RankDump`; events imports nothing of hangs)."""

    @property
    def rank(self) -> int: ...

    @property
    def local_rank(self) -> int: ...

    @property
    def step(self) -> int | None: ...

    @property
    def age(self) -> float: ...


class Observers:
    """The agent's event sinks and their background tasks.

    Args:
        cfg: the launch configuration (``events_file``, ``metrics_port``,
            ``metrics_addr``, ``log_dir``, the run id and key prefix).
        node_id: this agent's node id (on every event).
        sink: the caller's sink (``Agent(events=...)``), if any.
        run_dir: this agent's log directory when ``--log-dir`` is given:
            ``events.jsonl`` is written there too.
    """

    def __init__(
        self,
        cfg: LaunchConfig,
        *,
        node_id: str,
        sink: EventSink | None = None,
        run_dir: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.sink = Fanout([sink] if sink is not None else [])
        self.run_dir = run_dir
        self.metrics: Metrics | None = None
        if cfg.metrics_port is not None:
            from corral.events.metrics import Metrics

            self.metrics = Metrics(max_restarts=cfg.max_restarts, node=node_id)
        self.journal = JournalWriter(
            prefix=cfg.rdzv_conf.store.prefix,
            run_id=cfg.rdzv_id,
            on_latency=self.metrics.store_rtt.observe if self.metrics is not None else None,
        )
        self.metrics_address: tuple[str, int] | None = None
        self._stack = AsyncExitStack()
        self._tg: TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._marks_round = -1
        self._first_marked: set[int] = set()
        self._probe: Callable[[], Awaitable[None]] | None = None

    def emit(self, cls: type[Event], round: int, **fields: Any) -> None:
        """Build event ``cls`` (stamped now) and hand it to every sink; free when none listens."""
        if self.sink:
            self.sink(stamp(cls, self.node_id, round, **fields))

    def on_marks(self, rnd: RoundInfo, marks: Mapping[int, Mark]) -> None:
        """Workers' progress marks, as hang detection reads them (``{local rank: Mark}``).

        The first mark of each rank in a round becomes a :class:`ProgressStep`
        event (a later one would flood the events file); every mark updates
        the progress metrics.
        """
        if rnd.round != self._marks_round:
            self._marks_round, self._first_marked = rnd.round, set()
        now_m, now_w = time.monotonic(), time.time()
        for lr, m in marks.items():
            if lr not in self._first_marked:
                self._first_marked.add(lr)
                if self.sink:
                    wall = now_w - max(0.0, now_m - m.time)
                    self.sink(ProgressStep(node=self.node_id, round=rnd.round, mono=m.time,
                                           wall=wall, local_rank=lr, step=m.step))  # fmt: skip
            if self.metrics is not None:
                self.metrics.progress(lr, m.step, m.time)

    def on_hang(self, rnd: RoundInfo, hung: Sequence[HungRank]) -> None:
        """This node's hung ranks at hang detection's verdict (``RankDump``s): one
        :class:`HangDeclared` each, with its last step and its real silence."""
        for d in hung:
            self.emit(HangDeclared, rnd.round, local_rank=d.local_rank, rank=d.rank,
                      last_step=-1 if d.step is None else d.step, silent_s=d.age)  # fmt: skip

    async def __aenter__(self) -> Observers:
        stack = self._stack
        await stack.__aenter__()
        try:
            paths = [self.cfg.events_file] if self.cfg.events_file else []
            if paths == ["-"]:  # "-": one log line per event, in the agent's log
                paths = []
                self.sink.add(LoggingSink())
            if self.run_dir is not None:
                paths.append(os.path.join(self.run_dir, "events.jsonl"))
            for path in paths:
                try:
                    jsonl = JsonlSink(path)
                except OSError as exc:
                    from corral.core.errors import ConfigError

                    raise ConfigError(f"--events-file {path}: cannot open ({exc})") from exc
                self.sink.add(jsonl)
                stack.callback(jsonl.close)
            self.sink.add(self.journal)
            self._tg = await stack.enter_async_context(TaskGroup())
            stack.callback(self._cancel_tasks)  # runs before the task group waits for them
            port = self.cfg.metrics_port
            if port is not None and self.metrics is not None:
                await self._start_metrics(self.metrics, port)
        except BaseException:
            await stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def attach_store(self, stack: AsyncExitStack, store: Store) -> None:
        """The job's store is open: start writing the journal (and probing the store).

        ``stack`` is the one the store's close is on: the final journal flush
        is pushed on it so that it runs before the store closes.
        """
        self.journal.attach(store)
        if self._tg is not None:
            self._tasks.append(self._tg.create_task(_guard(self.journal.run(), "journal")))
        stack.push_async_callback(self.journal.final_flush)
        if self.metrics is not None:
            from corral.core.keys import Keys

            key = Keys(self.cfg.rdzv_conf.store.prefix, self.cfg.rdzv_id).round

            async def probe() -> None:
                await store.get(key)

            self._probe = probe

    async def _start_metrics(self, metrics: Metrics, port: int) -> None:
        from corral.events.metrics import serve_metrics

        self.sink.add(metrics)
        ready: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()

        def started(addr: tuple[str, int]) -> None:
            if not ready.done():
                ready.set_result(addr)

        async def probe() -> None:
            if self._probe is not None:
                await self._probe()

        async def serve() -> None:
            try:
                await serve_metrics(metrics, self.cfg_addr, port, probe=probe, started=started)
            except Exception as exc:
                if not ready.done():  # it never listened: the agent's start fails with it
                    ready.set_exception(exc)
                    return
                raise  # it stopped later: _guard logs it, the job goes on

        assert self._tg is not None
        self._tasks.append(self._tg.create_task(_guard(serve(), "metrics endpoint")))
        try:
            self.metrics_address = await ready
        except Exception as exc:  # OSError, or a name getaddrinfo refuses (UnicodeError)
            from corral.core.errors import LauncherError

            raise LauncherError(
                f"--metrics-port {port}: cannot listen on {self.cfg_addr}:{port} ({exc})"
            ) from exc

    @property
    def cfg_addr(self) -> str:
        return self.cfg.metrics_addr or "0.0.0.0"

    def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()


async def _guard(coro: Awaitable[None], what: str) -> None:
    """Run an observer's task; its unexpected error is logged, never the job's end.

    (A task that fails in a task group cancels the task that owns the group:
    here, the agent. Observing must not stop what it observes.)
    """
    try:
        await coro
    except Exception:
        log.exception("%s stopped by an unexpected error; the job goes on without it", what)
