"""Events, sinks and the incident journal: the pure parts, table-driven."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from corral.core import events as t
from corral.events.journal import AttemptRecord, Tracker, goodput, job_incidents
from corral.events.sinks import Fanout, JsonlSink, LoggingSink, null_sink, read_jsonl


def _sample(cls: type[t.Event]) -> t.Event:
    values = {"str": "x", "int": 3, "float": 1.5, "str | None": "s", "tuple[str, ...]": ("a", "b")}
    kw = {f.name: values[str(f.type)] for f in dataclasses.fields(cls)}
    return cls(**kw)


@pytest.mark.parametrize("cls", list(t.EVENT_TYPES.values()), ids=list(t.EVENT_TYPES))
def test_every_event_round_trips_through_json(cls: type[t.Event]) -> None:
    e = _sample(cls)
    d = json.loads(json.dumps(e.to_dict()))
    assert d["v"] == t.SCHEMA_VERSION and d["kind"] == cls.__name__
    assert {"node", "round", "mono", "wall"} <= d.keys()
    assert t.event_from_dict(d) == e
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.round = 4  # type: ignore[misc]


def test_bad_event_dicts_are_value_errors() -> None:
    with pytest.raises(ValueError, match="version"):
        t.event_from_dict({"v": 99, "kind": "JobEnded"})
    with pytest.raises(ValueError, match="unknown event kind"):
        t.event_from_dict({"v": 1, "kind": "Nope"})
    with pytest.raises(ValueError, match="JobEnded"):
        t.event_from_dict({"v": 1, "kind": "JobEnded", "node": "n"})


def test_docs_list_every_event_and_field() -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "events.md").read_text()
    for name, cls in t.EVENT_TYPES.items():
        assert f"`{name}`" in doc, name
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in doc, (name, f.name)


def test_jsonl_sink_appends_lines_that_read_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "events.jsonl"
    sink = JsonlSink(str(path))
    events = [t.stamp(t.RoundClosed, "n1", 0, group_rank=0, group_world_size=1, rank_offset=0,
                      local_world_size=2, world_size=2, restart_count=0, members=("n1",)),
              t.stamp(t.JobEnded, "n1", 0, outcome="succeeded", exit_code=0)]  # fmt: skip
    for e in events:
        sink(e)
    sink.close()
    sink(events[0])  # after close: dropped, no error
    with open(path, "a") as f:
        f.write('{"v": 1, "kind": "JobEn')  # a killed writer's torn last line
    assert list(read_jsonl(str(path))) == events


def test_fanout_isolates_a_failing_sink(caplog: pytest.LogCaptureFixture) -> None:
    got: list[t.Event] = []

    def broken(e: t.Event) -> None:
        raise RuntimeError("boom")

    fan = Fanout([null_sink])
    assert not fan
    fan.add(broken)
    fan.add(got.append)
    e = t.stamp(t.SignalReceived, "n", 1, signal="SIGTERM")
    with caplog.at_level(logging.ERROR, "corral.events"):
        fan(e)
        fan(e)
    assert got == [e, e]
    assert sum("failed" in r.message for r in caplog.records) == 1


def test_logging_sink_writes_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "corral.events"):
        LoggingSink()(t.stamp(t.NodeLost, "n", 2, detail="node b left"))
    assert caplog.messages == ["event NodeLost node='n' round=2 detail='node b left'"]


def _ev(cls: type[t.Event], node: str, r: int, wall: float, **kw: object) -> t.Event:
    return cls(node=node, round=r, mono=wall, wall=wall, **kw)


def _closed(node: str, r: int, wall: float, rank: int) -> t.Event:
    return _ev(t.RoundClosed, node, r, wall, group_rank=rank, group_world_size=2,
               rank_offset=rank, local_world_size=1, world_size=2, restart_count=r)  # fmt: skip


def test_a_crash_on_one_node_is_one_incident_with_every_phase() -> None:
    a, b = Tracker(), Tracker()
    a(_closed("a", 0, 100.0, 0))
    b(_closed("b", 0, 100.1, 1))
    a(_ev(t.WorkerStarted, "a", 0, 100.2, local_rank=0, rank=0, pid=1, attempt=0))
    b(_ev(t.WorkerStarted, "b", 0, 100.3, local_rank=0, rank=1, pid=2, attempt=0))
    # b's worker crashes at 110.0; b knows at 110.01, a learns through the store at 110.05
    b(_ev(t.WorkerFailed, "b", 0, 110.01, local_rank=0, rank=1, pid=2, exitcode=3,
          message="ValueError: bad", exit_wall=110.0))  # fmt: skip
    b(_ev(t.RoundEnded, "b", 0, 110.01, cause="failure", detail="rank 1 failed"))
    a(_ev(t.RoundEnded, "a", 0, 110.05, cause="failure", detail="failure on b"))
    a(_ev(t.WorkersStopped, "a", 0, 110.3, seconds=0.25))
    b(_ev(t.WorkersStopped, "b", 0, 110.1, seconds=0.09))
    for tr, n in ((a, "a"), (b, "b")):
        tr(_ev(t.RestartDecided, n, 0, 110.4, cause="failure", restart_count=0, max_restarts=3))
    a(_closed("a", 1, 110.6, 0))
    b(_closed("b", 1, 110.7, 1))
    a(_ev(t.WorkerStarted, "a", 1, 110.8, local_rank=0, rank=0, pid=3, attempt=1))
    b(_ev(t.WorkerStarted, "b", 1, 110.9, local_rank=0, rank=1, pid=4, attempt=1))
    a(_ev(t.ProgressStep, "a", 1, 112.0, local_rank=0, step=1))
    b(_ev(t.ProgressStep, "b", 1, 112.5, local_rank=0, step=1))
    records = [*a.records.values(), *b.records.values()]
    # the records survive the store's JSON
    records = [AttemptRecord.from_json(r.to_json()) for r in records]
    [inc] = job_incidents(records)
    assert inc.round == 1 and inc.cause == "failure"
    assert inc.root_cause == "rank 1 (local 0, b) exited with code 3: ValueError: bad"
    assert inc.start == 110.0 and inc.end == 112.5
    ph = {k: round(v, 3) for k, v in inc.phases.items() if v is not None}
    assert ph == {"detection": 0.01, "stopping": 0.29, "rendezvous": 0.4, "spawning": 0.2,
                  "first_step": 1.6}  # fmt: skip
    assert [m.kind for m in b.records[0].marks] == ["failure"]
    # goodput: from the first step-less start (100.2) to now (120.2): 2.5 s down of 20 s
    assert goodput(records, now=120.2) == pytest.approx(1 - 2.5 / 20.0)


@pytest.mark.parametrize(
    ("events", "cause"),
    [
        ([(t.NodeLost, {"detail": "node c lost"}), (t.RoundEnded, {"cause": "member_lost"})],
         "node_lost"),
        ([(t.NodeWaiting, {"detail": "d waits"}), (t.RoundEnded, {"cause": "node_waiting"})],
         "node_joining"),
        ([(t.HangDeclared, {"local_rank": 0, "rank": 0, "last_step": 7, "silent_s": 5.0}),
          (t.WorkerFailed, {"local_rank": 0, "rank": 0, "pid": 1, "exitcode": -9,
                            "signal": "SIGKILL"}),
          (t.RoundEnded, {"cause": "failure"})], "hang"),
        ([(t.WorkerFailed, {"local_rank": 0, "rank": 0, "pid": 1, "exitcode": -9,
                            "signal": "SIGKILL"}),
          (t.RoundEnded, {"cause": "failure"})], "signal"),
    ],
)  # fmt: skip
def test_incident_causes(events: list[tuple[type[t.Event], dict[str, object]]], cause: str) -> None:
    tr = Tracker()
    tr(_closed("a", 0, 1.0, 0))
    for i, (cls, kw) in enumerate(events):
        tr(_ev(cls, "a", 0, 10.0 + i, **kw))
    tr(_ev(t.WorkersStopped, "a", 0, 20.0, seconds=1.0))
    tr(_ev(t.RestartDecided, "a", 0, 20.0, cause="x", restart_count=0, max_restarts=1))
    tr(_closed("a", 1, 21.0, 0))
    [inc] = job_incidents(list(tr.records.values()))
    assert inc.cause == cause
    if cause == "hang":
        assert inc.bounds["failed"] == 5.0  # the last progress: 5 s before the declaration


def test_a_job_end_leaves_no_incident_and_take_dirty_hands_out_changes() -> None:
    tr = Tracker()
    tr(_closed("a", 0, 1.0, 0))
    assert [r.round for r in tr.take_dirty()] == [0]
    assert tr.take_dirty() == []
    tr(_ev(t.RoundEnded, "a", 0, 2.0, cause="succeeded"))
    tr(_ev(t.JobEnded, "a", 0, 2.1, outcome="succeeded", exit_code=0))
    [rec] = tr.take_dirty()
    assert rec.end == 2.0 and rec.outcome == "succeeded"
    assert job_incidents([rec]) == []
    assert goodput([rec], now=99.0) is None  # never spawned
