"""``--mode streaming``: one cursor per ship, from its first row up to the live data; no cutoff, no ledger.

The cursor (``stream_cursor`` in the cutoff store) is the end of the last committed window. While
it is far behind, windows are CHUNK_HOURS long; near the head each step re-reads the lookback
(late rows) up to the database's now minus the settle delay, every ``--interval``.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import nullcontext
from datetime import datetime, timedelta

from cutoff_store import CutoffStore
from data_migrator import database_now, resolve_ships
from realtime_processor import ShipLocks, source_clock, write_window
from runtime import Runtime
from stopping import stop_on_signals
from strategies.base import Strategy, StrategyOptions, StrategyResult, deadline_timer
from window_migrator import ShipPlanCache

log = logging.getLogger(__name__)


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
        cache = ShipPlanCache(rt)
        chunk = timedelta(hours=opts.chunk_hours or rt.settings.chunk_hours)
        lookback = timedelta(minutes=rt.settings.realtime_lookback_minutes)
        settle = timedelta(seconds=opts.settle_seconds)
        locks = ShipLocks(rt.dbs.target, rt.settings.target_schema, ships)  # one head-follower per ship
        locks.acquire()
        rows = 0
        reason = "signal"
        try:
            with stop_on_signals(stop) if opts.install_signal_handlers else nullcontext(stop):
                timer = deadline_timer(stop, opts.run_for)
                cursors = {s: self._start(rt, store, s) for s in ships}
                while not stop.is_set():
                    locks.check()
                    behind = False
                    for ship in ships:
                        if cursors[ship] is None:
                            cursors[ship] = self._start(rt, store, ship)  # a ship without rows yet
                        if stop.is_set() or cursors[ship] is None:
                            continue
                        with rt.dbs.source.connect() as sconn:
                            head = database_now(sconn, clock.time_type, rt.settings.source_timezone) - settle
                        cur = cursors[ship]
                        far = head - cur > chunk
                        start, end = (cur, cur + chunk) if far else (cur - lookback, head)
                        behind = behind or far
                        if end <= start:
                            continue
                        result = write_window(rt, cache, ship, start, end, clock.time_type)
                        rows += result.rows_read
                        if end > cur:
                            store.set_stream_cursor(ship, end)
                            cursors[ship] = end
                        log.log(logging.INFO if far else logging.DEBUG,
                                "ship %s: streamed %s .. %s, %s rows", ship, start, end, f"{result.rows_read:,}")
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
        return StrategyResult(self.name, round(time.monotonic() - started, 3), reason, stream_rows=rows)

    @staticmethod
    def _start(rt: Runtime, store: CutoffStore, ship: str) -> datetime | None:
        """The stored cursor, else the ship's first row rounded down to the hour (None: no rows yet)."""
        state = store.get(ship)
        if state and state.stream_cursor:
            return state.stream_cursor
        with rt.dbs.source.connect() as sconn:
            first = rt.source.first_time(sconn, ship, rt.source.channels(sconn, ship))
        return first.replace(minute=0, second=0, microsecond=0) if first is not None else None
