"""Restart policies: what this node does after its workers failed (pure decisions).

The job-wide restart budget (``--max-restarts``) belongs to the rendezvous: it
counts one restart per failed round for the whole job, however many nodes
fail. A policy only adds node-local judgement on top of it:

* whether to keep restarting at all (``RestartVerdict.restart``; False makes
  the agent spend the budget now: ``Rendezvous.report_failure(..., final=True)``
  ends the job in failure with the job-wide root cause), and
* how long to wait before rejoining (``RestartVerdict.delay``), slept on the
  policy's own :class:`~corral.core.clock.Clock` so tests advance a ``FakeClock``.

:class:`ImmediatePolicy` is the default (torchrun's behaviour). :class:`BackoffPolicy`
waits exponentially longer after each failure and gives up when the same
failure repeats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from corral.core.clock import Clock, MonotonicClock
from corral.core.errors import ConfigError
from corral.core.failures import FailureReport

__all__ = ["BackoffPolicy", "ImmediatePolicy", "RestartPolicy", "RestartVerdict", "failure_key"]


@dataclass(frozen=True)
class RestartVerdict:
    """A policy's answer for one local failure.

    Attributes:
        restart: False: stop restarting (the agent reports the failure as final
            and the job fails now, even with restarts left).
        delay: seconds to wait before rejoining the rendezvous (restart only).
        reason: for humans (logged), e.g. why the policy gave up.
    """

    restart: bool = True
    delay: float = 0.0
    reason: str = ""


@runtime_checkable
class RestartPolicy(Protocol):
    """Node-local restart judgement, consulted by the agent on each local failure.

    The agent calls :meth:`on_failure` with this node's failures of a round
    (the local root cause first) *before* it reports them to the rendezvous,
    and, when the rendezvous decides to restart, awaits :meth:`before_rejoin`
    with the same verdict before joining the next round. One policy object
    serves one agent (it may keep history between calls).
    """

    def on_failure(self, failures: Sequence[FailureReport]) -> RestartVerdict:
        """Decide for this node's failures of one round. Must not block or do I/O."""
        ...

    async def before_rejoin(self, verdict: RestartVerdict) -> None:
        """Wait as the verdict says (on the policy's clock) before the agent rejoins."""
        ...


def failure_key(report: FailureReport) -> tuple[int, int, str | None]:
    """What makes two failures "the same": (rank, exit code, message)."""
    return (report.rank, report.exitcode, report.message)


class ImmediatePolicy:
    """The default: restart at once while the job-wide budget lasts (torchrun's behaviour)."""

    def on_failure(self, failures: Sequence[FailureReport]) -> RestartVerdict:
        return RestartVerdict()

    async def before_rejoin(self, verdict: RestartVerdict) -> None:
        return None


class BackoffPolicy:
    """Exponential back-off between restarts; give up on a repeating failure.

    After the n-th local failure (n = 1, 2, ...) the agent waits
    ``min(initial * factor ** (n - 1), max_delay)`` seconds before rejoining.
    When the same failure (:func:`failure_key` of the local root cause: rank,
    exit code and message) occurs ``identical_limit`` times in a row, the
    verdict is ``restart=False``: the job fails now with its root cause rather
    than burn the rest of the budget on a deterministic bug.

    Args:
        initial: first delay in seconds (>= 0).
        factor: growth per failure (>= 1).
        max_delay: cap on the delay in seconds (>= initial).
        identical_limit: identical consecutive failures that stop the restarts
            (>= 1; 0 disables the check).
        clock: where :meth:`before_rejoin` sleeps (default: the real monotonic clock).

    Raises:
        ConfigError: a value out of range (the message names it).
    """

    def __init__(
        self,
        initial: float = 1.0,
        factor: float = 2.0,
        max_delay: float = 60.0,
        identical_limit: int = 2,
        *,
        clock: Clock | None = None,
    ) -> None:
        if not initial >= 0:
            raise ConfigError(f"BackoffPolicy initial ({initial}) must be >= 0 seconds")
        if not factor >= 1:
            raise ConfigError(f"BackoffPolicy factor ({factor}) must be >= 1")
        if not max_delay >= initial:
            raise ConfigError(
                f"BackoffPolicy max_delay ({max_delay}) must be >= initial ({initial})"
            )
        if identical_limit < 0:
            raise ConfigError(f"BackoffPolicy identical_limit ({identical_limit}) must be >= 0")
        self.initial = initial
        self.factor = factor
        self.max_delay = max_delay
        self.identical_limit = identical_limit
        self.clock: Clock = clock or MonotonicClock()
        self.failures_seen = 0
        self._last_key: tuple[int, int, str | None] | None = None
        self._streak = 0

    def delay_for(self, n: int) -> float:
        """The delay after the ``n``-th failure (1-based)."""
        if n < 1:
            return 0.0
        # cap the exponent's effect without overflowing on huge n
        delay = self.initial
        for _ in range(n - 1):
            delay *= self.factor
            if delay >= self.max_delay:
                return self.max_delay
        return min(delay, self.max_delay)

    def on_failure(self, failures: Sequence[FailureReport]) -> RestartVerdict:
        self.failures_seen += 1
        key = failure_key(failures[0]) if failures else None
        if key is not None and key == self._last_key:
            self._streak += 1
        else:
            self._streak = 1
        self._last_key = key
        if key is not None and self.identical_limit and self._streak >= self.identical_limit:
            rank, code, message = key
            return RestartVerdict(
                restart=False,
                reason=(
                    f"the same failure (rank {rank}, exit code {code}, {message or 'no message'}) "
                    f"occurred {self._streak} times in a row (identical_limit {self.identical_limit})"
                ),
            )
        delay = self.delay_for(self.failures_seen)
        return RestartVerdict(
            delay=delay, reason=f"back-off {delay:g}s after failure {self.failures_seen}"
        )

    async def before_rejoin(self, verdict: RestartVerdict) -> None:
        if verdict.restart and verdict.delay > 0:
            await self.clock.sleep(verdict.delay)
