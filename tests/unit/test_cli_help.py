"""Every command-line option's help is backed by code: no option is parsed and dropped.

The launch parser:

For each option of the parser (every spelling's action, positional ones too) the
table below gives a valid value other than the default. The test checks that
giving it changes the :class:`LaunchConfig` that ``parse_args`` returns, and that
each field it changes is read by code beyond the configuration and the command
line (``.<field>`` in ``src/corral`` outside ``config/`` and ``cli/``). The few
options that corral accepts for torchrun and ignores are listed in ``IGNORED``,
and their help must say so; no other option's help may say "ignored". An option
added to the parser without a row here fails.

The subcommands' parsers (``corral store``, ``corral status``, ``corral
timeline``), by the same principle: for each option a valid value other than the
default (``SUB_VALUES``) changes the namespace that ``parse_args`` returns, and
each attribute it changes is read (``args.<dest>``) by the subcommand's module
outside its parser; every option has a help, no help says "ignored", and a
default a help names is the option's default. ``corral health`` parses its
argv by hand: every option and check its usage line names is one it parses.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from corral import health, status, timeline
from corral.cli import parse_args
from corral.cli._options import build_parser
from corral.config import LaunchConfig
from corral.core.errors import ConfigError
from corral.store.tcp import server

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
    """``field`` is read outside cli/ and config/, directly or through a property of
    LaunchConfig that reads it (``cfg.signal_action`` reads ``on_signal``)."""
    names = [field] + [
        name
        for name, prop in vars(LaunchConfig).items()
        if isinstance(prop, property)
        and prop.fget is not None
        and re.search(rf"self\.{field}\b", inspect.getsource(prop.fget))
    ]
    pattern = re.compile(rf"\.({'|'.join(names)})\b")
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


# --- the subcommands --------------------------------------------------------------

# subcommand -> (its module, the argv every parse needs, first option string or a
# positional's dest -> argv giving a non-default valid value)
SUB_VALUES: dict[str, tuple[ModuleType, list[str], dict[str, list[str]]]] = {
    "store": (
        server,
        [],
        {
            "--host": ["--host", "0.0.0.0"],
            "--port": ["--port", "0"],
            "--token": ["--token", "secret"],
            "--token-file": ["--token-file", "/run/secret"],
        },
    ),
    "status": (
        status,
        ["--rdzv-endpoint", "127.0.0.1:29400", "--rdzv-id", "job"],
        {
            "--rdzv-backend": ["--rdzv-backend", "etcd"],
            "--rdzv-endpoint": ["--rdzv-endpoint", "127.0.0.1:29401"],
            "--rdzv-id": ["--rdzv-id", "other"],
            "--rdzv-conf": ["--rdzv-conf", "prefix=/x"],
            "--watch": ["--watch"],
            "--json": ["--json"],
        },
    ),
    "timeline": (
        timeline,
        [],
        {
            "events": ["events.jsonl"],
            "-o": ["-o", "t.svg"],
            "--rdzv-endpoint": ["--rdzv-endpoint", "127.0.0.1:29401"],
            "--rdzv-id": ["--rdzv-id", "other"],
            "--rdzv-backend": ["--rdzv-backend", "etcd"],
            "--rdzv-conf": ["--rdzv-conf", "prefix=/x"],
            "--title": ["--title", "mine"],
        },
    ),
}


def _sub_parser(module: ModuleType) -> Callable[[], argparse.ArgumentParser]:
    parser: Callable[[], argparse.ArgumentParser] = module._parser
    return parser


def _sub_actions(module: ModuleType) -> dict[str, argparse.Action]:
    return {
        (a.option_strings[0] if a.option_strings else a.dest): a
        for a in _sub_parser(module)()._actions
        if a.dest != "help"
    }


def _read_by(module: ModuleType, dest: str) -> bool:
    """Whether ``module`` reads ``args.<dest>`` outside the function that builds its parser."""
    source = inspect.getsource(module).replace(inspect.getsource(_sub_parser(module)), "")
    return re.search(rf"\bargs\.{dest}\b", source) is not None


@pytest.mark.parametrize("sub", sorted(SUB_VALUES))
def test_every_subcommand_option_has_a_row(sub: str) -> None:
    module, _, values = SUB_VALUES[sub]
    missing = sorted(set(_sub_actions(module)) - set(values))
    assert not missing, f"corral {sub}: give each new option a value in SUB_VALUES: {missing}"


@pytest.mark.parametrize(
    ("sub", "key"), [(sub, key) for sub, (_, _, vals) in sorted(SUB_VALUES.items()) for key in vals]
)
def test_subcommand_option_is_read_and_its_help_is_true(sub: str, key: str) -> None:
    module, base_argv, values = SUB_VALUES[sub]
    action = _sub_actions(module)[key]
    help_text = action.help or ""
    assert help_text, f"corral {sub} {key}: no help"
    assert "ignored" not in help_text.lower(), f"corral {sub} {key}: the help says ignored"
    for named in re.findall(r"default ([^\s);,]+)", help_text):
        assert named == str(action.default), (
            f"corral {sub} {key}: the help says default {named}, the default is {action.default!r}"
        )
    parse = _sub_parser(module)().parse_args
    base = vars(parse(base_argv))
    given = vars(parse([*base_argv, *values[key]]))
    changed = [dest for dest in base if base[dest] != given[dest]]
    assert changed, f"corral {sub} {values[key]}: parsed, but the namespace is the same: dropped"
    unread = [dest for dest in changed if not _read_by(module, dest)]
    assert not unread, f"corral {sub} {key}: args.{unread} is set but nothing reads it"


def test_the_subcommand_check_fails_for_an_unread_option() -> None:
    assert _read_by(status, "watch")
    assert not _read_by(status, "no_such_option")
    # the parser's own text does not count as reading: its dests appear there only
    assert not _read_by(timeline, "add_argument")


def test_corral_health_parses_every_option_and_check_its_usage_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    usage = health.USAGE
    assert health.main(["--help"]) == 0 and capsys.readouterr().out.strip() == usage
    options = set(re.findall(r"--[\w-]+", usage))
    assert options == {"--timeout"}, f"corral health: a new option in its usage: {options}"
    # --timeout is parsed and checked (a bad value is refused, naming it) ...
    assert health.main(["--timeout", "never", "gpu"]) == 2
    assert "--timeout" in capsys.readouterr().err
    # ... and handed to the checks
    assert re.search(r"run_checks\(checks, timeout\)", inspect.getsource(health.main))
    checks = usage.split("(CHECK:", 1)[1].rstrip(")").split("|")  # gpu | disk:PATH[:MIN_FREE]
    kinds = {c.strip().split(":")[0] for c in checks}
    assert kinds == set(health._RUNNERS), (kinds, sorted(health._RUNNERS))
    for example in ("gpu", "disk:/tmp:1G", "tcp:127.0.0.1:29400"):
        assert health.parse_check(example).kind == example.split(":")[0]
