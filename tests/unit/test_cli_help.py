"""Every command-line option's help is backed by code: no option is parsed and dropped.

For each option of the parser (every spelling's action, positional ones too) the
table below gives a valid value other than the default. The test checks that
giving it changes the :class:`LaunchConfig` that ``parse_args`` returns, and that
each field it changes is read by code beyond the configuration and the command
line (``.<field>`` in ``src/corral`` outside ``config/`` and ``cli/``). The few
options that corral accepts for torchrun and ignores are listed in ``IGNORED``,
and their help must say so; no other option's help may say "ignored". An option
added to the parser without a row here fails.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from corral.cli import parse_args
from corral.cli._options import build_parser
from corral.config import LaunchConfig
from corral.core.errors import ConfigError

SRC = Path(__file__).resolve().parents[2] / "src" / "corral"
BASE = ["--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:29400", "--rdzv-id", "job"]
SCRIPT = "train.py"
SLURM = {
    "SLURM_JOB_ID": "1",
    "SLURM_NNODES": "2",
    "SLURM_NODEID": "0",
    "SLURM_PROCID": "0",
    "SLURM_NTASKS": "2",
    "SLURM_STEP_ID": "0",
    "SLURM_JOB_NODELIST": "a,b",
    "SLURM_STEP_NODELIST": "a,b",
}

# first option string -> (argv giving a non-default valid value, environment). A
# positional's key is its dest; its argv replaces the script.
VALUES: dict[str, tuple[list[str], dict[str, str]]] = {
    "--nnodes": (["--nnodes", "2"], {}),
    "--nproc-per-node": (["--nproc-per-node", "3"], {}),
    "--rdzv-backend": (["--rdzv-backend", "etcd"], {}),
    "--rdzv-endpoint": (["--rdzv-endpoint", "127.0.0.1:29401"], {}),
    "--rdzv-id": (["--rdzv-id", "other"], {}),
    "--rdzv-conf": (["--rdzv-conf", "join_timeout=5"], {}),
    "--standalone": (["--standalone"], {}),
    "--max-restarts": (["--max-restarts", "2"], {}),
    "--monitor-interval": (["--monitor-interval", "0.5"], {}),
    "--start-method": (["--start-method", "fork"], {}),
    "--event-log-handler": (["--event-log-handler", "console"], {}),
    "--role": (["--role", "trainer"], {}),
    "-m": (["-m"], {}),
    "--no-python": (["--no-python"], {}),
    "--run-path": (["--run-path"], {}),
    "--log-dir": (["--log-dir", "/tmp/corral-logs"], {}),
    "-r": (["-r", "3"], {}),
    "-t": (["-t", "3"], {}),
    "--local-ranks-filter": (["--local-ranks-filter", "0"], {}),
    "--duplicate-stdout-filters": (["--duplicate-stdout-filters", "loss"], {}),
    "--duplicate-stderr-filters": (["--duplicate-stderr-filters", "loss"], {}),
    "--node-rank": (["--node-rank", "1"], {}),
    "--master-addr": (["--master-addr", "10.0.0.1"], {}),
    "--master-port": (["--master-port", "29501"], {}),
    "--local-addr": (["--local-addr", "127.0.0.2"], {}),
    "--logs-specs": (["--logs-specs", "custom"], {}),
    "--numa-binding": (["--numa-binding", "node"], {}),
    "--signals-to-handle": (["--signals-to-handle", "SIGTERM"], {}),
    "--shutdown-timeout": (["--shutdown-timeout", "5"], {}),
    "--virtual-local-rank": (["--virtual-local-rank"], {}),
    "--on-signal": (["--on-signal", "leave"], {}),
    "--scheduler": (["--scheduler", "none"], SLURM),  # else Slurm's environment is read
    "--hang-timeout": (["--hang-timeout", "60"], {}),
    "--hang-startup-timeout": (["--hang-startup-timeout", "60"], {}),
    "--events-file": (["--events-file", "/tmp/corral-events.jsonl"], {}),
    "--metrics-port": (["--metrics-port", "9100"], {}),
    "--metrics-addr": (["--metrics-addr", "127.0.0.1"], {}),
    "--collapse-logs": (["--collapse-logs"], {}),
    "--prestart": (["--prestart"], {"PET_PRESTART": "0"}),
    "--no-prestart": (["--no-prestart"], {"PET_PRESTART": "1"}),
    "--prestart-import": (["--prestart-import", "json"], {}),
    "--health-check": (["--health-check", "true"], {}),
    "--health-check-timeout": (["--health-check-timeout", "10"], {}),
    "--health-check-interval": (["--health-check-interval", "0"], {}),
    "--no-restart-exit-code": (["--no-restart-exit-code", "3"], {}),
    "--gpu-reclaim-timeout": (["--gpu-reclaim-timeout", "5"], {}),
    "--quarantine-after": (["--quarantine-after", "0"], {}),
    "training_script": (["other.py"], {}),
    "training_script_args": ([SCRIPT, "--lr", "1"], {}),
}

# Accepted for torchrun, checked, and ignored: why, in the help (which must say "ignored").
IGNORED = {
    "--monitor-interval",  # corral sees exits by pidfd, it polls nothing
    "--start-method",  # every worker is a new interpreter (torchrun's too, for a script)
    "--event-log-handler",  # corral's events: --events-file
}
# Rejected when given (the help says so).
REJECTED = {"--logs-specs"}


def _actions() -> dict[str, Any]:
    parser = build_parser({})
    return {
        (a.option_strings[0] if a.option_strings else a.dest): a
        for a in parser._actions
        if a.dest != "help"
    }


def _config(argv: list[str], environ: dict[str, str], positional: bool = False) -> LaunchConfig:
    return parse_args([*BASE, *argv] if positional else [*BASE, *argv, SCRIPT], environ)


def _read_outside_config(field: str) -> bool:
    pattern = re.compile(rf"\.{field}\b")
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).parts
        if rel[0] in ("cli", "config"):
            continue
        if pattern.search(path.read_text()):
            return True
    return False


def test_every_option_has_a_row() -> None:
    missing = sorted(set(_actions()) - set(VALUES))
    assert not missing, f"new options: give each a non-default valid value in VALUES: {missing}"


@pytest.mark.parametrize("key", sorted(VALUES))
def test_option_is_read_and_its_help_is_true(key: str) -> None:
    actions = _actions()
    if key not in actions:
        pytest.skip(f"{key} is not an option (yet)")
    help_text = actions[key].help or ""
    argv, environ = VALUES[key]
    positional = not key.startswith("-")
    if key in REJECTED:
        with pytest.raises(ConfigError, match=re.escape(key)):
            _config(argv, environ)
        assert "error" in help_text, help_text
        return
    base = _config([SCRIPT] if positional else [], environ, positional)
    given = _config(argv, environ, positional)
    changed = [
        f.name
        for f in dataclasses.fields(LaunchConfig)
        if getattr(base, f.name) != getattr(given, f.name)
    ]
    if key in IGNORED:
        assert "ignored" in help_text.lower(), f"{key} is ignored; its help must say so"
        assert re.search(r"accepted|checked", help_text, re.I), (
            f"{key}: the help must say the value is accepted (and checked) before it is ignored"
        )
        return
    assert "ignored" not in help_text.lower(), f"{key}: the help says ignored, but it is read"
    assert changed, f"{key} {argv}: parsed, but the LaunchConfig is the same: dropped"
    unread = [f for f in changed if not _read_outside_config(f)]
    assert not unread, f"{key}: LaunchConfig.{unread} is set but nothing reads it"


def test_the_check_fails_for_a_dropped_option() -> None:
    # the test itself can fail: an option whose value is parsed and then ignored
    # leaves the LaunchConfig as it was, and a stored field nothing reads is found
    base = _config([], {})
    assert _config(["--event-log-handler", "console"], {}) == base
    assert not _read_outside_config("no_such_field_anywhere")
    assert _read_outside_config("duplicate_stdout_filters")
