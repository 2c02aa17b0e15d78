"""What a hang leaves behind: per-node records, the job-wide culprit, the report text. Pure.

Each node's detector publishes one :class:`NodeHangs` record (every local
rank's step, seconds since its last progress, process state and stacks) under
``<prefix>/<run id>/r/<round>/hangs/<node id>``; every node reads all of them
and names the same culprit with :func:`culprits`:

1. the rank(s) with the lowest step job-wide (no progress at all is lowest);
2. among those, a rank frozen by the kernel (state T, t or D: SIGSTOP, a
   debugger, uninterruptible sleep) if there is one;
3. else those whose main thread is not waiting inside torch.distributed,
   torch.autograd or DDP (its innermost frames; the others wait for the
   culprit in a collective);
4. else, when all wait in collectives but not all in the same place (one rank
   took another branch: it waits in a barrier while the others wait in an
   all-reduce), those outside the largest group of ranks waiting in one place;
5. else all ranks of step 1.

:func:`render` writes the culprit's stacks first, then one line per other
rank saying where it waits.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = [
    "NodeHangs",
    "NodeProgress",
    "RankDump",
    "clip",
    "culprits",
    "main_frames",
    "render",
    "summary",
    "where",
]

_VERSION = 1
#: Frames under these paths mean "waiting for the other ranks" (a collective, DDP's reducer).
_COLLECTIVE_PATHS = (
    "torch/distributed/",
    "torch/autograd/",
    "torch/nn/parallel/",
    "torch/_tensor.py",
)
_FROZEN_STATES = ("T", "t", "D")
#: Bounds that keep a record and a report small at any scale (etcd takes 1.5 MiB a request).
MAX_STACK_BYTES = 32 * 1024
MAX_STACKS = 4  # culprits shown with their stacks
MAX_LINES = 64  # other ranks shown one per line; the rest are counted by where they wait


@dataclass(frozen=True)
class RankDump:
    """One local worker at the moment of the hang.

    Attributes:
        rank, local_rank, pid: who.
        step: the step of its last mark; None when it marked none in this attempt.
        age: seconds since its last mark (since its start when it marked none).
        state: the kernel's process state, e.g. ``"S (sleeping)"``, ``"T (stopped)"``.
        stack: every thread's Python stack (``py-spy dump`` text); None if unavailable.
        note: why the stack is unavailable, and the kernel's wait channel.
        hung: this node's detector judged it hung (not just stalled behind another rank).
        waits: where it waits (:func:`where`), kept when ``stack`` is left out.
        collective: whether its main thread waits in a collective; None when unknown.
    """

    rank: int
    local_rank: int
    pid: int
    step: int | None
    age: float
    state: str = ""
    stack: str | None = None
    note: str = ""
    hung: bool = False
    waits: str = ""
    collective: bool | None = None

    @property
    def frozen(self) -> bool:
        return self.state[:1] in _FROZEN_STATES

    def summarised(self) -> RankDump:
        """The same without the stack (``waits`` and ``collective`` computed from it)."""
        return replace(self, stack=None, waits=where(self), collective=_collective(self))


@dataclass(frozen=True)
class NodeHangs:
    """One node's record of a hang (see the module docstring).

    Two are published per node: the summary (:meth:`summarised`, no stacks: what
    every node reads to name the culprit, a few hundred bytes a rank) under
    ``hangs/``, and the full record with every stack under ``stacks/``.
    """

    node_id: str
    group_rank: int
    host: str
    detected: bool  # this node's own detector fired (else it dumped because another node's did)
    ranks: tuple[RankDump, ...] = ()

    def summarised(self) -> NodeHangs:
        return replace(self, ranks=tuple(d.summarised() for d in self.ranks))

    def to_json(self) -> bytes:
        d: dict[str, Any] = {"version": _VERSION, **asdict(self)}
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> NodeHangs:
        """Raises ValueError on anything but a version-1 record."""
        d = json.loads(data)
        if not isinstance(d, dict) or d.get("version") != _VERSION:
            raise ValueError(f"unsupported hang record: {str(data)[:80]!r}")
        ranks = tuple(RankDump(**r) for r in d.get("ranks", ()))
        return cls(d["node_id"], int(d["group_rank"]), d["host"], bool(d["detected"]), ranks)


@dataclass(frozen=True)
class NodeProgress:
    """A node's last progress per rank, for ``corral status`` (published while it changes).

    ``ranks`` holds ``[rank, step, wall time of the last mark]`` triples; the
    wall time is for humans only (status shows the seconds since it).
    """

    node_id: str
    ranks: tuple[tuple[int, int, float], ...] = field(default_factory=tuple)

    def to_json(self) -> bytes:
        d = {"version": _VERSION, "node_id": self.node_id, "ranks": [list(r) for r in self.ranks]}
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> NodeProgress:
        d = json.loads(data)
        if not isinstance(d, dict) or d.get("version") != _VERSION:
            raise ValueError(f"unsupported progress record: {str(data)[:80]!r}")
        ranks = tuple((int(r), int(s), float(t)) for r, s, t in d.get("ranks", ()))
        return cls(str(d["node_id"]), ranks)


# --- stacks -----------------------------------------------------------------------


def main_frames(stack: str | None, pid: int) -> list[tuple[str, str]]:
    """The main thread's frames, innermost first, as (function, "file:line").

    ``stack`` is ``py-spy dump`` text: ``Thread <tid> (<status>): "<name>"``
    headers, each followed by indented ``<function> (<file>:<line>)`` lines.
    The main thread is the one whose id is the pid (or named MainThread, or the first).
    """
    if not stack:
        return []
    threads: list[tuple[str, list[tuple[str, str]]]] = []
    for line in stack.splitlines():
        if line.startswith("Thread "):
            threads.append((line, []))
        elif threads and line.startswith("    ") and line.rstrip().endswith(")"):
            text = line.strip()
            func, sep, loc = text.rpartition(" (")
            if sep:
                threads[-1][1].append((func, loc[:-1]))
    if not threads:
        return []
    for header, frames in threads:
        if header.split()[1] == str(pid) or '"MainThread"' in header:
            return frames
    return threads[0][1]


def _in_collective(frames: Sequence[tuple[str, str]]) -> bool:
    """Whether the innermost frames (where the thread waits) are torch's collective code.

    Only the innermost two count: outer torch.distributed frames such as
    ``@record``'s wrapper say nothing about where the rank waits.
    """
    return any(any(p in loc for p in _COLLECTIVE_PATHS) for _, loc in frames[:2])


def where(d: RankDump) -> str:
    """Where a rank waits, in one phrase: its innermost frame, and its own code's innermost."""
    frames = main_frames(d.stack, d.pid)
    if not frames and d.waits:
        return d.waits
    if not frames:
        return f"stack unavailable ({d.note})" if d.note else "stack unavailable"
    inner = f"{frames[0][0]} ({frames[0][1]})"
    own = next(
        ((f, loc) for f, loc in frames if "site-packages/" not in loc and "/lib/python" not in loc),
        None,
    )
    if own is None or own == frames[0]:
        return f"in {inner}"
    return f"in {inner}, called from {own[0]} ({own[1]})"


