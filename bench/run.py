"""Reproducible benchmark of the narrow-to-wide migration: the tool against raw reads and hand-written SQL.

Run from the repository root::

    python bench/run.py [--database-url URL] [--ships 2] [--channels 1000] [--days 1.0] [--workers 1]
                        [--json-out bench/results.json] [--keep]

The database is ``--database-url``, else ``DATABASE_URL``, else the embedded PostgreSQL the tool
starts itself (in a temporary folder). The script works in a fresh pair of schemas
``bench_src_<hex>`` / ``bench_tgt_<hex>`` (plus a second small pair for the realtime cycle) and
drops them at the end, also on error, unless ``--keep``.

What is measured, on the same seeded rows:

1. **raw read**: per ship, ``COPY (SELECT time, channel, value as text ...) TO STDOUT`` into a sink
   that discards the data; the floor any migration that reads every row has to pay;
2. **tool backfill**: :func:`data_migrator.run_backfill` (the real code path), with peak RSS and,
   for one worker, the per-stage timings the backfill logs for every chunk;
3. **SQL pivots** of one window of one ship: the obvious ``max(...) FILTER (WHERE channel = ...)``
   per channel, and the best known ``jsonb_object_agg`` + ``jsonb_populate_record``;
4. **realtime cycle**: one ``run_realtime(once=True)`` after one minute of new rows per ship.

Rates are narrow rows per second; the ratios matter more than the absolute times. Logging goes to
stderr, the results table to stdout and the same numbers as JSON to ``--json-out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from psycopg2 import errors as pg_errors  # noqa: E402
from psycopg2 import sql  # noqa: E402
from sqlalchemy import text  # noqa: E402

from bench.common import clean_up, create_schemas, database_url, make_settings  # noqa: E402
from chunk_ledger import LEDGER  # noqa: E402
from config import redact_url  # noqa: E402
from data_migrator import BackfillOptions, run_backfill  # noqa: E402
from database import qualified, raw_cursor  # noqa: E402
from demo_data import DemoSpec, SeedResult, demo_channels, insert_rows, seed_demo  # noqa: E402
from fleet_data import vacuum_analyze  # noqa: E402
from narrow_source import VALUE_COLUMN  # noqa: E402
from realtime_processor import RealtimeOptions, run_realtime  # noqa: E402
from runtime import Runtime, open_runtime  # noqa: E402
from schema_analyzer import SchemaAnalysis, analyze_source  # noqa: E402
from table_creator import create_tables, load_ship_layout  # noqa: E402
from wide_layout import TIME_COLUMN  # noqa: E402

log = logging.getLogger("bench")

SEED_END = datetime(2024, 10, 2)  # a fixed history end: every run seeds the same rows
REALTIME_DAYS = 0.02  # history of the realtime pair (about 29 minutes)
REALTIME_NEW_MINUTES = 1  # new rows inserted per ship before the timed realtime cycle
INTERVAL_SECONDS = 15  # DemoSpec's default sampling interval

# the aggregate and source column of the obvious pivot, per value_format
_OBVIOUS_AGG = {"Decimal": "max", "Integer": "max", "Boolean": "bool_or", "String": "max"}


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class Measure:
    """One row of the results table: narrow rows handled in some seconds (``None`` when unavailable)."""

    name: str
    rows: int | None = None
    seconds: float | None = None
    note: str = ""

    @property
    def rate(self) -> float | None:
        """Narrow rows per second, or ``None``."""
        if self.rows is None or not self.seconds:
            return None
        return self.rows / self.seconds

    def as_dict(self, raw_rate: float | None) -> dict[str, Any]:
        """The measure as JSON-ready numbers, with its ratio to the raw read rate."""
        return {
            "name": self.name,
            "rows": self.rows,
            "seconds": None if self.seconds is None else round(self.seconds, 4),
            "rows_per_second": None if self.rate is None else round(self.rate, 1),
            "ratio_vs_raw_read": _ratio(self.rate, raw_rate),
            "note": self.note,
        }


@dataclass
class BackfillExtra:
    """What the backfill measurement knows beyond its rate."""

    seeded_rows: int = 0
    rows_read: int = 0
    chunks_done: int = 0
    chunks_failed: int = 0
    cells_written: int = 0
    wide_rows: int = 0
    rejected: int = 0
    chunk_seconds_sum: float | None = None
    rss_self_before_mb: float = 0.0
    rss_self_peak_mb: float = 0.0
    rss_children_peak_mb: float | None = None
    stages: dict[str, float] | None = None


@dataclass
class Report:
    """Everything written to the JSON file."""

    params: dict[str, Any]
    environment: dict[str, Any]
    measures: list[Measure] = field(default_factory=list)
    backfill: BackfillExtra = field(default_factory=BackfillExtra)
    pivot_window: dict[str, Any] = field(default_factory=dict)
    realtime: dict[str, Any] = field(default_factory=dict)

    def measure(self, name: str) -> Measure | None:
        """The measure called ``name``."""
        return next((m for m in self.measures if m.name == name), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def _rss_mb(who: int) -> float:
    """Peak resident set size of this process (RUSAGE_SELF) or its waited-for children, in MB."""
    kb = resource.getrusage(who).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return round(kb / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


# ----------------------------------------------------------------------------------------------
# setup


def seed(rt: Runtime, ships: int, channels: int, days: float, end: datetime | None
         ) -> tuple[SeedResult, SchemaAnalysis]:
    """Seed the source of ``rt``, analyse it and create its wide tables."""
    spec = DemoSpec(ships=ships, channels=channels, days=days, end=end, offline_hours=0, late_channel_share=0)
    result = seed_demo(rt.dbs.source, rt.source, spec)
    analysis = analyze_source(rt)
    create_tables(rt, analysis=analysis)
    return result, analysis


# ----------------------------------------------------------------------------------------------
# 1. raw read


class DiscardSink:
    """A file-like target for ``copy_expert`` that counts and drops what it is given."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes | str) -> int:
        """Count ``data`` and forget it."""
        self.bytes += len(data)
        return len(data)


