"""What an etcd member's grpc error means: fail over, or a corral error.

:func:`is_failover_error` says whether another member may serve a request
that failed (the member is gone, hung, has no leader, or the transport broke);
:func:`translate_error` makes the :mod:`corral.core.errors` exception for any other
(a lease not found, a compacted revision, authentication, a deadline). Used by
every call of :class:`~corral.store.etcd.connection.Connection` and by the
watches (:mod:`corral.store.etcd.watch`).
"""

from __future__ import annotations

import grpc  # type: ignore[import-untyped]

from corral.core.errors import (
    AuthenticationFailed,
    LeaseNotFound,
    StoreCompacted,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)

__all__ = ["is_failover_error", "short_reason", "translate_error"]

# Server answers that mean: this member cannot serve now, another one may.
_FAILOVER_DETAILS = (
    "no leader",
    "leader changed",
    "request timed out",
    # a member without quorum times its own proposal out and says so as UNKNOWN
    "context deadline exceeded",
    "not capable",
    "stopped",
    "too many requests",
    # transport failures that grpc sometimes reports as INTERNAL or UNKNOWN
    "rst_stream",
    "stream removed",
    "socket closed",
    "connection reset",
    "internal error from core",  # grpc core, when a member dies under a streaming call
    # our own cancel of a call on a session given up (Connection.fail cancels its
    # watch calls so that they resume elsewhere); a caller's cancellation is an
    # asyncio.CancelledError instead, never this
    "locally cancelled by application",
    "broken pipe",
    "goaway",
)


def is_failover_error(exc: BaseException) -> bool:
    """True if another member may serve the request that failed with ``exc``."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return False
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return True
    details = (exc.details() or "").lower()
    return any(d in details for d in _FAILOVER_DETAILS)


def translate_error(exc: grpc.aio.AioRpcError, what: str, endpoint: str) -> StoreError:
    """The corral error for a grpc error that failover cannot fix."""
    code = exc.code()
    details = exc.details() or str(code)
    low = details.lower()
    where = f"etcd {what} at {endpoint}"
    if "lease not found" in low:
        return LeaseNotFound(f"{where}: the lease does not exist (expired or revoked)")
    if "compacted" in low:
        return StoreCompacted(f"{where}: {details}")
    if "user name is empty" in low or "user name not found" in low:
        return AuthenticationFailed(
            f"{where}: etcd requires authentication; put user:password in the etcd URL "
            "(or user/password in --rdzv-conf)"
        )
    if "authentication failed" in low:
        return AuthenticationFailed(
            f"{where}: invalid user or password; check the user and password in the etcd URL "
            "(or user/password in --rdzv-conf)"
        )
    if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in low:
        return AuthenticationFailed(f"{where}: permission denied for this user ({details})")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationFailed(f"{where}: not authenticated ({details})")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or "context deadline exceeded" in low:
        return StoreTimeout(f"{where}: no answer in time ({details})")
    if code == grpc.StatusCode.UNAVAILABLE:
        return StoreUnavailable(f"{where}: unavailable ({details})")
    return StoreError(f"{where} failed: {code.name}: {details}")


def short_reason(reason: BaseException | str) -> str:
    """``CODE: details`` of a grpc error, else ``str(reason)`` (for log lines and messages)."""
    if isinstance(reason, grpc.aio.AioRpcError):
        return f"{reason.code().name}: {reason.details()}"
    return str(reason)
