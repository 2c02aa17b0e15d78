"""The options of the rendezvous backends, one typed group per reader.

``--rdzv-conf`` (torch's flat ``key=value`` text) is parsed into these by the
configuration layer above (``corral.config.rdzv``); each backend is handed
only its groups:

* :class:`RendezvousOptions`: the dynamic rendezvous's timing (every store-backed backend);
* :class:`StoreOptions`: where a job's keys live and how long a store read may take
  (every store-backed backend, and ``corral status``/``corral timeline``);
* :class:`TcpStoreOptions`: corral's own store (``c10d``, ``static``, ``--standalone``):
  who hosts it and its shared secret;
* :class:`EtcdOptions`: the etcd backend's TLS and user (the store layer reads them
  through its structural ``corral.store.etcd.url.EtcdConf``).

Each group checks its own values: a bad one is a one-line ConfigError naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from corral.core.errors import ConfigError

__all__ = ["EtcdOptions", "RendezvousOptions", "StoreOptions", "TcpStoreOptions"]


def _positive(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"--rdzv-conf {name}={value}: expected a number of seconds > 0")


@dataclass(frozen=True)
class RendezvousOptions:
    """The dynamic rendezvous's timing, with torch's defaults (docs/rendezvous.md)."""

    join_timeout: float = 600.0
    last_call_timeout: float = 30.0
    close_timeout: float = 30.0
    heartbeat_timeout: float = 5.0
    keep_alive_interval: float = 5.0
    keep_alive_max_attempt: int = 3
    settle_time: float = 0.1  # corral's: settle window against a wave of arrivals

    def __post_init__(self) -> None:
        for name in (
            "join_timeout",
            "last_call_timeout",
            "close_timeout",
            "heartbeat_timeout",
            "keep_alive_interval",
        ):
            _positive(name, getattr(self, name))
        if not self.settle_time >= 0:
            raise ConfigError(f"--rdzv-conf settle_time={self.settle_time}: expected seconds >= 0")
        if self.keep_alive_max_attempt < 1:
            raise ConfigError(
                f"--rdzv-conf keep_alive_max_attempt={self.keep_alive_max_attempt}: expected an integer >= 1"
            )

    @property
    def lease_ttl(self) -> float:
        """How long a silent node stays a member: keep_alive_interval x keep_alive_max_attempt."""
        return self.keep_alive_interval * self.keep_alive_max_attempt


@dataclass(frozen=True)
class StoreOptions:
    """Where a job's keys live (``<prefix>/<run id>/``) and how long one store read may take."""

    prefix: str = "/corral"  # etcd's DEFAULT_PREFIX too
    read_timeout: float = 60.0

    def __post_init__(self) -> None:
        _positive("read_timeout", self.read_timeout)


@dataclass(frozen=True)
class EtcdOptions:
    """The etcd backend's own keys: TLS and authentication."""

    protocol: str = "http"  # https when the endpoint or a cacert says so
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if self.protocol not in ("http", "https"):
            raise ConfigError(f"--rdzv-conf protocol={self.protocol}: expected http or https")


@dataclass(frozen=True)
class TcpStoreOptions:
    """corral's own store: which agent hosts it, and its shared secret."""

    is_host: bool | None = None  # None: auto (the endpoint's host is one of this node's addresses)
    token: str | None = None  # else token_file's content, else CORRAL_TOKEN
    token_file: str | None = None

    def __post_init__(self) -> None:
        if self.token is not None and self.token_file is not None:
            raise ConfigError(
                "--rdzv-conf token=...,token_file=...: give the token or a token file, not both"
            )

    def resolve_token(self, environ: Mapping[str, str]) -> str | None:
        """The store's shared secret: ``token``, else the ``token_file``'s content, else
        ``CORRAL_TOKEN`` from ``environ``; None for none.

        Raises: ConfigError if ``token_file`` cannot be read.
        """
        if self.token:
            return self.token
        if self.token_file:
            try:
                with open(self.token_file, encoding="utf-8") as f:
                    return f.read().strip()
            except OSError as exc:
                raise ConfigError(f"--rdzv-conf token_file={self.token_file}: {exc}") from exc
        return environ.get("CORRAL_TOKEN") or None
