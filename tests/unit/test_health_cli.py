"""``corral health``: the built-in checks, run as the real subcommand."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from tests.helpers import CORRAL, corral_env

from corral.health import BadCheck, parse_check, parse_size

pytestmark = pytest.mark.timeout(60)


def health(*args: str, wrap: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(wrap or []), *CORRAL, "health", *args],
        capture_output=True, text=True, timeout=40, env=corral_env(),
    )  # fmt: skip


def _can_mount() -> str:
    """Why a private mount namespace cannot be made here ('' when it can)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return "needs root and unshare for a private tmpfs mount"
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True, timeout=20,
    )  # fmt: skip
    return "" if probe.returncode == 0 else "mount in a private namespace is not allowed here"


def in_private_tmpfs(mountpoint: Path, options: str, then: str = "") -> list[str]:
    """Run a command in a private mount namespace with a tmpfs at ``mountpoint``."""
    script = f'mount -t tmpfs -o {options} tmpfs {mountpoint} && {then or "true"} && exec "$@"'
    return ["unshare", "--mount", "sh", "-c", script, "sh"]


def test_disk_writable_path_passes(tmp_path: Path) -> None:
    run = health(f"disk:{tmp_path}")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"disk:{tmp_path}: writable, fsync ok"]
    assert list(tmp_path.iterdir()) == [], "the probe file is removed"


def test_disk_missing_path_fails_with_why(tmp_path: Path) -> None:
    run = health(f"disk:{tmp_path}/nope")
    assert run.returncode == 1
    assert run.stdout.splitlines() == [f"disk:{tmp_path}/nope: no such directory"]


def test_disk_below_min_free_fails(tmp_path: Path) -> None:
    run = health(f"disk:{tmp_path}:1000000T")
    assert run.returncode == 1
    assert run.stdout.startswith(f"disk:{tmp_path}:1000000T: only ") and "free, below" in run.stdout


def test_disk_read_only_mount_fails(tmp_path: Path) -> None:
    why = _can_mount()
    if why:
        pytest.skip(why)
    mnt = tmp_path / "ro"
    mnt.mkdir()
    run = health(f"disk:{mnt}", wrap=in_private_tmpfs(mnt, "size=1m,ro"))
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.splitlines() == [f"disk:{mnt}: Read-only file system"]


def test_disk_full_mount_fails(tmp_path: Path) -> None:
    why = _can_mount()
    if why:
        pytest.skip(why)
    mnt = tmp_path / "full"
    mnt.mkdir()
    fill = f"{{ dd if=/dev/zero of={mnt}/fill bs=64k 2>/dev/null; true; }}"
    run = health(f"disk:{mnt}", wrap=in_private_tmpfs(mnt, "size=256k", fill))
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.splitlines() == [f"disk:{mnt}: No space left on device"]


def test_gpu_on_this_machine() -> None:
    run = health("gpu")
    lines = run.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu: "), run.stdout + run.stderr
    if not os.path.exists("/proc/driver/nvidia"):
        assert run.returncode == 0, "no NVIDIA GPU: the check passes with its note"
        assert "no NVIDIA GPU" in lines[0]


def test_tcp_listening_and_closed_ports() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        run = health(f"tcp:127.0.0.1:{port}")
        assert run.returncode == 0, run.stdout
        assert run.stdout.splitlines() == [f"tcp:127.0.0.1:{port}: connection accepted"]
    # the port was just closed and nothing else listens there now (it is not ephemeral-reused
    # within this test: connect is refused at once)
    run = health(f"tcp:127.0.0.1:{port}", "disk:/")
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert lines[-1] == f"tcp:127.0.0.1:{port}: Connection refused", "the failure is last"
    assert lines[0].startswith("disk:/: ")


@pytest.mark.parametrize(
    "check", ["cpu", "disk:", "tcp:host", "tcp:[::1]:x", "tcp:127.0.0.1:70000", "disk:/x:5Q"]
)
def test_malformed_check_one_line_exit_2(check: str) -> None:
    run = health("disk:/", check)
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("corral health: error: ")


def test_no_check_and_bad_timeout_exit_2() -> None:
    for args in ((), ("--timeout", "x", "gpu"), ("--timeout=0", "gpu")):
        run = health(*args)
        assert run.returncode == 2, args
        assert run.stderr.count("\n") == 1


