"""Every ```python block of docs/api.md runs, in a fresh interpreter, within bounds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, corral_env

DOC = REPO / "docs" / "api.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 8


@pytest.mark.timeout(60)
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"example_{index}.py"
    script.write_text(BLOCKS[index])
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=corral_env(),
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert out.returncode == 0, f"example {index}:\n{BLOCKS[index]}\n{out.stdout}\n{out.stderr}"
