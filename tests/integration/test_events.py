"""Events, incidents and metrics of a real elastic job: a crash, a scale-up, a lost node."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from tests.helpers import CORRAL, Hub, Procs, corral_env
from tests.integration.test_multi_node import FAST, Cluster, free_port, ws

from corral.core import events as t
from corral.core.events import (
    JobEnded,
    NodeJoined,
    NodeWaiting,
    RestartDecided,
    RoundClosed,
    RoundOpened,
    WorkerFailed,
)
from corral.events.journal import job_incidents, records_from_events
from corral.events.sinks import read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _scrape(url: str, deadline: float) -> str:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                assert resp.headers["Content-Type"].startswith("text/plain")
                return str(resp.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # the agent is still starting: poll with a deadline


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in:\n{text}")


def _status(c: Cluster) -> dict[str, object]:
    cmd = [*CORRAL, "status", "--json", "--rdzv-endpoint", c.endpoint, "--rdzv-id", c.run_id]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=corral_env())
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_crash_scale_up_and_node_loss_are_events_incidents_and_metrics(
    procs: Procs, hub: Hub, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"  # every agent appends to one file (O_APPEND lines)
    conf = FAST.replace("last_call_timeout=10", "last_call_timeout=1")
    c = Cluster(procs, hub, tmp_path, "2:3", conf=conf, max_restarts=5)
    mport = free_port()
    for n in (1, 2):
        c.extra = ("--events-file", str(events), "--metrics-addr", f"127.0.0.{n}",
                   "--metrics-port", str(mport))  # fmt: skip
        c.start(n)
    first = hub.collect(2, where=ws(2))
    deadline = time.monotonic() + 30
    text = _scrape(f"http://127.0.0.1:{mport}/metrics", deadline)
    assert _metric(text, "corral_restarts_allowed") == 5
    assert _metric(text, 'corral_workers{state="running"}') == 1
    assert _metric(text, "corral_rounds_total") == 1
    # 1. a crash: rank 1 exits 3
    next(w for w in first if w["RANK"] == "1").release(3)
    second = hub.collect(2, where=lambda w: w["WORLD_SIZE"] == "2" and w not in first)
    # 2. a scale-up: a third node joins the running job
    c.extra = ("--events-file", str(events))
    c.start(3)
    third = hub.collect(3, where=ws(3))
    # 3. a node loss: the third agent is SIGKILLed
    c.agents[3].kill()
    c.agents[3].wait(timeout=10)
    fourth = hub.collect(2, where=lambda w: w["WORLD_SIZE"] == "2" and w not in first + second)
    # the store holds one incident per restart, in round order, with their causes
    while True:
        st = _status(c)
        incidents = st["incidents"]
        assert isinstance(incidents, list)
        if len(incidents) == 3 and incidents[-1]["phases"]["spawning"] is not None:
            break
        assert time.monotonic() < deadline + 30, st
        time.sleep(0.1)  # the journal is written asynchronously: poll with a deadline
    assert [i["cause"] for i in incidents] == ["failure", "node_joining", "node_lost"]
    assert "exited with code 3" in incidents[0]["root_cause"]
    crash = incidents[0]["phases"]
    assert all(crash[p] is not None for p in ("detection", "stopping", "rendezvous", "spawning"))
    assert incidents[2]["phases"]["detection"] is None  # nobody saw the lost node die
    assert 0 < st["goodput"] <= 1  # type: ignore[operator]
    text = _scrape(f"http://127.0.0.1:{mport}/metrics", time.monotonic() + 10)
    assert _metric(text, 'corral_restarts_total{cause="failure"}') == 1
    assert _metric(text, 'corral_restarts_total{cause="member_lost"}') == 1
    assert _metric(text, "corral_rounds_total") == 4
    for cause in ("failure", "node_joining", "node_lost"):
        assert _metric(text, f'corral_incidents_total{{cause="{cause}"}}') == 1
    assert _metric(text, 'corral_downtime_seconds_count{phase="spawning"}') == 3
    assert _metric(text, "corral_store_roundtrip_seconds_count") >= 1
    human = subprocess.run([*CORRAL, "status", "--rdzv-endpoint", c.endpoint, "--rdzv-id",
                            c.run_id], capture_output=True, text=True, timeout=30,
                           env=corral_env())  # fmt: skip
    assert "incidents (last 3 of 3; goodput" in human.stdout, human.stdout
    # the picture of the live job, read from its store
    live = tmp_path / "live.svg"
    r = subprocess.run([*CORRAL, "timeline", "--rdzv-endpoint", c.endpoint, "--rdzv-id",
                        c.run_id, "-o", str(live)], capture_output=True, text=True, timeout=60,
                       env=corral_env())  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert live.read_text().count('class="incident"') == 3
    for w in fourth:
        w.release(0)
    assert c.wait(1) == 0 and c.wait(2) == 0
    del third
    # the events file: every agent's state changes, typed
    evs = list(read_jsonl(str(events)))
    nodes = {e.node for e in evs}
    assert len(nodes) == 3
    for node in nodes - {e.node for e in evs if isinstance(e, JobEnded)}:
        assert sum(isinstance(e, RoundClosed) for e in evs if e.node == node) == 1  # the killed one
    ended = [e for e in evs if isinstance(e, JobEnded)]
    assert [e.outcome for e in ended] == ["succeeded", "succeeded"]
    decided = [e.cause for e in evs if isinstance(e, RestartDecided) and e.node == ended[0].node]
    assert decided == ["failure", "node_waiting", "member_lost"]
    # the rendezvous's own: who opened each round and why, the newcomer waiting
    opened = sorted((e.round, e.reason) for e in evs if isinstance(e, RoundOpened))
    assert opened == [(1, "failure"), (2, "node_waiting"), (3, "member_lost")]
    killed = next(iter(nodes - {e.node for e in ended}))
    assert any(isinstance(e, NodeWaiting) and e.subject == killed for e in evs)
    joined = {(e.node, e.round) for e in evs if isinstance(e, NodeJoined)}
    assert {(e.node, e.round) for e in evs if isinstance(e, RoundClosed)} <= joined
    failed = [e for e in evs if isinstance(e, WorkerFailed)]
    assert [(f.rank, f.exitcode) for f in failed] == [(1, 3)]
    # the same incidents come from the events file as from the store
    again = job_incidents(records_from_events(evs))
    assert [i.cause for i in again] == ["failure", "node_joining", "node_lost"]
    # and the picture
    out = tmp_path / "timeline.svg"
    r = subprocess.run([*CORRAL, "timeline", str(events), "-o", str(out)], capture_output=True,
                       text=True, timeout=60, env=corral_env())  # fmt: skip
    assert r.returncode == 0, r.stderr
    svg = out.read_text()
    assert svg.startswith("<svg") and "exited with code 3" in svg and "node_lost" in svg


HANGER = """\
import os, time
import corral
attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
for step in range(3):
    corral.progress(step=step + 1)
    time.sleep(0.05)
