"""The metrics sink over a sequence of events, and its HTTP endpoint on loopback."""

from __future__ import annotations

import asyncio

from corral.core import events as t
from corral.core.compat import TaskGroup
from corral.events.metrics import Metrics, serve_metrics


def _ev(cls: type[t.Event], r: int, wall: float, **kw: object) -> t.Event:
    return cls(node="n", round=r, mono=wall, wall=wall, **kw)


def _closed(r: int, wall: float) -> t.Event:
    return _ev(t.RoundClosed, r, wall, group_rank=0, group_world_size=1, rank_offset=0,
               local_world_size=2, world_size=2, restart_count=r)  # fmt: skip


def _value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in\n{text}")


def _feed_a_hang_restart(m: Metrics) -> None:
    m(_closed(0, 1.0))
    for lr in (0, 1):
        m(_ev(t.WorkerStarted, 0, 1.2, local_rank=lr, rank=lr, pid=10 + lr, attempt=0))
    m(_ev(t.ProgressStep, 0, 2.0, local_rank=0, step=7))
    m(_ev(t.HangDeclared, 0, 12.0, local_rank=1, rank=1, last_step=3, silent_s=5.0))
    m(_ev(t.WorkerFailed, 0, 12.0, local_rank=1, rank=1, pid=11, exitcode=-9, signal="SIGKILL"))
    m(_ev(t.RoundEnded, 0, 12.5, cause="failure"))
    m(_ev(t.WorkersStopped, 0, 13.0, seconds=0.5))
    m(_ev(t.RestartDecided, 0, 13.0, cause="failure", restart_count=0, max_restarts=3))
    m(_closed(1, 14.0))
    for lr in (0, 1):
        m(_ev(t.WorkerStarted, 1, 14.5, local_rank=lr, rank=lr, pid=20 + lr, attempt=1))


def test_metrics_follow_the_events() -> None:
    m = Metrics(max_restarts=3, node="n")
    _feed_a_hang_restart(m)
    text = m.text().decode()
    assert _value(text, "corral_restarts_allowed") == 3
    assert _value(text, "corral_restarts_used") == 1
    assert _value(text, "corral_round") == 1
    assert _value(text, "corral_rounds_total") == 2
    assert _value(text, 'corral_restarts_total{cause="failure"}') == 1
    assert _value(text, 'corral_incidents_total{cause="hang"}') == 1
    assert _value(text, 'corral_workers{state="running"}') == 2
    assert _value(text, 'corral_workers{state="failed"}') == 0
    for phase, seconds in (("detection", 5.5), ("stopping", 0.5), ("rendezvous", 1.0),
                           ("spawning", 0.5)):  # fmt: skip
        assert _value(text, f'corral_downtime_seconds_sum{{phase="{phase}"}}') == seconds
    assert 'corral_progress_step{local_rank="0"}' not in text  # cleared with the new round
    m.progress(1, 40, 100.0)
    text = m.text().decode()
    assert _value(text, 'corral_progress_step{local_rank="1"}') == 40
    assert 'corral_progress_age_seconds{local_rank="1"}' in text


async def test_the_endpoint_serves_prometheus_text_on_loopback() -> None:
    m = Metrics(max_restarts=1, node="n")
    probes: list[int] = []

    async def probe() -> None:
        probes.append(1)

    ready: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
    async with TaskGroup() as tg:
        server = tg.create_task(
            serve_metrics(m, "127.0.0.1", 0, probe=probe, started=ready.set_result)
        )
        host, port = await ready
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        body = await reader.read()
        writer.close()
        server.cancel()
    head, _, text = body.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"text/plain; version=0.0.4" in head
    assert _value(text.decode(), "corral_restarts_allowed") == 1
    assert _value(text.decode(), "corral_store_roundtrip_seconds_count") == 1
    assert probes == [1]
