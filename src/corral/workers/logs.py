"""Where worker output goes: torchrun's log layout, redirects, tee, prefixes, filter.

Layout: ``<log dir>/<run id>_<random suffix>/attempt_<n>/<local rank>/``
holding ``stdout.log``, ``stderr.log`` (when redirected or teed) and
``error.json`` (``TORCHELASTIC_ERROR_FILE``). ``n`` counts this agent's group
starts, so no attempt overwrites another. Without ``--log-dir`` the base is a
temporary directory removed by :meth:`RunLogs.close`.

Per stream (see :func:`plan_stream`): redirected only -> the child writes the
file itself; teed -> the child writes a pipe that the agent copies to the file
and, prefixed ``[<role><local rank>]:``, to the console; neither -> stdout is
inherited, stderr goes through the agent unchanged so that its tail is kept for
failure reports. ``--local-ranks-filter`` keeps ranks outside it off the console.

``--duplicate-stdout-filters``/``--duplicate-stderr-filters`` (torchrun's): the
lines of the teed and shown streams that contain any of the filters also go,
prefixed, to ``attempt_<n>/filtered_stdout.log``/``filtered_stderr.log``, one
file per attempt for all ranks (:class:`LineFilter`).
"""

from __future__ import annotations

import collections
import enum
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from corral.workers.collapse import LineCollapser
from corral.workers.std import Std, StdSpec

if TYPE_CHECKING:
    from corral.config import LaunchConfig

__all__ = [
    "TAIL_LINES",
    "AttemptLogs",
    "LineFilter",
    "RunLogs",
    "StreamPlan",
    "Tail",
    "collapse_plan",
    "plan_stream",
    "tail_of_file",
]

#: Lines of stderr kept per worker for failure reports.
TAIL_LINES = 50
_MAX_LINE = 4096  # a line longer than this is cut in the ring buffer (files keep everything)


class Sink(enum.Enum):
    """Where the child's file descriptor points."""

    INHERIT = "inherit"  # the agent's own stream
    DEVNULL = "devnull"
    FILE = "file"  # the log file, written by the child itself
    PIPE = "pipe"  # a pipe read by the agent


@dataclass(frozen=True)
class LineFilter:
    """torchrun's duplicate filters: matching lines of a teed stream copied to one file.

    As torchrun's ``TailLog`` with a ``log_line_filter``, which reads the stream
    as text (``errors="replace"``, universal newlines) and writes
    ``<prefix><line>`` for each line that contains any of ``needles`` (the line
    with its newline; an empty needle matches every line).

    Attributes:
        path: ``attempt_<n>/filtered_stdout.log`` or ``filtered_stderr.log``.
        needles: the filters, at least one.
    """

    path: str
    needles: tuple[str, ...]

    def select(self, prefix: bytes, lines: list[bytes], last: bool = False) -> bytes:
        """What goes to the file for complete ``lines`` (split at ``\\n``, without it).

        ``last``: the lines are the unterminated end of the stream; each still
        gets a newline in the file, so that no other rank's line joins it.
        """
        header = prefix.decode("utf-8", "replace")
        out: list[str] = []
        for raw in lines:
            text = raw.decode("utf-8", "replace")
            ended = not last or text.endswith("\r")
            if text.endswith("\r"):
                text = text[:-1]  # \r\n (or a last \r) ends one line
            parts = text.split("\r")  # a lone \r is a line end too (universal newlines)
            for i, part in enumerate(parts):
                line = part + "\n" if ended or i < len(parts) - 1 else part
                if any(n in line for n in self.needles):
                    out.append(header + part + "\n")
        return "".join(out).encode("utf-8")


@dataclass(frozen=True)
class StreamPlan:
    """How one stream of one worker is handled.

    Attributes:
        sink: what the child's descriptor is.
        path: the log file (``FILE``, or ``PIPE`` when the agent copies to it).
        console: with ``PIPE``, copy to the agent's console stream.
        prefix: with ``console``, put this before every line (tee); else bytes go unchanged.
        keep_tail: with ``PIPE``, keep the last lines for failure reports.
        collapse: with ``console`` and ``prefix``, the
            :class:`~corral.workers.collapse.LineCollapser` that prints the lines
            (``--collapse-logs``); ``rank`` is the worker's local rank for it.
        dup: with ``PIPE``, the :class:`LineFilter` whose file gets this
            stream's matching lines, prefixed with ``prefix``.
    """

    sink: Sink
    path: str | None = None
    console: bool = False
    prefix: bytes | None = None
    keep_tail: bool = False
    collapse: LineCollapser | None = None
    rank: int = 0
    dup: LineFilter | None = None


