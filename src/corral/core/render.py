"""Error files in, one readable root-cause block out. Pure apart from reading the file.

Error files are what torch's ``@record`` (and :func:`corral.record`) write:
``{"message": {"message": "<Type>: <msg>", "extraInfo": {"py_callstack": "<tb>",
"timestamp": "<unix s>"}}}``. torch also knows a plain-string ``message`` and
a top-level ``timestamp``; both are accepted here. Garbage yields None, never
an exception.
"""

from __future__ import annotations

import json
from typing import Any

from corral.core.failures import FailureReport

__all__ = ["parse_error_data", "read_error_file", "render_root_cause"]

_MAX_ERROR_FILE = 4 * 1024 * 1024
_TAIL_SHOWN = 20


def _as_float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError):
        return None


def parse_error_data(data: Any) -> tuple[str, str | None, float | None] | None:
    """(message, traceback, timestamp) from decoded error-file JSON, or None if unusable."""
    if not isinstance(data, dict) or "message" not in data:
        return None
    msg = data["message"]
    top_ts = _as_float(data.get("timestamp"))
    if isinstance(msg, str):
        return msg, None, top_ts
    if not isinstance(msg, dict):
        return None
    text = msg.get("message")
    extra = msg.get("extraInfo")
    tb: str | None = None
    ts = top_ts
    if isinstance(extra, dict):
        cs = extra.get("py_callstack")
        tb = cs if isinstance(cs, str) and cs else None
        ts = _as_float(extra.get("timestamp")) if "timestamp" in extra else ts
    if not isinstance(text, str):
        if tb is None:
            return None
        text = "<no message>"
    return text, tb, ts


def read_error_file(path: str) -> tuple[str, str | None, float | None] | None:
    """Read a worker's error file: (message, traceback, timestamp), or None.

    None when the file is missing, empty, too large, not JSON, or not in a known shape.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_ERROR_FILE + 1)
    except OSError:
        return None
    if not raw or len(raw) > _MAX_ERROR_FILE:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return parse_error_data(data)


def render_root_cause(report: FailureReport, total_failures: int) -> str:
    """One short block that says which worker failed, how, and why.

    Args:
        report: the root cause.
        total_failures: how many workers failed in all (others are summarised).
    """
    if report.lost and report.message:  # a whole node lost: the message names it
        return f"corral: {report.message}"
    if report.hang:
        how = "hung (no progress within --hang-timeout)"
    elif report.exitcode < 0:
        how = f"died of {report.signal_name}"
    else:
        how = f"exited with code {report.exitcode}"
    head = (
        f"corral: worker rank {report.rank} (local rank {report.local_rank}, "
        f"node {report.group_rank}, host {report.host or '?'}, pid {report.pid}) {how}"
    )
    lines = [head]
    if report.round or report.restart_count:
        lines.append(f"  round {report.round}, after {report.restart_count} restart(s)")
    if report.message or report.traceback:
        if report.traceback:
            lines.append("  hang report:" if report.hang else "  traceback:")
            lines.extend("    " + ln for ln in report.traceback.rstrip("\n").splitlines())
        if report.message and not (
            report.traceback and report.message in report.traceback.rstrip().splitlines()[-1:]
        ):
            lines.append(f"  error: {report.message}")
    elif report.stderr_tail:
        tail = report.stderr_tail.rstrip("\n").splitlines()[-_TAIL_SHOWN:]
        lines.append(f"  last {len(tail)} line(s) of stderr:")
        lines.extend("    " + ln for ln in tail)
    else:
        lines.append("  no error file and no stderr output (decorate main() with @record)")
    if report.error_file:
        lines.append(f"  error file: {report.error_file}")
    if total_failures > 1:
        others = total_failures - 1
        lines.append(f"  ({others} other worker{'s' if others > 1 else ''} failed after it)")
    return "\n".join(lines)
