"""Addresses without name resolution on the hot path."""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["is_local_address", "local_address_towards", "numeric_host", "resolve_once"]


def numeric_host(host: str) -> str | None:
    """Return ``host`` if it is a numeric IPv4/IPv6 address, else None."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def resolve_once(host: str) -> str:
    """Resolve a host name to a numeric address (done once, at start-up, never on a hot path)."""
    num = numeric_host(host)
    if num is not None:
        return num
    if host in ("localhost", ""):
        return "127.0.0.1"
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return str(infos[0][4][0])


def local_address_towards(host: str) -> str:
    """The local numeric address this machine uses to reach ``host`` (a UDP connect sends nothing)."""
    addr = resolve_once(host)
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
