"""``etcd://`` URLs: parse them, and build them from ``--rdzv-endpoint`` + ``--rdzv-conf``.

Form::

    etcd://[user:password@]host:port[,host:port...][/prefix][?protocol=https&cacert=...&cert=...&key=...]

User and password are percent-decoded. The prefix defaults to ``/corral``; the
port to 2379. IPv6 hosts are written ``[::1]:2379``. Pure: no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, quote, unquote, urlencode

from corral.core.errors import ConfigError

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_PREFIX",
    "EtcdConf",
    "EtcdTarget",
    "etcd_url_from_conf",
    "parse_etcd_url",
]

DEFAULT_PORT = 2379
DEFAULT_PREFIX = "/corral"
_QUERY_KEYS = ("protocol", "cacert", "cert", "key")


class EtcdConf(Protocol):
    """The etcd backend's options, as ``--rdzv-conf`` carries them
    (``corral.config.EtcdOptions`` has them).

    A structural type: the store layer names what it reads and imports nothing
    of the configuration layer above it (nor does importing that layer load
    this package, whose import sets grpc's environment).
    """

    @property
    def protocol(self) -> str: ...
    @property
    def user(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def cacert(self) -> str | None: ...
    @property
    def cert(self) -> str | None: ...
    @property
    def key(self) -> str | None: ...


@dataclass(frozen=True)
class EtcdTarget:
    """Everything needed to reach an etcd cluster, parsed from a URL."""

    endpoints: tuple[tuple[str, int], ...]
    prefix: str = DEFAULT_PREFIX
    user: str | None = None
    password: str | None = None
    protocol: str = "http"
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ConfigError("etcd URL has no endpoint; expected etcd://host:port[,host:port...]")
        if self.protocol not in ("http", "https"):
            raise ConfigError(f"etcd protocol ({self.protocol!r}) must be 'http' or 'https'")
        if (self.cert is None) != (self.key is None):
            raise ConfigError("etcd TLS: give both cert and key (a client certificate), or neither")
        if self.password is not None and self.user is None:
            raise ConfigError("etcd: a password was given without a user")

    @property
    def tls(self) -> bool:
        return self.protocol == "https"

    def endpoint_names(self) -> str:
        return ",".join(_format_hostport(h, p) for h, p in self.endpoints)


def _format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_hostport(text: str) -> tuple[str, int]:
    text = text.strip()
    if not text:
        raise ConfigError(
            "etcd endpoint list has an empty entry; expected host:port[,host:port...]"
        )
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, ""
    if not host:
        raise ConfigError(f"etcd endpoint {text!r} has no host; expected host:port")
    if not port_text:
        return host, DEFAULT_PORT
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(
            f"etcd endpoint {text!r}: port ({port_text!r}) must be a number"
        ) from None
    if not 0 < port < 65536:
        raise ConfigError(f"etcd endpoint {text!r}: port ({port}) must be in 1..65535")
    return host, port


def parse_etcd_url(url: str) -> EtcdTarget:
    """Parse an ``etcd://`` URL (``etcd-v3://`` is accepted too).

    Raises: ConfigError naming the bad part.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("etcd", "etcd-v3"):
        raise ConfigError(f"etcd URL {url!r} must start with etcd://")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    user = password = None
    if at:
        raw_user, colon, raw_password = userinfo.partition(":")
        user = unquote(raw_user)
        password = unquote(raw_password) if colon else None
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _QUERY_KEYS:
            raise ConfigError(
                f"etcd URL option {name!r} is unknown; allowed: {', '.join(_QUERY_KEYS)}"
            )
        options[name] = value
    prefix = "/" + unquote(path) if slash and path else DEFAULT_PREFIX
    protocol = options.get("protocol", "")
    if not protocol:
        protocol = "https" if options.get("cacert") else "http"
    return EtcdTarget(
        endpoints=tuple(_parse_hostport(h) for h in hosts.split(",")),
        prefix=prefix,
        user=user or None,
        password=password,
        protocol=protocol,
        cacert=options.get("cacert") or None,
        cert=options.get("cert") or None,
        key=options.get("key") or None,
    )


def etcd_url_from_conf(endpoint: str, conf: EtcdConf, prefix: str = DEFAULT_PREFIX) -> str:
    """Build the ``etcd://`` URL for ``--rdzv-endpoint``, ``--rdzv-conf``'s etcd keys
    and the job's key ``prefix``.

    ``endpoint`` is ``host:port[,host:port...]``; entries may carry an
    ``http://`` or ``https://`` scheme (as torch's etcd backend accepts), which
    sets the protocol unless ``conf.protocol`` asks for https.

    Raises: ConfigError for a bad endpoint or conflicting schemes.
    """
    protocol = conf.protocol
    hosts: list[str] = []
    schemes: set[str] = set()
    for entry in endpoint.split(","):
        entry = entry.strip()
        scheme, sep, rest = entry.partition("://")
        if sep:
            if scheme not in ("http", "https"):
                raise ConfigError(f"rdzv_endpoint entry {entry!r}: scheme must be http or https")
            schemes.add(scheme)
            entry = rest.rstrip("/")
        host, port = _parse_hostport(entry)
        hosts.append(_format_hostport(host, port))
    if len(schemes) > 1:
        raise ConfigError(f"rdzv_endpoint {endpoint!r} mixes http:// and https:// members")
    if schemes and protocol == "http":
        protocol = schemes.pop()
    userinfo = ""
    if conf.user:
        userinfo = quote(conf.user, safe="")
        if conf.password is not None:
            userinfo += ":" + quote(conf.password, safe="")
        userinfo += "@"
    options = {"protocol": protocol}
    for name in ("cacert", "cert", "key"):
        value = getattr(conf, name)
        if value:
            options[name] = value
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else DEFAULT_PREFIX
    url = f"etcd://{userinfo}{','.join(hosts)}{quote(prefix)}?{urlencode(options)}"
    parse_etcd_url(url)  # validate once, here, at the edge
    return url
