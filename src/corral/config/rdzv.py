"""``--rdzv-conf``: torch's flat ``key=value`` text, parsed into one typed group of
options per reader.

``RendezvousOptions``, ``StoreOptions``, ``TcpStoreOptions`` and ``EtcdOptions``,
defined by the rendezvous layer that reads them (:mod:`corral.rendezvous.options`).

Each backend is handed only its groups. The text stays torch's: every key torch 2.13
reads is accepted with its meaning; a key no one reads, or one the chosen backend does
not read, is named in one warning line, never an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

from corral.config.values import BOOL_VALUES, parse_bool, split_host_port
from corral.core.errors import ConfigError
from corral.rendezvous.options import (
    EtcdOptions,
    RendezvousOptions,
    StoreOptions,
    TcpStoreOptions,
)

if TYPE_CHECKING:
    from corral.store.api import Store

__all__ = [
    "EtcdOptions",
    "RdzvConf",
    "RendezvousOptions",
    "StoreOptions",
    "TcpStoreOptions",
]


_GROUPS: dict[str, type] = {
    "rendezvous": RendezvousOptions,
    "store": StoreOptions,
    "tcp": TcpStoreOptions,
    "etcd": EtcdOptions,
}
# key -> (group, its annotation's text); local_addr is the agent's, not a backend's
_KEYS: dict[str, tuple[str, str]] = {
    f.name: (group, str(f.type)) for group, cls in _GROUPS.items() for f in fields(cls)
}
_KEYS["local_addr"] = ("", "str | None")

# The groups each built-in backend reads; a plug-in backend is not checked.
BACKEND_GROUPS: dict[str, frozenset[str]] = {
    "c10d": frozenset({"rendezvous", "store", "tcp"}),
    "static": frozenset({"rendezvous", "store", "tcp"}),
    "etcd": frozenset({"rendezvous", "store", "etcd"}),
}
# Keys of a group a backend reads that it does not read itself: static's node rank 0 hosts
# the store, whatever is_host says.
BACKEND_SKIPS: dict[str, frozenset[str]] = {"static": frozenset({"is_host"})}


@dataclass(frozen=True)
class RdzvConf:
    """``--rdzv-conf``, one typed group per reader (see the module's docstring)."""

    rendezvous: RendezvousOptions = field(default_factory=RendezvousOptions)
    store: StoreOptions = field(default_factory=StoreOptions)
    tcp: TcpStoreOptions = field(default_factory=TcpStoreOptions)
    etcd: EtcdOptions = field(default_factory=EtcdOptions)
    # This node's address when --local-addr is not given (torchrun takes it only as --local-addr).
    local_addr: str | None = None
    # Keys of the text that no built-in reads, with their text (parse): a plug-in backend's
    # own options (extra_value), else named in one warning line, never an error.
    extra: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    # corral's names of the keys the text gave (unread_warning).
    given: frozenset[str] = field(default=frozenset(), compare=False)

    @classmethod
    def known_keys(cls) -> tuple[str, ...]:
        """Every key ``parse`` accepts: corral's, then torch's other names."""
        return tuple(_KEYS) + tuple(_TORCH_ALIASES) + tuple(_TORCH_ONLY)

    @property
    def unknown(self) -> tuple[str, ...]:
        """The keys no built-in reads, each once, in the order given."""
        return tuple(dict.fromkeys(key for key, _ in self.extra))

    def extra_value(self, key: str) -> str | None:
        """The text of a key no built-in reads (a plug-in backend's option); the last given."""
        found = None
        for name, value in self.extra:
            if name == key:
                found = value
        return found

    def unknown_warning(
        self, option: str = "--rdzv-conf", backend: str | None = None
    ) -> str | None:
        """The one warning line for keys no one reads (None: there are none, or ``backend``
        is a plug-in, which reads the keys corral does not know: :meth:`extra_value`)."""
        if not self.unknown or (backend is not None and backend not in BACKEND_GROUPS):
            return None
        keys = ", ".join(repr(k) for k in self.unknown)
        return (
            f"{option}: ignoring unknown key{'s' if len(self.unknown) > 1 else ''} {keys}; "
            f"corral reads {', '.join(self.known_keys())}"
        )

    def unread_warning(self, backend: str, option: str = "--rdzv-conf") -> str | None:
        """The one warning line for keys given that ``backend`` does not read (None: none,
        or a plug-in backend, whose options corral does not know)."""
        groups = BACKEND_GROUPS.get(backend)
        if groups is None:
            return None
        skips = BACKEND_SKIPS.get(backend, frozenset())
        unread = sorted(
            k for k in self.given if k in skips or (_KEYS[k][0] and _KEYS[k][0] not in groups)
        )
        if not unread:
            return None
        return (
            f"{option}: the {backend} backend does not read {', '.join(unread)}; "
            f"{'they are' if len(unread) > 1 else 'it is'} ignored"
        )

    async def open_job_store(self, backend: str, endpoint: str) -> tuple[Store, str]:
        """Open the job's store as ``--rdzv-backend``/``--rdzv-endpoint`` and these keys
        name it (``corral status``, ``corral timeline``); returns it and a label for humans.

        Raises: ConfigError (a bad endpoint), StoreError (it cannot be reached).
        """
        from corral.store.registry import open_store

        if backend in ("etcd", "etcd-v3"):
            from corral.store.etcd.url import etcd_url_from_conf

            url = etcd_url_from_conf(endpoint, self.etcd, self.store.prefix)
            return await open_store(url, timeout=self.store.read_timeout), f"etcd {endpoint}"
        try:
            host, port = split_host_port(endpoint, 29400)
        except ValueError as exc:
            raise ConfigError(f"--rdzv-endpoint {endpoint}: {exc}") from exc
        from corral.store.tcp.server import tcp_url

        token = self.tcp.resolve_token(os.environ)
        url = tcp_url(host, port)
        return await open_store(url, token=token, timeout=min(self.store.read_timeout, 10.0)), url

    def with_host(self) -> RdzvConf:
        """This conf, with this agent hosting corral's store (``--standalone``)."""
        return replace(self, tcp=replace(self.tcp, is_host=True))

    @classmethod
    def parse(cls, text: str, option: str = "--rdzv-conf") -> RdzvConf:
        """Parse ``k=v,k=v`` into the typed groups (floats, ints, bools, strings).

        Accepts what torchrun accepts (docs/contract.md): corral's keys, and every key
        that torch 2.13's rendezvous handlers or launcher read, with their meaning
        (:data:`_TORCH_ALIASES`, :data:`_TORCH_ONLY`). A key that no built-in reads
        is kept with its text in ``extra`` (a plug-in backend's option, else named by
        :meth:`unknown_warning`), never an error.

        Raises:
            ConfigError: malformed text, or a bad value for a known key.
        """
        text = text.strip()
        if not text:
            return cls()
        values: dict[str, object] = {}
        aliased: dict[str, tuple[str, object]] = {}  # canonical key -> (torch's key, value)
        extra: list[tuple[str, str]] = []
        for item in text.split(","):
            key, sep, value = item.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or not value:
                raise ConfigError(
                    f"{option} {text}: expected <key>=<value>,<key>=<value>,... "
                    f"with keys among {', '.join(cls.known_keys())}"
                )
            if key in _TORCH_ONLY:
                _check_torch_only(option, key, value)
                continue
            if key in _TORCH_ALIASES:
                target = _TORCH_ALIASES[key]
                aliased[target] = (key, _convert(option, key, value, _KEYS[target][1]))
                continue
            if key not in _KEYS:
                extra.append((key, value))
                continue
            values[key] = _convert(option, key, value, _KEYS[key][1])
        for target, (key, converted) in aliased.items():
            if target not in values:
                values[target] = converted
            elif key != "timeout" and values[target] != converted:
                raise ConfigError(
                    f"{option} {key}={converted},{target}={values[target]}: "
                    f"{key} is torch's name for {target}; give one value"
                )
        groups: dict[str, dict[str, object]] = {group: {} for group in _GROUPS}
        for key, converted in values.items():
            group = _KEYS[key][0]
            if group:
                groups[group][key] = converted
        made = {group: _GROUPS[group](**kw) for group, kw in groups.items()}
        local_addr = values.get("local_addr")
        return cls(
            **made,
            local_addr=str(local_addr) if local_addr is not None else None,
            extra=tuple(extra),
            given=frozenset(values),
        )


def _convert(option: str, key: str, value: str, kind: str) -> object:
    """``value`` of ``key`` as its field's type (``kind``, the annotation's text)."""
    if kind.startswith("float"):
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if number != number:  # not a number, or NaN
            raise ConfigError(f"{option} {key}={value}: expected a number of seconds")
        return number
    if kind.startswith("int"):
        if not value.lstrip("-").isdigit():
            raise ConfigError(f"{option} {key}={value}: expected an integer")
        return int(value)
    if kind.startswith("bool"):
        flag = parse_bool(value)
        if flag is None:
            raise ConfigError(f"{option} {key}={value}: expected a boolean ({BOOL_VALUES})")
        return flag
    return value


# torch's names for keys corral reads under its own name (torch 2.13): ``timeout`` is the
# legacy join timeout (launcher.api's rdzv_timeout; the etcd and static handlers read it;
# ``join_timeout`` wins when both are given); the etcd-v2 backend's TLS keys; the legacy
# etcd handler's key prefix.
_TORCH_ALIASES = {
    "timeout": "join_timeout",
    "etcd_prefix": "prefix",
    "ssl_cert": "cert",
    "ssl_cert_key": "key",
    "ca_cert": "cacert",
}

# Keys torch reads that have no effect in corral; their values are still checked.
_TORCH_ONLY = {
    "rank": "the static handler's node rank; torchrun sets it from --node-rank, as corral does",
    "use_libuv": "torch's TCPStore backend switch (ignored by torch 2.13 too)",
    "store_type": "the c10d store's type; corral's embedded store is TCP (tcp only)",
}


def _check_torch_only(option: str, key: str, value: str) -> None:
    if key == "rank" and not value.isdigit():
        raise ConfigError(f"{option} {key}={value}: expected an integer >= 0")
    if key == "use_libuv" and parse_bool(value) is None:
        raise ConfigError(f"{option} {key}={value}: expected a boolean ({BOOL_VALUES})")
    if key == "store_type" and value.lower() != "tcp":
        raise ConfigError(
            f"{option} {key}={value}: corral's c10d store is served over TCP; expected tcp"
        )