def raw_read(rt: Runtime, ship_ids: tuple[str, ...], rows: int, passes: int) -> Measure:
    """COPY every ship's rows (time, channel, value as text) to a discarding sink; the fastest pass wins."""
    query = sql.SQL(
        "COPY (SELECT created_time, data_channel_id, CASE value_format WHEN 'Decimal' THEN double_v::text "
        "WHEN 'Integer' THEN long_v::text WHEN 'Boolean' THEN bool_v::text ELSE str_v END "
        "FROM {src} WHERE ship_id = %s) TO STDOUT"
    ).format(src=sql.Identifier(rt.settings.source_schema, rt.settings.source_table))
    best: float | None = None
    size = 0
    for n in range(max(passes, 1)):
        with rt.dbs.source.connect() as conn:
            cur = raw_cursor(conn)
            sink = DiscardSink()
            started = time.perf_counter()
            for ship in ship_ids:
                cur.copy_expert(cur.mogrify(query, (ship,)).decode(), sink)
            seconds = time.perf_counter() - started
            conn.rollback()
        log.info("raw read pass %d: %s rows, %.1f MB in %.2f s", n + 1, f"{rows:,}", sink.bytes / 1e6, seconds)
        best = seconds if best is None else min(best, seconds)
        size = sink.bytes
    return Measure("raw read (COPY text, discard)", rows, best, f"best of {passes}, {size / 1e6:.0f} MB")


# ----------------------------------------------------------------------------------------------
# 2. the tool's backfill


