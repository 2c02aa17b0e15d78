"""The job-wide culprit and the report text, from per-node records (pure)."""

from __future__ import annotations

from corral.hangs.report import (
    NodeHangs,
    NodeProgress,
    RankDump,
    clip,
    culprits,
    main_frames,
    render,
    where,
)

SITE = "/venv/lib/python3.11/site-packages"


def stack(pid: int, *frames: tuple[str, str]) -> str:
    lines = [f'Thread {pid} (idle): "MainThread"']
    lines += [f"    {f} ({loc})" for f, loc in frames]
    lines += [
        f'Thread {pid + 1} (idle): "pin_memory"',
        f"    _run ({SITE}/torch/utils/data/x.py:5)",
    ]
    return "\n".join(lines) + "\n"


def waiting(pid: int) -> str:  # a rank blocked in DDP's all-reduce inside backward
    return stack(
        pid,
        ("_engine_run_backward", f"{SITE}/torch/autograd/graph.py:841"),
        ("backward", f"{SITE}/torch/autograd/__init__.py:364"),
        ("main", "/job/train.py:150"),
    )


RECORD = f"{SITE}/torch/distributed/elastic/multiprocessing/errors/__init__.py:367"


def sleeping(pid: int) -> str:  # the culprit: stuck in its own code (under torch's @record)
    return stack(
        pid,
        ("hang_here", "/job/train.py:40"),
        ("main", "/job/train.py:145"),
        ("record.<locals>.wrap.<locals>.wrapper", RECORD),
    )


def d(rank: int, step: int | None, stack_text: str | None, state: str = "S (sleeping)") -> RankDump:
    return RankDump(
        rank,
        rank % 2,
        1000 + rank,
        step,
        5.5,
        state,
        stack_text,
        "" if stack_text else "py-spy not found",
    )


def test_main_frames_parse_py_spy_text() -> None:
    frames = main_frames(sleeping(1003), 1003)
    assert frames[:2] == [("hang_here", "/job/train.py:40"), ("main", "/job/train.py:145")]
    assert main_frames(None, 1) == [] and main_frames("garbage", 1) == []


def test_lowest_step_wins() -> None:
    ranks = [d(0, 41, waiting(1000)), d(1, 41, waiting(1001)), d(2, 40, waiting(1002))]
    assert [c.rank for c in culprits(ranks)] == [2]


def test_no_progress_at_all_is_lowest() -> None:
    ranks = [d(0, 0, waiting(1000)), d(1, None, waiting(1001))]
    assert [c.rank for c in culprits(ranks)] == [1]


def test_tie_broken_by_who_is_not_in_a_collective() -> None:
    """Synchronous DDP: every rank has the same step; the culprit is the one not waiting."""
    ranks = [
        d(0, 40, waiting(1000)),
        d(1, 40, waiting(1001)),
        d(2, 40, waiting(1002)),
        d(3, 40, sleeping(1003)),
    ]
    assert [c.rank for c in culprits(ranks)] == [3]


def test_a_frozen_rank_is_the_culprit_whatever_its_stack() -> None:
    ranks = [
        d(0, 40, sleeping(1000)),
        d(1, 40, waiting(1001), "T (stopped)"),
        d(2, 40, waiting(1002)),
    ]
    assert [c.rank for c in culprits(ranks)] == [1]
    ranks[1] = d(1, 40, None, "D (disk sleep)")
    assert [c.rank for c in culprits(ranks)] == [1]


def test_without_stacks_every_lowest_rank_is_named() -> None:
    ranks = [d(0, 40, None), d(1, 40, None), d(2, 41, None)]
    assert [c.rank for c in culprits(ranks)] == [0, 1]
    assert culprits([]) == []


def test_render_names_the_culprit_with_its_stack_first_then_one_line_per_rank() -> None:
    a = NodeHangs("node-a", 0, "host-a", True, (d(0, 40, waiting(1000)), d(1, 40, waiting(1001))))
    b = NodeHangs("node-b", 1, "host-b", False, (d(2, 40, waiting(1002)), d(3, 40, sleeping(1003))))
    text = render([b, a])
    lines = text.splitlines()
    assert lines[0].startswith(
        "culprit: rank 3 (node 1, local rank 1, host host-b, pid 1003): step 40"
    )
    assert "hang_here (/job/train.py:40)" in text.split("other ranks:")[0]
    others = text.split("other ranks:\n")[1].splitlines()
    assert [ln.split()[1] for ln in others] == ["0", "1", "2"]
    assert all(
        "in _engine_run_backward" in ln and "called from main (/job/train.py:150)" in ln
        for ln in others
    )


def test_where_without_a_stack_says_why() -> None:
    assert where(d(0, 1, None)) == "stack unavailable (py-spy not found)"


def test_records_round_trip() -> None:
    rec = NodeHangs("n", 1, "h", True, (d(2, None, None, "T (stopped)"),))
    assert NodeHangs.from_json(rec.to_json()) == rec
    prog = NodeProgress("n", ((2, 40, 1700000000.5),))
    assert NodeProgress.from_json(prog.to_json()) == prog


def test_reports_stay_bounded_at_scale() -> None:
    """10,000 ranks, all waiting alike: 4 stacks, 64 lines, the rest counted by where they wait."""
    ranks = tuple(d(r, 40, waiting(1000 + r)) for r in range(10_000))
    text = render([NodeHangs("n", 0, "h", True, ranks)])
    assert text.count("stacks:") == 4 and text.count("culprit: ") == 10_000
    assert len(text) < 3_000_000
    big = "Thread 1 (idle)\n" + "    f (x.py:1)\n" * 10_000
    cut = clip(big)
    assert cut is not None and len(cut) < 33_000 and cut.endswith("more characters)\n")
    assert clip("short") == "short" and clip(None) is None


def test_summaries_without_stacks_name_the_same_culprit() -> None:
    """What other nodes read (no stacks) gives the same culprit and the same lines."""
    ranks = [d(0, 40, waiting(1000)), d(1, 40, None), d(2, 40, sleeping(1002))]
    short = [r.summarised() for r in ranks]
    assert all(r.stack is None for r in short)
    assert [c.rank for c in culprits(short)] == [c.rank for c in culprits(ranks)] == [2]
    assert [where(r) for r in short] == [where(r) for r in ranks]
    rec = NodeHangs("n", 0, "h", True, tuple(ranks))
    assert NodeHangs.from_json(rec.summarised().to_json()) == rec.summarised()
    assert len(rec.summarised().to_json()) < len(rec.to_json())


def test_a_rank_that_took_another_branch_is_the_odd_one_out() -> None:
    """Everyone waits in a collective, rank 2 in a barrier, the rest in an all-reduce."""
    c10d = f"{SITE}/torch/distributed/distributed_c10d.py"

    def at(pid: int, fn: str, line: int) -> str:
        return stack(pid, (fn, f"{c10d}:{line}"), ("main", "/job/train.py:99"))

    ranks = [d(r, 40, at(1000 + r, "all_reduce", 2800)) for r in (0, 1, 3)]
    ranks.append(d(2, 40, at(1002, "barrier", 4500)))
    assert [c.rank for c in culprits(ranks)] == [2]
    assert [c.rank for c in culprits([r.summarised() for r in ranks])] == [2]
    # no clear majority (2 against 2): every rank of the lowest step is named
    ranks[0] = d(0, 40, at(1000, "barrier", 4500))
    assert [c.rank for c in culprits(ranks)] == [0, 1, 2, 3]
