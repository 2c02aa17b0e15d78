"""Where events go: an :data:`EventSink` is any callable that takes one :class:`Event`.

Shipped sinks: :func:`null_sink` (the default: nothing), :class:`LoggingSink`
(one log line per event), :class:`JsonlSink` (one JSON object per line, to a
file), and :class:`Fanout` (several sinks, each isolated from the others'
errors). There is no global registry: whoever builds the agent passes its
sink (docs/events.md, "Events").

A sink is called on the event loop's thread, synchronously, at each state
change (never per monitor tick); it must not block for long. A sink that
raises is logged once by :class:`Fanout` and then skipped for that event: an
observer never takes the job down.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from typing import IO

from corral.core.events import Event, EventSink, event_from_dict

__all__ = ["EventSink", "Fanout", "JsonlSink", "LoggingSink", "null_sink", "read_jsonl"]

log = logging.getLogger("corral.events")


def null_sink(event: Event) -> None:
    """The default sink: drops every event."""


class LoggingSink:
    """Logs each event as one line: ``event <Kind> node=... round=... <field>=<value> ...``.

    Args:
        logger: where (default ``corral.events``). level: the level (default INFO).
    """

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self.logger = logger or log
        self.level = level

    def __call__(self, event: Event) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        d = event.to_dict()
        d.pop("v")
        kind = d.pop("kind")
        d.pop("mono")
        d.pop("wall")
        self.logger.log(
            self.level, "event %s %s", kind, " ".join(f"{k}={v!r}" for k, v in d.items())
        )


class JsonlSink:
    """Appends each event to a file as one JSON line (``{"v": 1, "kind": ..., ...}``).

    The file is opened for appending (several agents, or attempts, may share
    one) and each line is written with one ``write`` call, so lines from
    processes on one host never interleave. Lines are flushed as they are
    written: a crashed agent's file holds everything it saw.

    Args:
        path: the file (its directory is created).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __call__(self, event: Event) -> None:
        if self._fd is None:
            return
        line = json.dumps(event.to_dict(), separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode())

    def close(self) -> None:
        """Close the file; later events are dropped. Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Fanout:
    """Calls several sinks in order; a sink that raises is logged and the rest still run.

    Args:
        sinks: the sinks (more can be added with :meth:`add`).
    """

    def __init__(self, sinks: Iterable[EventSink] = ()) -> None:
        self.sinks: list[EventSink] = [s for s in sinks if s is not null_sink]
        self._failed: set[int] = set()

    def add(self, sink: EventSink) -> None:
        if sink is not null_sink:
            self.sinks.append(sink)

    def remove(self, sink: EventSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    def __bool__(self) -> bool:
        """True when some sink listens (callers may skip building events otherwise)."""
        return bool(self.sinks)

    def __call__(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:
                if id(sink) not in self._failed:  # once per sink: no log flood
                    self._failed.add(id(sink))
                    log.exception("event sink %r failed (further errors not logged)", sink)


def read_jsonl(path: str) -> Iterator[Event]:
    """The events of a JSON Lines file, in file order; malformed lines are skipped.

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, encoding="utf-8") as f:
        yield from _parse_lines(f)


def _parse_lines(f: IO[str]) -> Iterator[Event]:
    for line in f:
        line = line.strip()
        if not line:
            continue
        try:
            yield event_from_dict(json.loads(line))
        except (ValueError, TypeError):
            continue  # a truncated last line of a killed agent, or a newer kind