def plan_stream(
    which: Std, redirect: Std, tee: Std, shown: bool, path: str, prefix: bytes
) -> StreamPlan:
    """Decide the handling of stream ``which`` (``Std.OUT`` or ``Std.ERR``) of one worker.

    Args:
        which: the stream. redirect/tee: the worker's ``-r``/``-t`` flags.
        shown: the worker passes ``--local-ranks-filter``.
        path: the stream's log file. prefix: the tee prefix.
    """
    is_err = which == Std.ERR
    if tee & which:
        return StreamPlan(Sink.PIPE, path, console=shown, prefix=prefix, keep_tail=is_err)
    if redirect & which:
        return StreamPlan(Sink.FILE, path)
    if is_err:
        return StreamPlan(Sink.PIPE, None, console=shown, keep_tail=True)
    return StreamPlan(Sink.INHERIT if shown else Sink.DEVNULL)


def collapse_plan(
    plan: StreamPlan, which: Std, prefix: bytes, collapser: LineCollapser, local_rank: int
) -> StreamPlan:
    """The plan of a shown stream with ``--collapse-logs``: through the agent, line by line.

    A stream that would be inherited (stdout, neither redirected nor teed) or
    copied raw (stderr) becomes a pipe the agent copies to the console,
    collapsed; files and hidden ranks are unchanged.
    """
    if plan.sink is Sink.INHERIT and which == Std.OUT:
        plan = StreamPlan(Sink.PIPE, None, console=True, prefix=prefix)
    if plan.sink is not Sink.PIPE or not plan.console:
        return plan
    return replace(plan, prefix=plan.prefix or prefix, collapse=collapser, rank=local_rank)


class Tail:
    """A ring buffer of the last ``TAIL_LINES`` lines of a byte stream."""

    def __init__(self, lines: int = TAIL_LINES) -> None:
        self._lines: collections.deque[bytes] = collections.deque(maxlen=lines)
        self._partial = b""

    def feed(self, data: bytes) -> None:
        parts = (self._partial + data).split(b"\n")
        self._partial = parts.pop()[-_MAX_LINE:]
        for line in parts:
            self._lines.append(line[:_MAX_LINE])

    def text(self) -> str:
        """The kept lines (and an unfinished last line), decoded leniently."""
        lines = list(self._lines)
        if self._partial:
            lines.append(self._partial)
        return b"\n".join(lines[-(self._lines.maxlen or len(lines)) :]).decode("utf-8", "replace")


def tail_of_file(path: str, lines: int = TAIL_LINES) -> str | None:
    """The last ``lines`` lines of a log file, or None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - lines * 256))
            data = f.read()
    except OSError:
        return None
    tail = Tail(lines)
    tail.feed(data[data.find(b"\n") + 1 :] if size > lines * 256 else data)
    return tail.text()


@dataclass(frozen=True)
class AttemptLogs:
    """One group start's directory: ``<run dir>/attempt_<n>``."""

    dir: str
    attempt: int
    role: str
    redirects: StdSpec
    tee: StdSpec
    local_ranks_filter: frozenset[int] | None
    collapsers: tuple[LineCollapser, LineCollapser] | None = (
        None  # (stdout, stderr), --collapse-logs
    )
    dup: tuple[LineFilter | None, LineFilter | None] = (None, None)  # (stdout, stderr)

    def rank_dir(self, local_rank: int) -> str:
        return os.path.join(self.dir, str(local_rank))

    def error_file(self, local_rank: int) -> str:
        return os.path.join(self.rank_dir(local_rank), "error.json")

    def stdout_path(self, local_rank: int) -> str:
        return os.path.join(self.rank_dir(local_rank), "stdout.log")

    def stderr_path(self, local_rank: int) -> str:
        return os.path.join(self.rank_dir(local_rank), "stderr.log")

    def prefix(self, local_rank: int) -> bytes:
        return f"[{self.role}{local_rank}]:".encode()

    def shown(self, local_rank: int) -> bool:
        return self.local_ranks_filter is None or local_rank in self.local_ranks_filter

    def plans(self, local_rank: int) -> tuple[StreamPlan, StreamPlan]:
        """(stdout plan, stderr plan) of worker ``local_rank``."""
        r, t = self.redirects.for_rank(local_rank), self.tee.for_rank(local_rank)
        shown, prefix = self.shown(local_rank), self.prefix(local_rank)
        out = plan_stream(Std.OUT, r, t, shown, self.stdout_path(local_rank), prefix)
        err = plan_stream(Std.ERR, r, t, shown, self.stderr_path(local_rank), prefix)
        if self.collapsers is not None and shown:
            out = collapse_plan(out, Std.OUT, prefix, self.collapsers[0], local_rank)
            err = collapse_plan(err, Std.ERR, prefix, self.collapsers[1], local_rank)
        # torchrun duplicates the lines its tailers print: teed streams of shown ranks
        if self.dup[0] is not None and t & Std.OUT and shown:
            out = replace(out, dup=self.dup[0])
        if self.dup[1] is not None and t & Std.ERR and shown:
            err = replace(err, dup=self.dup[1])
        return out, err


