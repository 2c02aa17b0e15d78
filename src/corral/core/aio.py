"""Structured concurrency: every task corral starts lives in a scope that ends it.

The helpers, used everywhere outside the worker layer instead of bare
``create_task``/``ensure_future`` and hand-written races:

* :func:`task_scope` is an ``asyncio.TaskGroup`` (the ``taskgroup`` backport on
  Python 3.10) whose failure comes out *bare*: the first error of a child (else
  the block's own error) is raised as itself, not inside an ``ExceptionGroup``,
  so callers keep catching corral's error tree (``except StoreError``). A child
  that fails cancels the block at once: its error reaches the owner, visibly,
  wherever the owner is waiting.
* :func:`first_of` runs awaitables side by side in such a scope and returns the
  first to finish (by position when several finish in the same turn of the
  loop); the others are cancelled and awaited before it returns, and an error
  of any of them, before or during that cancellation, is raised.
* :func:`run_scope` is a :func:`task_scope` whose group, a :class:`RunTasks`,
  names its first failed child while the block is being cancelled: the agent's
  run is one, handed to every object of the run that needs a background task
  (docs/design.md, "Who owns which task").
* :func:`guarded` wraps a loop callback (``call_soon``/``call_later``/``call_at``)
  so that its exception reaches its owner: logged at error level and handed to
  an ``on_error`` of the owner, which then fails visibly (a callback's error
  would otherwise go only to the loop's exception handler, and the behaviour
  that callback drives, a timer, would stop silently).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ParamSpec, TypeVar

from corral.core.compat import TaskGroup

if sys.version_info >= (3, 11):
    _GroupTypes: tuple[type[BaseException], ...] = (BaseExceptionGroup,)  # noqa: F821
else:  # pragma: no cover - Python 3.10: the backport's exception groups
    from exceptiongroup import BaseExceptionGroup as _BEG

    _GroupTypes = (_BEG,)

__all__ = ["RunTasks", "first_of", "guarded", "run_scope", "task_scope"]

log = logging.getLogger("corral")

_P = ParamSpec("_P")
_T = TypeVar("_T")
_G = TypeVar("_G", bound=TaskGroup)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, _GroupTypes):
        out: list[BaseException] = []
        for e in exc.exceptions:  # type: ignore[attr-defined]
            out.extend(_leaves(e))
        return out
    return [exc]


class RunTasks(TaskGroup):
    """A TaskGroup that names its first failed child while its block is being cancelled.

    When a child fails, a TaskGroup cancels its block: the code in the block sees a
    ``CancelledError``, and the child's error comes out of the ``async with`` only
    after. :attr:`failure` is that error as soon as the block is cancelled (a done
    callback of each child, which runs before the block resumes), so the block can
    report the true cause while what it opened is still open (the agent's run: its
    ``JobEnded`` event, written to the job's store).
    """

    failure: BaseException | None = None

    def create_task(  # type: ignore[override]
        self, coro: Coroutine[Any, Any, _T], *, name: str | None = None, context: Any = None
    ) -> asyncio.Task[_T]:
        task = super().create_task(coro, name=name, context=context)
        task.add_done_callback(self._child_done)
        return task

    def _child_done(self, task: asyncio.Task[Any]) -> None:
        if self.failure is None and not task.cancelled() and task.exception() is not None:
            self.failure = task.exception()


def task_scope() -> AbstractAsyncContextManager[TaskGroup]:
    """``async with task_scope() as tg: tg.create_task(...)``: a TaskGroup with bare errors.

    Leaving the block waits for every child (cancel the ones that would not end
    by themselves first). When a child fails, the other children and the block
    are cancelled, and the child's exception is raised from the ``async with``
    as itself; further errors of the same scope are logged at debug level.
    ``KeyboardInterrupt``/``SystemExit`` and an outside cancellation pass as
    they do through a TaskGroup.
    """
    return _scope(TaskGroup())


def run_scope() -> AbstractAsyncContextManager[RunTasks]:
    """:func:`task_scope` whose group is a :class:`RunTasks` (the agent's run)."""
    return _scope(RunTasks())


@asynccontextmanager
async def _scope(group: _G) -> AsyncIterator[_G]:
    try:
        async with group as tg:
            yield tg
    except _GroupTypes as errors:
        leaves = _leaves(errors)
        first = next((e for e in leaves if not isinstance(e, asyncio.CancelledError)), leaves[0])
        for other in leaves:
            if other is not first:
                log.debug("task scope: further error %r", other)
        raise first from first.__cause__


async def first_of(*aws: Awaitable[Any]) -> tuple[int, Any]:
    """Run ``aws`` side by side; return ``(index, result)`` of the first to finish.

    When several finish in the same turn of the loop, the lowest index wins (so
    order gives priority). The others are cancelled and awaited before this
    returns. An exception of any awaitable (raised before the winner was known,
    or while it was being cancelled) is raised here, as itself.

    Raises: whatever an awaitable raised; CancelledError if the caller is cancelled.
    """
    if not aws:
        raise ValueError("first_of() needs at least one awaitable")
    async with task_scope() as tg:
        tasks = [tg.create_task(_as_coro(aw)) for aw in aws]
        while True:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            done = [i for i, t in enumerate(tasks) if t.done() and not t.cancelled()]
            if done:
                break
            if all(t.done() for t in tasks):  # every one cancelled by itself
                raise asyncio.CancelledError()
        for t in tasks:
            if not t.done():
                t.cancel()
    winner = done[0]
    return winner, tasks[winner].result()


def guarded(
    callback: Callable[_P, object], on_error: Callable[[Exception], None], what: str
) -> Callable[_P, None]:
    """``callback`` for the loop, with its failure handed to its owner.

    The returned function calls ``callback``; an ``Exception`` it raises is
    logged at error level (``what`` names the callback: "store 1.2.3.4:29400:
    request-deadline sweep") and passed to ``on_error``, the owner's way to fail
    visibly (end a connection, drop a peer, fail a worker group's wait). An
    exception of ``on_error`` itself is logged too, never raised into the loop.
    ``KeyboardInterrupt``/``SystemExit`` pass.
    """

    def call(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            callback(*args, **kwargs)
        except Exception as exc:
            log.error("%s failed: %r", what, exc, exc_info=exc)
            try:
                on_error(exc)
            except Exception as again:
                log.error("%s: handling its failure failed too: %r", what, again, exc_info=again)

    return call


async def _as_coro(aw: Awaitable[Any]) -> Any:
    return await aw
