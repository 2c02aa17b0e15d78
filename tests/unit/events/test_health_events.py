"""--health-check in the events: the journal's mark and root cause, the corral_unhealthy gauge."""

from __future__ import annotations

from tests.unit.events.test_events import _closed, _ev

from corral.core import events as t
from corral.events.journal import Tracker, job_incidents
from corral.events.metrics import Metrics


def test_a_member_turning_unhealthy_is_marked_and_named_as_the_cause() -> None:
    tr = Tracker()
    tr(_closed("a", 0, 1.0, 0))
    tr(_ev(t.NodeUnhealthy, "a", 0, 10.0, host="h1", check="corral health gpu",
           reason="gpu: GPU 0: row remapping failed"))  # fmt: skip
    tr(_ev(t.RoundEnded, "a", 0, 10.1, cause="member_lost", detail="this node is unhealthy"))
    tr(_ev(t.WorkersStopped, "a", 0, 10.5, seconds=0.4))
    tr(_closed("a", 1, 12.0, 0))
    [mark] = tr.records[0].marks
    text = "h1 unhealthy: corral health gpu: gpu: GPU 0: row remapping failed"
    assert (mark.kind, mark.text) == ("lost", text)
    [inc] = job_incidents(list(tr.records.values()))
    assert inc.cause == "node_lost" and inc.root_cause == text
    assert inc.bounds["failed"] == 10.0


def test_unhealthy_before_joining_leaves_the_records_alone() -> None:
    tr = Tracker()
    tr(_ev(t.NodeUnhealthy, "a", -1, 1.0, host="h1", check="c", reason="r"))
    assert tr.records == {}


def test_corral_unhealthy_gauge_follows_the_verdict() -> None:
    m = Metrics(max_restarts=1, node="n")
    assert m.registry.get_sample_value("corral_unhealthy") == 0
    m(_ev(t.NodeUnhealthy, "n", -1, 1.0, host="h", check="c", reason="r"))
    assert m.registry.get_sample_value("corral_unhealthy") == 1
    m(_ev(t.NodeHealthy, "n", -1, 2.0, host="h"))
    assert m.registry.get_sample_value("corral_unhealthy") == 0
