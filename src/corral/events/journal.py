"""The job's memory: attempts and incidents, derived from one node's events (pure).

A :class:`Tracker` is an event sink. From the events of one node it builds one
:class:`AttemptRecord` per round the node ran: when its workers started and
ended, the marks on the way (failures, hangs, lost and joining nodes) and,
for every attempt after the node's first, the :class:`Incident` that led to
it: its cause and the wall time at each phase boundary (the failure, the
agent knowing, the workers stopped, the next round closed, the workers
spawned, their first progress step).

The agent writes the records to the store (:mod:`corral.events.journal_writer`);
``corral status`` and ``corral timeline`` read them back and merge the nodes'
views with :func:`job_incidents`. The same records come from an events file
(:func:`records_from_events`), so both readers share one model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from corral.core import events as kinds

__all__ = [
    "PHASES",
    "AttemptRecord",
    "Incident",
    "JobIncident",
    "Mark",
    "Tracker",
    "goodput",
    "job_incidents",
    "records_from_events",
]

_VERSION = 1

#: The phases of an incident's down time, in order.
PHASES = ("detection", "stopping", "rendezvous", "spawning", "first_step")

#: Incident causes, most specific first (a job-wide incident takes the first one any node saw).
CAUSES = ("hang", "signal", "failure", "node_lost", "node_joining", "other")


@dataclass
class Mark:
    """Something worth a symbol on the timeline.

    Attributes:
        wall: when. kind: ``failure``, ``signal``, ``hang``, ``lost``, ``joining``
        or ``exited``. local_rank: the worker (-1: the node). text: for humans.
    """

    wall: float
    kind: str
    local_rank: int = -1
    text: str = ""


@dataclass
class Incident:
    """One node's view of the restart that led into an attempt (wall times, unix seconds).

    ``failed`` is when the failure happened where this node knows it (its own
    worker's exit, or a hang's last progress), else None. Each later boundary
    is None until this node reaches it.
    """

    cause: str
    detail: str = ""
    root_cause: str = ""
    failed: float | None = None
    known: float | None = None
    stopped: float | None = None
    closed: float | None = None
    spawned: float | None = None
    first_step: float | None = None


@dataclass
class AttemptRecord:
    """One node's part of one round (what the store keeps per round and node)."""

    node: str
    round: int
    host: str = ""
    addr: str = ""
    group_rank: int = 0
    rank_offset: int = 0
    local_world_size: int = 0
    world_size: int = 0
    restart_count: int = 0
    closed: float | None = None
    spawned: float | None = None
    first_step: float | None = None
    end: float | None = None
    outcome: str = ""
    detail: str = ""
    marks: list[Mark] = field(default_factory=list)
    incident: Incident | None = None

    def to_json(self) -> bytes:
        return json.dumps({"version": _VERSION, **asdict(self)}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> AttemptRecord:
        """Raises ValueError on anything but a version-1 record."""
        d = json.loads(data)
        if not isinstance(d, dict) or d.pop("version", None) != _VERSION:
            raise ValueError(f"unsupported attempt record: {str(data)[:80]!r}")
        marks = [Mark(**m) for m in d.pop("marks", [])]
        inc = d.pop("incident", None)
        names = cls.__dataclass_fields__
        rec = cls(**{k: v for k, v in d.items() if k in names})
        rec.marks = marks
        rec.incident = Incident(**inc) if inc else None
        return rec


CHANGE_CAUSE = {"member_lost": "node_lost", "node_waiting": "node_joining"}


class Tracker:
    """An event sink that keeps this node's attempt records up to date (no I/O).

    :meth:`take_dirty` hands out the records changed since the last call, for
    a writer to store. One tracker follows one node's events in their order.
    """

    def __init__(self) -> None:
        self.records: dict[int, AttemptRecord] = {}
        self._current: AttemptRecord | None = None
        self._pending: Incident | None = None  # between a round's end and the next one's close
        self._failed: float | None = None  # the current attempt's first failure
        self._root = ""
        self._cause = ""
        self._addr = ""  # from NodeJoined (the rendezvous's address of this node)
        self._dirty: set[int] = set()

    def take_dirty(self) -> list[AttemptRecord]:
        out = [self.records[r] for r in sorted(self._dirty)]
        self._dirty.clear()
        return out

    def _touch(self, rec: AttemptRecord | None) -> None:
        if rec is not None:
            self._dirty.add(rec.round)

    def __call__(self, ev: kinds.Event) -> None:
        cur = self._current
        if isinstance(ev, kinds.RoundClosed):
            rec = AttemptRecord(
                node=ev.node,
                round=ev.round,
                host=ev.host,
                addr=self._addr,
                group_rank=ev.group_rank,
                rank_offset=ev.rank_offset,
                local_world_size=ev.local_world_size,
                world_size=ev.world_size,
                restart_count=ev.restart_count,
                closed=ev.wall,
            )
            if self._pending is not None:
                self._pending.closed = ev.wall
                rec.incident, self._pending = self._pending, None
            self.records[ev.round] = self._current = rec
            self._failed, self._root, self._cause = None, "", ""
            self._touch(rec)
        elif isinstance(ev, kinds.NodeJoined):
            self._addr = ev.addr
        elif isinstance(ev, kinds.WorkerStarted) and cur is not None:
            cur.spawned = ev.wall
            if cur.incident is not None:
                cur.incident.spawned = ev.wall
            self._touch(cur)
        elif isinstance(ev, kinds.ProgressStep) and cur is not None:
            if cur.first_step is None and ev.round == cur.round:
                cur.first_step = ev.wall
                if cur.incident is not None:
                    cur.incident.first_step = ev.wall
                self._touch(cur)
        elif isinstance(ev, kinds.WorkerFailed) and cur is not None:
            how = f"died of {ev.signal}" if ev.signal else f"exited with code {ev.exitcode}"
            text = f"rank {ev.rank} (local {ev.local_rank}, {cur.host or ev.node}) {how}"
            text += f": {ev.message}" if ev.message else ""
            cur.marks.append(
                Mark(
                    ev.exit_wall or ev.wall,
                    "signal" if ev.signal else "failure",
                    ev.local_rank,
                    text,
                )
            )
            if self._failed is None:
                self._failed, self._root = ev.exit_wall or ev.wall, text
                self._cause = self._cause or ("signal" if ev.signal else "failure")
            self._touch(cur)
        elif isinstance(ev, kinds.HangDeclared) and cur is not None:
            text = (
                f"rank {ev.rank} (local {ev.local_rank}) hung: no progress for {ev.silent_s:.1f}s"
            )
            text += f" after step {ev.last_step}" if ev.last_step >= 0 else ""
            cur.marks.append(Mark(ev.wall, "hang", ev.local_rank, text))
            if self._cause != "hang":
                self._failed, self._root, self._cause = ev.wall - ev.silent_s, text, "hang"
            self._touch(cur)
        elif isinstance(ev, (kinds.NodeLost, kinds.NodeWaiting)) and cur is not None:
            kind = "lost" if isinstance(ev, kinds.NodeLost) else "joining"
            cur.marks.append(Mark(ev.wall, kind, -1, ev.detail))
            self._touch(cur)
        elif isinstance(ev, kinds.NodeUnhealthy) and cur is not None and cur.end is None:
            # a member's --health-check failed: it leaves the round (docs/health.md)
            text = f"{ev.host or ev.node} unhealthy: {ev.check}: {ev.reason}"
            cur.marks.append(Mark(ev.wall, "lost", -1, text))
            if self._failed is None:
                self._failed, self._root = ev.wall, text
            self._touch(cur)
        elif isinstance(ev, kinds.WorkerExited) and cur is not None:
            cur.marks.append(Mark(ev.wall, "exited", ev.local_rank, f"rank {ev.rank} exited 0"))
            self._touch(cur)
        elif isinstance(ev, kinds.RoundEnded) and cur is not None and cur.end is None:
            cur.end, cur.outcome, cur.detail = ev.wall, ev.cause, ev.detail
            if ev.cause not in ("succeeded", "job_ended", "signal"):
                cause = self._cause or CHANGE_CAUSE.get(ev.cause, ev.cause)
                self._pending = Incident(
                    cause=cause if cause in CAUSES else "other",
                    detail=ev.detail,
                    root_cause=self._root,
                    failed=self._failed,
                    known=ev.wall,
                )
            self._touch(cur)
        elif isinstance(ev, kinds.WorkersStopped):
            if self._pending is not None and self._pending.stopped is None:
                self._pending.stopped = ev.wall
        elif isinstance(ev, kinds.JobEnded):
            self._pending = None
            if cur is not None and cur.end is None:
                cur.end, cur.outcome = ev.wall, ev.outcome
                self._touch(cur)


def records_from_events(events: Iterable[kinds.Event]) -> list[AttemptRecord]:
    """Attempt records of every node in ``events`` (each node's events in their order)."""
    trackers: dict[str, Tracker] = {}
    for ev in events:
        trackers.setdefault(ev.node, Tracker())(ev)
    return [rec for tr in trackers.values() for rec in tr.records.values()]


@dataclass
class JobIncident:
    """One restart of the job, merged from every node's view.

    ``phases`` maps each of :data:`PHASES` to seconds (None: not measured, e.g.
    detection of a lost node, or the first step without progress marks);
    ``start`` and ``end`` bound the down time (wall, unix seconds).
    """

    round: int  # the round the job restarted into
    cause: str
    detail: str
    root_cause: str
    start: float
    end: float
    phases: dict[str, float | None]
    bounds: dict[str, float | None]  # failed, known, stopped, closed, spawned, first_step

    @property
    def downtime(self) -> float:
        return max(0.0, self.end - self.start)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "downtime": self.downtime}


