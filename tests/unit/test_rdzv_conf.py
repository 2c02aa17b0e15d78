"""--rdzv-conf accepts what torchrun accepts: torch's keys with their meaning, unknown keys warned."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import corral_env

from corral.cli import parse_args
from corral.config import RdzvConf, RendezvousOptions
from corral.core.errors import ConfigError

S = "train.py"


def test_torchs_own_launcher_test_string() -> None:
    # torch's launcher tests pass exactly this; corral exited 2 on 'timeout' before
    r = RdzvConf.parse("join_timeout=5,last_call_timeout=1,timeout=5")
    assert (r.rendezvous.join_timeout, r.rendezvous.last_call_timeout, r.unknown) == (5.0, 1.0, ())
    assert r.unknown_warning() is None


@pytest.mark.parametrize(
    ("text", "join_timeout"),
    [
        ("timeout=42", 42.0),  # the legacy join timeout (launcher.api rdzv_timeout, etcd, static)
        ("timeout=42,join_timeout=7", 7.0),  # join_timeout wins, as torch's c10d handler reads it
        ("join_timeout=7,timeout=900", 7.0),  # (launcher.api always sets timeout=900)
        ("", 600.0),
    ],
)
def test_timeout_is_the_legacy_join_timeout(text: str, join_timeout: float) -> None:
    assert RdzvConf.parse(text).rendezvous.join_timeout == join_timeout


def test_torchs_other_names_mean_corrals_keys() -> None:
    r = RdzvConf.parse(
        "etcd_prefix=/tel,ssl_cert=/c.pem,ssl_cert_key=/k.pem,ca_cert=/ca.pem,protocol=https"
    )
    assert (r.store.prefix, r.etcd.cert, r.etcd.key, r.etcd.cacert, r.etcd.protocol) == (
        "/tel",
        "/c.pem",
        "/k.pem",
        "/ca.pem",
        "https",
    )
    assert (
        RdzvConf.parse("cert=/c.pem,ssl_cert=/c.pem").etcd.cert == "/c.pem"
    )  # the same value: fine
    with pytest.raises(ConfigError, match="ssl_cert is torch's name for cert; give one value"):
        RdzvConf.parse("cert=/a.pem,ssl_cert=/b.pem")


def test_keys_torch_reads_that_change_nothing_here_are_accepted_and_checked() -> None:
    r = RdzvConf.parse(
        "rank=3,use_libuv=0,store_type=TCP,close_timeout=9,heartbeat_timeout=4,"
        "keep_alive_interval=2,keep_alive_max_attempt=5,read_timeout=8,is_host=1"
    )
    assert r.unknown == ()
    o = r.rendezvous
    assert (o.close_timeout, o.heartbeat_timeout, o.keep_alive_interval) == (9.0, 4.0, 2.0)
    assert (o.keep_alive_max_attempt, r.store.read_timeout, r.tcp.is_host) == (5, 8.0, True)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("timeout=soon", "--rdzv-conf timeout=soon: expected a number of seconds"),
        ("timeout=0", "--rdzv-conf join_timeout=0.0: expected a number of seconds > 0"),
        ("rank=x", "--rdzv-conf rank=x: expected an integer >= 0"),
        ("use_libuv=maybe", "--rdzv-conf use_libuv=maybe: expected a boolean"),
        ("store_type=file", "--rdzv-conf store_type=file: corral's c10d store is served over TCP"),
        ("heartbeat_timeout=-1", "heartbeat_timeout=-1.0: expected a number of seconds > 0"),
        ("keep_alive_max_attempt=1.5", "keep_alive_max_attempt=1.5: expected an integer"),
        ("junk", "--rdzv-conf junk: expected <key>=<value>"),
        ("a=", "--rdzv-conf a=: expected <key>=<value>"),
    ],
)
def test_a_known_key_with_a_bad_value_is_one_line_error(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        RdzvConf.parse(text)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_an_unknown_key_is_one_warning_line_never_an_error() -> None:
    r = RdzvConf.parse("join_timeout=5,bogus=1,other=x,bogus=2")
    assert r.rendezvous.join_timeout == 5.0 and r.unknown == ("bogus", "other")
    assert r == RdzvConf(
        rendezvous=RendezvousOptions(join_timeout=5.0)
    )  # the unknown keys change nothing
    line = r.unknown_warning()
    assert line is not None and "\n" not in line
    assert line.startswith("--rdzv-conf: ignoring unknown keys 'bogus', 'other'; corral reads ")
    for key in ("join_timeout", "timeout", "read_timeout", "store_type", "local_addr", "token"):
        assert re.search(rf"\b{key}\b", line), key


def test_local_addr_is_the_nodes_address_unless_local_addr_is_given() -> None:
    pin = ("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:29400")
    c = parse_args([*pin, "--rdzv-conf", "local_addr=127.0.0.5", S], {})
    assert c.local_addr == "127.0.0.5"
    c = parse_args(
        [*pin, "--local-addr", "127.0.0.6", "--rdzv-conf", "local_addr=127.0.0.5", S], {}
    )
    assert c.local_addr == "127.0.0.6"


def _torch_dir() -> Path | None:
    spec = importlib.util.find_spec("torch")  # its sources only: the launcher never imports torch
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "distributed"


def torch_keys(root: Path) -> set[str]:
    """Every --rdzv-conf key that torch's rendezvous handlers and launcher read."""
    files = [*sorted((root / "elastic" / "rendezvous").glob("*.py")), root / "launcher" / "api.py"]
    keys: set[str] = set()
    for f in files:
        text = f.read_text()
        keys |= set(re.findall(r"params\.(?:get|get_as_int|get_as_bool)\(\s*\"(\w+)\"", text))
        keys |= set(re.findall(r"(?:params\.)?config(?:\.get\(|\[)\s*\"(\w+)\"", text))
        keys |= set(re.findall(r"rdzv_configs\[\"(\w+)\"\]", text))
        keys |= {f"{k}_timeout" for k in re.findall(r"_get_timeout\(params, \"(\w+)\"\)", text)}
        if "keep_alive" in text:
            keys |= set(re.findall(r"get_as_int\(\"(keep_alive_\w+)\"", text))
    return keys


