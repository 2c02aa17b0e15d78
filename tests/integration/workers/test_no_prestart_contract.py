"""The CLI contract again with ``--no-prestart``: the same tests, re-collected here with it off.

Pre-started workers are the default (docs/workers.md), so the single-node CLI
contract, the no-orphan test and the real DDP clients run with standbys in
their own modules, and once more here with every worker spawned fresh
(``tests.helpers.corral_env`` sets ``PET_PRESTART=0`` when
``CORRAL_TEST_NO_PRESTART`` is set).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration import test_ddp, test_single_node
from tests.integration.test_ddp import reference  # noqa: F401  (a module fixture)
from tests.integration.test_single_node import (
    test_bad_script_is_one_line_exit_2,
    test_budget_spent_exit_code_is_workers,
    test_log_layout_and_tee_prefix,
    test_module_mode,
    test_no_orphans_after_agent_sigkill,
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
    "test_no_orphans_after_agent_sigkill",
    "test_restarts_counted_and_success_after_retries",
    "test_root_cause_from_error_file",
    "test_signal_death_exit_code",
    "test_signal_forwarded_then_agent_exits_128_plus_n",
    "test_worker_environment",
]

test_ddp_worker_crash_resumes_from_checkpoint = test_ddp.test_worker_crash_resumes_from_checkpoint
test_ddp_agent_killed_and_replaced_resumes = test_ddp.test_agent_killed_and_replaced_resumes


@pytest.fixture(autouse=True)
def prestart_off(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CORRAL_TEST_NO_PRESTART", "1")
    yield


def test_prestart_is_off(tmp_path: Path) -> None:
    s = test_single_node.script(tmp_path, "ok.py", "print('ok')")
    r = test_single_node.run(["--standalone", "--nproc-per-node", "2", s], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "pre-started" not in r.stderr
    kids = test_single_node.run(["--standalone", "--nproc-per-node", "1", s], tmp_path)
    assert kids.returncode == 0, kids.stderr
