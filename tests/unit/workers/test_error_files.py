"""Error files: torch's shapes, corral's record, garbage; the root-cause block."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from corral.core.failures import FailureReport
from corral.core.record import record
from corral.core.render import parse_error_data, read_error_file, render_root_cause

TORCH_SHAPE = {
    "message": {
        "message": "ValueError: boom",
        "extraInfo": {
            "py_callstack": "Traceback...\nValueError: boom\n",
            "timestamp": "1700000000",
        },
    }
}


@pytest.mark.parametrize(
    ("data", "parsed"),
    [
        (TORCH_SHAPE, ("ValueError: boom", "Traceback...\nValueError: boom\n", 1700000000.0)),
        ({"message": "SIGSEGV", "timestamp": 17}, ("SIGSEGV", None, 17.0)),
        ({"message": {"message": "X: y", "errorCode": 3}}, ("X: y", None, None)),
        ({"message": {"extraInfo": {"py_callstack": "tb"}}}, ("<no message>", "tb", None)),
        (
            {"message": {"message": "X: y", "extraInfo": {"timestamp": "nan?"}}},
            ("X: y", None, None),
        ),
        ({"message": {"message": "X: y", "extraInfo": "junk"}}, ("X: y", None, None)),
        ({"message": 5}, None),
        ({"message": {"message": 5}}, None),
        ({"other": 1}, None),
        ([1, 2], None),
        ("str", None),
    ],
)
def test_parse_shapes(data: Any, parsed: Any) -> None:
    assert parse_error_data(data) == parsed


@pytest.mark.parametrize(
    "content", [b"", b"{", b"\xff\xfe", b"null", b"[" * 100000, b'{"message": 1}']
)
def test_read_garbage_never_raises(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "error.json"
    p.write_bytes(content)
    assert read_error_file(str(p)) is None
    assert read_error_file(str(tmp_path / "missing.json")) is None
    assert read_error_file(str(tmp_path)) is None  # a directory


def test_corral_record_writes_torch_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    err = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(err))

    @record
    def main(x: int) -> int:
        raise KeyError(f"missing {x}")

    with pytest.raises(KeyError):
        main(3)
    data = json.loads(err.read_text())
    assert data["message"]["message"] == "KeyError: 'missing 3'"
    assert "in main" in data["message"]["extraInfo"]["py_callstack"]
    assert data["message"]["extraInfo"]["timestamp"].isdigit()
    msg, tb, ts = read_error_file(str(err))  # type: ignore[misc]
    assert msg == "KeyError: 'missing 3'" and tb and ts


def test_record_passes_results_and_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    err = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(err))
    assert record(lambda: 7)() == 7

    def exit0() -> None:
        raise SystemExit(0)

    def exit2() -> None:
        raise SystemExit(2)

    assert record(exit0)() is None
    with pytest.raises(SystemExit):
        record(exit2)()
    assert not err.exists()


def test_record_without_error_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)

    @record
    def main() -> None:
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        main()


def test_import_corral_does_not_import_torch() -> None:
    code = "import sys, corral; corral.record; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.stdout.strip() == "False"


def report(**kw: Any) -> FailureReport:
    d: dict[str, Any] = dict(
        rank=5, local_rank=1, group_rank=2, host="nodeA", node_id="n", pid=4242, exitcode=3
    )
    d.update(kw)
    return FailureReport(**d)


def test_render_with_traceback() -> None:
    text = render_root_cause(
        report(
            message="ValueError: boom",
            traceback="Traceback (most recent call last):\n  x\nValueError: boom\n",
            error_file="/l/error.json",
        ),
        3,
    )
    assert text.splitlines()[0] == (
        "corral: worker rank 5 (local rank 1, node 2, host nodeA, pid 4242) exited with code 3"
    )
    assert "    ValueError: boom" in text
    assert "error: " not in text  # the traceback's last line already says it
    assert "/l/error.json" in text and "2 other workers failed" in text


def test_render_signal_and_tail() -> None:
    text = render_root_cause(report(exitcode=-9, stderr_tail="a\nb\nlast words"), 1)
    assert "died of SIGKILL" in text
    assert text.rstrip().endswith("    last words")
    assert "other worker" not in text


def test_render_message_only_and_nothing() -> None:
    assert "error: OSError: nope" in render_root_cause(report(message="OSError: nope"), 2)
    assert "@record" in render_root_cause(report(), 1)
