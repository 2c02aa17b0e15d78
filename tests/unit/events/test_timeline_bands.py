"""The timeline's node bands: an agent that comes back at its address shares the band of
the one before it; two agents there at the same time get a band each."""

from __future__ import annotations

from corral.events.journal import AttemptRecord
from corral.timeline import render_svg


def rec(node: str, round_: int, closed: float, end: float) -> AttemptRecord:
    return AttemptRecord(node=node, round=round_, host="vm", addr="127.0.0.1",
                         local_world_size=1, world_size=2, closed=closed, spawned=closed,
                         end=end, outcome="succeeded")  # fmt: skip


def test_two_agents_at_one_address_at_once_get_a_band_each() -> None:
    svg = render_svg([rec("a", 0, 10.0, 20.0), rec("b", 0, 10.0, 20.0)])
    assert svg.count('<g class="node"') == 2
    assert 'data-node="a"' in svg and 'data-node="b"' in svg
    assert "rejoined" not in svg


def test_an_agent_that_rejoins_at_its_address_shares_the_band() -> None:
    # agent a ended at 20; agent c (a new agent on that machine) joined round 1 at 25
    svg = render_svg([rec("a", 0, 10.0, 20.0), rec("b", 0, 10.0, 30.0), rec("c", 1, 25.0, 30.0)])
    assert svg.count('<g class="node"') == 2
    assert "2 agents (rejoined)" in svg
