"""The backfill's metrics, read from the target every few seconds: the ledger, the holds, the pauses.

Backfill workers may be processes of their own (``--workers N``) or run on other hosts; what they
did is in the ledger and the hold log, so the process that serves the metrics reads it from there
instead of counting in memory. Counters start at zero when the watcher starts and grow by what
was recorded since.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import text

from narrow2wide.common.errors import error_line
from narrow2wide.common.retry import DATABASE_ERRORS
from narrow2wide.db.runtime import Runtime
from narrow2wide.ops.metrics import Health, RunMetrics
from narrow2wide.store.chunk_ledger import DONE, FAILED, PENDING, RUNNING, ChunkLedger
from narrow2wide.store.hold_log import THROTTLED, HoldLog
from narrow2wide.store.pause_flags import EVERY_SHIP, PauseFlags, paused_since

log = logging.getLogger("metrics")

_FIGURES = ("rows_read", "cells_written", "rejected")
LOOK_BACK = timedelta(minutes=5)  # a chunk commits a moment after its finished_at: look back, skip ids seen


class BackfillWatch:
    """A thread that polls the target and updates the backfill metrics (and, if given, the health)."""

    def __init__(self, rt: Runtime, ship_ids: list[str], metrics: RunMetrics, health: Health | None = None,
                 every: float = 2.0):
        self.rt, self.ships, self.metrics, self.health, self.every = rt, ship_ids, metrics, health, every
        schema = rt.settings.target_schema
        self._ledger, self._holds, self._flags = ChunkLedger(schema), HoldLog(schema), PauseFlags(schema)
        self._seen: dict[str, float] | None = None
        self._started = None  # database time of the first poll
        self._timed: set[int] = set()  # chunks whose duration is in the histogram
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backfill-metrics", daemon=True)

    def __enter__(self) -> BackfillWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._poll_quietly()  # the last figures, so that a scrape after the run sees them all

    def _run(self) -> None:
        while True:
            self._poll_quietly()
            if self._stop.wait(self.every):
                return

    def _poll_quietly(self) -> None:
        try:
            self.poll()
        except DATABASE_ERRORS as exc:
            log.debug("backfill metrics poll failed: %s", error_line(exc))
            if self.health is not None:
                self.health.beat(False, error_line(exc))
        else:
            if self.health is not None:
                self.health.beat(True)

    def poll(self) -> None:
        """Read the ledger, the hold log and the pause flags once; update the metrics."""
        with self.rt.dbs.target.connect() as conn:
            now = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
            has_ledger = self._ledger.exists(conn)
            counts = self._ledger.counts(conn, self.ships or None) if has_ledger else {}
            self._started = self._started or now
            since = max(self._started, now - LOOK_BACK)
            durations = self._ledger.chunk_seconds_since(conn, self.ships or None, since) if has_ledger else {}
            held = self._holds.totals(conn)
            holding = self._holds.holding_now(conn)
            flags = self._flags.active(conn)
        totals = {k: float(sum(c.get(k, 0) for c in counts.values())) for k in _FIGURES}
        totals.update({f"held:{reason}": seconds for reason, seconds in held.items()})
        for state in (PENDING, RUNNING, DONE, FAILED):
            self.metrics.chunks.labels(state).set(sum(c.get(state, 0) for c in counts.values()))
        if self._seen is None:  # the first poll is the baseline
            self._seen = totals
        for key, value in totals.items():
            grown = value - self._seen.get(key, 0.0)
            if grown > 0:  # a sum that went down (a ledger row removed) never takes a counter down
                self._counter(key).inc(grown)
                self._seen[key] = value
        for chunk_id, seconds in durations.items():
            if chunk_id not in self._timed:
                self.metrics.chunk_seconds.observe(seconds)
        self._timed = set(durations)
        self.metrics.throttled.set(holding.get(THROTTLED, (0, None))[0])
        ships = self.ships or list(counts)
        self.metrics.paused.set(1 if EVERY_SHIP in flags or any(paused_since(flags, s) is not None for s in ships)
                                else 0)

    def _counter(self, key: str):
        if key.startswith("held:"):
            return self.metrics.held.labels(key[5:])
        return {"rows_read": self.metrics.rows_read, "cells_written": self.metrics.cells_written,
                "rejected": self.metrics.rejected}[key].labels("backfill")
