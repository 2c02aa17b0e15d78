"""Which --prestart-import modules a script imports, read from its source (no import)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from corral.workers.script_imports import MAX_FILES, scan_imports

CANDS = ("torch", "torch._dynamo", "json")


@pytest.mark.parametrize(
    "source, want",
    [
        ("import torch\n", ("torch", "torch._dynamo")),
        ("import torch.nn as nn\n", ("torch", "torch._dynamo")),
        ("from torch import nn\n", ("torch", "torch._dynamo")),
        ("def f():\n    import torch\n", ("torch", "torch._dynamo")),
        ("import importlib\nimportlib.import_module('torch')\n", ("torch", "torch._dynamo")),
        ("__import__('json')\n", ("json",)),
        ("import json\n", ("json",)),
        ("import os\nprint(os.getpid())\n", ()),
        ("import torchvision_not_installed_anywhere\n", ()),
        ("", ()),
    ],
)
def test_script_table(tmp_path: Path, source: str, want: tuple[str, ...]) -> None:
    s = tmp_path / "train.py"
    s.write_text(source)
    scan = scan_imports("script", str(s), str(tmp_path), CANDS)
    assert scan.imports == want
    assert scan.conclusive


def test_local_modules_are_followed(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from . import model\n")
    (tmp_path / "pkg" / "model.py").write_text("import torch\n")
    s = tmp_path / "train.py"
    s.write_text("import pkg\n")
    assert scan_imports("script", str(s), str(tmp_path), CANDS).imports == (
        "torch",
        "torch._dynamo",
    )


def test_module_mode_and_pythonpath_roots(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    (lib / "app").mkdir(parents=True)
    (lib / "app" / "__init__.py").write_text("")
    (lib / "app" / "__main__.py").write_text("import json\n")
    scan = scan_imports("module", "app", str(tmp_path), CANDS, extra_roots=(str(lib),))
    assert scan.imports == ("json",) and scan.conclusive


def test_unreadable_sources_are_not_conclusive(tmp_path: Path) -> None:
    s = tmp_path / "train.py"
    s.write_text("this is not python (\n")
    scan = scan_imports("script", str(s), str(tmp_path), CANDS)
    assert not scan.conclusive
    missing = scan_imports("module", "no_such_module_xyz", str(tmp_path), CANDS)
    assert not missing.conclusive


def test_too_many_local_files_is_not_conclusive(tmp_path: Path) -> None:
    for i in range(MAX_FILES + 2):
        (tmp_path / f"m{i}.py").write_text(f"import m{i + 1}\n")
    s = tmp_path / "train.py"
    s.write_text("import m0\n")
    assert not scan_imports("script", str(s), str(tmp_path), CANDS).conclusive


def test_a_third_party_that_requires_a_candidate_counts(tmp_path: Path) -> None:
    # pytest is installed here and requires pluggy: pluggy counts as imported through it
    s = tmp_path / "train.py"
    s.write_text("import pytest\n")
    assert scan_imports("script", str(s), str(tmp_path), ("pluggy",)).imports == ("pluggy",)
    assert "pluggy" in sys.modules  # (imported by pytest itself, not by the scan)
