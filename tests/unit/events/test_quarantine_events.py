"""--quarantine-after in the metrics: the corral_quarantined_nodes gauge counts addresses."""

from __future__ import annotations

from tests.unit.events.test_events import _ev

from corral.core import events as t
from corral.events.metrics import Metrics


def test_corral_quarantined_nodes_counts_each_address_once() -> None:
    m = Metrics(max_restarts=5, node="n")
    assert m.registry.get_sample_value("corral_quarantined_nodes") == 0
    q = {"subject": "n2", "failures": 2, "reason": "rank 1 exited with 3"}
    m(_ev(t.NodeQuarantined, "n1", 2, 1.0, addr="127.0.0.2", **q))
    m(_ev(t.NodeQuarantined, "n1", 2, 1.1, addr="127.0.0.2", **q))  # said twice: one node
    assert m.registry.get_sample_value("corral_quarantined_nodes") == 1
    m(_ev(t.NodeQuarantined, "n1", 5, 2.0, addr="127.0.0.3", **q))
    assert m.registry.get_sample_value("corral_quarantined_nodes") == 2