def test_every_key_torch_reads_is_accepted() -> None:
    root = _torch_dir()
    if root is None:
        pytest.skip("torch is not installed")
    keys = torch_keys(root)
    # the grep finds what it must (a torch that moved its reads would empty it)
    assert {"join_timeout", "timeout", "read_timeout", "is_host", "store_type", "rank"} <= keys
    assert {"heartbeat_timeout", "keep_alive_interval", "ssl_cert", "etcd_prefix"} <= keys
    assert set(RdzvConf.known_keys()) >= keys, keys - set(RdzvConf.known_keys())
    for key in sorted(keys):  # and parse: no key of torch's is "unknown"
        value = {"store_type": "tcp", "protocol": "http"}.get(key, "/x" if "prefix" in key else "1")
        assert RdzvConf.parse(f"{key}={value}").unknown == (), key


def _corral() -> list[str]:
    """The installed ``corral`` console script (the real entry point), else ``-m corral``."""
    script = Path(sys.executable).parent / "corral"
    return [str(script)] if script.exists() else [sys.executable, "-m", "corral"]


def test_cli_runs_with_torchs_keys_and_warns_once_for_an_unknown_one(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text("print('ran')\n")
    env = corral_env()
    conf = "join_timeout=5,last_call_timeout=1,timeout=5,store_type=tcp,bogus_key=1"
    proc = subprocess.run(
        [*_corral(), "--standalone", "--nproc-per-node", "1", "--rdzv-conf", conf, "ok.py"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "ran" in proc.stdout
    warnings = [ln for ln in proc.stderr.splitlines() if "bogus_key" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("corral: warning: --rdzv-conf:"), (
        proc.stderr
    )
    assert "join_timeout" in warnings[0] and "Traceback" not in proc.stderr
    bad = subprocess.run(
        [*_corral(), "--standalone", "--rdzv-conf", "store_type=file", "ok.py"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.splitlines() == [
        "corral: error: --rdzv-conf store_type=file: corral's c10d store is served over TCP; "
        "expected tcp"
    ]


def test_each_key_lands_in_the_group_of_its_reader() -> None:
    r = RdzvConf.parse(
        "join_timeout=5,settle_time=0.5,read_timeout=3,prefix=/p,is_host=1,token=t,"
        "protocol=https,cacert=/ca.pem,user=u,local_addr=127.0.0.7"
    )
    assert (r.rendezvous.join_timeout, r.rendezvous.settle_time) == (5.0, 0.5)
    assert (r.store.read_timeout, r.store.prefix) == (3.0, "/p")
    assert (r.tcp.is_host, r.tcp.token) == (True, "t")
    assert (r.etcd.protocol, r.etcd.cacert, r.etcd.user) == ("https", "/ca.pem", "u")
    assert r.local_addr == "127.0.0.7"
    assert r.rendezvous.lease_ttl == 5.0 * 3  # keep_alive_interval x keep_alive_max_attempt
    # each group validates its own keys, with the one-line message of the key
    with pytest.raises(ConfigError, match="--rdzv-conf protocol=ftp: expected http or https"):
        RdzvConf.parse("protocol=ftp")
    with pytest.raises(ConfigError, match=r"read_timeout=0\.0: expected a number of seconds > 0"):
        RdzvConf.parse("read_timeout=0")
    with pytest.raises(ConfigError, match="give the token or a token file, not both"):
        RdzvConf.parse("token=a,token_file=/f")


@pytest.mark.parametrize(
    ("backend", "text", "expected"),
    [
        ("c10d", "cacert=/ca.pem,user=u,join_timeout=5", "does not read cacert, user; they are"),
        ("static", "protocol=https", "does not read protocol; it is ignored"),
        ("static", "is_host=1,token=s", "does not read is_host; it is ignored"),  # rank 0 hosts
        ("etcd", "is_host=1,token=s", "does not read is_host, token; they are ignored"),
        ("etcd", "ca_cert=/ca.pem,read_timeout=2,prefix=/p,join_timeout=3", None),
        ("c10d", "token=s,is_host=0,read_timeout=2,local_addr=127.0.0.2", None),
        ("my-plugin", "cacert=/ca.pem,is_host=1", None),  # a plug-in's options are its own
    ],
)
def test_a_key_the_backend_does_not_read_is_one_warning_line(
    backend: str, text: str, expected: str | None
) -> None:
    line = RdzvConf.parse(text).unread_warning(backend)
    if expected is None:
        assert line is None
    else:
        assert line is not None and expected in line and "\n" not in line
        assert line.startswith(f"--rdzv-conf: the {backend} backend does not read ")


def test_cli_warns_once_for_a_key_the_backend_does_not_read(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text("print('ran')\n")
    env = corral_env()
    proc = subprocess.run(
        [*_corral(), "--standalone", "--rdzv-conf", "cacert=/nowhere/ca.pem", "ok.py"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and "ran" in proc.stdout, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    assert warnings == [
        "corral: warning: --rdzv-conf: the c10d backend does not read cacert; it is ignored"
    ]


def test_a_key_no_builtin_reads_keeps_its_text_for_a_plugin_backend() -> None:
    r = RdzvConf.parse("zone=a,join_timeout=5,zone=b,other=x")
    assert r.unknown == ("zone", "other") and r.extra_value("zone") == "b"
    assert r.extra_value("join_timeout") is None and r.extra_value("nope") is None
    assert r.unknown_warning(backend="c10d") is not None
    assert r.unknown_warning(backend="my-plugin") is None  # the plug-in reads them
