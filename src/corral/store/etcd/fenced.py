"""Fenced writes: an attempt that lands late can never undo a newer write.

A request whose answer is lost (its member died, the connection was reset,
no answer in time) may still be applied, and later: a follower may forward
it to the leader after the client has retried elsewhere, got its answer, and
moved on. A plain put retried that way could land after a newer value and
bring back the old one.

So ``put``, ``put_many`` and ``delete`` go as transactions with a *fence*:
``if mod_revision(key) < fence + 1 then write, else read the key``, where the
fence is the highest store revision the client has seen in any answer. Any
write of the key after the attempt was sent has a higher revision than the
fence (revisions only grow), so an attempt that lands after one (a newer
value, or this call's own retry) finds its compare false and changes nothing.

When the compare fails on time (the key changed after the fence: a writer
this client has not heard of, or this call's own earlier attempt whose answer
was lost), the failure branch returns the key: if an attempt was retried and
the key holds exactly what the call writes, that attempt was applied (done);
otherwise the call is sent again with the fence moved to the revision of that
answer (at most :data:`FENCE_ROUNDS` times), so a put still overwrites any
value written before it, as an unconditional put does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aetcd import rpc

__all__ = ["FENCE_ROUNDS", "Fence", "fenced_txn"]

#: Sends of one fenced write before it gives up (the key kept changing under it).
FENCE_ROUNDS = 100


class Fence:
    """The highest store revision this client has seen in an answer (monotonic)."""

    def __init__(self) -> None:
        self.seen = 0

    def note(self, revision: int) -> int:
        """Record ``revision`` (from a response header); return it."""
        if revision > self.seen:
            self.seen = revision
        return revision


def fenced_txn(
    fence: int, targets: Sequence[tuple[bytes, bytes]], writes: Sequence[Any], reads: bool = True
) -> Any:
    """``if every key of targets has mod_revision <= fence: writes; else read each target``.

    ``targets``: (key, range_end) pairs (range_end ``b""`` for one key; a key
    that does not exist compares as mod revision 0). ``writes``: the
    ``RequestOp`` messages of the success branch. The failure branch holds one
    range read per target, in order; none with ``reads=False`` (a caller that
    would not look at them).
    """
    txn = rpc.TxnRequest()
    for key, end in targets:
        compare = txn.compare.add()
        compare.key, compare.range_end = key, end
        compare.target = rpc.Compare.MOD
        compare.result = rpc.Compare.LESS
        compare.mod_revision = fence + 1
        if reads:
            read = txn.failure.add().request_range
            read.key, read.range_end = key, end
    txn.success.extend(writes)
    return txn
