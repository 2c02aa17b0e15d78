"""--duplicate-stdout-filters/--duplicate-stderr-filters: torchrun's parsing and line rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.cli import parse_args
from corral.config import Std, StdSpec
from corral.workers.logs import LineFilter, RunLogs, Sink
from corral.workers.std import split_filters

PIN = ("--master-port", "29500")  # static backend, no standalone shortcut


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (None, ()),  # unset: nothing is duplicated
        ("apple", ("apple",)),
        ("apple,orange", ("apple", "orange")),
        ("a,,b", ("a,b",)),  # torchrun: a double comma is a comma
        ("a,,b,c", ("a,b", "c")),
        (",,,", (",", "")),
        ("", ("",)),  # torchrun's comma_separated_list(""): one empty filter, every line
        ("a,", ("a", "")),
    ],
)
def test_split_filters_as_torchruns_comma_separated_list(
    text: str | None, want: tuple[str, ...]
) -> None:
    assert split_filters(text) == want
    if text is not None:  # the very function of torch 2.13's run.py, on the same text
        placeholder = "<COMMA_PLACEHOLDER>"
        items = text.replace(",,", placeholder).split(",")
        assert tuple(i.replace(placeholder, ",") for i in items) == want


def test_options_reach_the_config_from_argv_and_pet() -> None:
    c = parse_args(
        [*PIN, "--duplicate-stdout-filters", "a,,b,c", "--duplicate_stderr_filters", "x", "t.py"],
        {},
    )
    assert c.duplicate_stdout_filters == ("a,b", "c")
    assert c.duplicate_stderr_filters == ("x",)
    c = parse_args([*PIN, "t.py"], {"PET_DUPLICATE_STDOUT_FILTERS": "loss"})
    assert c.duplicate_stdout_filters == ("loss",) and c.duplicate_stderr_filters == ()
    c = parse_args([*PIN, "t.py"], {})
    assert c.duplicate_stdout_filters == () and c.duplicate_stderr_filters == ()
    # an empty value (argv or PET) is one empty filter, as torchrun parses it
    c = parse_args([*PIN, "t.py"], {"PET_DUPLICATE_STDERR_FILTERS": ""})
    assert c.duplicate_stderr_filters == ("",)


def test_select_substring_any_filter_prefix_universal_newlines() -> None:
    f = LineFilter("/unused", ("apple", "a,b"))
    lines = [b"apple 0", b"banana 0", b"a,b 0", b"x\r apple cr 0", b"crlf apple\r", b"\xffapple"]
    assert f.select(b"[r0]:", lines) == (
        b"[r0]:apple 0\n[r0]:a,b 0\n[r0]: apple cr 0\n[r0]:crlf apple\n[r0]:\xef\xbf\xbdapple\n"
    )
    # the match is on the line with its newline (torchrun's readline keeps it)
    assert LineFilter("/unused", ("0\n",)).select(b"p:", [b"a 0", b"b 01"]) == b"p:a 0\n"
    # an unterminated last line has no newline to match, but gets one in the file
    assert LineFilter("/unused", ("0\n",)).select(b"p:", [b"a 0"], last=True) == b""
    assert LineFilter("/unused", ("a",)).select(b"p:", [b"a 0"], last=True) == b"p:a 0\n"
    assert LineFilter("/unused", ("",)).select(b"p:", [b"", b"z"]) == b"p:\np:z\n"


def test_plans_duplicate_teed_shown_streams_only(tmp_path: Path) -> None:
    logs = RunLogs(
        "job",
        log_dir=str(tmp_path),
        redirects=StdSpec(Std.NONE, ((2, Std.ALL),)),
        tee=StdSpec(Std.OUT, ((1, Std.ALL), (2, Std.NONE))),
        local_ranks_filter=frozenset({0, 2}),
        duplicate_stdout_filters=("loss",),
    )
    try:
        a = logs.new_attempt(3)
        out_path = Path(a.dir) / "filtered_stdout.log"
        assert out_path.read_bytes() == b"" and not (Path(a.dir) / "filtered_stderr.log").exists()
        (o0, e0), (o1, e1), (o2, _) = (a.plans(r) for r in range(3))
        assert o0.sink is Sink.PIPE and o0.dup == LineFilter(str(out_path), ("loss",))
        assert o0.prefix == b"[default0]:"
        assert e0.dup is None  # no stderr filters
        assert o1.dup is None and e1.dup is None  # teed, but not shown (torchrun: not tailed)
        assert o2.sink is Sink.FILE and o2.dup is None  # redirected only
    finally:
        logs.close()
