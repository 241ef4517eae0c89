"""``--mode hybrid``: concurrent, plus parallel workers, splitting of failing chunks and a progress file.

A chunk that still fails after its retries is split in two (whole hours) and the halves are run
again, down to one hour, so that one bad hour does not hold back a whole day. Progress per ship
(percent, narrow rows/s, ETA, realtime lag) is shown in place on a terminal and written every few
seconds to ``STATE_DIR/progress.json`` for external monitoring.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from datetime import datetime

from sqlalchemy.exc import DBAPIError

from narrow2wide.backfill.runner import BackfillResult, RunGate, drain_ledger
from narrow2wide.common.durable import write_durably
from narrow2wide.db.catalogue import database_now, load_ship_layout, newest_wide_time
from narrow2wide.db.runtime import Runtime
from narrow2wide.store.chunk_ledger import DONE, FAILED, PENDING, RUNNING, ChunkLedger
from narrow2wide.store.cutoff_store import CutoffStore
from narrow2wide.strategies.base import StrategyOptions
from narrow2wide.strategies.concurrent import ConcurrentStrategy

log = logging.getLogger("strategies.hybrid")  # the name the log file has always shown

PROGRESS_FILE = "progress.json"


def _eta(seconds: float | None) -> str:
    return "--:--:--" if seconds is None else time.strftime("%H:%M:%S", time.gmtime(seconds))


class FleetProgress:
    """Per-ship progress from the ledger and the wide tables, on stderr and in a JSON file."""

    def __init__(self, rt: Runtime, ships: list[str], every: float = 3.0, stream=None):
        self.rt = rt
        self.ships = ships
        self.every = every
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.path = rt.settings.state_dir / PROGRESS_FILE
        self._lines_drawn = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-progress", daemon=True)
        self._ledger = ChunkLedger(rt.settings.target_schema)
        self._tables: dict[str, dict[str, int]] = {}

    def start(self) -> FleetProgress:
        """Start polling."""
        with self.rt.dbs.target.connect() as conn:
            for ship in self.ships:
                layout = load_ship_layout(conn, self.rt.settings.target_schema, ship)
                self._tables[ship] = {p.table: 0 for p in layout.parts} if layout else {}
        self._thread.start()
        return self

    def stop(self) -> None:
        """Write a last snapshot and stop."""
        self._stop.set()
        self._thread.join(10)

    def snapshot(self, began: float, first: dict[str, int]) -> dict:
        """The current figures of every ship, as written to the progress file."""
        elapsed = max(time.monotonic() - began, 1e-6)
        with self.rt.dbs.source.connect() as sconn:
            time_type = self.rt.source.time_type(sconn)
            now = database_now(sconn, time_type, self.rt.settings.source_timezone)
        store = CutoffStore(self.rt.settings.cutoff_file).load()
        with self.rt.dbs.target.connect() as conn:
            counts = self._ledger.counts(conn, self.ships)
            ships = []
            for ship in self.ships:
                c = counts.get(ship, {})
                total = sum(c.get(s, 0) for s in (PENDING, RUNNING, DONE, FAILED))
                done = c.get(DONE, 0)
                rows = c.get("rows_read", 0)
                rate = (rows - first.get(ship, 0)) / elapsed
                remaining = total - done - c.get(FAILED, 0)
                done_now = done - first.get(f"{ship}:chunks", 0)
                eta = remaining * elapsed / done_now if done_now > 0 else (0.0 if remaining == 0 else None)
                newest = newest_wide_time(conn, self.rt.settings.target_schema, self._tables.get(ship, {}))
                state = store.get(ship)
                lag = (now - newest).total_seconds() if newest is not None and state and state.watermark else None
                ships.append({"ship_id": ship, "chunks_total": total, "chunks_done": done,
                              "chunks_failed": c.get(FAILED, 0),
                              "percent": round(100 * done / total, 1) if total else 100.0,
                              "rows_read": rows, "rows_per_second": round(rate, 1),
                              "eta_seconds": None if eta is None else round(eta, 1),
                              "realtime_watermark": state.watermark.isoformat() if state and state.watermark else None,
                              "realtime_lag_seconds": None if lag is None else round(lag, 1)})
        return {"database_time": now.isoformat(), "elapsed_seconds": round(elapsed, 1), "ships": ships}

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(self.path, (json.dumps(data, indent=2) + "\n").encode("utf-8"), mode=0o666)

    def _show(self, data: dict) -> None:
        lines = [f"{s['ship_id']}: {s['percent']:5.1f}%  {s['chunks_done']}/{s['chunks_total']} chunks  "
                 f"{s['rows_per_second']:,.0f} rows/s  ETA {_eta(s['eta_seconds'])}  realtime lag "
                 + ("-" if s["realtime_lag_seconds"] is None else f"{s['realtime_lag_seconds']:,.0f} s")
                 for s in data["ships"]]
        if self.tty:
            up = f"\x1b[{self._lines_drawn}A" if self._lines_drawn else ""
            self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
            self.stream.flush()
            self._lines_drawn = len(lines)
        else:
            for line in lines:
                log.info("progress %s", line)

    def _run(self) -> None:
        began = time.monotonic()
        first: dict[str, int] = {}
        try:
            with self.rt.dbs.target.connect() as conn:
                for ship, c in self._ledger.counts(conn, self.ships).items():
                    first[ship] = c.get("rows_read", 0)
                    first[f"{ship}:chunks"] = c.get(DONE, 0)
        except DBAPIError as exc:
            log.warning("progress: cannot read the ledger: %s", exc)
        plain_every = 10.0
        last_plain = 0.0
        while True:
            stopping = self._stop.wait(self.every)
            try:
                data = self.snapshot(began, first)
                self._write(data)
                if self.tty or stopping or time.monotonic() - last_plain >= plain_every:
                    self._show(data)
                    last_plain = time.monotonic()
            except (DBAPIError, OSError) as exc:
                log.warning("progress: %s", exc)
            if stopping:
                return


class HybridStrategy(ConcurrentStrategy):
    """Concurrent with parallel workers, automatic splitting of failing chunks and a progress file."""

    name = "hybrid"
    summary = "concurrent with parallel workers, chunk splitting and a progress file (large fleets)"

    def backfill(self, rt: Runtime, ships: list[str], cutoffs: dict[str, datetime], opts: StrategyOptions,
                 stop: threading.Event) -> BackfillResult:
        """Run the workers; split chunks that failed and run the halves, down to one hour."""
        return drain_ledger(rt, ships, cutoffs, opts.workers, opts.max_attempts, opts.backoff_seconds,
                            stop=stop, reporter=FleetProgress(rt, ships) if opts.progress else None,
                            split_failing=True, run_gate=RunGate(opts.throttle))
