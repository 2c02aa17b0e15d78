"""Slurm's hostlist syntax, table-tested against the forms Slurm documents and emits."""

from __future__ import annotations

import pytest

from corral.schedulers.hostlist import HostlistError, expand_hostlist

CASES: list[tuple[str, list[str]]] = [
    ("gpu001", ["gpu001"]),
    ("a,b,c", ["a", "b", "c"]),
    ("gpu[1-3]", ["gpu1", "gpu2", "gpu3"]),
    # zero padding: the width of the lower bound
    ("gpu[001-004,010]", ["gpu001", "gpu002", "gpu003", "gpu004", "gpu010"]),
    ("gpu[001-004,010],cpu7", ["gpu001", "gpu002", "gpu003", "gpu004", "gpu010", "cpu7"]),
    ("n[8-11]", ["n8", "n9", "n10", "n11"]),
    ("n[08-11]", ["n08", "n09", "n10", "n11"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("n[0-2]", ["n0", "n1", "n2"]),
    ("n[5]", ["n5"]),
    # several brackets in one name: a product, the first bracket outermost
    (
        "rack[1-2]-node[01-03]",
        [
            "rack1-node01",
            "rack1-node02",
            "rack1-node03",
            "rack2-node01",
            "rack2-node02",
            "rack2-node03",
        ],
    ),
    ("r[1,3]n[1-2]x", ["r1n1x", "r1n2x", "r3n1x", "r3n2x"]),
    # a suffix after the bracket, dots and dashes in names
    ("node[1-2].ib", ["node1.ib", "node2.ib"]),
    ("my-host[1-2]-ib,login-1", ["my-host1-ib", "my-host2-ib", "login-1"]),
    ("127.0.0.[1-3]", ["127.0.0.1", "127.0.0.2", "127.0.0.3"]),
    ("a[1-2],b[3-4]", ["a1", "a2", "b3", "b4"]),
    (" gpu[1-2] ", ["gpu1", "gpu2"]),
    ("gpu[1-2,4-5,7]", ["gpu1", "gpu2", "gpu4", "gpu5", "gpu7"]),
]


@pytest.mark.parametrize(("text", "hosts"), CASES, ids=[c[0] for c in CASES])
def test_expand(text: str, hosts: list[str]) -> None:
    assert expand_hostlist(text) == hosts


BAD = [
    "",
    "gpu[1-3",
    "gpu1-3]",
    "gpu[[1-2]]",
    "gpu[a-b]",
    "gpu[3-1]",
    "gpu[1-]",
    "gpu[]",
    "a,,b",
    "gpu[1-2000000]",
]


@pytest.mark.parametrize("text", BAD)
def test_bad_hostlist_is_one_error(text: str) -> None:
    with pytest.raises(HostlistError):
        expand_hostlist(text)
