"""Benchmark of realtime processing: what one cycle costs, and how fresh the wide tables are.

Run from the repository root::

    python bench/realtime.py [--database-url URL] [--ships 8] [--channels 1000]
                             [--freshness-ships 2] [--freshness-seconds 90]
                             [--json-out bench/realtime_results.json] [--keep]

The database is ``--database-url``, else ``DATABASE_URL``, else the embedded PostgreSQL the tool
starts itself (in a temporary folder). The script works in fresh schemas ``bench_rt_<hex>_*`` and
drops them at the end, also on error, unless ``--keep``.

What is measured:

1. **cycle cost** (``--ships`` x ``--channels``): a short history (``DemoSpec(days=0.01)``) ending at
   the database's current time is seeded, analysed and given wide tables in two target schemas
   that share the one source. One ``run_realtime(once=True)`` per target sets the watermarks
   (no backfill: the cutoff is the database's now). Then the script waits until one whole minute
   on the 15 s grid lies after every watermark and before ``database now - settle``, inserts that
   minute for every ship and channel (4 rows per channel and ship) and times a second once-cycle:
   on the first target with ``REALTIME_LOOKBACK_MINUTES`` (default 10), on the second with a
   lookback of 0. The rows each cycle read are split into *new* (created_time at or after the
   ship's previous watermark) and *re-read* (the lookback before it) by counting the source.
2. **freshness** (``--freshness-ships`` x ``--channels``): ``run_realtime`` runs in a thread at
   ``interval_minutes=0.25`` (15 s) while a writer thread inserts, every ~2 s, one row per ship
   for one channel with created_time = the database's now, and a poller thread looks every 0.2 s
   for that cell in the wide table (table and column from ``migrator_columns``). Freshness is
   the time from the insert's commit to the poll that first sees the cell.

Logging goes to stderr, the results table to stdout and the same numbers as JSON to ``--json-out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from bench.common import clean_up, compile_tool, create_schemas, database_url, make_settings  # noqa: E402
from config import redact_url  # noqa: E402
from cutoff_store import CutoffStore  # noqa: E402
from narrow2wide.common.model import TIME_COLUMN  # noqa: E402
from narrow2wide.db.database import qi, qualified  # noqa: E402
from narrow2wide.db.runtime import Runtime, open_runtime  # noqa: E402
from narrow2wide.demo.demo_data import (  # noqa: E402
    DemoChannel,
    DemoSpec,
    SeedResult,
    demo_channels,
    insert_rows,
    seed_demo,
)
from realtime_processor import CycleResult, RealtimeOptions, RealtimeResult, run_realtime  # noqa: E402
from schema_analyzer import analyze_source  # noqa: E402
from table_creator import COLUMNS_META, TABLES_META, create_tables  # noqa: E402

log = logging.getLogger("bench.realtime")

HISTORY_DAYS = 0.01  # seeded history before the measurements (14.4 minutes)
INTERVAL_SECONDS = 15  # DemoSpec's default sampling interval
NEW_MINUTES = 1  # new rows per ship and channel inserted before the timed cycle: one minute
FRESHNESS_INTERVAL_MINUTES = 0.25  # --interval 0.25: a cycle every 15 s
WRITE_EVERY_SECONDS = 2.0  # the freshness writer inserts this often
POLL_EVERY_SECONDS = 0.2  # the freshness poller looks this often
SAFETY_SECONDS = 1.0  # margin past the settle delay before the new minute is inserted


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class CycleMeasure:
    """One timed ``run_realtime(once=True)``."""

    name: str
    lookback_minutes: int
    wall_seconds: float  # the whole run_realtime call (ships, clock, locks, plans, the cycle)
    cycle_seconds: float  # CycleResult.seconds: the cycle alone
    rows_read: int
    new_rows: int | None = None  # rows read with created_time at or after the ship's previous watermark
    reread_rows: int | None = None  # rows read from the lookback before the previous watermark
    cells_written: int = 0
    wal_bytes: int | None = None  # WAL the whole cluster generated during the call (others may write too)
    windows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        """Narrow rows read per second of the whole call, or ``None``."""
        return self.rows_read / self.wall_seconds if self.wall_seconds else None


@dataclass
class Sample:
    """One freshness sample: a row inserted for one ship and when its cell became visible."""

    ship_id: str
    created_time: datetime
    committed: float  # time.monotonic() right after the insert's commit
    visible: float | None = None  # time.monotonic() after the poll that first saw the cell

    @property
    def freshness(self) -> float | None:
        """Seconds from commit to visible, or ``None`` when never seen."""
        return None if self.visible is None else self.visible - self.committed


@dataclass
class Report:
    """Everything written to the JSON file."""

    params: dict[str, Any]
    environment: dict[str, Any]
    cycle_setup: dict[str, Any] = field(default_factory=dict)
    cycles: list[CycleMeasure] = field(default_factory=list)
    freshness: dict[str, Any] = field(default_factory=dict)


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile (``share`` in 0..1) of ``values``, or ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(share * len(ordered)) - 1, 0)]


# ----------------------------------------------------------------------------------------------
# setup (the conventions of bench/run.py)


def environment(rt: Runtime) -> dict[str, Any]:
    """Where the benchmark ran."""
    with rt.dbs.source.connect() as conn:
        version = conn.execute(text("SHOW server_version")).scalar_one()
        shared = conn.execute(text("SHOW shared_buffers")).scalar_one()
    return {"database": redact_url(rt.settings.database_url), "server_version": version,
            "shared_buffers": shared, "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "started": datetime.now().isoformat()}


def seed_history(rt: Runtime, ships: int, channels: int) -> SeedResult:
    """Seed a short history ending at the database's current time (no offline ship, no late channels)."""
    spec = DemoSpec(ships=ships, channels=channels, days=HISTORY_DAYS, end=None, offline_hours=0,
                    late_channel_share=0)
    return seed_demo(rt.dbs.source, rt.source, spec)


