"""What follows the training script belongs to the script, always (docs/contract.md).

argparse alone scans the whole command line for option strings, prefixes included,
so ``train.py --hang sleep`` failed with "ambiguous option". Every long option the
parser has, in full and by each of its prefixes, placed after the script, must now
reach the script verbatim and leave the launcher's configuration unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral.cli import build_parser, parse_args
from corral.cli._split import split_at_script
from corral.config import Std, StdSpec
from corral.core.errors import ConfigError

S = "train.py"
# static backend with a port and two workers: no standalone run id, so configs compare equal
LAUNCHER = ("--master-port", "29500", "--nproc-per-node", "2")
BASE = parse_args([*LAUNCHER, S], {})


def _long_options() -> list[str]:
    return sorted(s for s in build_parser({})._option_string_actions if s.startswith("--"))


def _prefixes_by_option() -> dict[str, list[str]]:
    """Each long option -> its full spelling and prefixes (>= 2 chars after --) not seen before."""
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for option in _long_options():
        mine = [option[:k] for k in range(4, len(option) + 1) if option[:k] not in seen]
        seen.update(mine)
        out[option] = mine
    return out


PREFIXES = _prefixes_by_option()


def test_the_table_has_unique_and_ambiguous_prefixes() -> None:
    """The table covers what argparse would read as one option and as several."""
    options = _long_options()
    counts = {p: sum(o.startswith(p) for o in options) for ps in PREFIXES.values() for p in ps}
    assert counts["--hang"] > 1 and counts["--max"] > 1 and counts["--metrics"] > 1
    assert counts["--stand"] == 1 and counts["--nnodes"] == 1
    assert {"--help", "--standalone", "--nproc-per-node", "--nproc_per_node"} <= set(options)


@pytest.mark.parametrize("option", sorted(PREFIXES))
def test_option_and_prefixes_after_the_script_are_the_scripts(option: str) -> None:
    for token in PREFIXES[option]:
        script_args = (token, "1", f"{token}=1", token)  # with a value, =value, without one
        c = parse_args([*LAUNCHER, S, *script_args], {})
        assert c.entrypoint == S and c.args == script_args, script_args
        assert dataclasses.replace(c, args=()) == BASE, script_args


@pytest.mark.parametrize(
    "script_args",
    [
        ("-h",),
        ("-r", "3"),
        ("-r3",),
        ("-t=1",),
        ("-m", "pkg"),
        ("-mr3",),
        ("--",),
        ("--", "--nnodes", "3"),
        ("--nnodes", "3", "--standalone"),
        ("--hang", "sleep", "--max", "5", "--nnodes", "3"),
        ("--no-such-option",),
        ("-1", "a b", ""),
        ("--rdzv-endpoint=h:1", "--", "--standalone"),
    ],
)
def test_short_options_separators_and_the_rest_after_the_script(
    script_args: tuple[str, ...],
) -> None:
    c = parse_args([*LAUNCHER, S, *script_args], {})
    assert c.args == script_args
    assert dataclasses.replace(c, args=()) == BASE


# The launcher's part reads as before: abbreviations (torchrun's parser allows them),
# --opt=value, attached short values, flags, --, -m, --no-python and PET_* defaults.
LAUNCHER_CASES: list[tuple[tuple[str, ...], dict[str, str], dict[str, object]]] = [
    (("--stand", S, "--x"), {}, {"standalone": True, "args": ("--x",)}),
    (("--standalone", "--nproc-per-node=3", S), {}, {"nproc_per_node": 3}),
    (("--standalone", "-r3", "-t", "1", S), {}, {"redirects": StdSpec(Std.ALL)}),
    (("--standalone", "-mr3", "pkg.mod", "--lr", "1"), {}, {"module": True, "args": ("--lr", "1")}),
    (("--standalone", "--", "x.py", "--", "y"), {}, {"entrypoint": "x.py", "args": ("--", "y")}),
    (("--standalone", "--role", S, "x.py"), {}, {"role": S, "entrypoint": "x.py"}),
    (("--standalone", "--max-restarts", "-1", S), {}, {"error": "--max-restarts -1"}),
    (("--no-python", "--standalone", "echo", "-n", "--standalone"), {}, {"no_python": True}),
    (("--standalone", S, "--nnodes", "4"), {"PET_NNODES": "1:2"}, {"max_nodes": 2}),
    (("--standalone", "--log-dir=/tmp/l", S, "--log-dir=x"), {}, {"log_dir": "/tmp/l"}),
    (("--hang", "5", S), {}, {"error": "ambiguous option: --hang"}),
    (("--no-such-option", S), {}, {"error": "unrecognized arguments: --no-such-option"}),
    (("--standalone", "--role"), {}, {"error": "--role: expected one argument"}),
    (("--standalone",), {}, {"error": "training_script"}),
]


@pytest.mark.parametrize(("argv", "env", "expected"), LAUNCHER_CASES)
def test_the_launchers_part(
    argv: tuple[str, ...], env: dict[str, str], expected: dict[str, object]
) -> None:
    if "error" in expected:
        with pytest.raises(ConfigError, match=str(expected["error"])):
            parse_args(list(argv), env)
        return
    c = parse_args(list(argv), env)
    for field, value in expected.items():
        assert getattr(c, field) == value, field


def _toy() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-f", "--flag", action="store_true")
    p.add_argument("-v", "--value")
    p.add_argument("--maybe", nargs="?")
    p.add_argument("--many", nargs="*")
    p.add_argument("--two", nargs=2)
    p.add_argument("script")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    return p


@pytest.mark.parametrize(
    "argv",
    [
        ("s", "a"),
        ("-fv", "x", "s", "a"),
        ("-fvx", "s"),
        ("--maybe", "s", "a"),
        ("--maybe", "--flag", "s"),
        ("--many", "a", "b", "--flag", "s", "c"),
        ("--two", "a", "b", "s", "c"),
        ("--val", "x", "s", "c"),
        ("--value=x", "-1", "c"),
        ("--", "-s", "c"),
    ],
)
def test_split_agrees_with_argparse_where_argparse_can_tell(argv: tuple[str, ...]) -> None:
    """Nargs other than corral's (derived from the table, not a list): argparse's own reading."""
    p = _toy()
    ns = p.parse_args(argv)
    launcher, rest = split_at_script(p, argv)
    assert launcher[-1] == ns.script and rest == ns.rest


def test_the_cli_passes_everything_after_the_script(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("import json, sys\nprint('ARGV', json.dumps(sys.argv[1:]), flush=True)\n")
    tail = ["--hang", "sleep", "--max", "5", "--nnodes", "3"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PET_")}
    launch = ["--standalone", "--nproc-per-node", "1", "script.py"]
    proc = subprocess.run(
        [sys.executable, "-m", "corral", *launch, *tail],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "ARGV " in line]
    assert len(lines) == 1, proc.stdout
    assert json.loads(lines[0].split("ARGV ", 1)[1]) == tail
