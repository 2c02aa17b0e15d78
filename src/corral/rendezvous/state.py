"""The rendezvous records kept in the store: versioned JSON, and the key layout.

Every value is ``{"version": 1, ...}`` JSON behind explicit ``to_json`` /
``from_json`` (never pickle). A record that does not parse raises
:class:`corral.errors.RendezvousError` naming the key, so a corrupt or foreign
store is reported, not silently misread. Layout (under ``<prefix>/<run_id>/``)::

    round                         RoundPointer: current round, restart count, why it started
    outcome                       Outcome: the job's end (create-only)
    waiting/<node_id>             NodeDesc of a node waiting for the next round (lease)
    r/<r>/nodes/<node_id>         NodeDesc of a joiner of round r (lease); create revision = order
    r/<r>/closer                  node id of the node that closes round r (lease, create-only)
    r/<r>/closed                  ClosedRound: ordered members, master addr/port (create-only)
    r/<r>/failures/<node_id>/<lr> FailureReport of one failed worker
    r/<r>/done/<node_id>          a member whose workers all succeeded in round r
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from corral.errors import RendezvousError
from corral.rendezvous.api import NodeDesc
from corral.reporting.failures import FailureReport

__all__ = [
    "VERSION",
    "ClosedRound",
    "Keys",
    "Outcome",
    "RoundPointer",
    "decode_node",
    "encode_node",
]

VERSION = 1

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

    ``restart_count`` counts failure restarts of the whole job; it is carried
    from round to round and grows by one only when a round starts because of a
    failure, so every node reads the same TORCHELASTIC_RESTART_COUNT.
    """

    round: int
    restart_count: int = 0
    reason: str = REASON_START
    detail: str = ""

    def to_json(self) -> bytes:
        return _dump(
            {
                "round": self.round,
                "restart_count": self.restart_count,
                "reason": self.reason,
                "detail": self.detail,
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> RoundPointer:
        d = _load(data, "round")
        try:
            return cls(int(d["round"]), int(d["restart_count"]), str(d["reason"]), str(d["detail"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise RendezvousError(f"corrupt round record: {d!r:.80}") from exc


@dataclass(frozen=True, slots=True)
class ClosedRound:
    """The value of ``r/<r>/closed``: the members in rank order and where rank 0 serves."""

    round: int
    restart_count: int
    members: tuple[NodeDesc, ...]
    master_addr: str
    master_port: int

    def rank_of(self, node_id: str) -> int | None:
        for i, m in enumerate(self.members):
            if m.node_id == node_id:
                return i
        return None

    def to_json(self) -> bytes:
        return _dump(
            {
                "round": self.round,
                "restart_count": self.restart_count,
                "members": [_node_dict(m) for m in self.members],
                "master_addr": self.master_addr,
                "master_port": self.master_port,
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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RendezvousError(f"corrupt closed round record: {d!r:.80}") from exc


@dataclass(frozen=True, slots=True)
class Outcome:
    """The value of ``outcome``: how the job ended (create-only: the first writer wins).

    ``status`` is ``"success"`` or ``"failed"``; for a failure, ``root_cause``
    is the earliest failure (by create revision) of the last round and
    ``exit_code`` what every agent exits with.
    """

    status: str
    round: int
    root_cause: FailureReport | None = None
    exit_code: int = 0

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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RendezvousError(f"corrupt outcome record: {d!r:.80}") from exc


class Keys:
    """Key names of one run: ``<prefix>/<run_id>/...`` (see the module docstring)."""

    def __init__(self, prefix: str, run_id: str) -> None:
        if "/" in run_id or not run_id:
            raise RendezvousError(f"run id {run_id!r} must be non-empty and contain no '/'")
        self.base = f"{prefix.rstrip('/')}/{run_id}/"
        self.round = self.base + "round"
        self.outcome = self.base + "outcome"
        self.waiting = self.base + "waiting/"

    def waiting_key(self, node_id: str) -> str:
        return f"{self.waiting}{node_id}"

    def rprefix(self, r: int) -> str:
        return f"{self.base}r/{r}/"

    def nodes(self, r: int) -> str:
        return f"{self.base}r/{r}/nodes/"

    def node(self, r: int, node_id: str) -> str:
        return f"{self.base}r/{r}/nodes/{node_id}"

    def close_prefix(self, r: int) -> str:
        """Matches both ``closer`` and ``closed``: one watch for a follower."""
        return f"{self.base}r/{r}/close"

    def closer(self, r: int) -> str:
        return f"{self.base}r/{r}/closer"

    def closed(self, r: int) -> str:
        return f"{self.base}r/{r}/closed"

    def failures(self, r: int) -> str:
        return f"{self.base}r/{r}/failures/"

    def failure(self, r: int, node_id: str, local_rank: int) -> str:
        return f"{self.base}r/{r}/failures/{node_id}/{local_rank}"

    def done(self, r: int) -> str:
        return f"{self.base}r/{r}/done/"

    def done_key(self, r: int, node_id: str) -> str:
        return f"{self.base}r/{r}/done/{node_id}"

    @staticmethod
    def leaf(key: str) -> str:
        return key.rsplit("/", 1)[-1]
