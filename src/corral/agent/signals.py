"""Handled signals in this process: install the handlers, forward, tell the job once.

A signal in ``cfg.signals_to_handle`` is forwarded to the running worker group
at once (:func:`on_signal`, the loop's handler), remembered (the first one
decides the exit code, 128 + N) and wakes every race of the agent
(``agent._signal_event``). What it does to the rest of the job (``--on-signal
stop|leave``) is :mod:`corral.agent.preempt`'s; :func:`tell_job` asks it once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import TYPE_CHECKING

from corral.core import events as ev
from corral.core.errors import ConfigError, Interrupted, signal_name
from corral.core.model import RoundInfo
from corral.rendezvous.api import Rendezvous

if TYPE_CHECKING:
    from corral.agent.agent import Agent

__all__ = ["Handler", "install_handlers", "on_signal", "remove_handlers", "tell_job"]

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


def on_signal(agent: Agent, signum: int) -> None:
    """The loop's handler: forward to the workers, remember the first signal, wake the races."""
    log.warning("received %s: forwarding to workers and stopping", signal_name(signum))
    if agent._group is not None:
        agent._group.send_signal(signum)
    if not agent._signum:
        agent._signum = signum
    agent._emit(ev.SignalReceived, agent._round, signal=signal_name(signum))
    agent._signal_event.set()


async def tell_job(agent: Agent, rdzv: Rendezvous, rnd: RoundInfo | None) -> Interrupted:
    """This node got a handled signal: stop the job or leave it, once (agent/preempt.py)."""
    if agent._told is None:
        from corral.agent.preempt import tell_job

        hosts = agent._server is not None  # the embedded store: it cannot leave
        agent._told = await tell_job(
            rdzv, agent.cfg, rnd, agent._signum, agent.host, hosts_store=hosts
        )
    return agent._told