def make_tables(rt: Runtime) -> None:
    """Analyse the source of ``rt`` and create the wide tables in its target schema."""
    analysis = analyze_source(rt)
    create_tables(rt, analysis=analysis)


def db_now(engine: Engine) -> datetime:
    """The database's current time as naive UTC (how the demo source stores created_time)."""
    with engine.connect() as conn:
        return conn.execute(text("SELECT now() AT TIME ZONE 'UTC'")).scalar_one()


def wait_for_db_time(engine: Engine, when: datetime) -> float:
    """Sleep until the database's clock reaches ``when``; returns the seconds waited."""
    started = time.monotonic()
    while True:
        left = (when - db_now(engine)).total_seconds()
        if left <= 0:
            return time.monotonic() - started
        time.sleep(min(left, 5.0))


def ceil_to_grid(value: datetime, seconds: int) -> datetime:
    """``value`` rounded up to the next multiple of ``seconds`` since the epoch (naive UTC)."""
    epoch = datetime(1970, 1, 1)
    offset = (value - epoch).total_seconds()
    return epoch + timedelta(seconds=math.ceil(offset / seconds) * seconds)


def once(rt: Runtime) -> tuple[RealtimeResult, float]:
    """One ``run_realtime(once=True)`` without signal handlers; the result and its wall seconds."""
    started = time.perf_counter()
    result = run_realtime(rt, (), RealtimeOptions(once=True, install_signal_handlers=False))
    seconds = time.perf_counter() - started
    if not result.ok or result.last is None:
        errors = [s.error for s in result.last.ships if s.error] if result.last else ["no cycle"]
        raise RuntimeError(f"realtime cycle failed in {rt.settings.target_schema}: {errors}")
    return result, seconds


def wal_lsn(rt: Runtime) -> str:
    """The cluster's current WAL position."""
    with rt.dbs.source.connect() as conn:
        return str(conn.execute(text("SELECT pg_current_wal_lsn()")).scalar_one())


def wal_since(rt: Runtime, lsn: str) -> int | None:
    """WAL bytes written by the whole cluster since ``lsn``."""
    with rt.dbs.source.connect() as conn:
        value = conn.execute(text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), CAST(:l AS pg_lsn))"),
                             {"l": lsn}).scalar_one()
    return None if value is None else int(value)


def wide_table_stats(rt: Runtime) -> dict[str, Any]:
    """Tuples inserted, updated and dead, and the size, of the wide tables of ``rt``'s target schema.

    The pool is disposed first so that the backends that wrote report their statistics when they exit.
    """
    rt.dbs.target.dispose()
    time.sleep(1.0)
    schema = rt.settings.target_schema
    with rt.dbs.target.connect() as conn:
        row = conn.execute(text(
            f"""SELECT count(*), coalesce(sum(n_tup_ins), 0), coalesce(sum(n_tup_upd), 0),
                       coalesce(sum(n_tup_hot_upd), 0), coalesce(sum(n_dead_tup), 0), coalesce(sum(n_live_tup), 0),
                       coalesce(sum(pg_total_relation_size(relid)), 0)
                FROM pg_stat_user_tables
                WHERE schemaname = :s AND relname IN (SELECT table_name FROM {qualified(schema, TABLES_META)})"""),
            {"s": schema}).one()
    return {"tables": int(row[0]), "tuples_inserted": int(row[1]), "tuples_updated": int(row[2]),
            "hot_updates": int(row[3]), "dead_tuples": int(row[4]), "live_tuples": int(row[5]),
            "total_bytes": int(row[6])}


