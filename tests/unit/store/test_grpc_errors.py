"""How etcd's grpc errors become corral's store errors (store/etcd/grpc_errors.py)."""

from __future__ import annotations

import grpc
import pytest

from corral.core.errors import LeaseNotFound, StoreError, StoreTimeout, StoreUnavailable
from corral.store.etcd.grpc_errors import is_failover_error, translate_error


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("code", "details", "kind", "failover"),
    [
        # a member without quorum (the minority of a partition) times its proposal out
        # and reports it as UNKNOWN: a timeout, which a join retries until join_timeout
        (grpc.StatusCode.UNKNOWN, "context deadline exceeded", StoreTimeout, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", StoreTimeout, True),
        (grpc.StatusCode.UNAVAILABLE, "failed to connect", StoreUnavailable, True),
        (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found", LeaseNotFound, False),
        (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided", StoreError, False),
    ],
)
def test_translate(
    code: grpc.StatusCode, details: str, kind: type[StoreError], failover: bool
) -> None:
    exc = _error(code, details)
    out = translate_error(exc, "lease grant", "127.0.0.1:2379")
    assert type(out) is kind and "lease grant" in str(out)
    assert is_failover_error(exc) is failover
