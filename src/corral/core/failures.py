"""Failure reports: one per failed worker, published job-wide; the earliest is the root cause."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from corral.core.errors import RendezvousError, signal_name

__all__ = ["FailureReport"]

_VERSION = 1


@dataclass(frozen=True)
class FailureReport:
    """What is known of one failed worker.

    Attributes:
        rank: global rank. local_rank: rank on its node. group_rank: the node's rank.
        host: host name (for humans). node_id: the agent's node id. pid: worker pid.
        exitcode: the process exit code, or -N when it died of signal N.
        message: "<Type>: <msg>" from the error file, if any.
        traceback: the traceback from the error file, if any.
        stderr_tail: the last lines of the worker's stderr when there is no error file.
        timestamp: unix seconds when the agent saw the exit (informational only:
            the job-wide order is the store's, never wall clocks).
        round: the rendezvous round. restart_count: job restarts before this attempt.
        lost: not a worker's failure but a whole node lost (its agent left the
            rendezvous) when the restart budget was spent; ``message`` names
            the node, ``local_rank`` is -1.
        hang: the worker made no progress within ``--hang-timeout`` (docs/hangs.md):
            ``message`` names it, ``traceback`` holds the hang report (the culprit's
            stacks, then where every other rank waits); ``exitcode`` is 124.
    """

    rank: int
    local_rank: int
    group_rank: int
    host: str
    node_id: str
    pid: int
    exitcode: int
    message: str | None = None
    traceback: str | None = None
    stderr_tail: str | None = None
    timestamp: float = 0.0
    round: int = 0
    restart_count: int = 0
    error_file: str | None = None
    lost: bool = False
    hang: bool = False

    def line(self) -> str:
        """One line for people: who failed and how (``corral status``, quarantine reasons)."""
        if self.hang and self.message:
            return self.message  # "hang: rank R (...) step S, no progress for X s"
        if self.lost and self.message:
            return self.message  # a whole node lost: the message names it
        how = (
            f"died of {self.signal_name}"
            if self.exitcode < 0
            else f"exited with code {self.exitcode}"
        )
        why = f": {self.message}" if self.message else ""
        if not why and self.stderr_tail:
            why = f": {self.stderr_tail.strip().splitlines()[-1]}"
        where = f"node {self.group_rank}, local rank {self.local_rank}, {self.host}"
        return f"rank {self.rank} ({where}) {how}{why}"

    @property
    def signal_name(self) -> str | None:
        if self.exitcode >= 0:
            return None
        return signal_name(-self.exitcode)

    @property
    def exit_code(self) -> int:
        """What the launcher exits with for this root cause: the code, or 128+N for signal N."""
        if self.exitcode < 0:
            return 128 + (-self.exitcode)
        return self.exitcode if self.exitcode > 0 else 1

    def to_json(self) -> bytes:
        d: dict[str, Any] = {"version": _VERSION, **asdict(self)}
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> FailureReport:
        """The report :meth:`to_json` wrote (unknown keys of a newer writer are ignored).

        Raises:
            RendezvousError: the record does not parse: not JSON, another version,
                a field missing, or a number that is not an integer.
        """
        try:
            d = json.loads(data)  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        except ValueError as exc:
            raise RendezvousError(f"corrupt failure report: {str(data)[:80]!r}") from exc
        if not isinstance(d, dict) or d.get("version") != _VERSION:
            raise RendezvousError(f"unsupported failure report: {str(data)[:80]!r}")
        d.pop("version")
        fields = cls.__dataclass_fields__
        try:
            report = cls(**{k: v for k, v in d.items() if k in fields})
        except TypeError as exc:
            raise RendezvousError(f"corrupt failure report ({exc}): {str(data)[:80]!r}") from exc
        for name in ("rank", "local_rank", "group_rank", "pid", "exitcode"):
            value = getattr(report, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise RendezvousError(
                    f"corrupt failure report: {name} is {value!r}, not an integer: "
                    f"{str(data)[:80]!r}"
                )
        return report
