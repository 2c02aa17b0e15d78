"""Prometheus metrics of one agent: an event sink over a private registry, and its HTTP endpoint.

``--metrics-port PORT`` (``PET_METRICS_PORT``) serves the Prometheus text
format at ``http://<--metrics-addr>:PORT/metrics`` (any path answers). The
metrics are built with ``prometheus_client`` in a registry of their own (no
process-global state); the endpoint is a small asyncio server in the agent's
task group (no thread). docs/events.md lists the metrics.

Every update is a counter or gauge change on an event (state changes only);
the progress ages and the store's round trip are measured when scraped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from corral.core import events as kinds
from corral.events.journal import CHANGE_CAUSE, PHASES, Incident

__all__ = ["Metrics", "serve_metrics"]

log = logging.getLogger("corral.events")

_WORKER_STATES = ("running", "exited", "failed", "hung")
_DOWNTIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, float("inf"))


class Metrics:
    """An event sink that keeps this agent's Prometheus metrics.

    Args:
        max_restarts: the job's restart budget (``corral_restarts_allowed``).
        node: this node's id (a label on ``corral_info``).
    """

    def __init__(self, *, max_restarts: int, node: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = reg = CollectorRegistry(auto_describe=True)
        Gauge("corral_info", "This agent (value 1).", ["node"], registry=reg).labels(node).set(1)
        self.rounds = Counter("corral_rounds", "Rounds this node ran workers in.", registry=reg)
        self.round = Gauge("corral_round", "The current rendezvous round.", registry=reg)
        self.restarts = Counter(
            "corral_restarts", "Restarts of the worker group on this node, by cause.", ["cause"],
            registry=reg,
        )  # fmt: skip
        self.restarts_used = Gauge(
            "corral_restarts_used", "The job's restarts so far (its current round's count).",
            registry=reg,
        )  # fmt: skip
        self.restarts_allowed = Gauge(
            "corral_restarts_allowed", "The job's restart budget.", registry=reg
        )
        self.restarts_allowed.set(max_restarts)
        self.workers = Gauge("corral_workers", "Local workers by state.", ["state"], registry=reg)
        for s in _WORKER_STATES:
            self.workers.labels(s).set(0)
        self.incidents = Counter(
            "corral_incidents", "Restarts this node went through, by cause.", ["cause"],
            registry=reg,
        )  # fmt: skip
        self.downtime = Histogram(
            "corral_downtime_seconds", "This node's down time per incident phase.", ["phase"],
            buckets=_DOWNTIME_BUCKETS, registry=reg,
        )  # fmt: skip
        self.step = Gauge(
            "corral_progress_step", "The last progress step per local rank.", ["local_rank"],
            registry=reg,
        )  # fmt: skip
        self.step_age = Gauge(
            "corral_progress_age_seconds", "Seconds since the last progress mark per local rank.",
            ["local_rank"], registry=reg,
        )  # fmt: skip
        self.store_rtt = Histogram(
            "corral_store_roundtrip_seconds", "Round-trip time of store requests.",
            buckets=_LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.events = Counter("corral_events", "Events seen, by kind.", ["kind"], registry=reg)
        self.unhealthy = Gauge(
            "corral_unhealthy", "1 while this node's --health-check fails, else 0.",
            registry=reg,
        )  # fmt: skip
        self.quarantined = Gauge(
            "corral_quarantined_nodes", "Nodes this agent saw quarantined (--quarantine-after).",
            registry=reg,
        )  # fmt: skip
        self._quarantined: set[str] = set()
        self._states: dict[int, str] = {}
        self._last_mark: dict[int, float] = {}
        self._open: Incident | None = None
        self._failed: float | None = None
        self._cause = ""  # the current attempt's failure kind (failure, signal, hang)

    def __call__(self, ev: kinds.Event) -> None:
        self.events.labels(type(ev).__name__).inc()
        if isinstance(ev, kinds.RoundClosed):
            self.rounds.inc()
            self.round.set(ev.round)
            self.restarts_used.set(ev.restart_count)
            if ev.max_restarts >= 0:  # the job's budget (docs/rendezvous.md)
                self.restarts_allowed.set(ev.max_restarts)
            self._states.clear()
            for s in _WORKER_STATES:  # a new group: the last one's workers are gone
                self.workers.labels(s).set(0)
            self._last_mark.clear()
            self.step.clear()
            self.step_age.clear()
            if self._open is not None:
                self._open.closed = ev.wall
        elif isinstance(ev, kinds.WorkerStarted):
            self._set_state(ev.local_rank, "running")
            if self._open is not None and self._open.spawned is None:
                self._open.spawned = ev.wall
                self._observe(self._open, PHASES[:4])
        elif isinstance(ev, kinds.WorkerExited):
            self._set_state(ev.local_rank, "exited")
        elif isinstance(ev, kinds.WorkerFailed):
            self._set_state(ev.local_rank, "failed")
            if self._failed is None:
                self._failed = ev.exit_wall or ev.wall
                self._cause = self._cause or ("signal" if ev.signal else "failure")
        elif isinstance(ev, kinds.HangDeclared):
            self._set_state(ev.local_rank, "hung")
            self._failed, self._cause = ev.wall - ev.silent_s, "hang"
        elif isinstance(ev, kinds.ProgressStep):
            self.progress(ev.local_rank, ev.step, ev.mono)
            if self._open is not None and self._open.first_step is None:
                self._open.first_step = ev.wall
                self._observe(self._open, ("first_step",))
                self._open = None
        elif isinstance(ev, kinds.RoundEnded):
            if ev.cause not in ("succeeded", "job_ended", "signal"):
                cause = self._cause or CHANGE_CAUSE.get(ev.cause, ev.cause)
                self._open = Incident(cause=cause, failed=self._failed, known=ev.wall)
            self._failed, self._cause = None, ""
        elif isinstance(ev, kinds.WorkersStopped):
            if self._open is not None and self._open.stopped is None:
                self._open.stopped = ev.wall
            for lr, s in list(self._states.items()):
                if s == "running":
                    self._set_state(lr, "exited")
        elif isinstance(ev, kinds.RestartDecided):
            self.restarts.labels(ev.cause).inc()
            cause = self._open.cause if self._open is not None else ev.cause
            self.incidents.labels(cause).inc()
        elif isinstance(ev, kinds.JobEnded):
            self._open = None
        elif isinstance(ev, kinds.NodeQuarantined):
            self._quarantined.add(ev.addr)
            self.quarantined.set(len(self._quarantined))
        elif isinstance(ev, kinds.NodeUnhealthy):
            self.unhealthy.set(1)
        elif isinstance(ev, kinds.NodeHealthy):
            self.unhealthy.set(0)

    def progress(self, local_rank: int, step: int, mono: float) -> None:
        """A progress mark of ``local_rank``: ``step`` at ``mono`` (this host's monotonic clock)."""
        self.step.labels(str(local_rank)).set(step)
        if local_rank not in self._last_mark:
            self.step_age.labels(str(local_rank)).set_function(
                lambda: time.monotonic() - self._last_mark.get(local_rank, time.monotonic())
            )
        self._last_mark[local_rank] = mono

    def _set_state(self, local_rank: int, state: str) -> None:
        old = self._states.get(local_rank)
        if old is not None:
            self.workers.labels(old).dec()
        self._states[local_rank] = state
        self.workers.labels(state).inc()

    def _observe(self, inc: Incident, phases: tuple[str, ...]) -> None:
        bounds = {
            "detection": (inc.failed, inc.known),
            "stopping": (inc.known, inc.stopped),
            "rendezvous": (inc.stopped, inc.closed),
            "spawning": (inc.closed, inc.spawned),
            "first_step": (inc.spawned, inc.first_step),
        }
        for phase in phases:
            lo, hi = bounds[phase]
            if lo is not None and hi is not None:
                self.downtime.labels(phase).observe(max(0.0, hi - lo))

    def text(self) -> bytes:
        """The metrics in the Prometheus text format."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


async def serve_metrics(
    metrics: Metrics,
    host: str,
    port: int,
    *,
    probe: Callable[[], Awaitable[None]] | None = None,
    started: Callable[[tuple[str, int]], None] | None = None,
) -> None:
    """Serve ``metrics`` over HTTP until cancelled (run it in a task group).

    Args:
        host, port: where to listen (port 0: a free port, reported to ``started``).
        probe: awaited (bounded to 1 s) before each scrape; its duration is a
            ``corral_store_roundtrip_seconds`` sample (e.g. one store read).
        started: called with the bound (host, port) once listening.

    Raises:
        OSError: the address cannot be bound.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            if probe is not None:
                t0 = time.monotonic()
                try:
                    await asyncio.wait_for(probe(), 1.0)
                    metrics.store_rtt.observe(time.monotonic() - t0)
                except Exception:
                    pass  # an unreachable store shows as no new samples
            body = metrics.text()
            head = (
                "HTTP/1.1 200 OK\r\n"
                "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    async with server:
        bound = server.sockets[0].getsockname()
        log.info("metrics on http://%s:%d/metrics", bound[0], bound[1])
        if started is not None:
            started((bound[0], bound[1]))
        await server.serve_forever()