class StageTimings(logging.Handler):
    """Collects the per-chunk read/pivot/write seconds that ``data_migrator.process_chunk`` logs at DEBUG."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.chunks = 0
        self.read = self.pivot = self.write = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        """Add the timings of one ``chunk ... (read %.2f, pivot %.2f, write %.2f)`` record."""
        args = record.args
        if not (isinstance(record.msg, str) and record.msg.startswith("chunk ") and "(read " in record.msg):
            return
        if not isinstance(args, tuple) or len(args) != 8:
            return
        try:
            read, piv, write = (float(a) for a in args[5:8])
        except (TypeError, ValueError):
            return
        self.chunks += 1
        self.read += read
        self.pivot += piv
        self.write += write


def ledger_totals(rt: Runtime) -> dict[str, float]:
    """Sums over the done chunks of the ledger: chunks, seconds, wide rows, cells and rejects."""
    with rt.dbs.target.connect() as conn:
        row = conn.execute(text(
            f"""SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'failed'),
                       sum(seconds) FILTER (WHERE status = 'done'), coalesce(sum(wide_rows), 0),
                       coalesce(sum(cells_written), 0), coalesce(sum(rejected), 0)
                FROM {qualified(rt.settings.target_schema, LEDGER)}""")).one()
    return {"done": row[0], "failed": row[1], "seconds": row[2], "wide_rows": row[3], "cells": row[4],
            "rejected": row[5]}


def tool_backfill(rt: Runtime, cutoff: datetime, workers: int, seeded_rows: int) -> tuple[Measure, BackfillExtra]:
    """Run the real backfill up to ``cutoff``; rows/s from its result, peak RSS, stage timings."""
    extra = BackfillExtra(seeded_rows=seeded_rows, rss_self_before_mb=_rss_mb(resource.RUSAGE_SELF))
    stages = StageTimings()
    migrator_log = logging.getLogger("data_migrator")
    old_level = migrator_log.level
    migrator_log.addHandler(stages)
    migrator_log.setLevel(logging.DEBUG)
    try:
        started = time.perf_counter()
        result = run_backfill(rt, (), BackfillOptions(cutoff_time=str(cutoff), workers=workers, progress=False))
        wall = time.perf_counter() - started
    finally:
        migrator_log.removeHandler(stages)
        migrator_log.setLevel(old_level)
    extra.rss_self_peak_mb = _rss_mb(resource.RUSAGE_SELF)
    # the largest finished child: a worker process, or a worker's source reader process
    extra.rss_children_peak_mb = _rss_mb(resource.RUSAGE_CHILDREN)
    totals = ledger_totals(rt)
    extra.rows_read = result.rows_read
    extra.chunks_done = int(totals["done"])
    extra.chunks_failed = int(totals["failed"])
    extra.chunk_seconds_sum = None if totals["seconds"] is None else round(float(totals["seconds"]), 3)
    extra.wide_rows = int(totals["wide_rows"])
    extra.cells_written = int(totals["cells"])
    extra.rejected = int(totals["rejected"])
    if stages.chunks:
        extra.stages = {"chunks": stages.chunks, "read_seconds": round(stages.read, 3),
                        "pivot_seconds": round(stages.pivot, 3), "write_seconds": round(stages.write, 3)}
    if result.failed_chunks:
        log.warning("%d chunk(s) failed: %s", len(result.failed_chunks), result.failed_chunks[0][3])
    if result.rows_read != seeded_rows:
        log.warning("the backfill read %s rows, the seed made %s", f"{result.rows_read:,}", f"{seeded_rows:,}")
    note = f"{workers} worker(s), {extra.chunks_done} chunk(s)"
    return Measure("tool backfill (run_backfill)", result.rows_read, wall, note), extra


# ----------------------------------------------------------------------------------------------
# 3. hand-written SQL pivots


def _dominant_format(formats: dict[str, int]) -> str:
    known = {f: n for f, n in formats.items() if f in VALUE_COLUMN}
    return max(known, key=lambda f: known[f]) if known else "String"


def _timed(conn: Any, statement: sql.Composable, timeout_s: float) -> float | None:
    """Run ``statement`` on a raw psycopg2 connection, roll back, and return its seconds (``None`` on timeout)."""
    with conn.cursor() as cur:
        cur.execute("SET LOCAL statement_timeout = %s", (int(timeout_s * 1000),))
        started = time.perf_counter()
        try:
            cur.execute(statement)
        except pg_errors.QueryCanceled:
            conn.rollback()
            return None
        seconds = time.perf_counter() - started
    conn.rollback()  # drops the temp table
    return seconds


def sql_pivots(rt: Runtime, analysis: SchemaAnalysis, seed_result: SeedResult, hours: float,
               timeout_s: float) -> tuple[Measure, Measure, dict[str, Any]]:
    """Time the obvious FILTER pivot and the jsonb pivot on one window of the first ship's first part."""
    ship = seed_result.ship_ids[0]
    end = seed_result.end
    start = max(seed_result.start, end - timedelta(hours=hours))
    schema = rt.settings.target_schema
    with rt.dbs.target.connect() as conn:
        layout = load_ship_layout(conn, schema, ship)
    if layout is None:
        raise RuntimeError(f"ship {ship} has no wide tables")
    part = layout.parts[0]
    columns = layout.channel_map()
    formats = {c.channel_id: c.formats for c in analysis.ship(ship).channels}
    chans = list(part.channels)
    src = sql.Identifier(rt.settings.source_schema, rt.settings.source_table)
    where = sql.SQL("s.ship_id = {ship} AND s.created_time >= {start} AND s.created_time < {end}").format(
        ship=sql.Literal(ship), start=sql.Literal(start), end=sql.Literal(end))

    aggs = []
    for ch in chans:
        fmt = _dominant_format(formats.get(ch, {}))
        aggs.append(sql.SQL("{agg}(s.{col}) FILTER (WHERE s.data_channel_id = {ch}) AS {alias}").format(
            agg=sql.SQL(_OBVIOUS_AGG[fmt]), col=sql.Identifier(VALUE_COLUMN[fmt]), ch=sql.Literal(ch),
            alias=sql.Identifier(columns[ch].column)))
    obvious = sql.SQL(
        "CREATE TEMP TABLE bench_obvious AS SELECT s.created_time AS {tc}, {aggs} FROM {src} s "
        "WHERE {where} AND s.data_channel_id = ANY({chs}) GROUP BY s.created_time"
    ).format(tc=sql.Identifier(TIME_COLUMN), aggs=sql.SQL(", ").join(aggs), src=src, where=where,
             chs=sql.Literal(chans))

    value = sql.SQL("CASE s.value_format WHEN 'Decimal' THEN to_jsonb(s.double_v) WHEN 'Integer' THEN "
                    "to_jsonb(s.long_v) WHEN 'Boolean' THEN to_jsonb(s.bool_v) ELSE to_jsonb(s.str_v) END")
    best = sql.SQL(
        "CREATE TEMP TABLE bench_best AS SELECT r.* FROM ("
        "SELECT s.created_time, jsonb_object_agg(m.col, {value}) AS j FROM {src} s "
        "JOIN unnest({chs}::text[], {cols}::text[]) AS m(ch, col) ON m.ch = s.data_channel_id "
        "WHERE {where} GROUP BY s.created_time) g "
        "CROSS JOIN LATERAL jsonb_populate_record(NULL::{row}, g.j || jsonb_build_object({tc}, g.created_time)) r"
    ).format(value=value, src=src, chs=sql.Literal(chans), cols=sql.Literal([columns[c].column for c in chans]),
             where=where, row=sql.Identifier(schema, part.table), tc=sql.Literal(TIME_COLUMN))

    raw = rt.dbs.source.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*), count(DISTINCT s.created_time) FROM {src} s "
                                "WHERE {where} AND s.data_channel_id = ANY({chs})").format(
                src=src, where=where, chs=sql.Literal(chans)))
            covered, wide_rows = cur.fetchone()
        raw.rollback()
        log.info("pivot window %s .. %s of ship %s, part %s: %d of %d channel(s), %s narrow rows, %s wide rows",
                 start, end, ship, part.table, len(chans), len(columns), f"{covered:,}", f"{wide_rows:,}")
        log.info("timing the obvious FILTER pivot (%d aggregates)", len(chans))
        t_obvious = _timed(raw.dbapi_connection, obvious, timeout_s)
        log.info("obvious pivot: %s", "timed out" if t_obvious is None else f"{t_obvious:.2f} s")
        log.info("timing the jsonb_object_agg + jsonb_populate_record pivot")
        t_best = _timed(raw.dbapi_connection, best, timeout_s)
        log.info("jsonb pivot: %s", "timed out" if t_best is None else f"{t_best:.2f} s")
    finally:
        raw.close()
    window = {"ship_id": ship, "start": str(start), "end": str(end), "table": part.table,
              "parts": len(layout.parts), "channels_in_part": len(chans), "channels_total": len(columns),
              "narrow_rows": covered, "wide_rows": wide_rows}
    span = f"{(end - start).total_seconds() / 3600:g} h, part 1 of {len(layout.parts)}"
    return (Measure("SQL pivot: obvious max() FILTER", covered, t_obvious,
                    span if t_obvious is not None else f"n/a: timed out after {timeout_s:g} s"),
            Measure("SQL pivot: jsonb_object_agg", covered, t_best,
                    span if t_best is not None else f"n/a: timed out after {timeout_s:g} s"),
            window)


