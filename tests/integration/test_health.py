"""--health-check through the real CLI: agents on loopback, one of them unhealthy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil
import pytest
from tests.helpers import CORRAL, Hub, HubWorker, Procs, corral_env, gone
from tests.integration.test_multi_node import FAST, Cluster, assert_one_round, ws
from tests.integration.test_restart_budget import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _check(flag: Path) -> tuple[str, ...]:
    """A check that fails (saying why) while ``flag`` exists."""
    cmd = f"test ! -e {flag} || {{ echo checking; echo 'GPU 0 fell off the bus'; exit 1; }}"
    return ("--health-check", cmd, "--health-check-interval", "0.5")


def _agent_of(w: HubWorker) -> int:
    """The pid of the agent that started worker ``w`` (its closest corral ancestor)."""
    for p in psutil.Process(w["pid"]).parents():
        if "corral" in " ".join(p.cmdline()):
            return p.pid
    raise AssertionError(f"worker {w['pid']} has no corral agent above it")


def test_an_unhealthy_node_is_never_admitted(procs: Procs, hub: Hub, tmp_path: Path) -> None:
    sick = tmp_path / "sick3"
    sick.touch()
    c = Cluster(procs, hub, tmp_path, "2:2", conf=FAST)
    c.start(1)
    c.extra = _check(sick)
    c.start(3)  # unhealthy: it must not take a slot
    until(lambda: "GPU 0 fell off the bus" in c.stderr(3), "agent 3's failing check")
    c.extra = ()
    c.start(2)
    workers = hub.collect(2, where=ws(2))
    assert_one_round(workers, 2)
    agents = {_agent_of(w) for w in workers}
    assert agents == {c.agents[1].pid, c.agents[2].pid}
    for w in workers:
        w.release(0)
    assert c.wait(1) == 0, c.stderr(1)
    assert c.wait(2) == 0, c.stderr(2)
    # the unhealthy node learns of the job's end at its next check, and never joined
    assert c.wait(3) == 0, c.stderr(3)
    err3 = c.stderr(3)
    assert "round 0: node" not in err3, err3
    lines = [ln for ln in err3.splitlines() if "health check" in ln]
    assert len(lines) == 1 and "GPU 0 fell off the bus" in lines[0], err3


def test_a_member_turning_unhealthy_leaves_and_a_spare_takes_over(
    procs: Procs, hub: Hub, tmp_path: Path
) -> None:
    sick = tmp_path / "sick2"
    c = Cluster(procs, hub, tmp_path, "2:2", conf=FAST, max_restarts=3)
    c.start(1)
    c.extra = _check(sick)
    c.start(2)
    c.extra = ()
    first = hub.collect(2, where=ws(2))
    assert_one_round(first, 2)
    victim = next(w for w in first if _agent_of(w) == c.agents[2].pid)
    c.start(3)  # a spare: the job is at MAX
    until(lambda: "spare" in c.stderr(3) or "waiting" in c.stderr(3), "agent 3 to wait")
    sick.touch()
    second = hub.collect(2, where=lambda w: w["TORCHELASTIC_RESTART_COUNT"] == "1")
    assert_one_round(second, 2)  # the job goes on at full size, with the spare
    assert {_agent_of(w) for w in second} == {c.agents[1].pid, c.agents[3].pid}
    until(lambda: gone(victim["pid"]), "the unhealthy node's worker to be stopped")
    err2 = c.stderr(2)
    lines = [ln for ln in err2.splitlines() if "GPU 0 fell off the bus" in ln]
    assert len(lines) == 1 and "health check" in lines[0], err2
    assert "unhealthy" in c.stderr(1), c.stderr(1)  # the others were told why
    assert c.agents[2].poll() is None, "the unhealthy node keeps checking"
    for w in second:
        w.release(0)
    for n in (1, 3):
        assert c.wait(n) == 0, c.stderr(n)
    assert c.wait(2) == 0, c.stderr(2)


def test_a_check_the_shell_cannot_run_is_bad_input(tmp_path: Path) -> None:
    script = tmp_path / "w.py"
    script.write_text("print('never')\n")
    run = subprocess.run(
        [*CORRAL, "--standalone", "--health-check", "no-such-check-corral", str(script)],
        capture_output=True, text=True, timeout=60, env=corral_env(), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    errors = [ln for ln in run.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and "no-such-check-corral" in errors[0], run.stderr
    assert "never" not in run.stdout


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--health-check-timeout", "soon"], "--health-check-timeout soon"),
        (["--health-check-interval", "-1"], "--health-check-interval"),
        (["--health-check", " "], "--health-check"),
        (["--health-check", "corral health gpu dsk:/x"], "check 'dsk:/x'"),
        (["--health-check", "corral health tcp:host"], "check 'tcp:host'"),
    ],
)
def test_bad_health_options_one_line_exit_2(args: list[str], named: str) -> None:
    run = subprocess.run(
        [*CORRAL, *args, "x.py"], capture_output=True, text=True, timeout=60, env=corral_env()
    )
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and named in run.stderr, run.stderr
