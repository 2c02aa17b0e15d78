"""The CLI contract again with ``--prestart``: the same tests, re-collected here with it on.

``tests.helpers.corral_env`` adds ``PET_PRESTART=1`` when ``CORRAL_TEST_PRESTART``
is set (its value: the ``--prestart-import`` list; ``json`` keeps these tests
cheap, the DDP tests import torch in advance as the default does).

One test is adapted: the agent's children are its watchdog *and its
standbys*; every one of them, and every worker, dies with the agent.
(Pre-started workers start at the same instant, so two ``print`` calls under
``python -u`` interleave on the shared stdout far more often than spawned
ones do, "readyready\n\n": the shared tests read words, not lines.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from tests.helpers import Procs
from tests.integration import test_ddp, test_single_node
from tests.integration.test_ddp import reference  # noqa: F401  (a module fixture)
from tests.integration.test_single_node import (
    test_bad_script_is_one_line_exit_2,
    test_budget_spent_exit_code_is_workers,
    test_log_layout_and_tee_prefix,
    test_module_mode,
    test_restarts_counted_and_success_after_retries,
    test_root_cause_from_error_file,
    test_signal_death_exit_code,
    test_signal_forwarded_then_agent_exits_128_plus_n,
    test_worker_environment,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

__all__ = [
    "test_bad_script_is_one_line_exit_2",
    "test_budget_spent_exit_code_is_workers",
    "test_ddp_agent_killed_and_replaced_resumes",
    "test_ddp_worker_crash_resumes_from_checkpoint",
    "test_log_layout_and_tee_prefix",
    "test_module_mode",
    "test_restarts_counted_and_success_after_retries",
    "test_root_cause_from_error_file",
    "test_signal_death_exit_code",
    "test_signal_forwarded_then_agent_exits_128_plus_n",
    "test_worker_environment",
]

test_ddp_worker_crash_resumes_from_checkpoint = test_ddp.test_worker_crash_resumes_from_checkpoint
test_ddp_agent_killed_and_replaced_resumes = test_ddp.test_agent_killed_and_replaced_resumes


@pytest.fixture(autouse=True)
def prestart_on(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CORRAL_TEST_PRESTART", "1" if "ddp" in request.node.name else "json")
    yield


def test_prestart_is_on(tmp_path: Path) -> None:
    s = test_single_node.script(tmp_path, "ok.py", "print('ok')")
    r = test_single_node.run(["--standalone", "--nproc-per-node", "2", s], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "(2 pre-started)" in r.stderr


def test_no_orphans_after_agent_sigkill_with_standbys(tmp_path: Path, procs: Procs) -> None:
    p, pids = test_single_node.start_tree(tmp_path, procs)
    victims = [psutil.Process(pid) for pid in pids]
    others = [c for c in psutil.Process(p.pid).children() if c.pid not in pids]
    assert len(others) >= 1  # the watchdog, and the next attempt's standbys
    p.kill()
    p.wait(timeout=10)
    _, alive = psutil.wait_procs(victims + others, timeout=1.0)
    alive = [v for v in alive if test_single_node._not_zombie(v)]
    assert alive == [], f"orphans survived the agent: {alive}"
