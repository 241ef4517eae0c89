"""Prometheus metrics and a health check for the long-running modes, on one small HTTP server.

``/metrics`` serves the Prometheus text format (through ``prometheus-client``, from a registry of
the run's own, so that nothing is global); ``/healthz`` answers 200 while the run is healthy and
503 otherwise. The server binds ``METRICS_HOST`` (127.0.0.1 unless told otherwise): metrics are
not for the world to read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from narrow2wide.common.errors import ConfigError

log = logging.getLogger("metrics")

PREFIX = "narrow2wide"
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, float("inf"))


class ShipFigures(Protocol):
    """What the metrics read of one ship's realtime cycle (``realtime.processor.ShipCycle``)."""

    ship_id: str
    rows_read: int
    cells_written: int
    rejected: int
    lag_seconds: float | None


class CycleFigures(Protocol):
    """What the metrics read of one realtime cycle (``realtime.processor.CycleResult``)."""

    ships: tuple[ShipFigures, ...]
    seconds: float

    @property
    def ok(self) -> bool: ...


class Health:
    """Healthy while the last success (a realtime cycle, or a backfill poll) is at most three intervals old.

    Unhealthy before the first success: a run that never got through is not healthy.
    """

    def __init__(self, interval_seconds: float, what: str):
        self.interval = max(float(interval_seconds), 0.01)
        self.what = what
        self._last_ok: float | None = None
        self._last_error: str | None = None
        self._lock = threading.Lock()

    def beat(self, ok: bool, error: str | None = None) -> None:
        """Record the outcome of one realtime cycle (or one poll)."""
        with self._lock:
            if ok:
                self._last_ok = time.monotonic()
                self._last_error = None
            else:
                self._last_error = error or "failed"

    def check(self) -> tuple[bool, str]:
        """(healthy, one line saying why)."""
        with self._lock:
            last_ok, error = self._last_ok, self._last_error
        if last_ok is None:
            return False, f"no successful {self.what} yet" + (f" ({error})" if error else "")
        age = time.monotonic() - last_ok
        limit = 3 * self.interval
        if age > limit:
            return False, (f"last successful {self.what} {age:.1f} s ago (more than 3 intervals, {limit:.1f} s)"
                           + (f"; last error: {error}" if error else ""))
        return True, f"ok: last successful {self.what} {age:.1f} s ago"


@dataclass(frozen=True)
class RunMetrics:
    """The metrics of one run, in a registry of their own."""

    registry: CollectorRegistry
    rows_read: Counter
    cells_written: Counter
    rejected: Counter
    chunks: Gauge
    lag: Gauge
    throttled: Gauge
    paused: Gauge
    held: Counter
    cycle_seconds: Histogram
    chunk_seconds: Histogram

    @classmethod
    def create(cls) -> RunMetrics:
        """Fresh metrics (all zero) in a new registry."""
        r = CollectorRegistry()
        return cls(
            registry=r,
            rows_read=Counter(f"{PREFIX}_rows_read", "Narrow rows read from the source", ["phase"], registry=r),
            cells_written=Counter(f"{PREFIX}_cells_written", "Cells written to the wide tables", ["phase"],
                                  registry=r),
            rejected=Counter(f"{PREFIX}_rejected_rows", "Source rows rejected (value does not fit its column)",
                             ["phase"], registry=r),
            chunks=Gauge(f"{PREFIX}_backfill_chunks", "Backfill chunks of the run's ships by state", ["state"],
                         registry=r),
            lag=Gauge(f"{PREFIX}_realtime_lag_seconds", "Database now minus the newest time migrated, per ship",
                      ["ship_id"], registry=r),
            throttled=Gauge(f"{PREFIX}_backfill_throttled", "Backfill workers held now by the throttle", registry=r),
            paused=Gauge(f"{PREFIX}_backfill_paused", "1 while a pause flag covers a ship of the run", registry=r),
            held=Counter(f"{PREFIX}_backfill_held_seconds", "Seconds backfill workers were held", ["reason"],
                         registry=r),
            cycle_seconds=Histogram(f"{PREFIX}_realtime_cycle_seconds", "Duration of realtime cycles",
                                    buckets=DURATION_BUCKETS, registry=r),
            chunk_seconds=Histogram(f"{PREFIX}_backfill_chunk_seconds", "Duration of backfill chunks",
                                    buckets=DURATION_BUCKETS, registry=r),
        )

    def observe_cycle(self, cycle: CycleFigures) -> None:
        """Count one realtime cycle."""
        ships: Iterable[ShipFigures] = cycle.ships
        for ship in ships:
            self.rows_read.labels("realtime").inc(ship.rows_read)
            self.cells_written.labels("realtime").inc(ship.cells_written)
            self.rejected.labels("realtime").inc(ship.rejected)
            if ship.lag_seconds is not None:
                self.lag.labels(ship.ship_id).set(ship.lag_seconds)
        self.cycle_seconds.observe(cycle.seconds)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("metrics request: " + format, *args)


class MetricsServer:
    """``/metrics`` and ``/healthz`` on ``host:port``, served from a daemon thread."""

    def __init__(self, metrics: RunMetrics, health: Health, host: str, port: int):
        self.metrics, self.health, self.host, self.port = metrics, health, host, port
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def _app(self, environ: dict, start_response):  # a WSGI application
        if environ.get("PATH_INFO") == "/healthz":
            ok, why = self.health.check()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [why.encode("utf-8") + b"\n"]
        return self._metrics_app(environ, start_response)

    def start(self) -> MetricsServer:
        """Bind and serve; a port that cannot be bound is a :class:`ConfigError` naming it (exit 2)."""
        try:
            self._server = make_server(self.host, self.port, self._app, _ThreadingServer, _QuietHandler)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}; "
                              "choose another --metrics-port (or METRICS_PORT)") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz", self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
