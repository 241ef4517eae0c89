"""``--mode streaming``: one cursor per ship, from its first row up to the live data; no cutoff, no ledger.

The cursor (``stream_cursor`` in the cutoff store) is the end of the last committed window. While
it is far behind, windows are CHUNK_HOURS long; near the head each step re-reads the lookback
(late rows) up to the database's now minus the settle delay, every ``--interval``.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from narrow2wide.common.errors import error_line
from narrow2wide.common.retry import RETRYABLE, backoff_delay
from narrow2wide.db.catalogue import database_now, resolve_ships
from narrow2wide.db.runtime import Runtime
from narrow2wide.engine.window_migrator import ShipPlanCache
from narrow2wide.realtime.processor import ShipLocks, source_clock, write_window
from narrow2wide.store.cutoff_store import CutoffStore
from narrow2wide.strategies.base import Strategy, StrategyOptions, StrategyResult, deadline_timer

log = logging.getLogger("strategies.streaming")  # the name the log file has always shown


class StreamingStrategy(Strategy):
    """Advance one cursor per ship window by window until it follows the live data."""

    name = "streaming"
    summary = "one cursor per ship from its first row to the live data (simple; best for a short history)"

    def run(self, rt: Runtime, ship_ids: tuple[str, ...], opts: StrategyOptions,
            stop: threading.Event | None = None) -> StrategyResult:
        """Step every ship's cursor until ``stop`` / ``--run-for`` (or caught up, with ``stop_when_caught_up``)."""
        started = time.monotonic()
        stop = stop or threading.Event()
        ships = resolve_ships(rt, ship_ids)
        clock = source_clock(rt)
        store = CutoffStore(rt.settings.cutoff_file)
        store.check_writable()
        cache = ShipPlanCache(rt)
        chunk = timedelta(hours=opts.chunk_hours or rt.settings.chunk_hours)
        lookback = timedelta(minutes=rt.settings.realtime_lookback_minutes)
        settle = timedelta(seconds=opts.settle_seconds)
        locks = ShipLocks(rt.dbs.target, rt.settings.target_schema, ships)  # one head-follower per ship
        locks.acquire()
        rows = failures = consecutive = 0
        reason = "signal"
        try:
            timer = deadline_timer(stop, opts.run_for)
            cursors: dict[str, datetime | None] = {}
            while not stop.is_set():
                locks.check()
                behind = failed = False
                for ship in ships:
                    if stop.is_set():
                        break
                    try:
                        step = self._step(rt, store, cache, clock, ship, cursors, chunk, lookback, settle)
                    except RETRYABLE as exc:
                        # the cursor moves only after a committed window: the step is simply tried again
                        failed = True
                        failures += 1
                        log.warning("ship %s: streaming step failed: %s", ship, error_line(exc))
                        rt.dbs.target.dispose()
                        rt.dbs.source.dispose()
                        continue
                    if step is not None:
                        rows += step[0]
                        behind = behind or step[1]
                consecutive = consecutive + 1 if failed else 0
                if consecutive:
                    wait = backoff_delay(consecutive, opts.backoff_seconds, 60.0)
                    log.warning("retrying in %.1f s (%d failed round(s) in a row)", wait, consecutive)
                    if stop.wait(wait):
                        break
                    continue
                if not behind and opts.stop_when_caught_up:
                    reason = "caught-up"
                    break
                if not behind and stop.wait(opts.interval_minutes * 60):
                    break
            if timer is not None:
                timer.cancel()
        finally:
            locks.release()
        if reason == "signal" and opts.run_for is not None and time.monotonic() - started >= opts.run_for:
            reason = "run-for"
        if consecutive:
            log.warning("streaming ended with its last round failing (%d failed round(s) in a row)", consecutive)
        return StrategyResult(self.name, round(time.monotonic() - started, 3), reason, stream_rows=rows,
                              stream_failures=failures, stream_failing=consecutive > 0)

    def _step(self, rt: Runtime, store: CutoffStore, cache: ShipPlanCache, clock, ship: str,
              cursors: dict[str, datetime | None], chunk: timedelta, lookback: timedelta,
              settle: timedelta) -> tuple[int, bool] | None:
        """Migrate the next window of ``ship`` and store its cursor; (rows read, still behind) or None."""
        if cursors.get(ship) is None:
            cursors[ship] = self._start(rt, store, ship)  # None while the ship has no rows yet
        cur = cursors[ship]
        if cur is None:
            return None
        with rt.dbs.source.connect() as sconn:
            head = database_now(sconn, clock.time_type, rt.settings.source_timezone) - settle
        far = head - cur > chunk
        start, end = (cur, cur + chunk) if far else (cur - lookback, head)
        if end <= start:
            return 0, far
        result = write_window(rt, cache, ship, start, end, clock.time_type)
        if end > cur:
            store.set_stream_cursor(ship, end)
            cursors[ship] = end
        log.log(logging.INFO if far else logging.DEBUG,
                "ship %s: streamed %s .. %s, %s rows", ship, start, end, f"{result.rows_read:,}")
        return result.rows_read, far

    @staticmethod
    def _start(rt: Runtime, store: CutoffStore, ship: str) -> datetime | None:
        """The stored cursor, else the ship's first row rounded down to the hour (None: no rows yet)."""
        state = store.get(ship)
        if state and state.stream_cursor:
            return state.stream_cursor
        with rt.dbs.source.connect() as sconn:
            first = rt.source.first_time(sconn, ship, rt.source.channels(sconn, ship))
        return first.replace(minute=0, second=0, microsecond=0) if first is not None else None
