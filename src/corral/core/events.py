"""The agent's and the rendezvous's state changes as typed, frozen events.

Every event carries where and when it happened: ``node`` (the agent's node
id), ``round`` (the rendezvous round, -1 before the first), ``mono`` (this
host's monotonic clock, for durations on one node) and ``wall`` (unix
seconds, for placing events of several nodes on one time axis; never used to
order or judge anything). ``to_dict`` adds ``kind`` (the class name) and
``v`` (:data:`SCHEMA_VERSION`); :func:`event_from_dict` reverses it.

docs/events.md lists every event and field.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "Event",
    "EventSink",
    "HangDeclared",
    "JobEnded",
    "NodeHealthy",
    "NodeJoined",
    "NodeLost",
    "NodeQuarantined",
    "NodeUnhealthy",
    "NodeWaiting",
    "ProgressStep",
    "RestartDecided",
    "RoundClosed",
    "RoundEnded",
    "RoundOpened",
    "SignalReceived",
    "WorkerExited",
    "WorkerFailed",
    "WorkerStarted",
    "WorkersStopped",
    "event_from_dict",
    "stamp",
]

#: Bumped when a field is removed or changes meaning (adding a field is compatible).
SCHEMA_VERSION = 1

E = TypeVar("E", bound="Event")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """What every event has.

    Attributes:
        node: the node id of the agent that saw the change.
        round: the rendezvous round it belongs to (-1: before the first round).
        mono: ``time.monotonic()`` on that node when it happened.
        wall: ``time.time()`` on that node when it happened (for display only).
    """

    kind: ClassVar[str] = "Event"
    node: str
    round: int
    mono: float
    wall: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"v": 1, "kind": "<class>", <fields>}``."""
        d: dict[str, Any] = {"v": SCHEMA_VERSION, "kind": type(self).__name__}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            d[f.name] = list(value) if isinstance(value, tuple) else value
        return d


