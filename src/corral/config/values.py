"""Values of the command line, parsed once at the edge: booleans, ``host[:port]``,
the ``-r``/``-t`` stream specs, signal lists. Pure; every error is a one-line
:class:`corral.core.errors.ConfigError` naming the option, the value and what is allowed.
"""

from __future__ import annotations

import signal

from corral.core.errors import ConfigError
from corral.workers.std import Std, StdSpec, parse_std_spec

__all__ = [
    "BOOL_VALUES",
    "DEFAULT_SIGNALS",
    "Std",
    "StdSpec",
    "parse_bool",
    "parse_signals",
    "parse_std_spec",
    "split_host_port",
]

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
BOOL_VALUES = "1/0, true/false, yes/no"


def parse_bool(text: str) -> bool | None:
    """``1/0``, ``true/false``, ``yes/no`` (and torch's ``t/f``, ``y/n``, ``on/off``); None if neither."""
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    return None


def split_host_port(endpoint: str, default_port: int) -> tuple[str, int]:
    """Split ``host[:port]`` (``[v6]:port`` for IPv6) into (host, port).

    Raises:
        ValueError: the port is not an integer in 0..65535, or the brackets do not close.
    """
    if endpoint.startswith("["):
        host, closed, rest = endpoint[1:].partition("]")
        if not closed:
            raise ValueError("an IPv6 address must be written [addr] or [addr]:port")
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError("expected :port after [addr]")
        port_text = rest[1:]
    else:
        if endpoint.count(":") > 1:  # a bare IPv6 address, no port
            return endpoint, default_port
        host, sep, port_text = endpoint.rpartition(":")
        if not sep:
            return endpoint, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not an integer in 0..65535")
    return host, int(port_text)


_UNCATCHABLE = frozenset({"SIGKILL", "SIGSTOP"})


def parse_signals(option: str, text: str) -> tuple[int, ...]:
    """Parse a comma-separated list of signal names (``SIGTERM`` or ``TERM``, any case) or numbers.

    Raises:
        ConfigError: an unknown or uncatchable signal, naming ``option`` and ``text``.
    """
    out: list[int] = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        sig: signal.Signals | None = None
        if name.isdigit():
            try:
                sig = signal.Signals(int(name))
            except ValueError:
                sig = None
        else:
            upper = name.upper()
            full = upper if upper.startswith("SIG") else "SIG" + upper
            sig = getattr(signal.Signals, full, None)
        if sig is None or sig.name in _UNCATCHABLE:
            raise ConfigError(
                f"{option} {text}: {name!r} is not a signal that can be handled; "
                "expected comma-separated names such as SIGTERM,SIGINT,SIGUSR1"
            )
        if int(sig) not in out:
            out.append(int(sig))
    if not out:
        raise ConfigError(
            f"{option} {text!r}: expected at least one signal name, e.g. SIGTERM,SIGINT"
        )
    return tuple(out)


DEFAULT_SIGNALS: tuple[int, ...] = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
