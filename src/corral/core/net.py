"""Addresses without name resolution on the hot path."""

from __future__ import annotations

import ipaddress
import logging
import socket
import time

from corral.core.errors import LauncherError

__all__ = [
    "SILENCE_BOUND",
    "bound_silence",
    "free_port",
    "is_local_address",
    "local_address_towards",
    "numeric_host",
    "resolve_once",
    "silence_bound",
]

log = logging.getLogger("corral")

#: How long a start-up look-up keeps trying a name that does not resolve yet
#: (torch's read_timeout): under a scheduler a peer's name may not be in DNS until
#: its pod or node runs (a Kubernetes headless service; docs/schedulers.md).
RESOLVE_WAIT = 60.0


def numeric_host(host: str) -> str | None:
    """Return ``host`` if it is a numeric IPv4/IPv6 address, else None."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def resolve_once(host: str, wait: float = RESOLVE_WAIT) -> str:
    """Resolve a host name to a numeric address (done once, at start-up, never on a hot path).

    A name that does not resolve (yet) is tried again, 0.5 s apart doubling to
    5 s, for up to ``wait`` seconds, with one log line.

    Raises:
        LauncherError: one line, when it still does not resolve after ``wait``.
    """
    num = numeric_host(host)
    if num is not None:
        return num
    if host in ("localhost", ""):
        return "127.0.0.1"
    deadline = time.monotonic() + wait
    delay = 0.5
    while True:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            return str(infos[0][4][0])
        except (socket.gaierror, UnicodeError) as exc:
            left = deadline - time.monotonic()
            why = getattr(exc, "strerror", None) or str(exc)
            if left <= 0:
                raise LauncherError(
                    f"cannot resolve host {host!r}: {why} (tried for {wait:g} s)"
                ) from None
            if delay == 0.5:
                log.warning("host %r does not resolve (%s); trying for up to %g s", host, why, wait)
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


def local_address_towards(host: str, wait: float = RESOLVE_WAIT) -> str:
    """The local numeric address this machine uses to reach ``host`` (a UDP connect sends nothing).

    ``host`` is resolved with :func:`resolve_once` (``wait``).
    """
    addr = resolve_once(host, wait)
    if ipaddress.ip_address(addr).is_loopback:
        return "127.0.0.1" if ":" not in addr else "::1"
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((addr, 9))
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def is_local_address(host: str) -> bool:
    """True if ``host`` (numeric) can be bound on this machine."""
    addr = numeric_host(host)
    if addr is None:
        return False
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((addr, 0))
        except OSError:
            return False
    return True


#: How long a TCP connection of corral's may stay silent before the kernel ends it,
#: before a lease says better: twice torch's default membership timeout (lease TTL,
#: 5 s x 3), so that no blip shorter than that timeout can end a healthy connection.
SILENCE_BOUND = 30.0


def silence_bound(ttl: float) -> float:
    """The silence bound of a connection that carries a lease of ``ttl`` seconds: 2 x ttl.

    Past the lease's own TTL (the owner fences itself and the store drops it first),
    so a partition shorter than the membership timeout never ends the connection.
    """
    return max(2.0 * ttl, 2.0)


def bound_silence(sock: socket.socket | None, seconds: float) -> None:
    """End ``sock``'s connection when its peer stays silent for about ``seconds``.

    ``TCP_USER_TIMEOUT``: data sent and not acknowledged for that long ends it;
    TCP keepalive (first probe after ``seconds / 2`` idle, then every ``seconds / 6``):
    an idle connection is probed, and the user timeout ends it when probes go
    unanswered, about ``1.5 x seconds`` after the last sign of life. The pending
    calls on it then fail with ETIMEDOUT. Options a platform lacks are skipped.
    """
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    opts = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), max(1, int(seconds / 2))),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), max(1, int(seconds / 6))),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 3),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(seconds * 1000)),
    ]
    for level, opt, value in opts:
        if opt is not None:
            try:
                sock.setsockopt(level, opt, value)
            except OSError:
                pass  # a closed socket, or an option this kernel refuses


def free_port(addr: str) -> int:
    """A port that is free now on ``addr`` (bind port 0, read it, release it)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    for host in (addr, ""):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                return int(s.getsockname()[1])
        except OSError:
            continue
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])
