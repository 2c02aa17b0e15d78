"""etcd:// URL parsing and building (pure)."""

from __future__ import annotations

import pytest

from corral.config import EtcdOptions
from corral.core.errors import ConfigError
from corral.store.etcd.url import EtcdTarget, etcd_url_from_conf, parse_etcd_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("etcd://10.0.0.1:2379", EtcdTarget(endpoints=(("10.0.0.1", 2379),))),
        ("etcd://h1", EtcdTarget(endpoints=(("h1", 2379),))),
        (
            "etcd://10.0.0.1:2379,10.0.0.2:2380/jobs/a",
            EtcdTarget(endpoints=(("10.0.0.1", 2379), ("10.0.0.2", 2380)), prefix="/jobs/a"),
        ),
        (
            "etcd://root:p%40ss%3Aw@[::1]:2379",
            EtcdTarget(endpoints=(("::1", 2379),), user="root", password="p@ss:w"),
        ),
        (
            "etcd://h:1?protocol=https&cacert=/ca.pem&cert=/c.pem&key=/k.pem",
            EtcdTarget(
                endpoints=(("h", 1),),
                protocol="https",
                cacert="/ca.pem",
                cert="/c.pem",
                key="/k.pem",
            ),
        ),
        (
            "etcd://h:1?cacert=/ca.pem",
            EtcdTarget(endpoints=(("h", 1),), protocol="https", cacert="/ca.pem"),
        ),
        ("etcd-v3://h:1", EtcdTarget(endpoints=(("h", 1),))),
    ],
)
def test_parse(url: str, expected: EtcdTarget) -> None:
    assert parse_etcd_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("tcp://h:1", "must start with etcd://"),
        ("etcd://", "empty entry"),
        ("etcd://h:1,,h:2", "empty entry"),
        ("etcd://h:port", "must be a number"),
        ("etcd://h:70000", "1..65535"),
        ("etcd://h:1?protocol=ftp", "'http' or 'https'"),
        ("etcd://h:1?timeout=3", "unknown"),
        ("etcd://h:1?protocol=https&cert=/c.pem", "both cert and key"),
    ],
)
def test_parse_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_etcd_url(url)


def test_url_from_conf_round_trips() -> None:
    conf = EtcdOptions(
        protocol="https",
        cacert="/etc/ca.pem",
        cert="/etc/c.pem",
        key="/etc/k.pem",
        user="corral",
        password="p@ss word",
    )
    url = etcd_url_from_conf("10.0.0.1:2379, 10.0.0.2", conf, "jobs")
    assert parse_etcd_url(url) == EtcdTarget(
        endpoints=(("10.0.0.1", 2379), ("10.0.0.2", 2379)),
        prefix="/jobs",
        user="corral",
        password="p@ss word",
        protocol="https",
        cacert="/etc/ca.pem",
        cert="/etc/c.pem",
        key="/etc/k.pem",
    )


def test_url_from_conf_defaults_and_schemes() -> None:
    target = parse_etcd_url(etcd_url_from_conf("https://a:1,https://b:2", EtcdOptions()))
    assert target == EtcdTarget(endpoints=(("a", 1), ("b", 2)), protocol="https")
    with pytest.raises(ConfigError, match="mixes"):
        etcd_url_from_conf("http://a:1,https://b:2", EtcdOptions())