def stamp(cls: type[E], node: str, round: int, **fields: Any) -> E:
    """Build event ``cls`` for ``node`` and ``round``, timed now (both clocks)."""
    return cls(node=node, round=round, mono=time.monotonic(), wall=time.time(), **fields)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundOpened(Event):
    """This node moved the job to a new round (``round`` is the new one).

    Attributes:
        reason: ``failure``, ``member_lost``, ``node_waiting`` or ``job_ended``.
        detail: for humans, e.g. which node failed.
    """

    kind: ClassVar[str] = "RoundOpened"
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeJoined(Event):
    """This node registered in ``round`` and waits for it to close."""

    kind: ClassVar[str] = "NodeJoined"
    addr: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeWaiting(Event):
    """A node waits for the next round: this node (``subject`` = ``node``), or, seen
    by a running member, another node that wants to join (a scale-up)."""

    kind: ClassVar[str] = "NodeWaiting"
    subject: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeLost(Event):
    """A member of ``round`` left or its lease ended (a scale-down or a node failure)."""

    kind: ClassVar[str] = "NodeLost"
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundClosed(Event):
    """``round`` closed with this node in it: the worker group will start.

    Attributes:
        group_rank, group_world_size: this node's place and the node count.
        rank_offset, local_world_size, world_size: this node's global ranks
            are ``rank_offset .. rank_offset + local_world_size - 1``.
        restart_count: the job's restarts before this round.
        max_restarts: the job's restart budget (-1: unknown).
        members: node ids in group-rank order where this node knows them (the
            node that closed the round), else empty.
        host: this node's host name.
    """

    kind: ClassVar[str] = "RoundClosed"
    group_rank: int
    group_world_size: int
    rank_offset: int
    local_world_size: int
    world_size: int
    restart_count: int
    members: tuple[str, ...] = ()
    host: str = ""
    max_restarts: int = -1


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStarted(Event):
    """One worker process was spawned."""

    kind: ClassVar[str] = "WorkerStarted"
    local_rank: int
    rank: int
    pid: int
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerExited(Event):
    """One worker exited with code 0."""

    kind: ClassVar[str] = "WorkerExited"
    local_rank: int
    rank: int
    pid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerFailed(Event):
    """One worker failed: its cause as its failure report gives it.

    Attributes:
        exitcode: the exit code, or -N for signal N. signal: its name, if any.
        message: ``<Type>: <msg>`` from the error file, if any.
        exit_wall: unix time the worker's exit was seen (the failure's start).
    """

    kind: ClassVar[str] = "WorkerFailed"
    local_rank: int
    rank: int
    pid: int
    exitcode: int
    signal: str | None = None
    message: str | None = None
    exit_wall: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HangDeclared(Event):
    """A worker showed no progress for longer than allowed (hang detection).

    Attributes:
        last_step: the last progress step seen (-1: none). silent_s: seconds without progress.
    """

    kind: ClassVar[str] = "HangDeclared"
    local_rank: int
    rank: int
    last_step: int = -1
    silent_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressStep(Event):
    """A worker reported progress (its first step of an attempt, or a later one).

    Emitted by whatever reads workers' progress marks; the incident journal
    uses the first one after a restart as the end of the down time.
    """

    kind: ClassVar[str] = "ProgressStep"
    local_rank: int
    step: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundEnded(Event):
    """This node knows ``round`` is over for its workers (the end of detection).

    Attributes:
        cause: ``failure`` (a worker here or elsewhere), ``member_lost``,
            ``node_waiting``, ``job_ended``, ``succeeded`` or ``signal``.
        detail: for humans.
    """

    kind: ClassVar[str] = "RoundEnded"
    cause: str
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkersStopped(Event):
    """This node's worker group of ``round`` is stopped (every process reaped).

    Attributes: seconds: how long stopping took.
    """

    kind: ClassVar[str] = "WorkersStopped"
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartDecided(Event):
    """This node will join the next round after ``round``.

    Attributes:
        cause: as :class:`RoundEnded`. detail: for humans.
        restart_count: the job's restarts before this one (the next round's
            :class:`RoundClosed` carries the new count).
        max_restarts: the job's budget.
    """

    kind: ClassVar[str] = "RestartDecided"
    cause: str
    restart_count: int
    max_restarts: int
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalReceived(Event):
    """The agent received a handled signal (it forwards it and stops)."""

    kind: ClassVar[str] = "SignalReceived"
    signal: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeUnhealthy(Event):
    """A ``--health-check`` of this node failed (docs/health.md): it does not join, or it
    leaves the job. ``host``: the node's host; ``check``: the command; ``reason``: the
    last line it printed (or its timeout)."""

    kind: ClassVar[str] = "NodeUnhealthy"
    host: str
    check: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeQuarantined(Event):
    """Node ``subject`` (address ``addr``) is quarantined (``--quarantine-after``,
    docs/rendezvous.md): the root cause of ``failures`` failures of the job in a row,
    the last ``reason``. Emitted by the node that moved the job to ``round``."""

    kind: ClassVar[str] = "NodeQuarantined"
    subject: str
    addr: str
    failures: int
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeHealthy(Event):
    """This node's health checks pass again after a :class:`NodeUnhealthy`."""

    kind: ClassVar[str] = "NodeHealthy"
    host: str


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEnded(Event):
    """This agent is done with the job.

    Attributes:
        outcome: ``succeeded``, ``failed``, ``interrupted`` or ``error``.
        exit_code: what the agent exits with.
        root_cause: one line naming the job-wide root cause (failures).
    """

    kind: ClassVar[str] = "JobEnded"
    outcome: str
    exit_code: int
    root_cause: str = ""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        RoundOpened,
        NodeJoined,
        NodeWaiting,
        NodeLost,
        RoundClosed,
        WorkerStarted,
        WorkerExited,
        WorkerFailed,
        HangDeclared,
        ProgressStep,
        RoundEnded,
        WorkersStopped,
        RestartDecided,
        SignalReceived,
        JobEnded,
        NodeUnhealthy,
        NodeHealthy,
        NodeQuarantined,
    )
}


def event_from_dict(d: dict[str, Any]) -> Event:
    """The event a :meth:`Event.to_dict` dict (e.g. one JSON line) describes.

    Unknown fields are ignored (a newer writer may add some).

    Raises:
        ValueError: an unknown kind or schema version, or a missing field.
    """
    if d.get("v") != SCHEMA_VERSION:
        raise ValueError(f"event schema version {d.get('v')!r}: expected {SCHEMA_VERSION}")
    cls = EVENT_TYPES.get(str(d.get("kind")))
    if cls is None:
        raise ValueError(f"unknown event kind {d.get('kind')!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    kw: dict[str, Any] = {
        k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names
    }
    try:
        return cls(**kw)
    except TypeError as exc:
        raise ValueError(f"{cls.__name__}: {exc}") from None


#: Where events go: any callable that takes one :class:`Event` (docs/events.md).
EventSink = Callable[[Event], None]
