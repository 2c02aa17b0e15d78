"""--hang-timeout / --hang-startup-timeout on the command line, and what `corral status` shows."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.helpers import CORRAL, corral_env

from corral.cli import parse_args
from corral.core.errors import ConfigError
from corral.core.failures import FailureReport
from corral.status import JobStatus, render


@pytest.mark.parametrize(
    ("argv", "env", "timeout", "startup"),
    [
        ((), {}, None, 600.0),
        (("--hang-timeout", "5"), {}, 5.0, 600.0),
        (("--hang_timeout", "2.5", "--hang_startup_timeout", "30"), {}, 2.5, 30.0),
        ((), {"PET_HANG_TIMEOUT": "7", "PET_HANG_STARTUP_TIMEOUT": "90"}, 7.0, 90.0),
        (("--hang-timeout", "3"), {"PET_HANG_TIMEOUT": "7"}, 3.0, 600.0),
        (("--hang-timeout", "0"), {}, None, 600.0),
        (("--hang-timeout", "off"), {}, None, 600.0),
    ],
)
def test_options(
    argv: tuple[str, ...], env: dict[str, str], timeout: float | None, startup: float
) -> None:
    cfg = parse_args([*argv, "train.py"], env)
    assert (cfg.hang_timeout, cfg.hang_startup_timeout) == (timeout, startup)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (("--hang-timeout", "soon"), "--hang-timeout soon"),
        (("--hang-timeout", "-1"), "--hang-timeout -1"),
        (("--hang-startup-timeout", "0"), "--hang-startup-timeout 0"),
    ],
)
def test_bad_values_are_one_line_errors(argv: tuple[str, ...], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_args([*argv, "train.py"], {})
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_bad_value_exits_2_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text("pass\n")
    proc = subprocess.run(
        [*CORRAL, "--hang-timeout", "x", "ok.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
        env=corral_env(),
    )
    assert proc.returncode == 2 and proc.stderr.startswith("corral: error: --hang-timeout x")
    assert "Traceback" not in proc.stderr


def test_status_shows_progress_and_names_a_hang() -> None:
    hang = FailureReport(
        rank=3, local_rank=1, group_rank=1, host="b", node_id="n", pid=9, exitcode=124,
        message="hang: rank 3 (node 1, local rank 1, host b, pid 9) step 40, no progress for 5.0 s",
        hang=True,
    )  # fmt: skip
    st = JobStatus(run_id="job", store="tcp://x", revision=3, round=1, closed=False)
    st.progress = [(0, 41, 0.0), (3, 40, 0.0)]
    st.failures, st.failures_round = [hang], 0
    text = render(st)
    assert "progress (last step, seconds since):" in text
    assert "rank 0 step 41 (" in text and "rank 3 step 40 (" in text
    assert "  hang: rank 3 (node 1, local rank 1, host b, pid 9) step 40" in text
    assert "exited with code 124" not in text
