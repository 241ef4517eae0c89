"""Migrate one window of one ship: read, pivot, merge, reject. Used by backfill, realtime and repair.

The caller owns the transactions: the target connection's transaction holds the data (and the
caller's bookkeeping, such as the ledger row), so data and bookkeeping commit together.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.engine import Connection

from narrow2wide.common.durable import write_durably
from narrow2wide.common.errors import SchemaError
from narrow2wide.common.fits import fits_sql
from narrow2wide.common.model import TIME_COLUMN, short_hash
from narrow2wide.common.windows import cut_window
from narrow2wide.db.catalogue import load_ship_layout, load_ship_layouts
from narrow2wide.db.database import raw_cursor
from narrow2wide.db.narrow_source import SourceTable
from narrow2wide.db.runtime import Runtime
from narrow2wide.engine.copy_reader import CopyReaderProcess
from narrow2wide.engine.pivot import (
    REASONS,
    NarrowBatch,
    PartRows,
    PivotPlan,
    PivotResult,
    Rejects,
    channels_serve_the_read,
    drop_unchanged,
    encode_copy,
    hash_lookup,
    pivot,
    read_window,
    ts_to_datetime,
)
from narrow2wide.engine.tick_signatures import ShipTicks
from narrow2wide.engine.wide_writer import delete_window, merge_copy, merge_many, write_copy
from narrow2wide.schema.tables import add_channels

log = logging.getLogger("window_migrator")  # the name the log file has always shown
T = TypeVar("T")

AfterBlock = Callable[[int, bool], bool]
"""Called after each block of a window with (rows read, last block?); True ends the window there."""

READ_BLOCKS = 12  # a window is read in up to this many time blocks (pipelined with pivot and write)
BLOCK_MIN = timedelta(minutes=30)  # never smaller blocks than this


@dataclass(frozen=True)
class WindowResult:
    """What migrating one window did."""

    ship_id: str
    start: datetime
    end: datetime
    rows_read: int
    cells_written: int
    wide_rows: int
    rejected: int
    tables: tuple[str, ...]
    read_seconds: float
    pivot_seconds: float
    write_seconds: float
    newest: datetime | None = None


class UnknownChannels(SchemaError):
    """Rows of channels that have no column arrived during the read; they were not written."""

    def __init__(self, ship_id: str, channels: list[str]):
        self.channels = channels
        super().__init__(f"ship {ship_id}: {len(channels)} channel(s) without a column: "
                         f"{', '.join(channels[:5])}{' ...' if len(channels) > 5 else ''}")


class ShipPlanCache:
    """The pivot plan of each ship, rebuilt when its layout changes (new channels)."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self._plans: dict[str, PivotPlan] = {}

    def get(self, conn: Connection, ship_id: str, refresh: bool = False) -> PivotPlan:
        """The plan of ``ship_id``; :class:`SchemaError` when it has no wide tables."""
        if refresh or ship_id not in self._plans:
            layout = load_ship_layout(conn, self.rt.settings.target_schema, ship_id)
            if layout is None:
                raise SchemaError(f"ship {ship_id} has no wide tables; run --mode schema-only and "
                                  "--mode tables-only first")
            self._plans[ship_id] = PivotPlan.from_layout(layout)
        return self._plans[ship_id]

    def get_many(self, conn: Connection, ship_ids: list[str]) -> list[PivotPlan]:
        """The plans of ``ship_ids``, the missing ones read in one query; :class:`SchemaError` for a ship
        without wide tables."""
        missing = [s for s in ship_ids if s not in self._plans]
        if missing:
            layouts = load_ship_layouts(conn, self.rt.settings.target_schema, missing)
            for ship in missing:
                if ship not in layouts:
                    raise SchemaError(f"ship {ship} has no wide tables; run --mode schema-only and "
                                      "--mode tables-only first")
                self._plans[ship] = PivotPlan.from_layout(layouts[ship])
        return [self._plans[s] for s in ship_ids]

    def cached(self, ship_id: str) -> PivotPlan:
        """The plan of ``ship_id``, read on a connection of its own the first time."""
        if ship_id not in self._plans:
            with self.rt.dbs.target.connect() as conn:
                return self.get(conn, ship_id)
        return self._plans[ship_id]

    def with_new_channels(self, ship_id: str, time_type: str, run: Callable[[PivotPlan], T],
                          plan: PivotPlan | None = None) -> T:
        """``run(plan)`` (the cached plan unless given); when the window held rows of channels without a
        column (:class:`UnknownChannels`, nothing written) they get columns and ``run`` goes once more."""
        try:
            return run(plan if plan is not None else self.cached(ship_id))
        except UnknownChannels as exc:
            log.info("ship %s: %d new channel(s) (%s); adding columns", ship_id, len(exc.channels),
                     ", ".join(exc.channels[:5]))
            return run(self.ensure_channels(ship_id, time_type))

    def ensure_channels(self, ship_id: str, time_type: str) -> PivotPlan:
        """Give every channel the source has for ``ship_id`` a column (skip-scan), then return the plan."""
        with self.rt.dbs.source.connect() as sconn:
            present = self.rt.source.channels(sconn, ship_id)
        with self.rt.dbs.target.connect() as tconn:
            plan = self.get(tconn, ship_id)
        missing = sorted(set(present) - set(plan.channels))
        if missing:
            with self.rt.dbs.target.begin() as tconn:
                add_channels(self.rt, tconn, ship_id, missing, time_type)
            with self.rt.dbs.target.connect() as tconn:
                plan = self.get(tconn, ship_id, refresh=True)
        return plan