# --- the culprit ------------------------------------------------------------------


def _step_key(d: RankDump) -> int:
    return -1 if d.step is None else d.step


def culprits(ranks: Sequence[RankDump]) -> list[RankDump]:
    """The rank(s) that stopped the job (rules in the module docstring), in rank order."""
    if not ranks:
        return []
    low = min(_step_key(d) for d in ranks)
    behind = sorted((d for d in ranks if _step_key(d) == low), key=lambda d: d.rank)
    frozen = [d for d in behind if d.frozen]
    if frozen:
        return frozen
    free = [d for d in behind if _collective(d) is False]
    if free:
        return free
    places = Counter(_innermost(d) for d in behind)
    if len(behind) >= 3 and None not in places and len(places) > 1:
        (most, count), (_, runner_up) = places.most_common(2)
        if count > runner_up:  # a clear majority waits in one place: the others diverged
            return [d for d in behind if _innermost(d) != most]
    return behind


def _innermost(d: RankDump) -> str | None:
    """The innermost frame of ``d``'s main thread (from ``waits`` when the stack is left out)."""
    frames = main_frames(d.stack, d.pid)
    if frames:
        return f"{frames[0][0]} ({frames[0][1]})"
    if d.waits.startswith("in "):
        return d.waits[3:].split(", called from ")[0]
    return None


def _collective(d: RankDump) -> bool | None:
    """Whether ``d`` waits in a collective: from its stack, else as recorded; None: unknown."""
    frames = main_frames(d.stack, d.pid)
    if frames:
        return _in_collective(frames)
    return d.collective


def _who(d: RankDump, node: NodeHangs) -> str:
    return (
        f"rank {d.rank} (node {node.group_rank}, local rank {d.local_rank}, "
        f"host {node.host or '?'}, pid {d.pid})"
    )


def _progress(d: RankDump) -> str:
    if d.step is None:
        return f"no progress in {d.age:.1f} s since it started"
    return f"step {d.step}, no progress for {d.age:.1f} s"


def summary(culprit: RankDump, node: NodeHangs) -> str:
    """The failure's one-line message: ``hang: rank R (...) step S, no progress for X s``."""
    state = f", state {culprit.state}" if culprit.state else ""
    return f"hang: {_who(culprit, node)} {_progress(culprit)}{state}"


def render(nodes: Sequence[NodeHangs]) -> str:
    """The job-wide report: each culprit with its stacks, then one line per other rank."""
    owner: dict[int, NodeHangs] = {}
    every: list[RankDump] = []
    for n in sorted(nodes, key=lambda n: n.group_rank):
        for d in n.ranks:
            owner[d.rank] = n
            every.append(d)
    named = culprits(every)
    lines: list[str] = []
    for i, d in enumerate(named):
        lines.append(f"culprit: {_who(d, owner[d.rank])}: {_progress(d)}")
        if d.state:
            lines.append(f"  state: {d.state}")
        if d.stack and i < MAX_STACKS:
            lines.append("  stacks:")
            lines.extend("    " + ln for ln in d.stack.rstrip("\n").splitlines() if ln.strip())
        elif d.stack:
            lines.append(f"  {where(d)} (stacks shown for the first {MAX_STACKS} culprits only)")
        if d.note:
            lines.append(f"  note: {d.note}")
    others = sorted((d for d in every if d not in named), key=lambda d: d.rank)
    if others:
        lines.append("other ranks:")
        for d in others[:MAX_LINES]:
            state = f" [{d.state}]" if d.state and not d.state.startswith(("S", "R")) else ""
            lines.append(f"  {_who(d, owner[d.rank])}: {_progress(d)}{state}, {where(d)}")
        rest = Counter(where(d) for d in others[MAX_LINES:])
        for place, count in rest.most_common():
            lines.append(f"  ... {count} more rank(s) {place}")
    return "\n".join(lines)


def clip(stack: str | None, limit: int = MAX_STACK_BYTES) -> str | None:
    """A stack cut to ``limit`` characters (records stay small enough for any store)."""
    if stack is None or len(stack) <= limit:
        return stack
    cut = stack.rfind("\n", 0, limit) + 1 or limit
    return stack[:cut] + f"... ({len(stack) - cut} more characters)\n"