def test_parse_check_and_size() -> None:
    assert parse_check("disk:/ckpt:50G").path == "/ckpt"
    assert parse_check("disk:/ckpt:50G").min_free == 50 << 30
    assert parse_check("disk:/a:b").path == "/a:b"  # not a size: part of the path
    tcp6 = parse_check("tcp:[::1]:29400")
    assert (tcp6.host, tcp6.port) == ("::1", 29400)
    assert [parse_size(s) for s in ("500M", "4096", "1k", "2GiB")] == [
        500 << 20, 4096, 1024, 2 << 30,
    ]  # fmt: skip
    with pytest.raises(BadCheck):
        parse_size("-1G")


# A stand-in for nvidia-ml-py's pynvml (the real one needs an NVIDIA driver): put first on
# PYTHONPATH, it answers as the FAKE_NVML environment variable says, so that the real
# `corral health gpu` runs its NVML queries against it.
FAKE_PYNVML = r"""
import os
from types import SimpleNamespace
S = dict(kv.partition("=")[::2] for kv in os.environ.get("FAKE_NVML", "").split(",") if kv)
NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC, NVML_FEATURE_ENABLED = 1, 0, 1
NVML_FI_DEV_GET_GPU_RECOVERY_ACTION = 230
class NVMLError(Exception): pass
class NVMLError_NotSupported(NVMLError): pass
def nvmlInit():
    if "nodriver" in S: raise NVMLError("Driver Not Loaded")
def nvmlShutdown(): pass
def nvmlDeviceGetCount(): return int(S.get("count", 2))
def nvmlDeviceGetHandleByIndex(i):
    if S.get("lost") == str(i): raise NVMLError("GPU is lost")
    return i
def nvmlDeviceGetName(h): return "Fake H100"
def _ns(key, h):
    if S.get("unsupported") == key: raise NVMLError_NotSupported("Not Supported")
def nvmlDeviceGetTotalEccErrors(h, kind, counter):
    _ns("ecc", h); return int(S.get("ecc", 0)) if h == 1 else 0
def nvmlDeviceGetRemappedRows(h):
    _ns("rows", h); return (0, 0, int(S.get("rows_pending", 0)), int(S.get("rows_failed", 0)))
def nvmlDeviceGetRetiredPagesPendingStatus(h):
    _ns("pages", h); return int(S.get("pages_pending", 0))
def nvmlDeviceGetFieldValues(h, ids):
    _ns("fields", h)
    return [SimpleNamespace(nvmlReturn=0, value=SimpleNamespace(uiVal=int(S.get("action", 0))))]
"""


@pytest.mark.parametrize(
    ("state", "code", "line"),
    [
        ("", 0, "gpu: 2 GPU(s) answer; no ECC, row remapping, page or recovery issue"),
        ("unsupported=rows,unsupported=fields", 0, "gpu: 2 GPU(s) answer;"),
        ("nodriver=1", 0, "gpu: no NVIDIA GPU here (NVML: Driver Not Loaded)"),
        ("count=0", 0, "gpu: no NVIDIA GPU here (NVML lists none)"),
        ("ecc=3", 1, "gpu: GPU 1: 3 uncorrectable ECC error(s) since the driver loaded"),
        ("rows_pending=1", 1, "gpu: GPU 0: row remapping pending (reset the GPU)"),
        ("rows_failed=1", 1, "gpu: GPU 0: row remapping failed"),
        ("pages_pending=1", 1, "gpu: GPU 0: retired pages pending (reset the GPU)"),
        ("action=2", 1, "gpu: GPU 0: the driver asks for recovery action 2"),
        ("lost=1", 1, "gpu: GPU 1 does not answer (GPU is lost)"),
    ],
)
def test_gpu_check_reads_nvml(tmp_path: Path, state: str, code: int, line: str) -> None:
    (tmp_path / "pynvml.py").write_text(FAKE_PYNVML)
    run = subprocess.run(
        [*CORRAL, "health", "gpu"], capture_output=True, text=True, timeout=40,
        env=corral_env(PYTHONPATH=str(tmp_path), FAKE_NVML=state),
    )  # fmt: skip
    assert run.returncode == code, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), lines
