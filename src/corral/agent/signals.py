"""Handled signals in this process: install the handlers, forward, tell the job once.

A signal in ``cfg.signals_to_handle`` is forwarded to the running worker group
at once (the agent's handler), then latched in the run's :class:`SignalLatch`:
the first one decides the exit code (128 + N) and wakes every race of the run
(:meth:`SignalLatch.race`). What it does to the rest of the job (``--on-signal
stop|leave``) is :mod:`corral.agent.preempt`'s; :meth:`SignalLatch.tell_job`
asks it once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable
from types import FrameType
from typing import TYPE_CHECKING, TypeVar, cast

from corral.core.aio import first_of
from corral.core.errors import ConfigError, Interrupted
from corral.core.model import RoundInfo
from corral.rendezvous.api import Rendezvous

if TYPE_CHECKING:
    from corral.config import LaunchConfig

__all__ = ["Handler", "SignalLatch", "install_handlers", "remove_handlers"]

T = TypeVar("T")

log = logging.getLogger("corral.agent")

# what signal.getsignal returns and signal.signal takes back
Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


def install_handlers(
    loop: asyncio.AbstractEventLoop,
    signals: Iterable[int],
    callback: Callable[[int], None],
    handle: bool | None,
) -> dict[int, Handler]:
    """Install ``callback(sig)`` on ``loop`` for each of ``signals``; return the previous ones.

    ``handle`` None: only in the main thread (handlers cannot be installed
    elsewhere); False: none. Raises ConfigError when they cannot be installed.
    """
    if handle is None:
        handle = threading.current_thread() is threading.main_thread()
    installed: dict[int, Handler] = {}
    if not handle:
        return installed
    try:
        for sig in signals:
            previous = signal.getsignal(sig)
            loop.add_signal_handler(sig, callback, sig)
            installed[sig] = previous
    except (ValueError, RuntimeError) as exc:
        remove_handlers(loop, installed)
        raise ConfigError(
            f"handle_signals=True: cannot install signal handlers here ({exc}); "
            "signals can only be handled in the main thread"
        ) from exc
    return installed


def remove_handlers(loop: asyncio.AbstractEventLoop, installed: dict[int, Handler]) -> None:
    """Undo :func:`install_handlers`: the caller's handlers are back (corral.launch)."""
    for sig, previous in installed.items():
        loop.remove_signal_handler(sig)
        if previous is not None:
            signal.signal(sig, previous)


class SignalLatch:
    """The handled signals of one agent run: the first one, remembered, and who waits for it.

    :meth:`receive` is the signal handler's part (after the forwarding): it
    latches the first signal and wakes every :meth:`wait` / :meth:`race`.
    :meth:`tell_job` tells the job once, whatever number of paths ask.
    """

    def __init__(self) -> None:
        self.signum = 0  # the first handled signal; 0: none yet
        self._event = asyncio.Event()
        self._interrupted: Interrupted | None = None  # what telling the job ended this run with

    def receive(self, signum: int) -> None:
        """A handled signal arrived: remember it if it is the first; wake the races."""
        if not self.signum:
            self.signum = signum
        self._event.set()

    @property
    def received(self) -> bool:
        return bool(self.signum)

    async def wait(self) -> None:
        """Return once a handled signal has arrived."""
        await self._event.wait()

    async def race(self, aw: Awaitable[T]) -> T:
        """Await ``aw`` unless a handled signal arrives first (then raise Interrupted)."""
        i, result = await first_of(aw, self._event.wait())
        if i == 1:
            raise Interrupted(self.signum)
        return cast(T, result)

    async def tell_job(
        self,
        rdzv: Rendezvous,
        cfg: LaunchConfig,
        rnd: RoundInfo | None,
        *,
        host: str,
        hosts_store: bool,
    ) -> Interrupted:
        """This node got a handled signal: stop the job or leave it, once (agent/preempt.py).

        ``hosts_store``: this node hosts the embedded store (it cannot leave)."""
        if self._interrupted is None:
            from corral.agent.preempt import tell_job

            self._interrupted = await tell_job(
                rdzv, cfg, rnd, self.signum, host, hosts_store=hosts_store
            )
        return self._interrupted
