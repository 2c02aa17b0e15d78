"""The rendezvous records kept in the store: versioned JSON.

Every value is ``{"version": 1, ...}`` JSON behind explicit ``to_json`` /
``from_json`` (never pickle). A record that does not parse raises
:class:`corral.core.errors.RendezvousError` naming the key, so a corrupt or foreign
store is reported, not silently misread. Where each record lives is
:class:`~corral.core.keys.Keys` (the key layout). Plain values: no I/O.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corral.core.errors import RendezvousError, signal_name
from corral.core.failures import FailureReport
from corral.core.model import NodeDesc

__all__ = [
    "ASSIGNMENTS_PER_KEY",
    "VERSION",
    "Assignment",
    "ClosedRound",
    "Outcome",
    "Quarantine",
    "RankTable",
    "RoundPointer",
    "decode_node",
    "encode_node",
    "rank_table_count",
    "rank_table_of",
]

VERSION = 1

# Members per rank table: the closer writes about n / ASSIGNMENTS_PER_KEY keys
# for a round of n nodes, and each member reads one table of about this many
# assignments (a key per member made the close write n keys, and on etcd 3.4
# every request copies the writes not yet committed to its backend).
ASSIGNMENTS_PER_KEY = 16

# Why a round started (RoundPointer.reason); mirrors api.ChangeKind values.
REASON_START = "start"
REASON_FAILURE = "failure"
REASON_MEMBER_LOST = "member_lost"
REASON_NODE_WAITING = "node_waiting"
REASON_JOB_ENDED = "job_ended"  # terminal: detail is "success" or "failed"


def _dump(d: dict[str, Any]) -> bytes:
    return json.dumps({"version": VERSION, **d}, separators=(",", ":")).encode()


def _load(data: bytes | str, what: str) -> dict[str, Any]:
    try:
        d = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RendezvousError(f"corrupt {what} record: {str(data)[:80]!r}") from exc
    if not isinstance(d, dict) or d.get("version") != VERSION:
        raise RendezvousError(
            f"unsupported {what} record (want version {VERSION}): {str(data)[:80]!r}"
        )
    return d


def _node_dict(n: NodeDesc) -> dict[str, Any]:
    return {
        "node_id": n.node_id,
        "addr": n.addr,
        "local_world_size": n.local_world_size,
        "host": n.host,
        "pid": n.pid,
        "master_port": n.master_port,
    }


def _node_from(d: Any, what: str) -> NodeDesc:
    try:
        return NodeDesc(
            node_id=str(d["node_id"]),
            addr=str(d["addr"]),
            local_world_size=int(d["local_world_size"]),
            host=str(d.get("host", "")),
            pid=int(d.get("pid", 0)),
            master_port=int(d.get("master_port", 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RendezvousError(f"corrupt node description in {what}: {d!r:.80}") from exc


def encode_node(n: NodeDesc) -> bytes:
    return _dump(_node_dict(n))


def decode_node(data: bytes | str) -> NodeDesc:
    return _node_from(_load(data, "node"), "node record")


@dataclass(frozen=True, slots=True)
class RoundPointer:
    """The value of ``round``: which round is current and the job's restart count.

    ``restart_count`` counts the restarts of the whole job's worker group; it
    is carried from round to round and grows by one whenever a round after the
    first starts, whatever the cause (a failure, a lost member, a waiting node:
    ``reason``), never for the job's end. Every node reads the same
    TORCHELASTIC_RESTART_COUNT.

    ``max_restarts`` is the budget as the node that made the first pointer
    was given it (``--max-restarts``), carried along: the job's budget, which
    every node adopts when it reads the pointer (``budget.job_budget``) and
    ``corral status`` shows; -1: not recorded (a node then uses its own).
    ``no_restart_code`` is carried the same way: that node's
    ``--no-restart-exit-code`` (0: none; -1: not recorded).

    ``cause`` and ``streak`` count the failures of the job in a row with one
    root cause: after a move for a failure, the address of the node of its
    root cause and how many failures in a row it has been the root cause of
    (``budget.failure_streak``; quarantine, docs/rendezvous.md); empty and 0
    after any other move.
    """

    round: int
    restart_count: int = 0
    reason: str = REASON_START
    detail: str = ""
    max_restarts: int = -1
    no_restart_code: int = -1
    cause: str = ""
    streak: int = 0

    def to_json(self) -> bytes:
        return _dump(
            {
                "round": self.round,
                "restart_count": self.restart_count,
                "reason": self.reason,
                "detail": self.detail,
                "max_restarts": self.max_restarts,
                "no_restart_code": self.no_restart_code,
                "cause": self.cause,
                "streak": self.streak,
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> RoundPointer:
        d = _load(data, "round")
        try:
            return cls(
                int(d["round"]),
                int(d["restart_count"]),
                str(d["reason"]),
                str(d["detail"]),
                int(d.get("max_restarts", -1)),
                int(d.get("no_restart_code", -1)),
                str(d.get("cause", "")),
                int(d.get("streak", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RendezvousError(f"corrupt round record: {d!r:.80}") from exc


@dataclass(frozen=True, slots=True)
class ClosedRound:
    """A closed round: the members in rank order, sizes, and where rank 0 serves.

    Two forms share this record. The full one (``members`` in rank order) is
    stored once per round at ``r/<r>/members/<tag>``. The *summary* (``members``
    empty, :meth:`summary`) is the value of ``close/<r>/closed``, the one record
    every node reads: O(1) bytes whatever the round's size. ``node_count`` and
    ``world_size`` are the round's sizes (-1: derive them from ``members``);
    ``tag`` names the closer's attempt whose ``members`` and ``ranks`` keys
    belong to this round; ``rank_tables`` is how many ``ranks`` keys it wrote.
    """

    round: int
    restart_count: int
    members: tuple[NodeDesc, ...]
    master_addr: str
    master_port: int
    node_count: int = -1
    world_size: int = -1
    tag: str = ""
    rank_tables: int = 0

    def __post_init__(self) -> None:
        if self.node_count < 0:
            object.__setattr__(self, "node_count", len(self.members))
        if self.world_size < 0:
            object.__setattr__(self, "world_size", sum(m.local_world_size for m in self.members))

    def rank_of(self, node_id: str) -> int | None:
        for i, m in enumerate(self.members):
            if m.node_id == node_id:
                return i
        return None

    def summary(self) -> ClosedRound:
        """The same round without its member list (the ``closed`` record)."""
        return ClosedRound(
            self.round,
            self.restart_count,
            (),
            self.master_addr,
            self.master_port,
            self.node_count,
            self.world_size,
            self.tag,
            self.rank_tables,
        )

    def to_json(self) -> bytes:
        return _dump(
            {
                "round": self.round,
                "restart_count": self.restart_count,
                "members": [_node_dict(m) for m in self.members],
                "master_addr": self.master_addr,
                "master_port": self.master_port,
                "node_count": self.node_count,
                "world_size": self.world_size,
                "tag": self.tag,
                "rank_tables": self.rank_tables,
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> ClosedRound:
        d = _load(data, "closed round")
        try:
            return cls(
                round=int(d["round"]),
                restart_count=int(d["restart_count"]),
                members=tuple(_node_from(m, "closed round") for m in d["members"]),
                master_addr=str(d["master_addr"]),
                master_port=int(d["master_port"]),
                node_count=int(d.get("node_count", -1)),
                world_size=int(d.get("world_size", -1)),
                tag=str(d.get("tag", "")),
                rank_tables=int(d.get("rank_tables", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RendezvousError(f"corrupt closed round record: {d!r:.80}") from exc


@dataclass(frozen=True, slots=True)
class Assignment:
    """One member's place in round r (kept in a :class:`RankTable`).

    ``pred`` is the node id of its predecessor in the ring of ranks (rank k-1;
    rank 0's is the last rank), the one key it watches while the round runs;
    empty in a round of one node.
    """

    group_rank: int
    rank_offset: int
    pred: str = ""


def rank_table_count(node_count: int) -> int:
    """How many rank tables a round of ``node_count`` members has."""
    return max(1, -(-node_count // ASSIGNMENTS_PER_KEY))


def rank_table_of(node_id: str, tables: int) -> int:
    """The rank table that holds ``node_id``'s assignment (the same in every process)."""
    return zlib.crc32(node_id.encode()) % tables


@dataclass(frozen=True, slots=True)
class RankTable:
    """The value of ``r/<r>/ranks/<tag>/<i>``: the assignments of the members in table i."""

    assignments: Mapping[str, Assignment]

    def to_json(self) -> bytes:
        return _dump(
            {
                "ranks": {
                    node_id: [a.group_rank, a.rank_offset, a.pred]
                    for node_id, a in self.assignments.items()
                }
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> RankTable:
        d = _load(data, "rank table")
        try:
            ranks = d["ranks"]
            return cls(
                {
                    str(node_id): Assignment(int(g), int(off), str(pred))
                    for node_id, (g, off, pred) in ranks.items()
                }
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RendezvousError(f"corrupt rank table record: {d!r:.80}") from exc


@dataclass(frozen=True, slots=True)
class Outcome:
    """The value of ``outcome``: how the job ended (create-only: the first writer wins).

    ``status`` is ``"success"``, ``"failed"`` or ``"stopped"``; for a failure,
    ``root_cause`` is the earliest failure (by create revision) of the last
    round and ``exit_code`` what every agent exits with. A stopped job (a
    handled signal, ``--on-signal stop``) records the ``signal``, the ``node``
    (host) that received it, and exit code 128 + signal.
    """

    status: str
    round: int
    root_cause: FailureReport | None = None
    exit_code: int = 0
    signal: int = 0
    node: str = ""

    @property
    def stopped(self) -> bool:
        return self.status == "stopped"

    @property
    def stop_text(self) -> str:
        """``stopped by SIGTERM on node gpu007`` (for a stopped job)."""
        return f"stopped by {signal_name(self.signal)} on node {self.node}"

    @property
    def succeeded(self) -> bool:
        return self.status == "success"

    def to_json(self) -> bytes:
        rc = json.loads(self.root_cause.to_json()) if self.root_cause is not None else None
        return _dump(
            {
                "status": self.status,
                "round": self.round,
                "root_cause": rc,
                "exit_code": self.exit_code,
                "signal": self.signal,
                "node": self.node,
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> Outcome:
        d = _load(data, "outcome")
        try:
            rc = d["root_cause"]
            return cls(
                status=str(d["status"]),
                round=int(d["round"]),
                root_cause=FailureReport.from_json(json.dumps(rc)) if rc is not None else None,
                exit_code=int(d["exit_code"]),
                signal=int(d.get("signal", 0)),
                node=str(d.get("node", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RendezvousError(f"corrupt outcome record: {d!r:.80}") from exc


@dataclass(frozen=True, slots=True)
class Quarantine:
    """The value of ``quarantine/<addr>``: a node kept out of the job.

    ``addr`` is the node's identity as the rendezvous knows it (its address,
    ``NodeDesc.addr``): an agent restarted on that host is refused too.
    ``node_id`` and ``host`` name the agent that was quarantined, ``round``
    the round whose failure did it, ``failures`` how many failures in a row
    it was the root cause of, ``reason`` the last root cause in one line.
    """

    addr: str
    node_id: str
    host: str
    round: int
    failures: int
    reason: str

    def to_json(self) -> bytes:
        return _dump(
            {
                "addr": self.addr,
                "node_id": self.node_id,
                "host": self.host,
                "round": self.round,
                "failures": self.failures,
                "reason": self.reason,
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> Quarantine:
        d = _load(data, "quarantine")
        try:
            return cls(
                str(d["addr"]),
                str(d["node_id"]),
                str(d.get("host", "")),
                int(d["round"]),
                int(d["failures"]),
                str(d.get("reason", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RendezvousError(f"corrupt quarantine record: {d!r:.80}") from exc

    def line(self) -> str:
        """One line: who is out, and why."""
        who = f"node {self.addr}" + (f" ({self.node_id})" if self.node_id else "")
        return (
            f"{who} is quarantined: the root cause of {self.failures} failures of the job "
            f"in a row, the last in round {self.round}"
            + (f": {self.reason}" if self.reason else "")
        )
