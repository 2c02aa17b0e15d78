"""Launch from Python: ``corral.launch(config, entrypoint, *args) -> {rank: result}``.

The CLI is a thin client of this module: ``corral.launcher.run(cfg)``
goes through :func:`_prepare` and :meth:`Agent.run`, which is
:meth:`Agent.execute` (what :func:`launch_async` awaits) with errors turned
into exit codes. There is one launch path, not two.

Rules (docs/api.md):

* :func:`launch` runs its own event loop (``asyncio.run``), so it cannot be
  called from a running event loop: ``await launch_async(...)`` there.
* Signal handlers for ``config.signals_to_handle`` are installed only when
  called from the main thread, and the caller's handlers are restored
  afterwards. From another thread no handler is installed: the caller stops
  the job by cancelling :func:`launch_async` (workers are stopped either way,
  and never outlive the process).
* A function entrypoint is pickled (by reference, like multiprocessing's
  spawn) into a private temporary file and run by ``python -m
  corral.workers._fn_entry`` in a fresh interpreter per worker; a function
  defined in a script's ``__main__`` needs the ``if __name__ == "__main__":``
  guard, as with multiprocessing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from corral.config import LaunchConfig, resolve_standalone
from corral.core.compat import run as _compat_run
from corral.core.errors import ConfigError

if TYPE_CHECKING:
    from corral.agent.agent import Agent, AgentHooks
    from corral.agent.policy import RestartPolicy
    from corral.core.events import EventSink

__all__ = ["FN_ENTRY_MODULE", "launch", "launch_async"]

#: The module a function worker runs (``python -m``).
FN_ENTRY_MODULE = "corral.workers._fn_entry"


@contextmanager
def _prepare(
    config: LaunchConfig, entrypoint: str | Callable[..., Any] | None, args: tuple[Any, ...]
) -> Iterator[LaunchConfig]:
    """The config the agent runs: the entrypoint applied; a function's payload written.

    The payload's directory is removed on exit.

    Raises:
        ConfigError: no entrypoint, an unpicklable function or argument, or a
            start method other than ``spawn`` for a function.
    """
    config = resolve_standalone(config)
    if entrypoint is None:
        if not config.entrypoint:
            raise ConfigError(
                "entrypoint '': give launch() a command or a function, "
                "or set LaunchConfig.entrypoint"
            )
        yield config
        return
    if isinstance(entrypoint, str):
        if not entrypoint:
            raise ConfigError("entrypoint '': expected a script, module, command or function")
        yield replace(config, entrypoint=entrypoint, args=tuple(str(a) for a in args))
        return
    if not callable(entrypoint):
        raise ConfigError(
            f"entrypoint {entrypoint!r}: expected a str (script, -m module, command) or a function"
        )
    if config.start_method != "spawn":
        raise ConfigError(
            f"start_method {config.start_method}: a function entrypoint runs only with spawn "
            "(a fresh interpreter per worker); forking the launcher's event loop and threads "
            "is not safe. Use start_method='spawn'"
        )
    import pickle

    from corral.workers._fn_entry import write_payload

    tmp = tempfile.mkdtemp(prefix="corral_fn_")  # 0700: only this user reads the payload
    try:
        payload = os.path.join(tmp, "payload.pkl")
        try:
            write_payload(payload, entrypoint, args)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            name = getattr(entrypoint, "__qualname__", repr(entrypoint))
            raise ConfigError(
                f"entrypoint {name}: cannot be pickled for the workers ({exc}); use a "
                "module-level function and picklable arguments (no lambdas or local functions)"
            ) from exc
        yield replace(
            config,
            entrypoint=FN_ENTRY_MODULE,
            args=(payload,),
            module=True,
            no_python=False,
            run_path=False,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _agent(
    cfg: LaunchConfig,
    *,
    hooks: AgentHooks | None,
    policy: RestartPolicy | None,
    agent_class: type[Agent] | None,
    events: EventSink | None = None,
) -> Agent:
    from corral.agent.agent import Agent

    cls = agent_class or Agent
    if events is not None:  # an EventSink (docs/events.md)
        return cls(cfg, hooks=hooks, policy=policy, events=events)
    return cls(cfg, hooks=hooks, policy=policy)


async def launch_async(
    config: LaunchConfig,
    entrypoint: str | Callable[..., Any] | None = None,
    *args: Any,
    hooks: AgentHooks | None = None,
    policy: RestartPolicy | None = None,
    agent_class: type[Agent] | None = None,
    events: EventSink | None = None,
) -> dict[int, Any]:
    """Run this node's part of the job in the running event loop; see :func:`launch`.

    Cancelling the call stops the workers (SIGTERM, then SIGKILL after
    ``config.shutdown_timeout``) and leaves the rendezvous.
    """
    with _prepare(config, entrypoint, args) as cfg:
        agent = _agent(cfg, hooks=hooks, policy=policy, agent_class=agent_class, events=events)
        return await agent.execute()


def launch(
    config: LaunchConfig,
    entrypoint: str | Callable[..., Any] | None = None,
    *args: Any,
    hooks: AgentHooks | None = None,
    policy: RestartPolicy | None = None,
    agent_class: type[Agent] | None = None,
    events: EventSink | None = None,
) -> dict[int, Any]:
    """Run ``entrypoint`` on this node's workers (and, through the rendezvous, the job's).

    Args:
        config: the job (nodes, nproc_per_node, rendezvous, restarts, logs...).
            Its ``entrypoint``/``args``/``module`` are used when ``entrypoint``
            is None (what the CLI does).
        entrypoint: a command (a script path; a module with ``config.module``;
            an executable with ``config.no_python``), run with ``args`` as
            strings; or a picklable function, called as ``fn(*args)`` in each
            worker (a fresh interpreter: ``start_method`` must be ``spawn``).
        args: the command's arguments or the function's positional arguments.
        hooks: :class:`~corral.agent.agent.AgentHooks` (``before_start``, ``on_outcome``).
        policy: a :class:`~corral.agent.policy.RestartPolicy` (default: restart
            at once while ``max_restarts`` lasts).
        agent_class: an :class:`~corral.agent.agent.Agent` subclass to run.
        events: an EventSink: called with each of the agent's events
            (:mod:`corral.core.events`; docs/events.md).

    Returns:
        This node's results by global rank (``RANK``): a function's return
        value, or None for a command (which exited 0). On one node the keys
        are the local ranks ``0..nproc_per_node-1``.

    Raises:
        WorkerFailed: the job failed (restarts spent, or the policy gave up);
            ``failures[0]`` is the job-wide root cause (the first failure by the
            store's order), then this node's other failed ranks. A function's
            exception is in ``message`` and ``traceback``.
        NodeRefused: a ``before_start`` hook refused to run a round.
        Interrupted: a handled signal stopped the job (main thread only).
        ConfigError: bad configuration or an unpicklable function.
        LauncherError: any other launcher or rendezvous error.
        RuntimeError: called from a running event loop (use :func:`launch_async`).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "corral.launch() cannot be called from a running event loop (it runs its own); "
            "use 'await corral.launch_async(...)' instead"
        )
    return _compat_run(
        launch_async(
            config,
            entrypoint,
            *args,
            hooks=hooks,
            policy=policy,
            agent_class=agent_class,
            events=events,
        )
    )


async def run_cli(config: LaunchConfig) -> int:
    """The CLI's launch: the same preparation and agent, errors as an exit code."""
    with _prepare(config, None, ()) as cfg:
        return await _agent(cfg, hooks=None, policy=None, agent_class=None).run()
