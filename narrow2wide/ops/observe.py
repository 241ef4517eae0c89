"""Serve the metrics and the health of one run while it runs (``--metrics-port``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

from narrow2wide.db.runtime import Runtime

if TYPE_CHECKING:
    from narrow2wide.ops.metrics import CycleFigures

WATCH_EVERY = 2.0  # seconds between reads of the ledger and the hold log


@contextmanager
def observed_run(rt: Runtime, port: int | None, host: str, ship_ids: tuple[str, ...] = (),
                 realtime_interval: float | None = None,
                 backfill: bool = True) -> Iterator[Callable[[CycleFigures], None] | None]:
    """Serve ``/metrics`` and ``/healthz`` on ``host:port`` for the run inside the block (nothing when no port).

    ``realtime_interval`` (seconds): the run has realtime cycles; the block gets the callback to give
    each cycle (``on_cycle``), and health follows the cycles. Otherwise health follows the polls of
    the target. ``backfill``: poll the ledger and the hold log for the backfill's metrics.
    A port that cannot be bound is a :class:`ConfigError` (exit 2), raised before the run starts.
    """
    if port is None:
        yield None
        return
    # only with a port: prometheus-client and the stdlib's HTTP server are 14 ms of every start
    from narrow2wide.ops.backfill_watch import BackfillWatch
    from narrow2wide.ops.metrics import Health, MetricsServer, RunMetrics

    metrics = RunMetrics.create()
    health = (Health(realtime_interval, "realtime cycle") if realtime_interval is not None
              else Health(WATCH_EVERY, "poll of the target database"))
    server = MetricsServer(metrics, health, host, port).start()

    def on_cycle(cycle: CycleFigures) -> None:
        metrics.observe_cycle(cycle)
        errors = [s.error for s in cycle.ships if getattr(s, "error", None)]
        health.beat(cycle.ok, errors[0] if errors else None)

    watch = BackfillWatch(rt, list(ship_ids), metrics, None if realtime_interval is not None else health,
                          WATCH_EVERY) if backfill or realtime_interval is None else nullcontext()
    try:
        with watch:
            yield on_cycle if realtime_interval is not None else None
    finally:
        server.stop()