def _pick(values: Iterable[float | None], fn: Any) -> float | None:
    got = [v for v in values if v is not None]
    return fn(got) if got else None


def job_incidents(records: Sequence[AttemptRecord]) -> list[JobIncident]:
    """One :class:`JobIncident` per round some node restarted into, in round order.

    The down time starts at the earliest failure any node saw (else the
    earliest moment any node knew) and ends when the last node's workers
    reached their first step (else were spawned). Each phase is the span
    between the job-wide boundaries: detection = failure -> first node
    knowing, stopping -> last node stopped, rendezvous -> last node in the
    next round, spawning -> last node spawned, first_step -> last node's first step.
    """
    by_round: dict[int, list[Incident]] = {}
    for rec in records:
        if rec.incident is not None:
            by_round.setdefault(rec.round, []).append(rec.incident)
    out: list[JobIncident] = []
    for r in sorted(by_round):
        parts = by_round[r]
        best = min(
            parts,
            key=lambda i: (
                CAUSES.index(i.cause) if i.cause in CAUSES else len(CAUSES),
                i.failed if i.failed is not None else float("inf"),
            ),
        )
        b: dict[str, float | None] = {
            "failed": _pick((i.failed for i in parts), min),
            "known": _pick((i.known for i in parts), min),
            "stopped": _pick((i.stopped for i in parts), max),
            "closed": _pick((i.closed for i in parts), max),
            "spawned": _pick((i.spawned for i in parts), max),
            "first_step": _pick((i.first_step for i in parts), max),
        }
        names = ("known", "stopped", "closed", "spawned", "first_step")
        phases: dict[str, float | None] = {}
        prev = b["failed"]
        for phase, name in zip(PHASES, names, strict=True):
            hi = b[name]
            phases[phase] = max(0.0, hi - prev) if hi is not None and prev is not None else None
            if hi is not None:
                prev = hi
        start = b["failed"] if b["failed"] is not None else b["known"]
        end = next((v for v in (b["first_step"], b["spawned"], b["closed"]) if v is not None), None)
        if start is None or end is None:
            continue  # a restart still in its first phases: not an incident yet
        out.append(JobIncident(r, best.cause, best.detail, best.root_cause, start, end, phases, b))
    return out


def goodput(records: Sequence[AttemptRecord], now: float) -> float | None:
    """The share of wall time since the job's first step (else first spawn) that was not down.

    The end is the last attempt's end (the job ended) or ``now``. None before
    any worker started.
    """
    starts = [r.first_step or r.spawned for r in records if r.round == _first_round(records)]
    begin = _pick(starts, min)
    if begin is None:
        return None
    ends = [r.end for r in records]
    finished = bool(records) and all(e is not None for e in ends)
    end = _pick(ends, max) if finished else now
    assert end is not None
    span = end - begin
    if span <= 0:
        return None
    down = sum(i.downtime for i in job_incidents(records) if i.start >= begin)
    return max(0.0, min(1.0, 1.0 - down / span))


def _first_round(records: Sequence[AttemptRecord]) -> int:
    return min((r.round for r in records), default=0)
