"""Which standard streams of a worker go to files: torch's ``Std`` and the ``-r``/``-t``
values (a default and per-local-rank overrides). Pure; the configuration parses the
options with :func:`parse_std_spec`, the worker logs act on them."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from corral.core.errors import ConfigError

__all__ = ["Std", "StdSpec", "parse_std_spec", "split_filters"]


class Std(enum.IntFlag):
    """Which standard streams of a worker go to files (torch's ``Std``)."""

    NONE = 0
    OUT = 1
    ERR = 2
    ALL = 3


@dataclass(frozen=True)
class StdSpec:
    """``-r``/``-t`` values: a default and per-local-rank overrides (``0:1,1:2``)."""

    default: Std = Std.NONE
    per_rank: tuple[tuple[int, Std], ...] = ()

    def for_rank(self, local_rank: int) -> Std:
        for rank, std in self.per_rank:
            if rank == local_rank:
                return std
        return self.default


def parse_std_spec(option: str, text: str) -> StdSpec:
    """Parse ``-r``/``-t``: ``0``-``3``, or per local rank ``0:1,1:2`` (ranks not named get 0).

    Raises:
        ConfigError: naming ``option`` and ``text``.
    """
    allowed = (
        "expected 0-3 (0 none, 1 stdout, 2 stderr, 3 both) or <local rank>:<0-3>,... e.g. 0:1,1:2"
    )
    text = text.strip()
    if text in {"0", "1", "2", "3"}:
        return StdSpec(default=Std(int(text)))
    per_rank: dict[int, Std] = {}
    for item in text.split(","):
        rank_text, sep, std_text = item.strip().partition(":")
        if not sep or not rank_text.isdigit() or std_text not in {"0", "1", "2", "3"}:
            raise ConfigError(f"{option} {text}: {allowed}")
        if int(rank_text) in per_rank:
            raise ConfigError(f"{option} {text}: local rank {int(rank_text)} is given twice")
        per_rank[int(rank_text)] = Std(int(std_text))
    return StdSpec(default=Std.NONE, per_rank=tuple(sorted(per_rank.items())))


def split_filters(text: str | None) -> tuple[str, ...]:
    """``--duplicate-std{out,err}-filters``: torchrun's ``comma_separated_list``.

    Unset (None) duplicates nothing; otherwise the text split at commas, ``,,``
    standing for a comma. As in torchrun, an empty item (``""``, ``a,``) is a
    filter that every line matches.
    """
    if text is None:
        return ()
    placeholder = "\0"
    return tuple(
        item.replace(placeholder, ",") for item in text.replace(",,", placeholder).split(",")
    )
