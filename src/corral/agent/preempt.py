"""What a handled signal does to the whole job: ``--on-signal stop|leave`` (docs/schedulers.md).

A scheduler that preempts a job signals some or all of its nodes (SIGTERM, or
SIGUSR1/SIGUSR2 ahead of time with Slurm's ``--signal``). The agent that gets
one has already forwarded it to its own workers; here it tells the job:

* ``stop`` (the default when MIN == MAX): record a job-wide stop in the store,
  so that every other agent forwards the same signal to its workers at once
  (its ``watch_round`` returns JOB_ENDED with ``stop_signal``), gives them
  ``--shutdown-timeout`` to exit (to checkpoint), ends them and exits with
  128 + signal. No restart is attempted or counted.
* ``leave`` (the default when MIN < MAX): this node leaves as a scale-down and
  the others go on without it (a restart, counted); when that would leave
  fewer than MIN nodes, or no restart is left, the job is stopped as above.

The agent that got the signal exits 128 + signal either way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from corral.core.compat import timeout as _timeout
from corral.core.errors import Interrupted, JobStopped, LauncherError, signal_name
from corral.core.model import RoundChange, RoundInfo
from corral.rendezvous.api import Rendezvous
from corral.rendezvous.protocol.records import Outcome

if TYPE_CHECKING:
    from corral.config import LaunchConfig
    from corral.workers.group import WorkerGroup

__all__ = ["stop_for_change", "tell_job"]

log = logging.getLogger("corral.agent")


async def tell_job(
    rdzv: Rendezvous,
    cfg: LaunchConfig,
    rnd: RoundInfo | None,
    signum: int,
    host: str,
    *,
    hosts_store: bool = False,
) -> Interrupted:
    """Tell the job that this node got handled signal ``signum``; return what to end with.

    ``rdzv`` records the stop (``report_stop``) or the leave (``leave``, only
    in a running round ``rnd``); a backend without them (a third-party one)
    records nothing and the others see a lost node. A node that hosts the
    job's store (``hosts_store``: the embedded c10d store) cannot leave without
    taking the store along: it stops the job instead. Bounded by read_timeout;
    a store error is logged, not raised (the node still ends with 128 + signal).
    """
    name = signal_name(signum)
    # beyond the Rendezvous protocol: the built-in backends have them, a plug-in may not
    report_stop: Callable[[int, str], Awaitable[Outcome]] | None
    report_stop = getattr(rdzv, "report_stop", None)
    leave: Callable[[RoundInfo, int, str], Awaitable[Outcome | None]] | None
    leave = getattr(rdzv, "leave", None)
    action = cfg.signal_action
    if action == "leave" and hosts_store and report_stop is not None:
        log.warning(
            "%s: this node hosts the job's store and cannot leave without it: the job stops "
            "(a separate `corral store` or etcd lets a job outlive any training node)",
            name,
        )
        action = "stop"
    try:
        async with _timeout(cfg.rdzv_conf.store.read_timeout):
            if action == "leave":
                if rnd is None or leave is None:
                    log.warning("%s: this node leaves the job", name)
                    return Interrupted(signum)
                out = await leave(rnd, signum, host)
                if out is None:
                    log.warning("%s: this node leaves the job; the others go on without it", name)
                    return Interrupted(signum)
            elif report_stop is None:
                return Interrupted(signum)
            else:
                out = await report_stop(signum, host)
    except (LauncherError, TimeoutError) as exc:
        log.warning("%s: could not record the job's stop in the store (%s)", name, exc)
        return JobStopped(signum, host)
    if out.stopped:
        log.warning("%s: every node of the job stops (%s)", name, out.stop_text)
        return JobStopped(out.signal, out.node)
    return Interrupted(signum)  # the job had ended already (success or failure)


async def stop_for_change(
    group: WorkerGroup, change: RoundChange, shutdown_timeout: float
) -> JobStopped:
    """Another node stopped the job (``change.stop_signal``): forward the signal to this
    node's workers now, give them ``shutdown_timeout`` to exit, end them; return the error
    to end with (128 + signal)."""
    sig = change.stop_signal
    log.warning("job %s: forwarding %s to the workers", change.detail, signal_name(sig))
    await group.stop(shutdown_timeout, first_signal=sig)
    return JobStopped(sig, change.stop_node)
