"""``--collapse-logs``: a line that several local ranks print at once goes to the console once.

With 8 ranks, ``torch`` and user code print most lines 8 times. A
:class:`LineCollapser` sits between the workers' console pumps and one
console stream: each complete line waits in a *group* of identical lines for
at most :data:`WINDOW` seconds; the ranks that print the same line meanwhile
join the group, and the group is printed once, prefixed with the set of ranks
(``[default0-7]:``, ``[default0-2,5]:``, or ``[default3]:`` alone).

Guarantees:

* no line waits more than ``WINDOW`` (0.08 s) plus one loop turn (< 100 ms):
  a timer flushes every group whose deadline passed, and a group is printed
  at once when every rank has joined it;
* one rank's lines are never reordered: groups are printed in queue
  order, and a rank joins an existing group only if that group is newer
  than every group holding one of its earlier lines, or if the group can
  move to the end of the queue without passing a later line of its members;
* files (``--log-dir``, ``-r``/``-t``) are written by the pumps before the
  collapser sees a line, so they keep every line of every rank;
* a failure of the timer (a bug) is not silent: the collapser prints what it
  holds and hands the error to its ``on_error`` (the worker group's wait
  raises it, as it raises a pump's).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Sequence

from corral.core.aio import guarded

__all__ = ["WINDOW", "LineCollapser", "rank_set"]

#: How long a line may wait for the same line from other ranks (seconds).
WINDOW = 0.08

log = logging.getLogger("corral")


def rank_set(role: str, ranks: Sequence[int]) -> str:
    """``[role0-3,6]:`` for ranks {0, 1, 2, 3, 6}."""
    rs = sorted(set(ranks))
    parts: list[str] = []
    i = 0
    while i < len(rs):
        j = i
        while j + 1 < len(rs) and rs[j + 1] == rs[j] + 1:
            j += 1
        parts.append(str(rs[i]) if i == j else f"{rs[i]}-{rs[j]}")
        i = j + 1
    return f"[{role}{','.join(parts)}]:"


class _Group:
    __slots__ = ("deadline", "line", "ranks", "seq")

    def __init__(self, seq: int, line: bytes, rank: int, deadline: float) -> None:
        self.seq = seq
        self.line = line
        self.ranks = [rank]
        self.deadline = deadline


class LineCollapser:
    """Collapses identical lines of one console stream across local ranks.

    Args:
        role: the worker role (the prefix is ``[<role><ranks>]:``).
        nranks: local ranks shown on this console: a group that all of them
            joined is printed at once.
        window: the longest a line waits (default :data:`WINDOW`).
        clock: the loop's monotonic time (tests may pass their own).
        on_error: called with the exception when the flush timer fails (a
            bug), after what the collapser held was printed.

    Used from the event loop's thread only (the pumps' reader callbacks).
    """

    def __init__(
        self,
        role: str,
        nranks: int,
        *,
        window: float = WINDOW,
        clock: Callable[[], float] | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.role = role
        self.nranks = max(nranks, 1)
        self.window = window
        self._clock = clock
        self._groups: collections.OrderedDict[int, _Group] = collections.OrderedDict()
        self._by_line: dict[bytes, _Group] = {}  # the newest open group of each line
        self._last_of: dict[int, int] = {}  # rank -> seq of its newest open group
        self._seq = 0
        self._write: Callable[[bytes], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._on_error = on_error
        self._on_timer_cb = guarded(
            self._on_timer, self._timer_failed, f"--collapse-logs ({role}): the flush timer"
        )

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    def feed(self, rank: int, lines: Sequence[bytes], write: Callable[[bytes], None]) -> None:
        """Take complete lines (without their newline) of local rank ``rank``."""
        self._write = write
        now = self._now()
        full: _Group | None = None
        for line in lines:
            g = self._by_line.get(line)
            if g is not None and rank not in g.ranks and self._joinable(g, rank):
                g.ranks.append(rank)
                if len(g.ranks) >= self.nranks:
                    full = g if full is None or g.seq > full.seq else full
            else:
                g = _Group(self._seq, line, rank, now + self.window)
                self._seq += 1
                self._groups[g.seq] = g
                self._by_line[line] = g
            self._last_of[rank] = g.seq
        if full is not None:
            self._flush(lambda g: g.seq <= full.seq)
        self._arm()

    def _joinable(self, g: _Group, rank: int) -> bool:
        """Whether ``rank`` may join ``g`` without reordering anyone's lines.

        Yes if ``g`` is newer than the rank's newest open group. Else yes if
        ``g`` can move behind every open group (none of its members has a
        line in a newer group): it is then moved, keeping its deadline.
        """
        if g.seq > self._last_of.get(rank, -1):
            return True
        if any(self._last_of.get(m) != g.seq for m in g.ranks):
            return False
        del self._groups[g.seq]
        g.seq = self._seq
        self._seq += 1
        self._groups[g.seq] = g
        for m in g.ranks:
            self._last_of[m] = g.seq
        return True

    def _arm(self) -> None:
        if self._timer is not None or not self._groups:
            return
        first = min(self._groups.values(), key=lambda g: g.deadline)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(first.deadline, self._on_timer_cb)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._now()
        self._flush(lambda g: g.deadline <= now)
        self._arm()

    def _timer_failed(self, exc: Exception) -> None:
        """Print every line held (lines are never lost to a bug), then tell the owner."""
        self._timer = None
        try:
            self._flush(lambda g: True)
        except Exception as again:
            log.error("--collapse-logs: dropping %d held line(s): %r", len(self._groups), again)
            self._groups.clear()
            self._by_line.clear()
            self._last_of.clear()
        if self._on_error is not None:
            self._on_error(exc)

    def _flush(self, due: Callable[[_Group], bool]) -> None:
        """Print, in opening order, every group up to the last one that is due."""
        last = -1
        for g in self._groups.values():
            if due(g):
                last = g.seq
        if last < 0:
            return
        out: list[bytes] = []
        while self._groups:
            seq, g = next(iter(self._groups.items()))
            if seq > last:
                break
            del self._groups[seq]
            if self._by_line.get(g.line) is g:
                del self._by_line[g.line]
            for r in g.ranks:
                if self._last_of.get(r) == seq:
                    del self._last_of[r]
            out.append(rank_set(self.role, g.ranks).encode() + g.line + b"\n")
        if out and self._write is not None:
            self._write(b"".join(out))

    def flush(self) -> None:
        """Print everything now (the agent is closing the attempt's logs)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush(lambda g: True)
