"""How long backfill workers were held (paused, throttled, rate-capped), in the target database.

One row per (run, worker, reason) with the seconds held so far and, while a hold lasts, since when
(the database's time). Workers of every host write here, so that ``status`` and the metrics of
the run see every worker's holds, not only those of the process that reads them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection

from narrow2wide.store.bookkeeping import BookkeepingTable

HOLD_TABLE = "migrator_holds"
PAUSED, THROTTLED, RATE_CAPPED = "paused", "throttled", "rate_capped"
REASONS = (PAUSED, THROTTLED, RATE_CAPPED)


class HoldLog(BookkeepingTable):
    """The hold records of one target schema."""

    NAME = HOLD_TABLE
    COLUMNS = """run_id text NOT NULL,
        worker text NOT NULL,
        reason text NOT NULL,
        seconds double precision NOT NULL DEFAULT 0,
        holding_since timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, worker, reason)"""

    def record(self, conn: Connection, run_id: str, worker: str, reason: str, add_seconds: float,
               holding: bool) -> None:
        """Add ``add_seconds`` to the worker's hold of ``reason``; ``holding`` says whether it lasts on."""
        conn.execute(text(
            f"""INSERT INTO {self.table} AS h (run_id, worker, reason, seconds, holding_since)
                VALUES (:r, :w, :why, :add, CASE WHEN :holding THEN now() END)
                ON CONFLICT (run_id, worker, reason) DO UPDATE SET
                    seconds = h.seconds + EXCLUDED.seconds,
                    holding_since = CASE WHEN :holding THEN coalesce(h.holding_since, now()) END,
                    updated_at = now()"""),
            {"r": run_id, "w": worker, "why": reason, "add": float(add_seconds), "holding": holding})

    def totals(self, conn: Connection, run_id: str | None = None) -> dict[str, float]:
        """Seconds held per reason, for one run or (``None``) every run this target has seen."""
        if not self.exists(conn):
            return {}
        rows = conn.execute(text(
            f"""SELECT reason, sum(seconds) FROM {self.table}
                WHERE CAST(:r AS text) IS NULL OR run_id = :r GROUP BY reason"""), {"r": run_id}).all()
        return {reason: round(float(seconds), 3) for reason, seconds in rows}

    def holding_now(self, conn: Connection, run_id: str | None = None,
                    fresh_seconds: float = 30.0) -> dict[str, tuple[int, datetime]]:
        """Per reason: how many workers hold now and since when (the earliest).

        A worker that died while holding never clears its row: only rows written within the last
        ``fresh_seconds`` count (a holding worker rewrites its row every few seconds).
        """
        if not self.exists(conn):
            return {}
        rows = conn.execute(text(
            f"""SELECT reason, count(*), min(holding_since) FROM {self.table}
                WHERE holding_since IS NOT NULL AND updated_at > now() - make_interval(secs => :f)
                AND (CAST(:r AS text) IS NULL OR run_id = :r) GROUP BY reason"""),
            {"r": run_id, "f": fresh_seconds}).all()
        return {reason: (int(n), since) for reason, n, since in rows}