class RunLogs:
    """This agent's log directory for the run; hands out one :class:`AttemptLogs` per group start.

    Args:
        run_id: the rendezvous id (the directory is ``<run id>_<random suffix>``).
        log_dir: ``--log-dir``; None: a temporary directory removed by :meth:`close`.
        role, redirects, tee, local_ranks_filter: the matching options.
        duplicate_stdout_filters, duplicate_stderr_filters: torchrun's options
            (:func:`corral.workers.std.split_filters`); empty: no filtered file.
    """

    def __init__(
        self,
        run_id: str,
        *,
        log_dir: str | None = None,
        role: str = "default",
        redirects: StdSpec | None = None,
        tee: StdSpec | None = None,
        local_ranks_filter: frozenset[int] | None = None,
        collapse: bool = False,
        duplicate_stdout_filters: tuple[str, ...] = (),
        duplicate_stderr_filters: tuple[str, ...] = (),
    ) -> None:
        self._temp: str | None = None
        self.duplicate_filters = (duplicate_stdout_filters, duplicate_stderr_filters)
        self.collapse = collapse
        self._collapsers: dict[int, tuple[LineCollapser, LineCollapser]] = {}
        self._on_collapse_error: Callable[[Exception], None] | None = None  # the attempt's
        if log_dir is None:
            self._temp = base = tempfile.mkdtemp(prefix="corral_")
        else:
            os.makedirs(log_dir, exist_ok=True)
            base = log_dir
        self.run_dir = tempfile.mkdtemp(prefix=f"{run_id}_", dir=base)
        self.role = role
        self.redirects = redirects or StdSpec()
        self.tee = tee or StdSpec()
        self.local_ranks_filter = local_ranks_filter
        self._attempts = 0

    @classmethod
    def from_config(cls, cfg: LaunchConfig, run_id: str | None = None) -> RunLogs:
        return cls(
            run_id or cfg.rdzv_id,
            log_dir=cfg.log_dir,
            role=cfg.role,
            redirects=cfg.redirects,
            tee=cfg.tee,
            local_ranks_filter=cfg.local_ranks_filter,
            collapse=cfg.collapse_logs,
            duplicate_stdout_filters=cfg.duplicate_stdout_filters,
            duplicate_stderr_filters=cfg.duplicate_stderr_filters,
        )

    @property
    def temporary(self) -> str | None:
        """The temporary base directory (None with ``--log-dir``)."""
        return self._temp

    def new_attempt(
        self, local_world_size: int, *, on_error: Callable[[Exception], None] | None = None
    ) -> AttemptLogs:
        """Create ``attempt_<n>/<local rank>/`` for the next group start (n = 0, 1, ...).

        ``on_error`` is told of a failure of the ``--collapse-logs`` timer while
        this attempt is the latest (the collapsers outlive attempts; the worker
        group passes its own, and its wait raises the error).

        With duplicate filters, also ``attempt_<n>/filtered_stdout.log`` and/or
        ``filtered_stderr.log``, empty (torchrun creates them whether or not a
        stream is teed).
        """
        n = self._attempts
        self._attempts += 1
        d = os.path.join(self.run_dir, f"attempt_{n}")
        for local_rank in range(local_world_size):
            os.makedirs(os.path.join(d, str(local_rank)))
        self._on_collapse_error = on_error
        collapsers = None
        if self.collapse and local_world_size > 1:  # one pair per run and size (docs/events.md)
            collapsers = self._collapsers.get(local_world_size)
            if collapsers is None:
                shown = len(self.local_ranks_filter or range(local_world_size))
                collapsers = self._collapsers[local_world_size] = (
                    LineCollapser(self.role, shown, on_error=self._collapse_failed),
                    LineCollapser(self.role, shown, on_error=self._collapse_failed),
                )
        dup: list[LineFilter | None] = []
        for name, needles in zip(("stdout", "stderr"), self.duplicate_filters, strict=True):
            if not needles:
                dup.append(None)
                continue
            path = os.path.join(d, f"filtered_{name}.log")
            with open(path, "wb"):
                pass
            dup.append(LineFilter(path, needles))
        return AttemptLogs(
            d,
            n,
            self.role,
            self.redirects,
            self.tee,
            self.local_ranks_filter,
            collapsers,
            (dup[0], dup[1]),
        )

    def _collapse_failed(self, exc: Exception) -> None:
        # logged at error level by the collapser; the latest attempt's owner fails with it
        if self._on_collapse_error is not None:
            self._on_collapse_error(exc)

    def close(self) -> None:
        """Remove the temporary directory, if this object made one. Idempotent."""
        for pair in self._collapsers.values():
            for collapser in pair:
                collapser.flush()
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None
