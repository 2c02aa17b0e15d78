"""etcd's conditional writes: ``create`` and ``compare_and_set`` as one transaction.

:func:`conditional_put` fills a transaction that compares the key's create
revision (0: it does not exist) or mod revision, then puts it; and
:func:`write_result` reads its answer. A conditional write whose answer was
lost (a member failed over) is re-run on the next member: if it now conflicts
but the key holds exactly this call's value and lease, the earlier attempt was
applied and the call reports success (values written by the rendezvous name
their writer, so an identical value means this writer or an identical outcome).
Used by :class:`~corral.store.etcd.client.EtcdStore` on every join: no I/O here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aetcd import rpc

from corral.store.api import KeyValue, WriteResult

__all__ = ["conditional_put", "write_result"]

log = logging.getLogger(__name__)


def conditional_put(
    txn: Any, full: bytes, value: bytes, expected_mod_revision: int, lease: int
) -> Any:
    """Fill ``txn`` (an empty TxnRequest): compare the key's create (0) or
    mod revision, then put it; read the key if the compare fails, and after
    a compare-and-set (a create needs no read: the key is what it wrote, at
    the transaction's revision). Returns ``txn``.

    Built in place: protobuf copies a message passed to a constructor, and
    this runs on every join (about 2.5x faster than nested constructors).
    """
    compare = txn.compare.add()
    compare.key = full
    compare.result = rpc.Compare.EQUAL
    if expected_mod_revision == 0:
        compare.target = rpc.Compare.CREATE
        compare.create_revision = 0
    else:
        compare.target = rpc.Compare.MOD
        compare.mod_revision = expected_mod_revision
    put = txn.success.add().request_put
    put.key, put.value, put.lease = full, value, lease
    if expected_mod_revision != 0:
        # A CAS keeps the key's create revision: read it back.
        txn.success.add().request_range.key = full
    txn.failure.add().request_range.key = full
    return txn


def write_result(
    resp: Any,
    value: bytes,
    expected_mod_revision: int,
    lease: int,
    revision: int,
    retried: bool,
    key: str,
    kv_of: Callable[[Any], KeyValue],
) -> WriteResult:
    """The outcome of a :func:`conditional_put` (``resp``: its TxnResponse); ``kv_of``
    makes a :class:`KeyValue` of a key it read (the store's, without its prefix)."""
    if resp.succeeded and expected_mod_revision == 0:
        return WriteResult(True, KeyValue(key, value, revision, revision, lease), revision)
    kvs = resp.responses[-1].response_range.kvs
    kv = kv_of(kvs[0]) if kvs else None
    if resp.succeeded:
        return WriteResult(True, kv, revision)
    if (
        retried
        and kv is not None
        and kv.value == value
        and kv.lease == lease
        and kv.mod_revision != expected_mod_revision
    ):
        # An earlier attempt whose answer was lost was applied.
        log.info("etcd: conditional write of %r was applied before failover", key)
        return WriteResult(True, kv, revision)
    return WriteResult(False, kv, revision)
