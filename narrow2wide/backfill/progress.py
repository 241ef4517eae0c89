"""Backfill progress read from the ledger: a bar on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import logging
import sys
import threading
import time

from sqlalchemy.exc import DBAPIError

from narrow2wide.db.runtime import Runtime
from narrow2wide.store.chunk_ledger import DONE, FAILED, ChunkLedger

log = logging.getLogger("progress")  # the name the log file has always shown


def render_bar(done: int, total: int, rows_per_s: float, eta_s: float | None, width: int = 30) -> str:
    """``[#####.....]  12/40 chunks  850,000 rows/s  ETA 0:01:10``."""
    filled = int(width * done / total) if total else width
    eta = "--:--" if eta_s is None else time.strftime("%H:%M:%S", time.gmtime(eta_s))
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} chunks  {rows_per_s:,.0f} rows/s  ETA {eta}"


class LedgerProgress:
    """A thread that polls the ledger and reports progress until stopped."""

    def __init__(self, rt: Runtime, ships: list[str], interval: float | None = None,
                 stream=None) -> None:
        self.rt = rt
        self.ships = ships
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval or (1.0 if self.tty else 10.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._ledger = ChunkLedger(rt.settings.target_schema)

    def start(self) -> None:
        """Start reporting."""
        self._thread.start()

    def stop(self) -> None:
        """Stop reporting (prints a final line on a terminal)."""
        self._stop.set()
        self._thread.join(5)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _snapshot(self) -> tuple[int, int, int]:
        with self.rt.dbs.target.connect() as conn:
            counts = self._ledger.counts(conn, self.ships)
        done = sum(c.get(DONE, 0) + c.get(FAILED, 0) for c in counts.values())
        total = sum(sum(c.get(s, 0) for s in ("pending", "running", DONE, FAILED)) for c in counts.values())
        rows = sum(c.get("rows_read", 0) for c in counts.values())
        return done, total, rows

    def _run(self) -> None:
        try:
            start_done, _, start_rows = self._snapshot()
        except DBAPIError:
            return
        t0 = time.monotonic()
        while not self._stop.wait(self.interval):
            try:
                done, total, rows = self._snapshot()
            except DBAPIError as exc:
                log.debug("progress poll failed: %s", exc)
                continue
            elapsed = time.monotonic() - t0
            rate = (rows - start_rows) / elapsed if elapsed > 0 else 0.0
            chunk_rate = (done - start_done) / elapsed if elapsed > 0 else 0.0
            eta = (total - done) / chunk_rate if chunk_rate > 0 else None
            line = render_bar(done, total, rate, eta)
            if self.tty:
                self.stream.write("\r" + line)
                self.stream.flush()
            else:
                log.info("backfill: %s", line)
