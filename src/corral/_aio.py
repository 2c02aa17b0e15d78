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
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

from corral._compat import TaskGroup

if sys.version_info >= (3, 11):
    _GroupTypes: tuple[type[BaseException], ...] = (BaseExceptionGroup,)  # noqa: F821
else:  # pragma: no cover - Python 3.10: the backport's exception groups
    from exceptiongroup import BaseExceptionGroup as _BEG

    _GroupTypes = (_BEG,)

__all__ = ["first_of", "task_scope"]

log = logging.getLogger("corral")


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


async def _as_coro(aw: Awaitable[Any]) -> Any:
    return await aw
