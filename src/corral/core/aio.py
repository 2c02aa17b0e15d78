"""Structured concurrency: every task corral starts lives in a scope that ends it.

Two helpers, used everywhere outside the worker layer instead of bare
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
* :class:`Background` is the scope of an *object* whose tasks outlive any one
  of its calls (a store's lease timer, a rendezvous's keep-alive): the object
  starts them and its ``close`` ends them (:meth:`Background.stop`); the first
  error of one is kept (:attr:`Background.error`), logged, and signalled to
  :meth:`Background.subscribe`'s listeners (e.g. a watch multiplexer, which then
  ends its block with it).
* :func:`guarded` wraps a loop callback (``call_soon``/``call_later``/``call_at``)
  so that its exception reaches its owner: logged at error level and handed to
  an ``on_error`` of the owner, which then fails visibly (a callback's error
  would otherwise go only to the loop's exception handler, and the behaviour
  that callback drives, a timer, would stop silently).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, ParamSpec

from corral.core.compat import TaskGroup

if sys.version_info >= (3, 11):
    _GroupTypes: tuple[type[BaseException], ...] = (BaseExceptionGroup,)  # noqa: F821
else:  # pragma: no cover - Python 3.10: the backport's exception groups
    from exceptiongroup import BaseExceptionGroup as _BEG

    _GroupTypes = (_BEG,)

__all__ = ["Background", "first_of", "guarded", "task_scope"]

log = logging.getLogger("corral")

_P = ParamSpec("_P")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, _GroupTypes):
        out: list[BaseException] = []
        for e in exc.exceptions:  # type: ignore[attr-defined]
            out.extend(_leaves(e))
        return out
    return [exc]


@asynccontextmanager
async def task_scope() -> AsyncIterator[TaskGroup]:
    """``async with task_scope() as tg: tg.create_task(...)``: a TaskGroup with bare errors.

    Leaving the block waits for every child (cancel the ones that would not end
    by themselves first). When a child fails, the other children and the block
    are cancelled, and the child's exception is raised from the ``async with``
    as itself; further errors of the same scope are logged at debug level.
    ``KeyboardInterrupt``/``SystemExit`` and an outside cancellation pass as
    they do through a TaskGroup.
    """
    try:
        async with TaskGroup() as tg:
            yield tg
    except _GroupTypes as group:
        leaves = _leaves(group)
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


class Background:
    """The tasks of one object that outlive its calls; they end with the object.

    ``start`` runs a coroutine as a task the object owns; ``stop`` cancels one
    and waits for it (the owner's ``close``). A task that fails (anything but
    cancellation) records its error in :attr:`error`, logs it and calls the
    :meth:`subscribe` listeners, so the owner sees it at once (its watch
    multiplexer ends the wait in progress with it).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.error: BaseException | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listeners: list[Callable[[BaseException], None]] = []

    def start(self, coro: Any, *, name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of this owner; returns it (to :meth:`stop` it alone)."""
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.error is None:
            log.error("%s: background task %s failed: %r", self.name, task.get_name(), exc)
            self.error = exc
            for listener in list(self._listeners):
                listener(exc)

    def subscribe(self, listener: Callable[[BaseException], None]) -> None:
        """Call ``listener(error)`` when a task fails (at once if one has).

        A callback, not a waiting task: an owner that waits often (a watch
        multiplexer per rendezvous step) pays nothing until a failure.
        """
        if self.error is not None:
            listener(self.error)
        else:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[BaseException], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def stop(self, task: asyncio.Task[Any] | None) -> None:
        """Cancel one task and wait for it to end (its error, if any, stays recorded)."""
        if task is None:
            return
        task.cancel()
        await asyncio.wait({task})