# ----------------------------------------------------------------------------------------------
# 4. one realtime cycle


def realtime_cycle(rt2: Runtime, ships: int, channels: int) -> tuple[Measure, dict[str, Any]]:
    """Seed a short history ending just before the database's now, set the watermark with one cycle,
    insert one minute of new rows per ship and time a second cycle."""
    with rt2.dbs.source.connect() as conn:
        now = conn.execute(text(
            "SELECT to_timestamp(floor(extract(epoch FROM now()) / :iv) * :iv) AT TIME ZONE 'UTC'"),
            {"iv": INTERVAL_SECONDS}).scalar_one()
    history_end = now - timedelta(minutes=REALTIME_NEW_MINUTES + 1)
    seeded, _ = seed(rt2, ships, channels, REALTIME_DAYS, history_end)
    opts = RealtimeOptions(once=True, install_signal_handlers=False)
    first = run_realtime(rt2, (), opts)
    if not first.ok:
        raise RuntimeError(f"the first realtime cycle failed: {[s.error for s in first.last.ships if s.error]}")
    new_end = history_end + timedelta(minutes=REALTIME_NEW_MINUTES)
    spec = DemoSpec(interval_seconds=INTERVAL_SECONDS, offline_hours=0, late_channel_share=0)
    with rt2.dbs.source.begin() as conn:
        inserted = insert_rows(conn, rt2.source, seeded.ship_ids, demo_channels(channels), history_end, new_end,
                               spec)
    started = time.perf_counter()
    second = run_realtime(rt2, (), opts)
    seconds = time.perf_counter() - started
    if not second.ok:
        raise RuntimeError(f"the timed realtime cycle failed: {[s.error for s in second.last.ships if s.error]}")
    lookback = rt2.settings.realtime_lookback_minutes
    info = {"seeded_rows": seeded.rows, "first_cycle_rows": first.rows_read, "new_rows": inserted,
            "cycle_rows_read": second.rows_read, "cycle_cells_written": second.cells_written,
            "lookback_minutes": lookback, "seconds": round(seconds, 4)}
    note = f"{inserted:,} new rows + {lookback} min lookback re-read"
    return Measure("realtime cycle (run_realtime once)", second.rows_read, seconds, note), info