# ----------------------------------------------------------------------------------------------
# 1. cycle cost


def split_reads(rt: Runtime, before: CycleResult, cycle: CycleResult) -> tuple[int, int, list[dict[str, Any]]]:
    """Count, per ship, the source rows of ``cycle``'s window before and after the end of the ship's
    window in ``before`` (what that cycle read up to): (new rows, re-read rows, per-ship windows)."""
    marks = {s.ship_id: s.window_end for s in before.ships}
    new = reread = 0
    windows = []
    with rt.dbs.source.connect() as conn:
        for s in cycle.ships:
            mark = marks.get(s.ship_id)
            if s.window_start is None or s.window_end is None or mark is None:
                raise RuntimeError(f"ship {s.ship_id}: no window or no previous window to split the reads")
            old, fresh = conn.execute(text(
                f"""SELECT count(*) FILTER (WHERE created_time < :mark),
                           count(*) FILTER (WHERE created_time >= :mark)
                    FROM {rt.source.sql}
                    WHERE ship_id = :s AND created_time >= :a AND created_time < :b"""),
                {"mark": mark, "s": s.ship_id, "a": s.window_start, "b": s.window_end}).one()
            if old + fresh != s.rows_read:
                log.warning("ship %s: the cycle read %d rows, its window holds %d now", s.ship_id, s.rows_read,
                            old + fresh)
            new += fresh
            reread += old
            windows.append({"ship_id": s.ship_id, "window_start": s.window_start, "window_end": s.window_end,
                            "previous_window_end": mark, "rows_read": s.rows_read, "new_rows": fresh,
                            "reread_rows": old, "cells_written": s.cells_written, "lag_seconds": s.lag_seconds,
                            "seconds": s.seconds})
    return new, reread, windows


@dataclass(frozen=True)
class NewMinute:
    """The minute of new rows the timed cycles read, and what placed it."""

    states: dict[str, Any]  # target/ship -> the cutoff and watermark the first cycles stored
    newest_mark: datetime  # the latest window end, cutoff or watermark: the minute starts after it
    start: datetime
    end: datetime
    waited_seconds: float  # for the database's clock to pass the minute by the settle delay
    inserted: int


