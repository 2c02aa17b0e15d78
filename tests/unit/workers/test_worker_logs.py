"""Stream plans, the tail buffer and the log directory layout."""

from __future__ import annotations

import os

import pytest

from corral.config import Std, StdSpec
from corral.workers.logs import RunLogs, Sink, StreamPlan, Tail, plan_stream, tail_of_file

P = b"[default0]:"


@pytest.mark.parametrize(
    ("which", "r", "t", "shown", "plan"),
    [
        (Std.OUT, Std.NONE, Std.NONE, True, StreamPlan(Sink.INHERIT)),
        (Std.OUT, Std.NONE, Std.NONE, False, StreamPlan(Sink.DEVNULL)),
        (
            Std.ERR,
            Std.NONE,
            Std.NONE,
            True,
            StreamPlan(Sink.PIPE, None, console=True, keep_tail=True),
        ),
        (
            Std.ERR,
            Std.NONE,
            Std.NONE,
            False,
            StreamPlan(Sink.PIPE, None, console=False, keep_tail=True),
        ),
        (Std.OUT, Std.OUT, Std.NONE, True, StreamPlan(Sink.FILE, "f")),
        (Std.ERR, Std.ALL, Std.NONE, False, StreamPlan(Sink.FILE, "f")),
        (Std.OUT, Std.ERR, Std.NONE, True, StreamPlan(Sink.INHERIT)),
        (Std.OUT, Std.NONE, Std.OUT, True, StreamPlan(Sink.PIPE, "f", console=True, prefix=P)),
        (Std.OUT, Std.NONE, Std.ALL, False, StreamPlan(Sink.PIPE, "f", console=False, prefix=P)),
        (
            Std.ERR,
            Std.ERR,
            Std.ERR,
            True,
            StreamPlan(Sink.PIPE, "f", console=True, prefix=P, keep_tail=True),
        ),
    ],
)
def test_plan_stream(which: Std, r: Std, t: Std, shown: bool, plan: StreamPlan) -> None:
    assert plan_stream(which, r, t, shown, "f", P) == plan


def test_tail_keeps_last_lines() -> None:
    tail = Tail(3)
    for chunk in (b"a\nb", b"\nc\nd\n", b"e"):
        tail.feed(chunk)
    assert tail.text() == "c\nd\ne"
    tail.feed(b"\xff\n")
    assert tail.text() == "d\ne\ufffd" or tail.text().endswith("\ufffd")


def test_tail_of_file(tmp_path: os.PathLike[str]) -> None:
    p = os.path.join(tmp_path, "stderr.log")
    with open(p, "w") as f:
        f.writelines(f"line {i}\n" for i in range(1000))
    text = tail_of_file(p, 5)
    assert text == "\n".join(f"line {i}" for i in range(995, 1000))
    assert tail_of_file(os.path.join(tmp_path, "missing")) is None


def test_layout_attempts_never_overwrite(tmp_path: os.PathLike[str]) -> None:
    logs = RunLogs(
        "job1", log_dir=str(tmp_path), role="trainer", redirects=StdSpec(Std.NONE, ((1, Std.ALL),))
    )
    assert os.path.dirname(logs.run_dir) == str(tmp_path)
    assert os.path.basename(logs.run_dir).startswith("job1_")
    a0, a1 = logs.new_attempt(2), logs.new_attempt(2)
    assert (a0.attempt, a1.attempt) == (0, 1)
    assert a0.dir == os.path.join(logs.run_dir, "attempt_0")
    assert a1.error_file(1) == os.path.join(logs.run_dir, "attempt_1", "1", "error.json")
    assert a1.stdout_path(0).endswith("attempt_1/0/stdout.log")
    assert a1.stderr_path(0).endswith("attempt_1/0/stderr.log")
    assert a0.prefix(1) == b"[trainer1]:"
    assert a0.plans(0)[0].sink is Sink.INHERIT
    assert a0.plans(1) == (
        StreamPlan(Sink.FILE, a0.stdout_path(1)),
        StreamPlan(Sink.FILE, a0.stderr_path(1)),
    )
    assert sorted(os.listdir(a1.dir)) == ["0", "1"]
    logs.close()
    assert os.path.isdir(logs.run_dir)  # --log-dir is the user's: kept


def test_temporary_dir_removed_on_close() -> None:
    logs = RunLogs("job2")
    base = logs.temporary
    assert base is not None and logs.run_dir.startswith(base)
    logs.new_attempt(1)
    logs.close()
    logs.close()
    assert not os.path.exists(base)


def test_filter_keeps_ranks_off_console(tmp_path: os.PathLike[str]) -> None:
    logs = RunLogs(
        "j", log_dir=str(tmp_path), tee=StdSpec(Std.ALL), local_ranks_filter=frozenset({1})
    )
    a = logs.new_attempt(2)
    assert [p.console for p in a.plans(0)] == [False, False]
    assert [p.console for p in a.plans(1)] == [True, True]
