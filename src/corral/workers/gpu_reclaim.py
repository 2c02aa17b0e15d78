"""GPU memory before the next attempt: wait until the previous attempt's processes hold none.

A process that has exited may still hold device memory for a moment while the
driver tears its context down; a worker of the next attempt that allocates
then can run out of memory. So, on a node with NVIDIA GPUs, the agent
remembers the pids of an attempt's processes (the workers and their
descendants, found by the group's marker: :mod:`corral.workers.sweep`) when
it stops them, and before it starts the next attempt's workers waits until
none of them is in NVML's per-GPU lists of compute and graphics processes, at
most ``--gpu-reclaim-timeout`` seconds; then it goes on with one warning.

Without GPUs (:func:`~corral.workers.prestart.gpus_present` is False, or the
timeout is 0) it does nothing and ``pynvml`` is never imported. The NVML
query is an injected async function (:data:`GpuQuery`), and the clock an
argument, so the waiting is tested with fakes (tests/unit/workers/test_gpu_reclaim.py).

NVML reports pids as the driver sees them: in a container without the host's
pid namespace they may not match the agent's, and then nothing is waited for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING

from corral.core.clock import Clock
from corral.workers.prestart import gpus_present
from corral.workers.sweep import marker_needle, scan

if TYPE_CHECKING:
    from corral.config import LaunchConfig
    from corral.workers.group import WorkerGroup

__all__ = ["GpuQuery", "GpuReclaim", "nvml_pids", "still_holding"]

log = logging.getLogger(__name__)

#: The pids that hold memory on any visible GPU now (NVML's process lists).
GpuQuery = Callable[[], Awaitable[Collection[int]]]
#: How often the lists are read while waiting.
POLL = 0.1


def still_holding(previous: Collection[int], on_gpu: Collection[int]) -> list[int]:
    """The previous attempt's pids that still hold GPU memory (sorted)."""
    return sorted(set(previous) & set(on_gpu))


def nvml_pids() -> frozenset[int]:
    """Every pid in NVML's compute and graphics process lists of every GPU (blocking).

    Raises:
        ImportError: ``pynvml`` (the ``nvidia-ml-py`` package) is not installed.
        pynvml.NVMLError: NVML cannot be loaded or asked.
    """
    import pynvml

    pynvml.nvmlInit()
    try:
        pids: set[int] = set()
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for ask in (
                pynvml.nvmlDeviceGetComputeRunningProcesses,
                pynvml.nvmlDeviceGetGraphicsRunningProcesses,
            ):
                pids.update(int(p.pid) for p in ask(handle))
        return frozenset(pids)
    finally:
        pynvml.nvmlShutdown()


async def _nvml_query() -> Collection[int]:
    return await asyncio.to_thread(nvml_pids)  # NVML calls block: off the event loop


class GpuReclaim:
    """The agent's wait for GPU memory between two attempts (one per agent).

    Args:
        timeout: ``--gpu-reclaim-timeout`` seconds (0: do not wait).
        clock: where the wait sleeps and its deadline is read.
        query: the NVML process lists (None: no GPUs, everything is a no-op).
        poll: seconds between two reads of the lists.
    """

    def __init__(
        self, timeout: float, clock: Clock, query: GpuQuery | None, poll: float = POLL
    ) -> None:
        self.timeout = timeout
        self.clock = clock
        self.query = query if timeout > 0 else None
        self.poll = poll
        self._pids: set[int] = set()

    @classmethod
    def for_node(cls, cfg: LaunchConfig, environ: Mapping[str, str], clock: Clock) -> GpuReclaim:
        """The node's: NVML's lists where NVIDIA GPUs are visible, else a no-op."""
        on = cfg.gpu_reclaim_timeout > 0 and gpus_present(environ)
        return cls(cfg.gpu_reclaim_timeout, clock, _nvml_query if on else None)

    @property
    def active(self) -> bool:
        return self.query is not None

    def remember(self, group: WorkerGroup) -> None:
        """Note ``group``'s processes (its workers and their descendants), before it is stopped."""
        if self.query is None:
            return
        self._pids.update(group.pids.values())
        if group.marker:
            self._pids.update(scan(marker_needle(group.marker)))

    async def wait(self) -> list[int]:
        """Wait until no remembered process holds GPU memory, at most ``timeout`` s.

        Returns the pids still holding memory when the wait gave up (one warning
        line is logged then), else ``[]``. Forgets the remembered pids either way.
        An NVML error ends the wait at once (one warning line).
        """
        previous, self._pids = self._pids, set()
        if self.query is None or not previous:
            return []
        start = self.clock.now()
        deadline = start + self.timeout
        while True:
            try:
                held = still_holding(previous, await self.query())
            except Exception as exc:  # ImportError, pynvml.NVMLError: never fatal
                log.warning("GPU memory not checked before the next attempt (NVML: %s)", exc)
                return []
            now = self.clock.now()
            if not held:
                if now > start:
                    log.info("waited %.1fs for the previous attempt's GPU memory", now - start)
                return []
            if now >= deadline:
                log.warning(
                    "process(es) %s of the previous attempt still hold GPU memory after "
                    "--gpu-reclaim-timeout %gs; starting the next attempt anyway",
                    held,
                    self.timeout,
                )
                return held
            await self.clock.sleep(min(self.poll, deadline - now))
