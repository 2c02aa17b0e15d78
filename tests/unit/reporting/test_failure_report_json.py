"""A failure report read from the store is corral's error when it does not parse."""

from __future__ import annotations

import pytest

from corral.core.errors import LauncherError, RendezvousError
from corral.core.failures import FailureReport

REPORT = FailureReport(rank=3, local_rank=1, group_rank=1, host="h", node_id="n", pid=7, exitcode=2)


def test_round_trip() -> None:
    assert FailureReport.from_json(REPORT.to_json()) == REPORT


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"\xff\xfe",  # not UTF-8
        b"[1, 2]",
        b'{"version": 99, "rank": 0}',
        b'{"version": 1, "rank": 0}',  # fields missing
        b'{"version": 1, "rank": 0, "local_rank": 0, "group_rank": 0, "host": "h", '
        b'"node_id": "n", "pid": "x", "exitcode": 1}',  # a pid that is not an integer
    ],
)
def test_a_corrupt_record_raises_a_rendezvous_error(data: bytes) -> None:
    # was: ValueError / TypeError, past the error tree (corral status, the failure loop)
    with pytest.raises(RendezvousError, match="failure report"):
        FailureReport.from_json(data)
    assert issubclass(RendezvousError, LauncherError)