def insert_new_minute(rt_lb: Runtime, rt_zero_first: Runtime, first_lb: RealtimeResult, first_zero: RealtimeResult,
                      seeded: SeedResult, ships: int, channels: int) -> NewMinute:
    """Insert one minute of rows for every ship after everything the first cycles read or stored, once the
    database's clock has passed it by the settle delay."""
    assert first_lb.last is not None and first_zero.last is not None
    # the next window starts at the stored watermark, else at the cutoff (minus the lookback): the new
    # minute must lie after both and after what the first cycles read, so a lookback of 0 reads it too
    states = {}
    for r in (rt_lb, rt_zero_first):
        for ship, state in CutoffStore(r.settings.cutoff_file).load().items():
            states[f"{r.settings.target_schema}/{ship}"] = {"cutoff": state.cutoff, "watermark": state.watermark}
    marks = [s.window_end for r in (first_lb, first_zero) for s in r.last.ships if s.window_end is not None]
    marks += [t for st in states.values() for t in (st["cutoff"], st["watermark"]) if t is not None]
    if len(states) != 2 * ships:
        raise RuntimeError("the first cycles did not store a cutoff for every ship")
    new_start = ceil_to_grid(max(marks), INTERVAL_SECONDS)
    new_end = new_start + timedelta(minutes=NEW_MINUTES)
    settle = RealtimeOptions().settle_seconds
    log.info("new minute %s .. %s (seed end %s, first windows, cutoffs and watermarks up to %s); waiting for "
             "the database's clock to pass it by the settle delay", new_start, new_end, seeded.end, max(marks))
    waited = wait_for_db_time(rt_lb.dbs.source, new_end + timedelta(seconds=settle + SAFETY_SECONDS))
    spec = DemoSpec(interval_seconds=INTERVAL_SECONDS, offline_hours=0, late_channel_share=0)
    with rt_lb.dbs.source.begin() as conn:
        inserted = insert_rows(conn, rt_lb.source, seeded.ship_ids, demo_channels(channels), new_start, new_end,
                               spec)
    log.info("inserted %s new rows (%s per ship and channel)", f"{inserted:,}",
             inserted // max(ships * channels, 1))
    return NewMinute(states, max(marks), new_start, new_end, waited, inserted)


def cycle_cost(rt_lb: Runtime, rt_zero_first: Runtime, rt_zero: Runtime, ships: int, channels: int,
               ) -> tuple[dict[str, Any], list[CycleMeasure]]:
    """Seed, create both targets' tables, set watermarks, insert one minute, time the second cycles.

    ``rt_lb`` and ``rt_zero_first`` share the source; ``rt_zero`` is ``rt_zero_first`` with a lookback of 0
    (its first cycle uses the default lookback so that both targets start from the same state).
    """
    log.info("cycle cost: seeding %d ship(s) x %d channel(s) x %g day(s)", ships, channels, HISTORY_DAYS)
    seeded = seed_history(rt_lb, ships, channels)
    started = time.perf_counter()
    make_tables(rt_lb)
    make_tables(rt_zero_first)
    tables_seconds = time.perf_counter() - started
    first_lb, first_lb_s = once(rt_lb)
    first_zero, first_zero_s = once(rt_zero_first)
    minute = insert_new_minute(rt_lb, rt_zero_first, first_lb, first_zero, seeded, ships, channels)

    measures = []
    for rt, first in ((rt_lb, first_lb), (rt_zero, first_zero)):
        wal_before = wal_lsn(rt)
        result, wall = once(rt)
        wal = wal_since(rt, wal_before)
        assert result.last is not None and first.last is not None
        new, reread, windows = split_reads(rt, first.last, result.last)
        lookback = rt.settings.realtime_lookback_minutes
        name = f"timed cycle, lookback {lookback} min"
        measures.append(CycleMeasure(
            name=name, lookback_minutes=lookback, wall_seconds=round(wall, 4),
            cycle_seconds=result.last.seconds, rows_read=result.rows_read, new_rows=new, reread_rows=reread,
            cells_written=result.cells_written, wal_bytes=wal, windows=windows))
        log.info("%s: %s rows read (%s new, %s re-read) in %.2f s", name, f"{result.rows_read:,}",
                 f"{new:,}", f"{reread:,}", wall)
    first_measures = [
        CycleMeasure(name=f"first cycle (sets watermarks), target {i}",
                     lookback_minutes=r.settings.realtime_lookback_minutes, wall_seconds=round(s, 4),
                     cycle_seconds=f.last.seconds, rows_read=f.rows_read, cells_written=f.cells_written)
        for i, (r, f, s) in enumerate(((rt_lb, first_lb, first_lb_s), (rt_zero_first, first_zero, first_zero_s)), 1)
        if f.last is not None]
    setup = {"ships": ships, "channels": channels, "seeded_rows": seeded.rows, "seed_start": seeded.start,
             "seed_end": seeded.end, "seed_seconds": round(seeded.seconds, 2),
             "analyse_and_tables_seconds_both_targets": round(tables_seconds, 2),
             "stored_after_first_cycles": minute.states, "newest_mark": minute.newest_mark,
             "new_minute_start": minute.start, "new_minute_end": minute.end,
             "gap_seed_end_to_new_minute_seconds": (minute.start - seeded.end).total_seconds(),
             "waited_seconds": round(minute.waited_seconds, 1), "new_rows_inserted": minute.inserted,
             "order": "lookback default first, then lookback 0, on separate targets of one source",
             "wide_tables": {f"lookback {rt_lb.settings.realtime_lookback_minutes} min": wide_table_stats(rt_lb),
                             "lookback 0 min": wide_table_stats(rt_zero)}}
    return setup, first_measures + measures


# ----------------------------------------------------------------------------------------------
# 2. freshness


def probe_channel(channels: list[DemoChannel]) -> DemoChannel:
    """The channel the freshness writer inserts: the first Decimal one (the common case)."""
    return next((c for c in channels if c.value_format == "Decimal"), channels[0])


def cell_locations(rt: Runtime, ship_ids: tuple[str, ...], channel_id: str) -> dict[str, tuple[str, str]]:
    """Per ship, the wide table and column of ``channel_id`` from the metadata table."""
    with rt.dbs.target.connect() as conn:
        rows = conn.execute(text(
            f"SELECT ship_id, table_name, column_name FROM {qualified(rt.settings.target_schema, COLUMNS_META)} "
            "WHERE channel_id = :c AND ship_id = ANY(CAST(:s AS text[]))"),
            {"c": channel_id, "s": list(ship_ids)}).all()
    found = {r[0]: (r[1], r[2]) for r in rows}
    missing = [s for s in ship_ids if s not in found]
    if missing:
        raise RuntimeError(f"channel {channel_id} has no column for ship(s) {', '.join(missing)}")
    return found


class CellProbe:
    """The realtime thread and the poller thread of a freshness measurement, and the samples they fill.

    ``where`` maps each ship to the wide table and column of its probe cell; whoever inserts the
    probe rows appends a :class:`Sample` per ship and insert (under :attr:`lock`).
    """

    def __init__(self, rt: Runtime, ship_ids: tuple[str, ...], where: dict[str, tuple[str, str]]) -> None:
        self.rt = rt
        self.ship_ids = ship_ids
        self.where = where
        self.samples: list[Sample] = []
        self.cycles: list[CycleResult] = []
        self.errors: list[str] = []
        self.first_cycle = threading.Event()
        self.stop_realtime = threading.Event()
        self.stop_poller = threading.Event()
        self.lock = threading.Lock()
        self.realtime_result: RealtimeResult | None = None

    def realtime(self) -> None:
        """``run_realtime`` every 15 s until :attr:`stop_realtime` is set."""
        try:
            opts = RealtimeOptions(interval_minutes=FRESHNESS_INTERVAL_MINUTES, install_signal_handlers=False)
            self.realtime_result = run_realtime(self.rt, (), opts, stop=self.stop_realtime, on_cycle=self._on_cycle)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            log.exception("realtime thread failed")
            self.errors.append(f"realtime: {type(exc).__name__}: {exc}")
        finally:
            self.first_cycle.set()  # never leave the main thread waiting

    def _on_cycle(self, cycle: CycleResult) -> None:
        with self.lock:
            self.cycles.append(cycle)
        self.first_cycle.set()

    def poller(self) -> None:
        """Every 0.2 s look for the pending cells in the wide tables; record when each is first seen."""
        try:
            while not self.stop_poller.is_set():
                self.poll()
                self.stop_poller.wait(POLL_EVERY_SECONDS)
            self.poll()
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            log.exception("poller thread failed")
            self.errors.append(f"poller: {type(exc).__name__}: {exc}")

    def poll(self) -> None:
        """One look at every pending sample (one query per ship); a seen one gets the time of this look."""
        with self.lock:
            pending = [s for s in self.samples if s.visible is None]
        if not pending:
            return
        by_ship: dict[str, list[Sample]] = {}
        for s in pending:
            by_ship.setdefault(s.ship_id, []).append(s)
        schema = self.rt.settings.target_schema
        with self.rt.dbs.target.connect() as conn:
            for ship, samples in by_ship.items():
                table, column = self.where[ship]
                seen = set(conn.execute(text(
                    f"SELECT {qi(TIME_COLUMN)} FROM {qualified(schema, table)} "
                    f"WHERE {qi(TIME_COLUMN)} = ANY(CAST(:ts AS timestamp[])) AND {qi(column)} IS NOT NULL"),
                    {"ts": [s.created_time for s in samples]}).scalars())
                at = time.monotonic()
                for s in samples:
                    if s.created_time in seen:
                        s.visible = at

    def pending(self) -> int:
        """Samples not seen yet."""
        with self.lock:
            return sum(1 for s in self.samples if s.visible is None)


class Freshness(CellProbe):
    """:class:`CellProbe` with its own writer thread: one probe row per ship every 2 s."""

    def __init__(self, rt: Runtime, ship_ids: tuple[str, ...], channel: DemoChannel,
                 where: dict[str, tuple[str, str]]) -> None:
        super().__init__(rt, ship_ids, where)
        self.channel = channel
        self.stop_writer = threading.Event()

    def writer(self) -> None:
        """Every ~2 s one row per ship for the probe channel at the database's now; records the commit time."""
        spec = DemoSpec(interval_seconds=1, offline_hours=0, late_channel_share=0)
        started = time.monotonic()
        n = 0
        try:
            while not self.stop_writer.is_set():
                with self.rt.dbs.source.begin() as conn:
                    now = conn.execute(text("SELECT now() AT TIME ZONE 'UTC'")).scalar_one()
                    rows = insert_rows(conn, self.rt.source, self.ship_ids, [self.channel], now,
                                       now + timedelta(seconds=1), spec,
                                       server_time_sql="CAST(:server_now AS timestamp)",
                                       extra_params={"server_now": now})
                committed = time.monotonic()
                if rows != len(self.ship_ids):
                    log.warning("writer: %d row(s) inserted at %s, expected %d", rows, now, len(self.ship_ids))
                with self.lock:
                    self.samples.extend(Sample(s, now, committed) for s in self.ship_ids)
                n += 1
                self.stop_writer.wait(max(started + n * WRITE_EVERY_SECONDS - time.monotonic(), 0.0))
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            log.exception("writer thread failed")
            self.errors.append(f"writer: {type(exc).__name__}: {exc}")


def freshness(rt: Runtime, ships: int, channels: int, seconds: float, drain_seconds: float) -> dict[str, Any]:
    """Seed, create tables, run realtime every 15 s with a writer and a poller for ``seconds``."""
    log.info("freshness: seeding %d ship(s) x %d channel(s) x %g day(s)", ships, channels, HISTORY_DAYS)
    seeded = seed_history(rt, ships, channels)
    make_tables(rt)
    channel = probe_channel(demo_channels(channels))
    where = cell_locations(rt, seeded.ship_ids, channel.channel_id)
    log.info("freshness probe channel %s (%s) -> %s", channel.channel_id, channel.value_format,
             ", ".join(f"{t}.{c}" for t, c in where.values()))
    f = Freshness(rt, seeded.ship_ids, channel, where)
    realtime = threading.Thread(target=f.realtime, name="bench-realtime", daemon=True)
    writer = threading.Thread(target=f.writer, name="bench-writer", daemon=True)
    poller = threading.Thread(target=f.poller, name="bench-poller", daemon=True)
    realtime.start()
    drained = True
    try:
        f.first_cycle.wait()
        if f.errors:
            raise RuntimeError("; ".join(f.errors))
        log.info("first realtime cycle done; writing and polling for %g s", seconds)
        t0 = time.monotonic()
        poller.start()
        writer.start()
        time.sleep(seconds)
        f.stop_writer.set()
        writer.join()
        writing_seconds = time.monotonic() - t0
        deadline = time.monotonic() + drain_seconds
        while f.pending() and time.monotonic() < deadline and not f.errors:
            time.sleep(POLL_EVERY_SECONDS)
        drained = f.pending() == 0
        if not drained:
            log.warning("%d sample(s) still not visible %g s after the writer stopped", f.pending(), drain_seconds)
    finally:
        f.stop_writer.set()
        f.stop_poller.set()
        f.stop_realtime.set()
        for thread in (writer, poller, realtime):
            if thread.is_alive() or thread.ident is not None:
                thread.join(timeout=600)
    if f.errors:
        raise RuntimeError("; ".join(f.errors))
    return freshness_figures(f, seeded, channels, writing_seconds, drained, wide_table_stats(rt))


def freshness_figures(f: Freshness, seeded: SeedResult, channels: int, writing_seconds: float, drained: bool,
                      stats: dict[str, Any]) -> dict[str, Any]:
    """The freshness distribution (overall and per ship) and the realtime cycles behind it, JSON-ready."""
    values = [s.freshness for s in f.samples if s.freshness is not None]
    timed = f.cycles[1:]  # the first cycle catches up the history; the rest are steady
    cycle_seconds = [c.seconds for c in timed]
    per_ship = {}
    for ship in seeded.ship_ids:
        v = [s.freshness for s in f.samples if s.ship_id == ship and s.freshness is not None]
        per_ship[ship] = {"samples": len(v), "median": _round(statistics.median(v) if v else None),
                          "max": _round(max(v) if v else None)}
    return {
        "ships": len(f.ship_ids), "channels": channels, "seeded_rows": seeded.rows,
        "probe_channel": f.channel.channel_id, "cells": {s: f"{t}.{c}" for s, (t, c) in f.where.items()},
        "interval_minutes": FRESHNESS_INTERVAL_MINUTES, "write_every_seconds": WRITE_EVERY_SECONDS,
        "poll_every_seconds": POLL_EVERY_SECONDS, "writing_seconds": round(writing_seconds, 1),
        "samples": len(f.samples), "visible": len(values), "not_visible": len(f.samples) - len(values),
        "drained": drained,
        "min": _round(min(values) if values else None), "median": _round(statistics.median(values) if values else None),
        "p95": _round(percentile(values, 0.95)), "max": _round(max(values) if values else None),
        "mean": _round(statistics.fmean(values) if values else None),
        "per_ship": per_ship,
        "cycles": len(f.cycles), "first_cycle_seconds": f.cycles[0].seconds if f.cycles else None,
        "first_cycle_rows_read": f.cycles[0].rows_read if f.cycles else None,
        "steady_cycle_seconds_median": _round(statistics.median(cycle_seconds) if cycle_seconds else None),
        "steady_cycle_seconds_max": _round(max(cycle_seconds) if cycle_seconds else None),
        "steady_cycle_rows_read_median": statistics.median([c.rows_read for c in timed]) if timed else None,
        "failed_cycles": sum(1 for c in f.cycles if not c.ok),
        "stopped_because": f.realtime_result.stopped_because if f.realtime_result else None,
        "wide_tables": stats,
        "values": [round(v, 3) for v in values],
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# ----------------------------------------------------------------------------------------------
# output


def _fmt(value: float | int | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _stats_line(st: dict[str, Any]) -> str:
    return (f"{st['tuples_inserted']:,} tuples inserted, {st['tuples_updated']:,} updated "
            f"({st['hot_updates']:,} HOT), {st['live_tuples']:,} live, {st['dead_tuples']:,} dead, "
            f"{st['total_bytes'] / 1e6:.1f} MB")


def render(report: Report) -> str:
    """The results as plain text tables."""
    lines: list[str] = []
    if report.cycles:
        s = report.cycle_setup
        lines.append(f"realtime cycle cost: {s['ships']} ship(s) x {s['channels']} channel(s), "
                     f"{s['new_rows_inserted']:,} new rows ({NEW_MINUTES} min at {INTERVAL_SECONDS} s per ship "
                     f"and channel), new minute starts {s['gap_seed_end_to_new_minute_seconds']:g} s after "
                     "the seeded end")
        header = (f"{'measure':<42} {'rows read':>10} {'new':>8} {'re-read':>9} {'seconds':>8} "
                  f"{'cycle s':>8} {'rows/s':>10} {'cells':>10} {'WAL MB':>7}")
        lines += [header, "-" * len(header)]
        for m in report.cycles:
            lines.append(f"{m.name:<42} {m.rows_read:>10,} {_fmt(m.new_rows, ',d'):>8} "
                         f"{_fmt(m.reread_rows, ',d'):>9} {m.wall_seconds:>8.2f} {m.cycle_seconds:>8.2f} "
                         f"{_fmt(m.rate, ',.0f'):>10} {m.cells_written:>10,} "
                         f"{_fmt(None if m.wal_bytes is None else m.wal_bytes / 1e6, '.1f'):>7}")
        timed = [m for m in report.cycles if not m.name.startswith("first")]
        if len(timed) == 2 and timed[1].wall_seconds:
            lb, zero = timed
            lines.append(f"lookback cost: {lb.wall_seconds - zero.wall_seconds:+.2f} s per cycle "
                         f"({lb.wall_seconds / zero.wall_seconds:.2f}x the lookback-0 cycle), "
                         f"{_fmt(lb.reread_rows, ',d')} rows re-read")
        for key, st in s.get("wide_tables", {}).items():
            lines.append(f"wide tables after both cycles, {key}: " + _stats_line(st))
    if report.freshness:
        fr = report.freshness
        if lines:
            lines.append("")
        lines.append(f"freshness: {fr['ships']} ship(s) x {fr['channels']} channel(s), cycle every "
                     f"{fr['interval_minutes'] * 60:g} s, one row per ship every {fr['write_every_seconds']:g} s "
                     f"for {fr['writing_seconds']:g} s, polled every {fr['poll_every_seconds']:g} s")
        header = f"{'samples':>8} {'visible':>8} {'min s':>7} {'median s':>9} {'p95 s':>7} {'max s':>7} {'mean s':>7}"
        lines += [header, "-" * len(header)]
        lines.append(f"{fr['samples']:>8} {fr['visible']:>8} {_fmt(fr['min'], '.2f'):>7} "
                     f"{_fmt(fr['median'], '.2f'):>9} {_fmt(fr['p95'], '.2f'):>7} {_fmt(fr['max'], '.2f'):>7} "
                     f"{_fmt(fr['mean'], '.2f'):>7}")
        lines.append(f"realtime cycles: {fr['cycles']} ({fr['failed_cycles']} failed); first (catch-up) "
                     f"{_fmt(fr['first_cycle_seconds'], '.2f')} s for {_fmt(fr['first_cycle_rows_read'], ',d')} "
                     f"rows; steady median {_fmt(fr['steady_cycle_seconds_median'], '.2f')} s, max "
                     f"{_fmt(fr['steady_cycle_seconds_max'], '.2f')} s, median "
                     f"{_fmt(fr['steady_cycle_rows_read_median'], ',.0f')} rows read")
        if fr.get("wide_tables"):
            lines.append("wide tables at the end: " + _stats_line(fr["wide_tables"]))
    return "\n".join(lines)


def write_json(report: Report, path: Path) -> None:
    """Write the report as JSON (the folder is created)."""
    data = {
        "params": report.params,
        "environment": report.environment,
        "cycle_setup": report.cycle_setup,
        "cycles": [{**asdict(m), "rows_per_second": _round(m.rate, 1)} for m in report.cycles],
        "freshness": report.freshness,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    log.info("wrote %s", path)


# ----------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", help="PostgreSQL URL (default: DATABASE_URL, else the embedded server)")
    p.add_argument("--ships", type=int, default=8, help="ships of the cycle-cost measurement")
    p.add_argument("--channels", type=int, default=1000)
    p.add_argument("--freshness-ships", type=int, default=2)
    p.add_argument("--freshness-seconds", type=float, default=90.0, help="how long the writer writes")
    p.add_argument("--drain-seconds", type=float, default=120.0,
                   help="how long to wait after the writer stops for the last samples to become visible")
    p.add_argument("--json-out", type=Path, default=Path("bench/realtime_results.json"))
    p.add_argument("--keep", action="store_true", help="keep the schemas (and an embedded server's data)")
    p.add_argument("--skip-cycle", action="store_true", help="do not measure the cycle cost")
    p.add_argument("--skip-freshness", action="store_true", help="do not measure freshness")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    for name in ("ships", "channels", "freshness_ships"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.freshness_seconds <= 0 or args.drain_seconds < 0:
        p.error("--freshness-seconds must be positive and --drain-seconds not negative")
    return args


def run(args: argparse.Namespace) -> Report:
    """Set up, measure, and clean up (in a ``finally``)."""
    url = database_url(args.database_url)
    tmp = Path(tempfile.mkdtemp(prefix="bench-realtime-"))
    tag = uuid.uuid4().hex[:10]
    src, tgt_lb, tgt_zero = f"bench_rt_{tag}_src", f"bench_rt_{tag}_tlb", f"bench_rt_{tag}_tl0"
    fsrc, ftgt = f"bench_rt_{tag}_fsrc", f"bench_rt_{tag}_ftgt"
    schemas = [src, tgt_lb, tgt_zero, fsrc, ftgt]
    settings = make_settings(url, src, tgt_lb, tmp)
    rt = open_runtime(settings, "narrow-to-wide-bench-realtime")
    report = Report(params={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                            if k != "database_url"}, environment=environment(rt))
    report.params.update({"schemas": schemas, "history_days": HISTORY_DAYS,
                          "realtime_lookback_minutes": settings.realtime_lookback_minutes})
    try:
        create_schemas(rt.dbs.source, schemas)
        if not args.skip_cycle:
            zero_first = Runtime(settings=make_settings(url, src, tgt_zero, tmp), dbs=rt.dbs)
            zero = Runtime(settings=zero_first.settings.with_overrides(realtime_lookback_minutes=0), dbs=rt.dbs)
            report.cycle_setup, report.cycles = cycle_cost(rt, zero_first, zero, args.ships, args.channels)
        if not args.skip_freshness:
            frt = Runtime(settings=make_settings(url, fsrc, ftgt, tmp), dbs=rt.dbs)
            report.freshness = freshness(frt, args.freshness_ships, args.channels, args.freshness_seconds,
                                         args.drain_seconds)
        return report
    finally:
        clean_up(rt, settings, schemas, tmp, args.keep)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, write the JSON file."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    compile_tool()  # the timed processes start from bytecode, as on a user's machine
    report = run(args)
    print(render(report))
    write_json(report, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