# ----------------------------------------------------------------------------------------------
# output


def _fmt(value: float | int | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def render(report: Report) -> str:
    """The results as a plain text table followed by the headline ratios."""
    raw = report.measure("raw read (COPY text, discard)")
    raw_rate = raw.rate if raw else None
    header = f"{'measure':<38} {'rows':>12} {'seconds':>9} {'rows/s':>12} {'vs raw':>7}  note"
    lines = [header, "-" * len(header)]
    for m in report.measures:
        lines.append(f"{m.name:<38} {_fmt(m.rows, ',d'):>12} {_fmt(m.seconds, '.2f'):>9} "
                     f"{_fmt(m.rate, ',.0f'):>12} {_fmt(_ratio(m.rate, raw_rate), '.3f'):>7}  {m.note}")
    lines.append("")
    for key, value in ratios(report).items():
        lines.append(f"{key:<24} {_fmt(value, '.3f')}")
    b = report.backfill
    lines.append("")
    lines.append(f"backfill peak RSS: this process {b.rss_self_peak_mb:.0f} MB (before the backfill "
                 f"{b.rss_self_before_mb:.0f} MB); largest worker or reader process "
                 f"{'n/a' if b.rss_children_peak_mb is None else f'{b.rss_children_peak_mb:.0f} MB'}")
    if b.stages:
        lines.append(f"backfill stages over {b.stages['chunks']} chunk(s): read {b.stages['read_seconds']:.2f} s, "
                     f"pivot {b.stages['pivot_seconds']:.2f} s, write {b.stages['write_seconds']:.2f} s "
                     f"(ledger chunk seconds {_fmt(b.chunk_seconds_sum, '.2f')})")
    lines.append(f"backfill wrote {b.wide_rows:,} wide rows, {b.cells_written:,} cells, {b.rejected:,} rejects")
    return "\n".join(lines)


def ratios(report: Report) -> dict[str, float | None]:
    """tool/raw, tool/obvious pivot and tool/best pivot, by rows per second."""
    def rate(name: str) -> float | None:
        m = report.measure(name)
        return m.rate if m else None

    tool = rate("tool backfill (run_backfill)")
    return {
        "tool / raw read": _ratio(tool, rate("raw read (COPY text, discard)")),
        "tool / obvious pivot": _ratio(tool, rate("SQL pivot: obvious max() FILTER")),
        "tool / best pivot": _ratio(tool, rate("SQL pivot: jsonb_object_agg")),
    }


def write_json(report: Report, path: Path) -> None:
    """Write the report as JSON (the folder is created)."""
    raw = report.measure("raw read (COPY text, discard)")
    data = {
        "params": report.params,
        "environment": report.environment,
        "measures": [m.as_dict(raw.rate if raw else None) for m in report.measures],
        "ratios": ratios(report),
        "backfill": asdict(report.backfill),
        "pivot_window": report.pivot_window,
        "realtime": report.realtime,
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
    p.add_argument("--ships", type=int, default=2)
    p.add_argument("--channels", type=int, default=1000)
    p.add_argument("--days", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=1, help="backfill worker processes")
    p.add_argument("--json-out", type=Path, default=Path("bench/results.json"))
    p.add_argument("--keep", action="store_true", help="keep the schemas (and an embedded server's data)")
    p.add_argument("--raw-passes", type=int, default=2, help="raw read passes; the fastest is reported")
    p.add_argument("--pivot-hours", type=float, default=24.0, help="window of the SQL pivots")
    p.add_argument("--pivot-timeout", type=float, default=1800.0, help="seconds before a SQL pivot is given up")
    p.add_argument("--skip-realtime", action="store_true", help="do not measure the realtime cycle")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    for name in ("ships", "channels", "workers", "raw_passes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.days <= 0 or args.pivot_hours <= 0:
        p.error("--days and --pivot-hours must be positive")
    return args


def environment(rt: Runtime) -> dict[str, Any]:
    """Where the benchmark ran."""
    with rt.dbs.source.connect() as conn:
        version = conn.execute(text("SHOW server_version")).scalar_one()
        shared = conn.execute(text("SHOW shared_buffers")).scalar_one()
        work_mem = conn.execute(text("SHOW work_mem")).scalar_one()
    return {"database": redact_url(rt.settings.database_url), "server_version": version,
            "shared_buffers": shared, "work_mem": work_mem, "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count(), "started": datetime.now().isoformat()}


def run(args: argparse.Namespace) -> Report:
    """Set up, measure everything, and clean up (in a ``finally``)."""
    url = database_url(args.database_url)
    tmp = Path(tempfile.mkdtemp(prefix="bench-migrator-"))
    tag = uuid.uuid4().hex[:10]
    src, tgt = f"bench_src_{tag}", f"bench_tgt_{tag}"
    src2, tgt2 = f"bench_src_{tag}_rt", f"bench_tgt_{tag}_rt"
    schemas = [src, tgt, src2, tgt2]
    settings = make_settings(url, src, tgt, tmp)
    rt = open_runtime(settings, "narrow-to-wide-bench")
    report = Report(params={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                            if k != "database_url"}, environment=environment(rt))
    report.params.update({"source_schema": src, "target_schema": tgt, "seed_end": str(SEED_END)})
    try:
        create_schemas(rt.dbs.source, schemas)
        log.info("seeding %d ship(s) x %d channel(s) x %g day(s) into %s", args.ships, args.channels, args.days, src)
        seeded, analysis = seed(rt, args.ships, args.channels, args.days, SEED_END)
        report.params["seeded_rows"] = seeded.rows
        report.params["seed_seconds"] = round(seeded.seconds, 2)
        vacuum_analyze(rt.dbs.source, rt.source)

        report.measures.append(raw_read(rt, seeded.ship_ids, seeded.rows, args.raw_passes))
        measure, report.backfill = tool_backfill(rt, seeded.end, args.workers, seeded.rows)
        report.measures.append(measure)
        obvious, best, report.pivot_window = sql_pivots(rt, analysis, seeded, args.pivot_hours, args.pivot_timeout)
        report.measures += [obvious, best]

        if args.skip_realtime:
            report.measures.append(Measure("realtime cycle (run_realtime once)", note="skipped"))
        else:
            rt2 = Runtime(settings=make_settings(url, src2, tgt2, tmp), dbs=rt.dbs)
            try:
                measure, report.realtime = realtime_cycle(rt2, args.ships, args.channels)
            except Exception as exc:  # noqa: BLE001 - the realtime figure is optional; report n/a, keep the rest
                log.warning("realtime cycle not measured: %s", exc, exc_info=args.verbose)
                measure = Measure("realtime cycle (run_realtime once)", note=f"n/a: {type(exc).__name__}: {exc}"[:120])
            report.measures.append(measure)
        return report
    finally:
        clean_up(rt, settings, schemas, tmp, args.keep)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON file."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the stage-timing capture raises one logger to DEBUG
        handler.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    report = run(args)
    print(render(report))
    write_json(report, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