def unknown_channels_in(conn: Connection, source: SourceTable, plan: PivotPlan, start, end) -> list[str]:
    """Channels with rows in ``[start, end)`` that the plan does not know.

    A skip-scan of the ship's channel ids (one index descent each), then one primary-key probe per
    channel the plan lacks: the cost does not grow with the window, the ship's history or the fleet.
    Run it in the read's snapshot, so that a channel appearing later is the next read's business.
    """
    new = sorted(set(source.channels(conn, plan.ship_id)) - set(plan.channels))
    return source.channels_with_rows(conn, plan.ship_id, new, start, end)


def _blocks(start: datetime, end: datetime, count: int) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` cut into about ``count`` blocks of whole minutes (one block when short).

    The first two blocks are a quarter and a half of the others, and so are the last two, in
    reverse: the worker waits for the first block's read before it has anything to pivot, so a
    short one fills the pipeline sooner; and what is left to pivot and write once the last read
    is in is the last blocks, so short ones drain it sooner.
    """
    span = end - start
    step = max(span / count, BLOCK_MIN)
    minutes = max(1, round(step.total_seconds() / 60))
    full = timedelta(minutes=minutes)
    if span <= 2 * BLOCK_MIN:
        return cut_window(start, end, [full]) or [(start, end)]
    quarter, half = timedelta(minutes=max(1, minutes // 4)), timedelta(minutes=max(1, minutes // 2))
    tail = quarter + half
    if span < 2 * tail + full:  # too short to ramp down as well
        return cut_window(start, end, [quarter, half, full])
    return cut_window(start, end - tail, [quarter, half, full]) + [(end - tail, end - quarter), (end - quarter, end)]


class WindowTally:
    """What the blocks of one window add up to (rows, cells, rejects, timings, the newest time)."""

    def __init__(self, plan: PivotPlan, start: datetime, end: datetime):
        self.plan, self.start, self.end = plan, start, end
        self.rows = self.cells = self.wide_rows = 0
        self.tables: set[str] = set()
        self.rejects = Rejects()
        self.newest_us: int | None = None
        self.t_read = self.t_pivot = self.t_write = 0.0

    def write_block(self, target_conn: Connection, schema: str, batch: NarrowBatch, b_start: datetime,
                    b_end: datetime, direct: bool) -> None:
        """Pivot ``batch`` (the rows of ``[b_start, b_end)``) and write it: merged, or copied straight in."""
        t1 = time.monotonic()
        result = pivot(self.plan, batch)
        t2 = time.monotonic()
        for part in result.parts:
            columns, payload = encode_copy(part, TIME_COLUMN)
            if direct:
                write_copy(target_conn, schema, part.table, columns, payload, b_start, b_end)
            else:
                merge_copy(target_conn, schema, part.table, columns, payload)
            self.cells += part.cells
            self.tables.add(part.table)
        self.t_write += time.monotonic() - t2
        self.add_pivot(result, batch, t2 - t1)

    def add_pivot(self, result: PivotResult, batch: NarrowBatch, seconds: float) -> None:
        """Count a pivoted block (rows, wide rows, rejects, newest time)."""
        self.t_pivot += seconds
        self.rows += result.rows_read
        self.wide_rows += result.wide_rows
        self.rejects.extend(result.rejects)
        for ts in (batch.ts, batch.text_ts):
            if ts.size:
                self.newest_us = max(self.newest_us if self.newest_us is not None else -(2**62), int(ts.max()))

    def finish(self, rt: Runtime, source_conn: Connection) -> WindowResult:
        """Write the window's reject file and return its result."""
        aware = self.start.tzinfo is not None
        write_rejects(rt, source_conn, self.plan, self.start, self.end, self.rejects, aware)
        newest = ts_to_datetime(self.newest_us, aware) if self.newest_us is not None else None
        ordered = tuple(p.table for p in self.plan.parts if p.table in self.tables)
        return WindowResult(self.plan.ship_id, self.start, self.end, self.rows, self.cells, self.wide_rows,
                            len(self.rejects), ordered, self.t_read, self.t_pivot, self.t_write, newest)


def _block_reader(rt: Runtime, source_conn: Connection, plan: PivotPlan, blocks: list[tuple[datetime, datetime]],
                  readers: Sequence[CopyReaderProcess]) -> tuple[Callable[[int], NarrowBatch], int]:
    """The read of block ``k`` of ``blocks`` (on ``source_conn``'s snapshot), and how many run at once.

    With ``readers`` each one takes every n-th block, in a helper process that imports this
    transaction's snapshot; without, one reader thread reads on ``source_conn`` itself.
    """
    cursor = raw_cursor(source_conn)
    order_by = rt.source.duplicate_order(source_conn)  # None (no sort) when a unique key rules out duplicates
    hash_lookup(cursor, plan)  # asked here, once, before reader threads could ask it together
    by_channel = channels_serve_the_read(cursor, rt.source.sql, plan, *max(blocks, key=lambda b: b[1] - b[0]))
    if not by_channel:
        log.debug("ship %s: the planner reads [%s, %s) by created_time; read without the channel list",
                  plan.ship_id, blocks[0][0], blocks[-1][1])
    if readers:
        snapshot = readers[0].export_snapshot(source_conn)
        outs: list[Callable[[str], memoryview] | None] = [partial(r.copy_out, snapshot) for r in readers]
    else:
        outs = [None]

    def read(k: int) -> NarrowBatch:
        return read_window(cursor, rt.source.sql, plan, *blocks[k], order_by, outs[k % len(outs)], by_channel)

    return read, len(outs)


def migrate_window(
    rt: Runtime,
    source_conn: Connection,
    target_conn: Connection,
    plan: PivotPlan,
    start: datetime,
    end: datetime,
    replace: bool = False,
    direct: bool = False,
    readers: Sequence[CopyReaderProcess] = (),
    after_block: AfterBlock | None = None,
) -> WindowResult:
    """Move the rows of ``plan.ship_id`` with ``start <= created_time < end`` into the wide tables.

    Writes in ``target_conn``'s open transaction (the caller commits). ``replace`` first deletes
    the window's wide rows (validate --repair), so cells whose source row is gone disappear too.
    ``direct`` (the backfill) copies a block straight into a table that has no row in its range
    instead of merging it; realtime and repair always merge. ``readers`` (the backfill) run the
    COPYs of the blocks in helper processes on this transaction's snapshot, one block each at a time.
    ``after_block(rows, last)`` (the backfill's throttle) is called after each block is written; when
    it returns True the window ends there: the result's ``end`` is that block's end, and the rest
    of the window is the caller's to plan again.
    Raises :class:`UnknownChannels` when the window holds rows of a channel without a column.

    The window is read in time blocks (a wide row never spans two: it is one created_time), and
    the next block is read by a helper while this one pivots and writes, so the source's COPY out
    overlaps the target's COPY in and merge; memory is bounded by a block, not the window.
    """
    schema = rt.settings.target_schema
    unknown = unknown_channels_in(source_conn, rt.source, plan, start, end)  # also takes the read's snapshot
    if unknown:
        raise UnknownChannels(plan.ship_id, unknown)
    if replace:
        for part in plan.parts:
            delete_window(target_conn, schema, part.table, start, end)
    blocks = _blocks(start, end, READ_BLOCKS)
    read, lanes = _block_reader(rt, source_conn, plan, blocks, readers)
    tally = WindowTally(plan, start, end)
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="window-reader") as pool:
        pending = {k: pool.submit(read, k) for k in range(min(lanes, len(blocks)))}
        for k, (b_start, b_end) in enumerate(blocks):
            t0 = time.monotonic()
            batch = pending.pop(k).result()
            tally.t_read += time.monotonic() - t0
            if k + lanes < len(blocks):  # the reader of block k is free again: it takes block k + n
                pending[k + lanes] = pool.submit(read, k + lanes)
            rows_before = tally.rows
            tally.write_block(target_conn, schema, batch, b_start, b_end, direct)
            del batch
            last = k == len(blocks) - 1
            if after_block is not None and after_block(tally.rows - rows_before, last) and not last:
                tally.end = b_end  # the reads already under way finish and are dropped
                break
    return tally.finish(rt, source_conn)


class WrittenRows:
    """What the previous realtime cycle of this processor wrote, per (ship, table): its pivoted rows.

    A cycle re-reads its lookback; the rows it finds exactly as the previous cycle wrote them are
    not merged again (:func:`pivot.drop_unchanged`). Rows of a cycle count as written only once its
    transaction has committed (:meth:`commit`); a failed one is forgotten (:meth:`discard`), and a
    new processor starts empty, so it merges its whole first window.
    """

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], PartRows] = {}
        self._staged: dict[tuple[str, str], PartRows] = {}
        self._ticks: dict[int, ShipTicks] = {}  # ship hash -> the tick signatures of its last window
        self._staged_ticks: dict[int, ShipTicks] = {}

    def before(self, ship_id: str, table: str) -> PartRows | None:
        """The rows the last committed cycle wrote to ``table`` of ``ship_id``."""
        return self._rows.get((ship_id, table))

    def stage(self, ship_id: str, part: PartRows) -> None:
        """Remember ``part`` as this cycle's rows of its table (taking effect at :meth:`commit`)."""
        self._staged[(ship_id, part.table)] = part

    def ticks(self) -> dict[int, ShipTicks]:
        """Ship hash -> the tick signatures of the window the last committed cycle wrote of it."""
        return self._ticks

    def stage_ticks(self, ticks: dict[int, ShipTicks]) -> None:
        """Remember the signatures of this cycle's windows (taking effect at :meth:`commit`)."""
        self._staged_ticks.update(ticks)

    def commit(self) -> None:
        """The staged rows are in the wide tables now."""
        self._rows.update(self._staged)
        self._staged.clear()
        self._ticks.update(self._staged_ticks)
        self._staged_ticks.clear()

    def discard(self) -> None:
        """The staged rows did not commit."""
        self._staged.clear()
        self._staged_ticks.clear()


def merge_fleet(rt: Runtime, source_conn: Connection, target_conn: Connection,
                items: list[tuple[PivotPlan, NarrowBatch]], start: datetime, end: datetime,
                written: WrittenRows | None = None) -> list[WindowResult]:
    """Merge already read batches of many ships (each every row of its ship in ``[start, end)``).

    For the realtime fleet read (:func:`pivot.read_fleet_window`): every ship's parts are pivoted
    first, then merged with a constant number of statements plus one COPY per table
    (:func:`wide_writer.merge_many`). ``source_conn`` is the connection whose snapshot read the
    batches (the reject files read the full rows from it). The batches must hold no row of a
    channel without a column (check ``batch.idx``). With ``written``, rows exactly as the previous
    cycle wrote them are left out (the caller commits or discards ``written`` with the transaction).
    """
    schema = rt.settings.target_schema
    tallies, payloads = [], []
    for plan, batch in items:
        tally = WindowTally(plan, start, end)
        t0 = time.monotonic()
        result = pivot(plan, batch)
        for whole in result.parts:
            part = whole if written is None else drop_unchanged(whole, written.before(plan.ship_id, whole.table))
            if written is not None:
                written.stage(plan.ship_id, whole)
            if part is None:
                continue
            columns, payload = encode_copy(part, TIME_COLUMN)
            payloads.append((part.table, columns, payload))
            tally.cells += part.cells
            tally.tables.add(part.table)
        tally.add_pivot(result, batch, time.monotonic() - t0)
        tallies.append(tally)
    t0 = time.monotonic()
    merge_many(target_conn, schema, payloads)
    share = (time.monotonic() - t0) / max(len(tallies), 1)
    out = []
    for tally in tallies:
        tally.t_write = share
        out.append(tally.finish(rt, source_conn))
    return out


def reject_file(rt: Runtime, ship_id: str, start: datetime, end: datetime) -> Path:
    """Where the rejects of one ship's window are written."""
    safe_ship = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in ship_id)[:40] + "-" + short_hash(ship_id, 6)
    name = f"{start:%Y%m%dT%H%M%S}-{end:%Y%m%dT%H%M%S}.csv"
    return rt.settings.reject_dir / safe_ship / name


_FITS = fits_sql()  # the one rule of what fits, in SQL (common/fits.py)
_TYPE_OF_KIND = {0: "double precision", 1: "bigint", 2: "boolean", 3: "text"}


REJECT_KEYS_PER_QUERY = 100_000  # the reject file's source rows are looked up this many cells at a time


def _rejected_source_rows(rt: Runtime, source_conn: Connection, plan: PivotPlan, keys: list[tuple],
                          aware: bool) -> list:
    """The source rows of the rejected cells ``keys`` ((channel, time) pairs), each cell's rows in the
    source's duplicate order, with whether each row's value fits its column (the last field)."""
    order = rt.source.duplicate_order(source_conn) or "s.created_time, s.data_channel_id"
    server_time = "s.server_created_time" if rt.source.has_server_created_time(source_conn) else "NULL"
    query = text(
        f"""SELECT s.data_channel_id, s.created_time, s.value_format, s.double_v, s.long_v, s.bool_v,
                   left(s.str_v, 200), {server_time}, {_FITS}
            FROM unnest(CAST(:c AS text[]), CAST(:t AS {'timestamptz' if aware else 'timestamp'}[])) AS r(ch, t)
            JOIN unnest(CAST(:chs AS text[]), CAST(:tys AS text[])) AS m(ch, ty) ON m.ch = r.ch
            JOIN {rt.source.sql} s ON s.ship_id = :s AND s.data_channel_id = r.ch AND s.created_time = r.t
            ORDER BY {order}""")
    types = [_TYPE_OF_KIND[int(k)] for k in plan.kind]
    found: list = []
    for i in range(0, len(keys), REJECT_KEYS_PER_QUERY):
        batch = keys[i:i + REJECT_KEYS_PER_QUERY]
        found += source_conn.execute(query, {"c": [k[0] for k in batch], "t": [k[1] for k in batch],
                                             "s": plan.ship_id, "chs": list(plan.channels), "tys": types}).all()
    return found


def write_rejects(rt: Runtime, source_conn: Connection, plan: PivotPlan, start, end, rejects, aware: bool) -> None:
    """Write the window's reject file (the full source rows with their reason), or remove a stale one.

    One line per rejected row: of a cell with several rows (a source without a unique key), the row
    the pivot kept (the last that fits, in the source's duplicate order) is not listed.
    """
    path = reject_file(rt, plan.ship_id, start, end)
    if not len(rejects):
        path.unlink(missing_ok=True)
        return
    times = [ts_to_datetime(t, aware) for t in rejects.ts]
    count_of = Counter(zip(rejects.channel, times, strict=True))
    reasons_of: dict[tuple, list[int]] = {}
    for key, r in zip(zip(rejects.channel, times, strict=True), rejects.reason, strict=True):
        reasons_of.setdefault(key, []).append(r)
    by_key: dict[tuple, list] = {}
    for r in _rejected_source_rows(rt, source_conn, plan, sorted(count_of), aware):
        by_key.setdefault((r[0], r[1]), []).append(r)
    rows = []
    for key, group in by_key.items():
        kept = len(group) - count_of.get(key, 0)
        for i in range(len(group) - 1, -1, -1):  # the kept rows are the last ones that fit
            if kept <= 0:
                break
            if group[i][8]:
                group.pop(i)
                kept -= 1
        other = [r for r in reasons_of.get(key, []) if r != 7]
        for r in group:
            rows.append((*r[:8], REASONS[7] if r[8] else (REASONS[other[0]] if other else "rejected")))
    path.parent.mkdir(parents=True, exist_ok=True)
    text_out = io.StringIO(newline="")
    w = csv.writer(text_out)
    w.writerow(["ship_id", "data_channel_id", "created_time", "value_format", "double_v", "long_v", "bool_v",
                "str_v", "server_created_time", "reason"])
    for r in rows:
        w.writerow([plan.ship_id, *r])
    write_durably(path, text_out.getvalue().encode("utf-8"), mode=0o666)
    log.warning("ship %s %s..%s: %d value(s) rejected, see %s", plan.ship_id, start, end, len(rejects), path)
