"""The backfill ledger: one row per (ship, window) chunk in the target database.

A worker claims a chunk with a session advisory lock keyed by the chunk id (``pg_try_advisory_lock``):
the lock lives exactly as long as the worker's connection, so a chunk held by a killed worker is
free again the moment its connection drops, with no lease to expire. The chunk's data and its
``done`` row commit in one transaction.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Connection

from narrow2wide.common.windows import cut_window
from narrow2wide.db.database import qualified
from narrow2wide.db.lock_keys import chunk_key

LEDGER = "migrator_chunks"
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


@dataclass(frozen=True)
class Chunk:
    """One [start, end) window of one ship."""

    id: int
    ship_id: str
    start: datetime
    end: datetime
    attempts: int = 0


def worker_name() -> str:
    """``host:pid`` of this process, recorded on the chunks it works on."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ChunkLedger:
    """Access to the ledger table of one target schema."""

    def __init__(self, schema: str):
        self.schema = schema
        self.table = qualified(schema, LEDGER)

    def ensure(self, conn: Connection, time_type: str) -> None:
        """Create the ledger table when missing (``time_type`` is the source's created_time type)."""
        conn.execute(text(f"""CREATE TABLE IF NOT EXISTS {self.table} (
            id bigserial PRIMARY KEY,
            ship_id text NOT NULL,
            window_start {time_type} NOT NULL,
            window_end {time_type} NOT NULL,
            status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
            tables text[],
            rows_read bigint,
            cells_written bigint,
            wide_rows bigint,
            rejected bigint NOT NULL DEFAULT 0,
            attempts integer NOT NULL DEFAULT 0,
            last_error text,
            worker text,
            started_at timestamptz,
            finished_at timestamptz,
            seconds double precision,
            UNIQUE (ship_id, window_start, window_end))"""))

    def exists(self, conn: Connection) -> bool:
        """True when the ledger table exists."""
        return conn.execute(text("SELECT to_regclass(:t)"), {"t": self.table}).scalar() is not None

    def plan(self, conn: Connection, ship_id: str, first: datetime, cutoff: datetime, hours: int) -> int:
        """Record the chunks [start, end) from ``first`` (rounded down to the hour) up to ``cutoff``.

        Windows already planned are kept as they are: only history before the earliest planned
        chunk and after the latest one (a later cutoff) gets new chunks, so re-running with another
        ``--chunk-hours`` never plans the same rows twice. Returns how many chunks were added.
        """
        lo, hi = self.span(conn, ship_id)
        windows = new_windows(lo, hi, first, cutoff, hours)
        if not windows:
            return 0
        ts = self._ts(conn)
        result = conn.execute(text(
            f"""INSERT INTO {self.table} (ship_id, window_start, window_end)
                SELECT :s, a, b FROM unnest(CAST(:a AS {ts}[]), CAST(:b AS {ts}[])) AS w(a, b)
                ON CONFLICT (ship_id, window_start, window_end) DO NOTHING"""),
            {"s": ship_id, "a": [w[0] for w in windows], "b": [w[1] for w in windows]})
        return int(result.rowcount)

    def span(self, conn: Connection, ship_id: str) -> tuple[datetime | None, datetime | None]:
        """The earliest start and the latest end of the ship's planned chunks (None, None when none)."""
        lo, hi = conn.execute(text(f"SELECT min(window_start), max(window_end) FROM {self.table} "
                                   "WHERE ship_id = :s"), {"s": ship_id}).one()
        return lo, hi

    def open_windows(self, conn: Connection, ship_id: str) -> list[tuple[datetime, datetime]]:
        """The [start, end) windows of the ship's pending and running chunks, in order."""
        return [(r[0], r[1]) for r in conn.execute(text(
            f"SELECT window_start, window_end FROM {self.table} WHERE ship_id = :s "
            "AND status IN ('pending', 'running') ORDER BY window_start"), {"s": ship_id}).all()]

    def _ts(self, conn: Connection) -> str:
        dtype = conn.execute(text(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) "
            "AND attname = 'window_start'"), {"t": self.table}).scalar_one()
        return dtype

    def reset_failed(self, conn: Connection, ship_ids: list[str]) -> list[int]:
        """Put the failed chunks of ``ship_ids`` back to pending (``--retry-failed``); returns their ids."""
        return list(conn.execute(text(
            f"UPDATE {self.table} SET status = 'pending', attempts = 0 WHERE status = 'failed' "
            "AND ship_id = ANY(CAST(:s AS text[])) RETURNING id"), {"s": ship_ids}).scalars())

    def split_failed(self, conn: Connection, ship_ids: list[str], min_hours: int = 1) -> list[int]:
        """Replace each failed chunk longer than ``min_hours`` by its two halves (whole hours), pending.

        The halves cover exactly the window they replace, so nothing is planned twice. Returns the
        ids of the new chunks; an empty list when no failed chunk can be split further.
        """
        rows = conn.execute(text(
            f"""DELETE FROM {self.table} WHERE status = 'failed' AND ship_id = ANY(CAST(:s AS text[]))
                AND window_end - window_start > make_interval(hours => :h)
                RETURNING ship_id, window_start, window_end"""), {"s": ship_ids, "h": min_hours}).all()
        ids: list[int] = []
        for ship, start, end in rows:
            hours = max(int((end - start).total_seconds() // 3600) // 2, min_hours)
            middle = start + timedelta(hours=hours)
            for a, b in ((start, middle), (middle, end)):
                ids.extend(conn.execute(text(
                    f"""INSERT INTO {self.table} (ship_id, window_start, window_end) VALUES (:s, :a, :b)
                        ON CONFLICT (ship_id, window_start, window_end) DO NOTHING RETURNING id"""),
                    {"s": ship, "a": a, "b": b}).scalars())
        return ids

    def unfinished_ships(self, conn: Connection, ship_ids: list[str],
                         only_ids: list[int] | None = None) -> dict[str, int]:
        """Ship -> how many of its chunks (or of ``only_ids``) are pending or running; ships with none are left out."""
        with conn.begin():
            return {ship: int(n) for ship, n in conn.execute(text(
                f"""SELECT ship_id, count(*) FROM {self.table} WHERE status IN ('pending', 'running')
                    AND ship_id = ANY(CAST(:s AS text[]))
                    AND (CAST(:ids AS bigint[]) IS NULL OR id = ANY(CAST(:ids AS bigint[])))
                    GROUP BY ship_id ORDER BY ship_id"""),
                {"s": ship_ids, "ids": only_ids}).all()}

    def claim(self, conn: Connection, ship_ids: list[str], only_ids: list[int] | None = None) -> Chunk | None:
        """Claim the next chunk nobody holds, newest window first; None when every unfinished one is held.

        ``only_ids`` restricts the claim to those chunks (``--retry-failed``). ``conn`` must stay
        open while the chunk is worked on: it holds the advisory lock. The claim itself is
        committed (status ``running``) so that status shows it.
        """
        with conn.begin():
            candidates = conn.execute(text(
                f"""SELECT id FROM {self.table}
                    WHERE status IN ('pending', 'running') AND ship_id = ANY(CAST(:s AS text[]))
                    AND (CAST(:ids AS bigint[]) IS NULL OR id = ANY(CAST(:ids AS bigint[])))
                    ORDER BY window_start DESC, ship_id LIMIT 256"""),
                {"s": ship_ids, "ids": only_ids}).scalars().all()
        for chunk_id in candidates:
            got = conn.execute(text("SELECT pg_try_advisory_lock(hashtextextended(:k, 0))"),
                               {"k": self._lock_key(chunk_id)}).scalar()
            conn.commit()
            if not got:
                continue
            with conn.begin():
                row = conn.execute(text(
                    f"""UPDATE {self.table} SET status = 'running', worker = :w, started_at = now()
                        WHERE id = :id AND status IN ('pending', 'running')
                        RETURNING id, ship_id, window_start, window_end, attempts"""),
                    {"id": chunk_id, "w": worker_name()}).first()
            if row is None:  # finished by someone between our read and our lock
                self.release(conn, chunk_id)
                continue
            return Chunk(*row)
        return None

    def _lock_key(self, chunk_id: int) -> str:
        return chunk_key(self.schema, chunk_id)

    def release(self, conn: Connection, chunk_id: int) -> None:
        """Give up the advisory lock of a chunk."""
        conn.execute(text("SELECT pg_advisory_unlock(hashtextextended(:k, 0))"), {"k": self._lock_key(chunk_id)})
        conn.commit()

    def mark_done(self, conn: Connection, chunk: Chunk, rows_read: int, cells: int, wide_rows: int, rejected: int,
                  tables: tuple[str, ...]) -> None:
        """Mark the chunk done, inside the transaction that wrote its data (as its last statement).

        ``finished_at`` is the clock at this statement, not the transaction's start: the chunk's
        seconds are the time from its claim to its data written.
        """
        conn.execute(text(
            f"""UPDATE {self.table} SET status = 'done', rows_read = :r, cells_written = :c, wide_rows = :w,
                    rejected = :rej, tables = CAST(:t AS text[]), last_error = NULL,
                    finished_at = clock_timestamp(), seconds = extract(epoch FROM clock_timestamp() - started_at)
                WHERE id = :id"""),
            {"id": chunk.id, "r": rows_read, "c": cells, "w": wide_rows, "rej": rejected, "t": list(tables)})

    def mark_part_done(self, conn: Connection, chunk: Chunk, end: datetime, rows_read: int, cells: int,
                       wide_rows: int, rejected: int, tables: tuple[str, ...]) -> int:
        """Record ``[chunk.start, end)`` as a new done chunk; the chunk itself becomes ``[end, chunk.end)``, pending.

        For a backfill that holds (a pause, a throttle) at a block boundary: the blocks written so
        far commit with their ledger row, in the transaction that wrote them, and the rest of the
        window stays planned exactly once, under the chunk's own id (so that a run limited to some
        ids, ``--retry-failed`` or hybrid's split halves, still runs it). Returns the done part's id.
        """
        done_id = int(conn.execute(text(
            f"""INSERT INTO {self.table} (ship_id, window_start, window_end, status, rows_read, cells_written,
                    wide_rows, rejected, tables, attempts, worker, started_at, finished_at, seconds)
                SELECT ship_id, window_start, :e, 'done', :r, :c, :w, :rej, CAST(:t AS text[]), attempts, worker,
                       started_at, clock_timestamp(), extract(epoch FROM clock_timestamp() - started_at)
                FROM {self.table} WHERE id = :id RETURNING id"""),
            {"id": chunk.id, "e": end, "r": rows_read, "c": cells, "w": wide_rows, "rej": rejected,
             "t": list(tables)}).scalar_one())
        conn.execute(text(f"UPDATE {self.table} SET window_start = :e, status = 'pending', started_at = NULL "
                          "WHERE id = :id"), {"id": chunk.id, "e": end})
        return done_id

    def mark_error(self, conn: Connection, chunk: Chunk, error: str, failed: bool) -> bool:
        """Record a failed attempt; ``failed`` gives up on the chunk (status failed), else it stays pending.

        Only while the chunk is still this worker's claim: when the failure cost the worker its
        connection, it lost the chunk's lock too, and another worker may have claimed the chunk
        since, or finished it. Returns False (nothing recorded) then.
        """
        with conn.begin():
            row = conn.execute(text(
                f"""UPDATE {self.table} SET status = :st, attempts = attempts + 1, last_error = :e,
                        finished_at = now() WHERE id = :id AND status = 'running' AND worker = :w
                    RETURNING id"""),
                {"id": chunk.id, "e": error[:2000], "st": FAILED if failed else PENDING, "w": worker_name()}).first()
        return row is not None

    def counts(self, conn: Connection, ship_ids: list[str] | None = None) -> dict[str, dict[str, int]]:
        """Per ship: chunks by status, plus rows_read, cells_written and rejected sums."""
        where = "WHERE ship_id = ANY(CAST(:s AS text[]))" if ship_ids else ""
        rows = conn.execute(text(
            f"""SELECT ship_id, status, count(*), coalesce(sum(rows_read), 0), coalesce(sum(cells_written), 0),
                       coalesce(sum(rejected), 0)
                FROM {self.table} {where} GROUP BY 1, 2"""), {"s": ship_ids or []}).all()
        out: dict[str, dict[str, int]] = {}
        for ship, status, n, rows_read, cells, rejected in rows:
            d = out.setdefault(ship, {PENDING: 0, RUNNING: 0, DONE: 0, FAILED: 0, "rows_read": 0,
                                      "cells_written": 0, "rejected": 0})
            d[status] = int(n)
            d["rows_read"] += int(rows_read)
            d["cells_written"] += int(cells)
            d["rejected"] += int(rejected)
        return out

    def rows_done_since(self, conn: Connection, ship_ids: list[str], since: datetime) -> int:
        """Narrow rows of the chunks finished at or after ``since`` (database time)."""
        return int(conn.execute(text(
            f"""SELECT coalesce(sum(rows_read), 0) FROM {self.table} WHERE status = 'done'
                AND finished_at >= :t AND ship_id = ANY(CAST(:s AS text[]))"""),
            {"t": since, "s": ship_ids}).scalar_one())

    def chunk_seconds_since(self, conn: Connection, ship_ids: list[str] | None,
                            since: datetime) -> dict[int, float]:
        """Chunk id -> seconds of the chunks of ``ship_ids`` (all when None) finished at or after ``since``.

        A chunk commits a moment after its ``finished_at``, so a caller that polls should look back
        a little and skip the ids it has seen.
        """
        return {int(r[0]): float(r[1]) for r in conn.execute(text(
            f"""SELECT id, coalesce(seconds, 0) FROM {self.table} WHERE status = 'done' AND finished_at >= :t
                AND (CAST(:s AS text[]) IS NULL OR ship_id = ANY(CAST(:s AS text[])))"""),
            {"t": since, "s": ship_ids}).all()}

    def held_running(self, conn: Connection, ship_ids: list[str]) -> int:
        """How many 'running' chunks a live worker really holds (their advisory lock is taken)."""
        ids = conn.execute(text(
            f"SELECT id FROM {self.table} WHERE status = 'running' AND ship_id = ANY(CAST(:s AS text[]))"),
            {"s": ship_ids}).scalars().all()
        held = 0
        for chunk_id in ids:
            free = conn.execute(text("SELECT pg_try_advisory_lock(hashtextextended(:k, 0))"),
                                {"k": self._lock_key(chunk_id)}).scalar()
            if free:
                conn.execute(text("SELECT pg_advisory_unlock(hashtextextended(:k, 0))"),
                             {"k": self._lock_key(chunk_id)})
            else:
                held += 1
        return held

    def failed(self, conn: Connection, ship_ids: list[str]) -> list[tuple[str, datetime, datetime, str]]:
        """The failed chunks: (ship, start, end, last error)."""
        return [tuple(r) for r in conn.execute(text(
            f"""SELECT ship_id, window_start, window_end, coalesce(last_error, '') FROM {self.table}
                WHERE status = 'failed' AND ship_id = ANY(CAST(:s AS text[])) ORDER BY ship_id, window_start"""),
            {"s": ship_ids}).all()]

    def done_windows(self, conn: Connection, ship_id: str) -> list[tuple[datetime, datetime]]:
        """The [start, end) windows of the ship's done chunks, in order."""
        return [(r[0], r[1]) for r in conn.execute(text(
            f"SELECT window_start, window_end FROM {self.table} WHERE ship_id = :s AND status = 'done' "
            "ORDER BY window_start"), {"s": ship_id}).all()]

    def last_error(self, conn: Connection, ship_id: str) -> str | None:
        """The most recent error recorded for the ship."""
        return conn.execute(text(
            f"SELECT last_error FROM {self.table} WHERE ship_id = :s AND last_error IS NOT NULL "
            "ORDER BY finished_at DESC NULLS LAST LIMIT 1"), {"s": ship_id}).scalar()


def new_windows(lo: datetime | None, hi: datetime | None, first: datetime, cutoff: datetime,
                hours: int) -> list[tuple[datetime, datetime]]:
    """The chunk windows :meth:`ChunkLedger.plan` adds to a ship whose planned chunks span ``[lo, hi)``.

    History from ``first`` (rounded down to the hour) up to ``cutoff``, less what is planned
    already: only the part before ``lo`` and the part after ``hi`` get new windows.
    """
    start = first.replace(minute=0, second=0, microsecond=0)
    gaps = [(start, cutoff)] if lo is None else [(start, min(lo, cutoff)), (max(hi, start), cutoff)]
    return [w for a, b in gaps for w in cut_window(a, b, [timedelta(hours=hours)])]
