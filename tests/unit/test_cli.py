"""Table tests of the command line: spellings, PET_ environment, torchrun's defaults, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from corral.cli import parse_args, resolve_nproc_per_node
from corral.config import DEFAULT_SIGNALS, LaunchConfig, RdzvConf, Std, StdSpec
from corral.core.errors import ConfigError

S = "train.py"


def cfg(*argv: str, **env: str) -> LaunchConfig:
    return parse_args([*argv, S], env)


# (option spellings, value, LaunchConfig field, expected) -- the static backend with
# --master-port given, so the standalone shortcut does not kick in.
PIN = ("--master-port", "29500")
VALUE_CASES: list[tuple[tuple[str, ...], str, str, Any]] = [
    (("--nproc-per-node", "--nproc_per_node"), "3", "nproc_per_node", 3),
    (("--max-restarts", "--max_restarts"), "4", "max_restarts", 4),
    (("--monitor-interval", "--monitor_interval"), "0.5", "monitor_interval", 0.5),
    (("--start-method", "--start_method"), "fork", "start_method", "fork"),
    (("--role",), "trainer", "role", "trainer"),
    (("--log-dir", "--log_dir"), "/tmp/logs", "log_dir", "/tmp/logs"),
    (("-r", "--redirects"), "3", "redirects", StdSpec(Std.ALL)),
    (("-t", "--tee"), "0:1,1:2", "tee", StdSpec(Std.NONE, ((0, Std.OUT), (1, Std.ERR)))),
    (("--local-ranks-filter", "--local_ranks_filter"), "0,2", "local_ranks_filter", {0, 2}),
    (("--master-addr", "--master_addr"), "10.1.2.3", "master_addr", "10.1.2.3"),
    (("--local-addr", "--local_addr"), "10.9.9.9", "local_addr", "10.9.9.9"),
    (("--shutdown-timeout", "--shutdown_timeout"), "7", "shutdown_timeout", 7.0),
    (
        ("--signals-to-handle", "--signals_to_handle"),
        "SIGTERM,usr1",
        "signals_to_handle",
        (signal.SIGTERM, signal.SIGUSR1),
    ),
    (("--rdzv-id", "--rdzv_id"), "job7", "rdzv_id", "job7"),
]


@pytest.mark.parametrize(("flags", "value", "field", "expected"), VALUE_CASES)
def test_value_option_spellings_and_env(
    flags: tuple[str, ...], value: str, field: str, expected: Any
) -> None:
    extra = ("--rdzv-backend", "c10d", "--rdzv-endpoint", "h:1") if field == "rdzv_id" else PIN
    for flag in flags:
        assert getattr(cfg(*extra, flag, value), field) == expected, flag
        assert (
            getattr(
                cfg(*extra, f"{flag}={value}" if flag.startswith("--") else flag + value), field
            )
            == expected
        )
    env_name = "PET_" + flags[-1].lstrip("-").replace("-", "_").upper()
    assert getattr(cfg(*extra, **{env_name: value}), field) == expected, env_name


def test_command_line_beats_environment() -> None:
    c = cfg(*PIN, "--nproc-per-node", "2", PET_NPROC_PER_NODE="5", PET_MAX_RESTARTS="3")
    assert (c.nproc_per_node, c.max_restarts) == (2, 3)


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (("--standalone",), "standalone"),
        (("-m", "--module"), "module"),
        (("--no-python", "--no_python"), "no_python"),
        (("--run-path", "--run_path"), "run_path"),
        (("--virtual-local-rank", "--virtual_local_rank"), "virtual_local_rank"),
    ],
)
def test_flags_spellings_and_env(flags: tuple[str, ...], field: str) -> None:
    assert getattr(cfg(*PIN), field) is False
    for flag in flags:
        assert getattr(cfg(*PIN, flag), field) is True
    env_name = "PET_" + flags[-1].lstrip("-").replace("-", "_").upper()
    assert getattr(cfg(*PIN, **{env_name: "1"}), field) is True
    assert getattr(cfg(*PIN, **{env_name: "0"}), field) is False
    assert getattr(cfg(*PIN, flags[0], **{env_name: "0"}), field) is True


def test_defaults_match_torchrun() -> None:
    torch_run = pytest.importorskip("torch.distributed.run")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PET_")}
    t = torch_run.get_args_parser().parse_args([S])
    c = parse_args(["--nnodes", "2", S], env)  # two nodes: no standalone shortcut
    assert t.nnodes == "1:1" and (cfg(*PIN).min_nodes, cfg(*PIN).max_nodes) == (1, 1)
    assert int(t.nproc_per_node) == c.nproc_per_node
    assert t.rdzv_backend == c.rdzv_backend == "static"
    assert t.rdzv_id == c.rdzv_id == "none"
    assert t.max_restarts == c.max_restarts
    assert t.monitor_interval == c.monitor_interval
    assert t.start_method == c.start_method
    assert t.role == c.role
    assert t.log_dir is c.log_dir is None
    assert Std(int(t.redirects)) == c.redirects.default and not c.redirects.per_rank
    assert Std(int(t.tee)) == c.tee.default and not c.tee.per_rank
    assert t.local_ranks_filter == "" and c.local_ranks_filter is None
    assert t.node_rank == c.node_rank == 0
    assert t.master_addr == c.master_addr
    assert t.master_port is None and c.master_port == 29500  # torchrun fills in 29500 too
    assert c.rdzv_endpoint == "127.0.0.1:29500"  # torchrun's get_rdzv_endpoint for static
    assert t.local_addr is c.local_addr is None
    for flag in ("standalone", "module", "no_python", "run_path", "virtual_local_rank"):
        assert getattr(t, flag) is getattr(c, flag) is False
    # corral's deliberate difference: SIGUSR1/SIGUSR2 are forwarded too
    torch_sigs = tuple(int(getattr(signal, n)) for n in t.signals_to_handle.split(","))
    assert c.signals_to_handle == (*torch_sigs, signal.SIGUSR1, signal.SIGUSR2) == DEFAULT_SIGNALS
    assert t.shutdown_timeout is None and c.shutdown_timeout == 30.0
    assert c.rdzv_conf == RdzvConf()


def test_shutdown_timeout_from_torch_env() -> None:
    assert cfg(*PIN, TORCH_ELASTIC_SHUTDOWN_TIMEOUT="12").shutdown_timeout == 12.0
    c = cfg(*PIN, "--shutdown-timeout", "3", TORCH_ELASTIC_SHUTDOWN_TIMEOUT="12")
    assert c.shutdown_timeout == 3.0


def test_standalone() -> None:
    a = cfg("--standalone", "--rdzv-backend", "etcd", "--rdzv-endpoint", "x:1", "--rdzv-id", "j")
    b = cfg("--standalone")
    for c in (a, b):
        assert (c.rdzv_backend, c.rdzv_endpoint, c.standalone) == ("c10d", "127.0.0.1:0", True)
        assert c.rdzv_conf.tcp.is_host is True and len(c.rdzv_id) == 36
    assert a.rdzv_id != b.rdzv_id


@pytest.mark.parametrize(
    ("argv", "standalone"),
    [
        ((), True),  # static, no endpoint, no master port, one node: as --standalone
        (("--nnodes", "1:1"), True),
        (("--master-port", "1234"), False),
        (("--rdzv-endpoint", "h:5"), False),
        (("--nnodes", "2"), False),
        (("--nnodes", "1:2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "h"), False),
    ],
)
def test_static_one_node_becomes_standalone(argv: tuple[str, ...], standalone: bool) -> None:
    c = cfg(*argv)
    assert c.standalone is standalone
    assert (c.rdzv_backend == "c10d") is (standalone or "c10d" in argv)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("static", "static"), ("c10d", "c10d"), ("etcd", "etcd"), ("etcd-v3", "etcd")],
)
def test_rdzv_backends(text: str, expected: str) -> None:
    for flag in ("--rdzv-backend", "--rdzv_backend"):
        c = cfg("--nnodes", "1:2", flag, text, "--rdzv-endpoint", "h:2379")
        assert c.rdzv_backend == expected and c.rdzv_endpoint == "h:2379"
        assert c.endpoint_host_port == ("h", 2379)
    assert (
        cfg(PET_RDZV_BACKEND=text, PET_RDZV_ENDPOINT="h", PET_NNODES="2").rdzv_backend == expected
    )


@pytest.mark.parametrize(
    ("text", "min_max"), [("1", (1, 1)), ("4", (4, 4)), ("1:4", (1, 4)), ("2:2", (2, 2))]
)
def test_nnodes(text: str, min_max: tuple[int, int]) -> None:
    c = cfg("--nnodes", text, "--rdzv-backend", "c10d", "--rdzv-endpoint", "h")
    assert (c.min_nodes, c.max_nodes) == min_max
    assert c.elastic is (min_max[0] != min_max[1])


def test_rdzv_conf_types() -> None:
    c = cfg(
        *PIN,
        "--rdzv-conf",
        "join_timeout=5,keep_alive_max_attempt=7,is_host=no,token=s3cret,read_timeout=1.5",
    )
    r = c.rdzv_conf
    assert (r.rendezvous.join_timeout, r.rendezvous.keep_alive_max_attempt) == (5.0, 7)
    assert (r.tcp.is_host, r.tcp.token) == (False, "s3cret")
    assert r.store.read_timeout == 1.5
    for text, value in [("1", True), ("0", False), ("true", True), ("False", False), ("yes", True)]:
        assert RdzvConf.parse(f"is_host={text}").tcp.is_host is value
    assert RdzvConf.parse("") == RdzvConf()


def test_nproc_per_node_words() -> None:
    cpus = os.cpu_count() or 1
    no_gpu = {"CUDA_VISIBLE_DEVICES": ""}
    assert resolve_nproc_per_node("cpu", {}) == cpus
    assert resolve_nproc_per_node("auto", no_gpu) == cpus
    assert resolve_nproc_per_node("7", {}) == 7
    with pytest.raises(ConfigError, match="--nproc-per-node gpu"):
        resolve_nproc_per_node("gpu", no_gpu)


def test_script_and_args_pass_through() -> None:
    c = parse_args([*PIN, "-m", "pkg.mod", "--lr", "0.1", "--nnodes", "9"], {})
    assert c.entrypoint == "pkg.mod" and c.module is True
    assert c.args == ("--lr", "0.1", "--nnodes", "9")


# Bad input, in process: every one is a ConfigError naming the option.
BAD: list[tuple[tuple[str, ...], dict[str, str], str]] = [
    (("--nnodes", "3:2"), {}, "--nnodes 3:2: max nodes (2) must be >= min nodes (3)"),
    (("--nnodes", "x"), {}, "--nnodes x:"),
    (("--nnodes", "0"), {}, "--nnodes 0:"),
    (("--nnodes", "1:2:3"), {}, "--nnodes 1:2:3:"),
    (("--nproc-per-node", "0"), {}, "--nproc-per-node 0:"),
    (("--nproc-per-node", "many"), {}, "--nproc-per-node many:"),
    (("--rdzv-conf", "junk"), {}, "--rdzv-conf junk:"),
    (("--rdzv-conf", "timeout=soon"), {}, "--rdzv-conf timeout=soon"),  # torch's key, bad value
    (("--rdzv-conf", "join_timeout=soon"), {}, "join_timeout=soon"),
    (("--rdzv-conf", "is_host=maybe"), {}, "is_host=maybe"),
    (("--rdzv-conf", "keep_alive_max_attempt=1.5"), {}, "keep_alive_max_attempt=1.5"),
    (("--rdzv-backend", "zk"), {}, "--rdzv-backend zk: expected one of static, c10d, etcd"),
    (("--rdzv-backend", "etcd-v2"), {}, "use etcd"),
    (("--no-python", "-m"), {}, "--no-python"),
    (("--max-restarts", "-1"), {}, "--max-restarts -1:"),
    (("--max-restarts", "two"), {}, "--max-restarts two:"),
    (("--monitor-interval", "0"), {}, "--monitor-interval 0"),
    (("--master-port", "70000"), {}, "--master-port 70000:"),
    (("--master-port", "http"), {}, "--master-port http:"),
    (("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "h:99999"), {}, "h:99999"),
    (("--start-method", "thread"), {}, "--start-method thread:"),
    (("-r", "4"), {}, "--redirects 4:"),
    (("-t", "0:1,x"), {}, "--tee 0:1,x:"),
    (("--local-ranks-filter", "a,b"), {}, "--local-ranks-filter a,b:"),
    (("--signals-to-handle", "SIGNOPE"), {}, "SIGNOPE"),
    (("--signals-to-handle", "SIGKILL"), {}, "SIGKILL"),
    (("--shutdown-timeout", "-1"), {}, "--shutdown-timeout -1"),
    ((), {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "soon"}, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT soon"),
    ((), {"PET_NNODES": "3:1"}, "--nnodes 3:1"),
    ((), {"PET_STANDALONE": "maybe"}, "PET_STANDALONE maybe"),
    (("--node-rank", "2", "--nnodes", "2"), {}, "--node-rank 2:"),
    (("--logs-specs", "x"), {}, "--logs-specs x:"),
]


@pytest.mark.parametrize(("argv", "env", "message"), BAD)
def test_bad_input(argv: tuple[str, ...], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_args([*argv, S], env)
    text = str(info.value)
    assert message in text and "\n" not in text


# Bad input end to end: exit 2, one line on stderr, no traceback. Few, they are subprocesses.
def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PET_")}
    return subprocess.run(
        [sys.executable, "-m", "corral", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (("--nnodes", "3:2", "ok.py"), "--nnodes 3:2"),
        (("--rdzv-conf", "junk", "ok.py"), "--rdzv-conf junk"),
        (("--rdzv-backend", "zk", "ok.py"), "--rdzv-backend zk"),
        (("--no-python", "-m", "ok.py"), "--no-python"),
        (("missing.py",), "missing.py"),
        (("--no-python", "no-such-command-xyz"), "no-such-command-xyz"),
        ((), "training_script"),
    ],
)
def test_bad_input_subprocess(argv: tuple[str, ...], needle: str, tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text("pass\n")
    proc = _run(*argv, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("corral: error: ") and needle in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_help_exits_zero(tmp_path: Path) -> None:
    proc = _run("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "--nproc-per-node" in proc.stdout


def test_import_is_cheap() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys, corral.cli; print('asyncio' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "False"
