"""Where the script starts in argv: what follows the script belongs to the script, always.

argparse looks for option strings in the whole command line, unique and ambiguous
prefixes included, before it hands the rest to the ``REMAINDER`` positional: a script
argument such as ``--hang`` (a prefix of ``--hang-timeout`` and
``--hang-startup-timeout``) stops the launch with "ambiguous option", even after the
script. :func:`split_at_script` walks the launcher's options with the parser's own
option table (which options take a value, and how many), as argparse reads them, to
find the script; argparse then parses only the launcher's part, the script included,
and everything after the script goes to the script verbatim, neither abbreviated nor
in full (``train.py --nnodes 3 --standalone`` passes both to the script).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["split_at_script"]

_Match = tuple[argparse.Action, str | None]  # (action, the value attached to the token)


def split_at_script(
    parser: argparse.ArgumentParser, argv: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Split ``argv`` after the script (the first positional).

    Returns:
        ``(launcher, script_args)``: ``launcher`` ends with the script (``-m MODULE``'s
        module, ``--no-python``'s command); ``script_args`` is the rest, verbatim. With
        no script in ``argv``, ``launcher`` is all of it and ``script_args`` is empty
        (argparse then says what is missing or wrong).
    """
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":  # the next token is the script, whatever it looks like
            end = i + 2 if i + 1 < len(argv) else len(argv)
            return list(argv[:end]), list(argv[end:])
        if _positional(parser, token):
            return list(argv[: i + 1]), list(argv[i + 1 :])
        i += 1 + _value_count(parser, token, argv[i + 1 :])
    return list(argv), []


def _matches(parser: argparse.ArgumentParser, token: str) -> list[_Match]:
    """The options ``token`` may name, as argparse's ``_parse_optional`` reads it."""
    table = parser._option_string_actions
    if token in table:
        return [(table[token], None)]
    if "=" in token:
        name, value = token.split("=", 1)
        if name in table:
            return [(table[name], value)]
    chars = parser.prefix_chars
    if token[1] in chars:  # --name[=value]: every option it is a prefix of
        if not parser.allow_abbrev:
            return []
        name, eq, value = token.partition("=")
        return [(a, value if eq else None) for s, a in table.items() if s.startswith(name)]
    # -xVALUE: a short option with its value attached (or short flags run together)
    short, attached = token[:2], token[2:]
    return [
        (a, attached) if s == short else (a, None)
        for s, a in table.items()
        if s == short or s.startswith(token)
    ]


def _positional(parser: argparse.ArgumentParser, token: str) -> bool:
    """Whether argparse takes ``token`` for a positional (not an option string)."""
    if not token or token[0] not in parser.prefix_chars:
        return True
    if token in parser._option_string_actions:
        return False
    if len(token) == 1:
        return True
    if _matches(parser, token):
        return False
    if parser._negative_number_matcher.match(token) and not parser._has_negative_number_optionals:
        return True
    return " " in token


def _value_count(parser: argparse.ArgumentParser, token: str, rest: Sequence[str]) -> int:
    """How many of the tokens after the option ``token`` are its values."""
    matches = _matches(parser, token)
    if not matches:
        return 0  # no such option: argparse reports it
    action, attached = matches[0]  # several: argparse reports the ambiguity
    table = parser._option_string_actions
    # short flags run together (-mr3 is -m -r3), as argparse's consume_optional reads them
    while action.nargs == 0 and attached and token[1] not in parser.prefix_chars:
        follower = table.get(token[0] + attached[0])
        if follower is None:
            return 0
        action, attached = follower, attached[1:] or None
    if attached is not None or action.nargs == 0:
        return 0
    nargs = action.nargs
    if nargs is None:
        return 1
    if isinstance(nargs, int):
        return nargs
    if nargs in (argparse.REMAINDER, argparse.PARSER):
        return len(rest)
    taken = 0  # "?", "*", "+": the values that follow, up to the next option string
    for value in rest:
        if value == "--" or not _positional(parser, value) or (nargs == "?" and taken == 1):
            break
        taken += 1
    return taken