if attempt == "0" and os.environ["LOCAL_RANK"] == "1":
    time.sleep(120)  # hung: no more progress
corral.progress(step=100)
"""


def test_a_hang_is_an_incident_with_cause_hang(tmp_path: Path) -> None:
    script = tmp_path / "hanger.py"
    script.write_text(HANGER)
    events = tmp_path / "events.jsonl"
    r = subprocess.run(
        [*CORRAL, "--standalone", "--nproc-per-node", "2", "--max-restarts", "1",
         "--hang-timeout", "1", "--events-file", str(events), str(script)],
        capture_output=True, text=True, timeout=90, env=corral_env(),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    evs = list(read_jsonl(str(events)))
    kinds = [type(e).__name__ for e in evs]
    assert "HangDeclared" in kinds and kinds.count("ProgressStep") >= 1, kinds
    [inc] = job_incidents(records_from_events(evs))
    assert inc.cause == "hang" and "local 1" in inc.root_cause
    [hang] = [e for e in evs if isinstance(e, t.HangDeclared)]
    assert (hang.local_rank, hang.last_step) == (1, 3)  # its last mark was step 3
    assert hang.silent_s >= 1.0  # at least --hang-timeout since that mark
    # detection: from the hung rank's last mark to the round's end (the verdict, its
    # stack dumps, the stop): at least the timeout, and nowhere near the 120 s sleep
    assert 1.0 <= inc.phases["detection"] < 30.0
