"""Bad input to the observability options: one line, a non-zero exit, never a traceback."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from tests.helpers import CORRAL, corral_env

pytestmark = pytest.mark.timeout(60)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, timeout=45,
                          env=corral_env())  # fmt: skip


def _one_error_line(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, r.stderr
    for w in words:
        assert w in errors[0], errors[0]


@pytest.fixture
def script(tmp_path: Path) -> str:
    p = tmp_path / "ok.py"
    p.write_text("pass\n")
    return str(p)


def test_events_file_that_cannot_be_opened(script: str) -> None:
    _one_error_line(_run("--standalone", "--events-file", "/proc/none/events.jsonl", script),
                    "--events-file", "/proc/none/events.jsonl")  # fmt: skip


def test_metrics_port_in_use(script: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = str(s.getsockname()[1])
        r = _run("--standalone", "--metrics-port", port, "--metrics-addr", "127.0.0.1", script)
    _one_error_line(r, "--metrics-port", port)


def test_metrics_addr_that_no_resolver_takes(script: str) -> None:
    # getaddrinfo refuses the name itself (UnicodeError, not OSError): the agent used to
    # wait forever for an endpoint that would never listen
    bad = "a" * 70 + ".com"
    r = _run("--standalone", "--metrics-port", "0", "--metrics-addr", bad, script)
    _one_error_line(r, "--metrics-port", bad)


@pytest.mark.parametrize("value", ["-1", "65536", "x"])
def test_metrics_port_out_of_range(value: str, script: str) -> None:
    r = _run("--standalone", "--metrics-port", value, script)
    assert r.returncode == 2
    _one_error_line(r, "--metrics-port")


def test_timeline_bad_input(tmp_path: Path) -> None:
    r = _run("timeline")
    assert r.returncode == 2
    _one_error_line(r, "events files")
    r = _run("timeline", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 1
    _one_error_line(r, "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = _run("timeline", str(empty), "-o", str(tmp_path / "t.html"))
    assert r.returncode == 1
    _one_error_line(r, "no attempts")


def test_events_file_dash_logs_each_event(script: str) -> None:
    r = _run("--standalone", "--events-file", "-", script)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "] event " in line]
    kinds = [line.split("] event ", 1)[1].split()[0] for line in lines]
    assert kinds == ["NodeJoined", "RoundClosed", "WorkerStarted", "WorkerExited", "RoundEnded",
                     "JobEnded"]  # fmt: skip


def test_log_dir_holds_the_events(script: str, tmp_path: Path) -> None:
    r = _run("--standalone", "--log-dir", str(tmp_path / "logs"), script)
    assert r.returncode == 0, r.stderr
    [path] = (tmp_path / "logs").glob("*/events.jsonl")
    from corral.events.sinks import read_jsonl

    assert [type(e).__name__ for e in read_jsonl(str(path))][-1] == "JobEnded"
