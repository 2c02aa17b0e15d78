"""Slurm's hostlist syntax, expanded in Python (no ``scontrol show hostnames``).

A host list is comma-separated host expressions. An expression may hold any
number of bracketed range lists, ``prefix[ranges]infix[ranges]suffix``; a
range list is comma-separated numbers or ``lo-hi`` ranges, zero-padded to the
width of ``lo`` (``[008-010]`` is 008, 009, 010). Several brackets in one
expression are a product, the first bracket outermost, as Slurm expands it:
``rack[1-2]-node[01-02]`` is rack1-node01, rack1-node02, rack2-node01,
rack2-node02. Duplicates are kept and the order is the list's own (Slurm's
node lists in the environment are already sorted).
"""

from __future__ import annotations

import itertools

__all__ = ["MAX_HOSTS", "HostlistError", "expand_hostlist"]

MAX_HOSTS = 1_000_000  # a guard against a typo such as node[1-999999999]


class HostlistError(ValueError):
    """The text is not a Slurm host list; the message says where."""


def _split_top(text: str) -> list[str]:
    """Split on the commas that are outside brackets."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "[":
            if depth:
                raise HostlistError(f"nested '[' at position {i}")
            depth = 1
        elif ch == "]":
            if not depth:
                raise HostlistError(f"']' without '[' at position {i}")
            depth = 0
        elif ch == "," and not depth:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise HostlistError("'[' is not closed")
    parts.append(text[start:])
    return parts


def _ranges(body: str) -> list[str]:
    """``001-003,010`` -> ["001", "002", "003", "010"]."""
    out: list[str] = []
    for item in body.split(","):
        item = item.strip()
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise HostlistError(f"[{body}]: {item!r} is not N or N-M")
        if not sep:
            out.append(lo)
            continue
        a, b = int(lo), int(hi)
        if b < a:
            raise HostlistError(f"[{body}]: range {item!r} runs backwards")
        if len(out) + b - a + 1 > MAX_HOSTS:
            raise HostlistError(f"[{body}]: more than {MAX_HOSTS} hosts")
        width = len(lo)
        out.extend(str(n).zfill(width) for n in range(a, b + 1))
    return out


def _expand_one(expr: str) -> list[str]:
    """One host expression (no top-level comma) -> its hosts."""
    pieces: list[list[str]] = []  # literal text and range lists, alternating
    rest = expr
    while True:
        open_at = rest.find("[")
        if open_at < 0:
            pieces.append([rest])
            break
        close_at = rest.index("]", open_at)
        pieces.append([rest[:open_at]])
        pieces.append(_ranges(rest[open_at + 1 : close_at]))
        rest = rest[close_at + 1 :]
    total = 1
    for p in pieces:
        total *= len(p)
        if total > MAX_HOSTS:
            raise HostlistError(f"{expr!r}: more than {MAX_HOSTS} hosts")
    return ["".join(combo) for combo in itertools.product(*pieces)]


def expand_hostlist(text: str) -> list[str]:
    """Expand a Slurm host list (``gpu[001-004,010],cpu7``) into host names, in order.

    Raises:
        HostlistError: unbalanced or nested brackets, a range that is not
            ``N`` or ``N-M`` (or runs backwards), an empty host, or more than
            :data:`MAX_HOSTS` hosts.
    """
    text = text.strip()
    if not text:
        raise HostlistError("empty host list")
    hosts: list[str] = []
    for expr in _split_top(text):
        expr = expr.strip()
        if not expr:
            raise HostlistError(f"{text!r}: an empty host between commas")
        hosts.extend(_expand_one(expr))
        if len(hosts) > MAX_HOSTS:
            raise HostlistError(f"more than {MAX_HOSTS} hosts")
    if any(not h for h in hosts):
        raise HostlistError(f"{text!r}: an empty host name")
    return hosts
