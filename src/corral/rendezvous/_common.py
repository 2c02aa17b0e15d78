"""Helpers shared by the modules of the dynamic rendezvous: record decoding, changes."""

from __future__ import annotations

import functools

from corral.core.model import ChangeKind, RoundChange
from corral.rendezvous.state import (
    REASON_FAILURE,
    REASON_JOB_ENDED,
    REASON_MEMBER_LOST,
    REASON_NODE_WAITING,
    ClosedRound,
    RoundPointer,
)
from corral.store.api import KeyValue

KINDS = {
    REASON_FAILURE: ChangeKind.FAILURE,
    REASON_MEMBER_LOST: ChangeKind.MEMBER_LOST,
    REASON_NODE_WAITING: ChangeKind.NODE_WAITING,
    REASON_JOB_ENDED: ChangeKind.JOB_ENDED,
}


def decode_closed(kv: KeyValue) -> ClosedRound:
    """The round record in ``kv`` (a closed summary or a full member list)."""
    return _decode(kv.value)


# Closed and member records are immutable, so one decode per value serves every
# handle in this process: simulated nodes (tests, bench) and an agent that
# rejoins. A memo of the pure decode, keyed by the bytes themselves (never
# confused across stores), not state: a real node decodes each record once anyway.
@functools.lru_cache(maxsize=16)
def _decode(value: bytes) -> ClosedRound:
    return ClosedRound.from_json(value)


class Spare(Exception):  # a signal to join(), not an error
    """Round r runs without this node and no round will admit it while the restart
    budget is spent: join() leaves the join_timeout and waits (``args``: those of
    ``_wait_next_round``), then joins with a fresh join_timeout."""


def change_for(p: RoundPointer) -> RoundChange:
    return RoundChange(KINDS.get(p.reason, ChangeKind.MEMBER_LOST), p.round, p.detail)
