"""The one error tree of corral.

Every error the launcher raises derives from :class:`LauncherError`. Subclasses
are grouped by what the caller does next: retry (``StoreUnavailable``), give up
on the round (``RendezvousTimeout``), fix the input (``ConfigError``), or report
worker failures (``WorkerFailed``). Third-party exceptions are translated at the
backend boundary with ``raise ... from exc``.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.core.failures import FailureReport

__all__ = [
    "QUARANTINED_EXIT_CODE",
    "AuthenticationFailed",
    "ConfigError",
    "Interrupted",
    "JobFailed",
    "JobStopped",
    "LauncherError",
    "LeaseNotFound",
    "NodeQuarantined",
    "NodeRefused",
    "ProtocolError",
    "RendezvousClosed",
    "RendezvousError",
    "RendezvousTimeout",
    "StoreCompacted",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
    "WorkerFailed",
    "signal_name",
]


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; ``signal 99`` for a number that names no signal."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class LauncherError(Exception):
    """Root of every error raised by corral."""


class ConfigError(LauncherError):
    """Invalid configuration: the message names the option, the value and what is allowed."""


# --- store -----------------------------------------------------------------


class StoreError(LauncherError):
    """Any failure talking to a coordination store."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (connection refused, reset, or lost). Retry later."""


class StoreTimeout(StoreError):
    """A store request got no answer within its deadline."""


class AuthenticationFailed(StoreError):
    """The store refused our credentials (wrong token, user or password)."""


class ProtocolError(StoreError):
    """A peer sent something that violates the wire protocol (malformed frame, bad schema)."""


class LeaseNotFound(StoreError):
    """The lease does not exist: it expired, was revoked, or its owning connection closed."""


class StoreCompacted(StoreError):
    """A watch asked for a revision older than the store still remembers."""


# --- rendezvous --------------------------------------------------------------


class RendezvousError(LauncherError):
    """Rendezvous could not complete."""


class RendezvousTimeout(RendezvousError):
    """A rendezvous deadline (join_timeout, close_timeout, ...) passed."""


class RendezvousClosed(RendezvousError):
    """The job has ended (it has an outcome); no further rounds will start."""


# The exit code of an agent whose node is quarantined (docs/contract.md): 75,
# sysexits' EX_TEMPFAIL: the job went on without this node, and the node
# wants repair before it runs again.
QUARANTINED_EXIT_CODE = 75


class NodeQuarantined(RendezvousError):
    """This node's address is quarantined (``--quarantine-after``): it took no part in
    the job's later rounds and waited for its end. The CLI exits with
    :data:`QUARANTINED_EXIT_CODE`."""

    exit_code = QUARANTINED_EXIT_CODE


# --- workers -----------------------------------------------------------------


class WorkerFailed(LauncherError):
    """Workers failed and no restart is left.

    Attributes:
        failures: every failed rank's report, the root cause first.
    """

    def __init__(self, message: str, failures: list[FailureReport]) -> None:
        super().__init__(message)
        self.failures = failures

    @property
    def root_cause(self) -> FailureReport | None:
        return self.failures[0] if self.failures else None

    @property
    def exit_code(self) -> int:
        """The CLI's exit code: the root cause's code (128+N for signal N), else 1."""
        rc = self.root_cause
        return rc.exit_code if rc is not None else 1


class NodeRefused(LauncherError):
    """This node refuses to run the round (e.g. a failed health check in ``before_start``).

    The agent leaves the rendezvous (other nodes see a lost node) and exits non-zero.
    """


class Interrupted(LauncherError):
    """A handled signal (``signals_to_handle``) stopped the agent; the workers were stopped.

    Attributes:
        signum: the signal; the CLI exits with 128 + signum.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal_name(signum)}; the workers were stopped")
        self.signum = signum


class JobStopped(Interrupted):
    """The job was stopped by a handled signal on one of its nodes (``--on-signal stop``).

    Every agent of the job ends with it: the workers got the signal and up to
    ``--shutdown-timeout`` to exit; no restart was attempted or counted. The CLI
    exits with 128 + signum (docs/schedulers.md).

    Attributes:
        signum: the signal; node: the host that received it.
    """

    def __init__(self, signum: int, node: str) -> None:
        LauncherError.__init__(self, f"job stopped by {signal_name(signum)} on node {node}")
        self.signum = signum
        self.node = node


class JobFailed(LauncherError):
    """The job ended in failure on another node; carries the job-wide root cause."""

    def __init__(self, message: str, root_cause: FailureReport | None, exit_code: int) -> None:
        super().__init__(message)
        self.root_cause = root_cause
        self.exit_code = exit_code
