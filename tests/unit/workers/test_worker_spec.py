"""Table tests of the worker command line and environment (docs/contract.md, "The worker environment")."""

from __future__ import annotations

import sys

import pytest

from corral.config import LaunchConfig
from corral.core.errors import ConfigError
from corral.core.model import NodeDesc, RoundInfo
from corral.workers.spec import (
    RUN_PATH_BOOTSTRAP,
    WorkerSpec,
    needs_omp_notice,
    worker_argv,
    worker_env,
)

PY = "/opt/py/bin/python3"


def rnd(**kw: object) -> RoundInfo:
    d: dict[str, object] = dict(
        run_id="job7",
        round=3,
        group_rank=0,
        group_world_size=1,
        members=(NodeDesc("n0", "10.0.0.1", 2),),
        rank_offset=0,
        world_size=2,
        master_addr="10.0.0.1",
        master_port=29511,
        restart_count=0,
    )
    d.update(kw)
    return RoundInfo(**d)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "local_rank", "argv"),
    [
        (
            WorkerSpec("train.py", ("--lr", "1"), python_exec=PY),
            0,
            [PY, "-u", "train.py", "--lr", "1"],
        ),
        (
            WorkerSpec("pkg.train", ("a",), module=True, python_exec=PY),
            1,
            [PY, "-u", "-m", "pkg.train", "a"],
        ),
        (WorkerSpec("/bin/echo", ("x",), no_python=True, python_exec=PY), 0, ["/bin/echo", "x"]),
        (
            WorkerSpec("t.py", ("--rank=${local_rank}", "${local_rank}x"), python_exec=PY),
            3,
            [PY, "-u", "t.py", "--rank=3", "3x"],
        ),
        (
            WorkerSpec("t.py", ("b",), run_path=True, python_exec=PY),
            0,
            [PY, "-u", "-c", RUN_PATH_BOOTSTRAP, "t.py", "b"],
        ),
    ],
)
def test_argv(spec: WorkerSpec, local_rank: int, argv: list[str]) -> None:
    assert worker_argv(spec, local_rank) == argv


def test_from_config_python_exec() -> None:
    cfg = LaunchConfig(
        "t.py", ("a",), nproc_per_node=4, role="trainer", max_restarts=2, module=True
    )
    spec = WorkerSpec.from_config(cfg, {"PYTHON_EXEC": PY})
    assert spec == WorkerSpec(
        "t.py",
        ("a",),
        module=True,
        local_world_size=4,
        role="trainer",
        max_restarts=2,
        python_exec=PY,
    )
    assert WorkerSpec.from_config(cfg, {}).python_exec == sys.executable


@pytest.mark.parametrize(
    "kw",
    [
        dict(no_python=True, module=True),
        dict(no_python=True, run_path=True),
        dict(module=True, run_path=True),
        dict(local_world_size=0),
    ],
)
def test_spec_rejects(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        WorkerSpec("t.py", **kw)  # type: ignore[arg-type]


def test_env_every_variable() -> None:
    spec = WorkerSpec("t.py", local_world_size=2, role="trainer", max_restarts=5)
    r = rnd(group_rank=1, group_world_size=3, rank_offset=4, world_size=7, restart_count=2)
    env = worker_env({"PATH": "/bin", "KEEP": "me"}, spec, r, 1, "/logs/attempt_0/1/error.json")
    assert env == {
        "PATH": "/bin",
        "KEEP": "me",
        "LOCAL_RANK": "1",
        "RANK": "5",
        "ROLE_RANK": "5",
        "GROUP_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "WORLD_SIZE": "7",
        "ROLE_WORLD_SIZE": "7",
        "GROUP_WORLD_SIZE": "3",
        "ROLE_NAME": "trainer",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29511",
        "TORCHELASTIC_RESTART_COUNT": "2",
        "TORCHELASTIC_MAX_RESTARTS": "5",
        "TORCHELASTIC_RUN_ID": "job7",
        "TORCHELASTIC_USE_AGENT_STORE": "False",
        "TORCHELASTIC_ERROR_FILE": "/logs/attempt_0/1/error.json",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "OMP_NUM_THREADS": "1",
    }


@pytest.mark.parametrize(
    # nodes with nproc 3, 1, 2: the rank offset of each node and the global ranks
    ("group_rank", "offset", "nproc", "ranks"),
    [(0, 0, 3, ["0", "1", "2"]), (1, 3, 1, ["3"]), (2, 4, 2, ["4", "5"])],
)
def test_rank_offsets_uneven_nodes(
    group_rank: int, offset: int, nproc: int, ranks: list[str]
) -> None:
    spec = WorkerSpec("t.py", local_world_size=nproc)
    r = rnd(group_rank=group_rank, group_world_size=3, rank_offset=offset, world_size=6)
    envs = [worker_env({}, spec, r, lr, "e") for lr in range(nproc)]
    assert [e["RANK"] for e in envs] == ranks
    assert [e["ROLE_RANK"] for e in envs] == ranks
    assert {e["WORLD_SIZE"] for e in envs} == {"6"}
    assert {e["GROUP_RANK"] for e in envs} == {str(group_rank)}


@pytest.mark.parametrize(
    ("base", "nproc", "omp", "notice"),
    [
        ({}, 1, None, False),
        ({}, 2, "1", True),
        ({"OMP_NUM_THREADS": "8"}, 4, "8", False),
        ({"OMP_NUM_THREADS": "8"}, 1, "8", False),
    ],
)
def test_omp_rule(base: dict[str, str], nproc: int, omp: str | None, notice: bool) -> None:
    spec = WorkerSpec("t.py", local_world_size=nproc)
    assert worker_env(base, spec, rnd(), 0, "e").get("OMP_NUM_THREADS") == omp
    assert needs_omp_notice(base, spec) is notice


def test_nccl_async_error_handling_inherited() -> None:
    env = worker_env({"TORCH_NCCL_ASYNC_ERROR_HANDLING": "0"}, WorkerSpec("t.py"), rnd(), 0, "e")
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "0"


@pytest.mark.parametrize(
    ("visible", "local_rank", "device"),
    [(None, 0, "0"), (None, 1, "1"), ("4,5", 1, "5"), (" 6, 7", 0, "6")],
)
def test_virtual_local_rank(visible: str | None, local_rank: int, device: str) -> None:
    base = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    spec = WorkerSpec("t.py", local_world_size=2, virtual_local_rank=True)
    env = worker_env(base, spec, rnd(), local_rank, "e")
    assert env["LOCAL_RANK"] == "0"
    assert env["RANK"] == str(local_rank)
    assert env["CUDA_VISIBLE_DEVICES"] == device


def test_virtual_local_rank_too_few_devices() -> None:
    spec = WorkerSpec("t.py", local_world_size=2, virtual_local_rank=True)
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES"):
        worker_env({"CUDA_VISIBLE_DEVICES": "3"}, spec, rnd(), 1, "e")


def test_without_virtual_local_rank_devices_untouched() -> None:
    env = worker_env(
        {"CUDA_VISIBLE_DEVICES": "3,4"}, WorkerSpec("t.py", local_world_size=2), rnd(), 1, "e"
    )
    assert env["CUDA_VISIBLE_DEVICES"] == "3,4"
    assert env["LOCAL_RANK"] == "1"


def test_local_rank_out_of_range() -> None:
    with pytest.raises(ConfigError):
        worker_env({}, WorkerSpec("t.py", local_world_size=2), rnd(), 2, "e")
