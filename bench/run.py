"""Reproducible benchmark of the narrow-to-wide migration: the tool against raw reads, SQL pivots and peers.

Run from the repository root::

    python bench/run.py [--database-url URL] [--shape production|demo] [--ships 1] [--channels 1000]
                        [--days 1.0] [--workers 1] [--json-out bench/results.json] [--keep]
                        [--raw-passes 2] [--process-passes 2]
                        [--skip-peers] [--peers NAME,...] [--peer-timeout 600] [--tool-timeout 3600]

The database is ``--database-url``, else ``DATABASE_URL``, else the embedded PostgreSQL the tool
starts itself (in a temporary folder). The script works in fresh schemas ``bench_src_<hex>`` /
``bench_tgt_<hex>``, ``bench_tgt_<hex>_proc`` (the tool process), ``bench_peer_<hex>`` (the peers'
scratch tables) and a small pair for the realtime cycle, and drops them at the end, also on
error, unless ``--keep``.

The source (``--shape``): ``production`` (the default) is :func:`fleet_data.seed_fleet`: every
value present, mixed formats, real channel ids, valid IMO ship ids, the rows of all ships
interleaved in time order, only the production indexes, then ``VACUUM ANALYZE``; ``demo`` is
:func:`demo_data.seed_demo` (one ship after the other, smooth values). Both end at the fixed
:data:`SEED_END`, so every run seeds the same rows. The default, one ship-day of 1,000 channels,
is 5.76 million narrow rows.

What is measured, on those rows:

1. **raw read**: per ship, ``COPY (SELECT time, channel, value as text ...) TO STDOUT`` into a sink
   that discards the data; the floor any migration that reads every row has to pay; the fastest
   of ``--raw-passes``, half of them before the tool's measures and half after its process passes
   (the speed of one machine drifts within minutes: a baseline taken at one moment only can be
   taken at a slow one);
2. **tool backfill**: :func:`data_migrator.run_backfill` in this process (the real code path), with
   the per-stage timings the backfill logs for every chunk;
3. **tool process**: ``python main.py --mode migration-only --cutoff-time <seed end> --workers N``
   as a user runs it, in its own process against fresh, empty wide tables (its own target schema,
   an empty ledger, its own ``STATE_DIR``): the wall clock of the whole process, and the peak RSS of
   the largest process of its tree (``os.wait4``: the tool and its reader helpers); the wide
   tables' row counts are checked afterwards; the fastest of ``--process-passes`` runs, each from
   empty tables, as the raw read is the fastest of its passes; the timed processes start from
   bytecode, as on a user's machine from the second run on (:func:`bench.common.compile_tool`);
4. **SQL pivots** of one window of one ship's first part: the obvious ``max(...) FILTER (WHERE
   channel = ...)`` per channel, the best known ``jsonb_object_agg`` + ``jsonb_populate_record``, and
   the ``tablefunc`` extension's ``crosstab(source_sql, category_sql)`` (n/a where the server has
   no tablefunc);
5. **peers** (:mod:`bench.peers`, each in its own process, so its peak RSS is its own):
   connectorx + polars, connectorx + DuckDB, ADBC + pyarrow, ADBC + polars; each reads the same
   ships and window as the tool, pivots with typed values and writes the tool's table split into
   a scratch schema, whose tables are then checked (one row per created_time, one column per
   channel, the tool's column types); a peer whose package is missing is n/a (``pip install -r
   requirements-bench.txt``), one past ``--peer-timeout`` is timed out, a wrong shape is failed;
6. **realtime cycle**: one ``run_realtime(once=True)`` after one minute of new rows per ship (a
   small demo-shaped pair of its own).

Rates are narrow rows per second; the ratios matter more than the absolute times: each measure
against the raw read and against the fastest peer. Logging goes to stderr, the results table to
stdout and the same numbers as JSON to ``--json-out``. For a profile of the tool process, ``pip
install -r requirements-bench.txt`` also brings py-spy (``py-spy record -o profile.svg --
python main.py ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

ROOT = Path(__file__).resolve().parent.parent

import psycopg2  # noqa: E402
from psycopg2 import errors as pg_errors  # noqa: E402
from psycopg2 import sql  # noqa: E402
from sqlalchemy import text  # noqa: E402

from bench.common import clean_up, compile_tool, create_schemas, database_url, fresh_target, make_settings  # noqa: E402
from bench.peers import MISSING_EXIT, PEERS  # noqa: E402
from config import DEFAULTS, redact_url  # noqa: E402
from data_migrator import BackfillOptions, run_backfill  # noqa: E402
from narrow2wide.common.model import TIME_COLUMN  # noqa: E402
from narrow2wide.db.database import qi, qualified, raw_cursor  # noqa: E402
from narrow2wide.db.narrow_source import VALUE_COLUMN  # noqa: E402
from narrow2wide.db.runtime import Runtime, open_runtime  # noqa: E402
from narrow2wide.demo.demo_data import DemoSpec, demo_channels, insert_rows, seed_demo  # noqa: E402
from narrow2wide.demo.fleet_data import FleetSpec, seed_fleet, vacuum_analyze  # noqa: E402
from narrow2wide.store.chunk_ledger import LEDGER  # noqa: E402
from realtime_processor import RealtimeOptions, run_realtime  # noqa: E402
from schema_analyzer import SchemaAnalysis, ShipSchema, analyze_source  # noqa: E402
from table_creator import create_tables, load_ship_layout  # noqa: E402

log = logging.getLogger("bench")

SEED_END = datetime(2024, 10, 2)  # a fixed history end: every run seeds the same rows
REALTIME_DAYS = 0.02  # history of the realtime pair (about 29 minutes)
REALTIME_NEW_MINUTES = 1  # new rows inserted per ship before the timed realtime cycle
INTERVAL_SECONDS = 15  # the sampling interval of both generators (their default)

RAW = "raw read (COPY text, discard)"
BACKFILL = "tool backfill (run_backfill)"
TOOL_PROCESS = "tool process (main.py --mode migration-only)"
OBVIOUS = "SQL pivot: obvious max() FILTER"
JSONB = "SQL pivot: jsonb_object_agg"
CROSSTAB = "SQL pivot: crosstab (tablefunc)"
PEER_PREFIX = "peer: "
NAME_WIDTH = 46

# the aggregate and source column of the obvious pivot, per value_format
_OBVIOUS_AGG = {"Decimal": "max", "Integer": "max", "Boolean": "bool_or", "String": "max"}
# what the tool reads from the environment (config.load_settings): cleared for the tool process
_CONFIG_VARS = (*DEFAULTS, "DATABASE_URL", "TARGET_DATABASE_URL", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER",
                "DB_PASSWORD")


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class Measure:
    """One row of the results table: narrow rows handled in some seconds (``None`` when unavailable)."""

    name: str
    rows: int | None = None
    seconds: float | None = None
    note: str = ""
    rss_mb: float | None = None  # peak RSS of the measured process (tree), where known
    peer: bool = False  # a client-side peer (a candidate for "the fastest peer")

    @property
    def rate(self) -> float | None:
        """Narrow rows per second, or ``None``."""
        if self.rows is None or not self.seconds:
            return None
        return self.rows / self.seconds

    def as_dict(self, raw_rate: float | None, peer_rate: float | None) -> dict[str, Any]:
        """The measure as JSON-ready numbers, with its ratios to the raw read and the fastest peer."""
        return {
            "name": self.name,
            "rows": self.rows,
            "seconds": None if self.seconds is None else round(self.seconds, 4),
            "rows_per_second": None if self.rate is None else round(self.rate, 1),
            "ratio_vs_raw_read": _ratio(self.rate, raw_rate),
            "ratio_vs_fastest_peer": _ratio(self.rate, peer_rate),
            "peak_rss_mb": self.rss_mb,
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
    tool_process: dict[str, Any] = field(default_factory=dict)
    peers: dict[str, Any] = field(default_factory=dict)
    pivot_window: dict[str, Any] = field(default_factory=dict)
    realtime: dict[str, Any] = field(default_factory=dict)

    def measure(self, name: str) -> Measure | None:
        """The measure called ``name``."""
        return next((m for m in self.measures if m.name == name), None)

    def rate(self, name: str) -> float | None:
        """Rows per second of the measure called ``name``, or ``None``."""
        m = self.measure(name)
        return m.rate if m else None

    def fastest_peer(self) -> Measure | None:
        """The client-side peer with the highest rate (``None`` when none ran)."""
        timed = [m for m in self.measures if m.peer and m.rate is not None]
        return max(timed, key=lambda m: m.rate or 0.0) if timed else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def _rss_mb(who: int) -> float:
    """Peak resident set size of this process (RUSAGE_SELF) or its waited-for children, in MB."""
    return _kb_to_mb(resource.getrusage(who).ru_maxrss)


def _kb_to_mb(maxrss: int) -> float:
    """``ru_maxrss`` in MB (kilobytes on Linux, bytes on macOS)."""
    return round(maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


# ----------------------------------------------------------------------------------------------
# setup


@dataclass(frozen=True)
class Seeded:
    """What the seed made, whichever generator made it."""

    shape: str
    ship_ids: tuple[str, ...]
    rows: int
    start: datetime
    end: datetime
    seconds: float


def seed(rt: Runtime, shape: str, ships: int, channels: int, days: float, end: datetime
         ) -> tuple[Seeded, SchemaAnalysis]:
    """Seed the source of ``rt`` in ``shape`` (``VACUUM ANALYZE`` included), analyse it, create its wide tables."""
    if shape == "production":
        spec = FleetSpec(ships=ships, channels=channels, hours=days * 24, interval_seconds=INTERVAL_SECONDS, end=end)
        r: Any = seed_fleet(rt.dbs.source, rt.source, spec)  # ends with VACUUM ANALYZE
    else:
        r = seed_demo(rt.dbs.source, rt.source, DemoSpec(ships=ships, channels=channels, days=days, end=end,
                                                         offline_hours=0, late_channel_share=0))
        vacuum_analyze(rt.dbs.source, rt.source)
    seeded = Seeded(shape, tuple(r.ship_ids), r.rows, r.start, r.end, r.seconds)
    analysis = analyze_source(rt)
    create_tables(rt, analysis=analysis)
    return seeded, analysis


def wide_rows_expected(rt: Runtime, seeded: Seeded) -> dict[str, int]:
    """Per ship, the distinct created_times of its seeded rows: the rows each of its wide tables must hold.

    (Both shapes give every channel a row at every tick, so every part of a ship has the same rows.)
    """
    with rt.dbs.source.connect() as conn:
        rows = conn.execute(text(
            f"SELECT ship_id, count(DISTINCT created_time) FROM {rt.source.sql} "
            "WHERE created_time >= :a AND created_time < :b GROUP BY ship_id"),
            {"a": seeded.start, "b": seeded.end}).all()
    return {r[0]: int(r[1]) for r in rows}


def ship_layouts(rt: Runtime, ship_ids: tuple[str, ...]) -> dict[str, ShipSchema]:
    """The wide layout (parts, channels, column names) of each ship in ``rt``'s target."""
    out = {}
    with rt.dbs.target.connect() as conn:
        for ship in ship_ids:
            layout = load_ship_layout(conn, rt.settings.target_schema, ship)
            if layout is None:
                raise RuntimeError(f"ship {ship} has no wide tables in {rt.settings.target_schema}")
            out[ship] = layout
    return out


def child_url(rt: Runtime, libpq: bool) -> str:
    """The URL this run's engines use (the embedded server's too), for a child process; ``libpq``: no driver."""
    url = rt.dbs.source.url
    if not libpq:
        return url.render_as_string(hide_password=False)
    socket = url.query.get("host")
    if url.host or not isinstance(socket, str):
        return url.set(drivername="postgresql").render_as_string(hide_password=False)
    # the embedded server's socket (postgresql://u@/db?host=/dir): connectorx rejects an empty host and
    # ignores ?host=, so the socket folder goes into the host, percent-encoded (libpq reads that too)
    user = quote(url.username or "", safe="")
    password = "" if url.password is None else ":" + quote(str(url.password), safe="")
    port = f":{url.port}" if url.port else ""
    query = urlencode({k: v for k, v in url.query.items() if k != "host"}, doseq=True)
    return (f"postgresql://{user}{password}@{quote(socket, safe='')}{port}/{quote(url.database or '', safe='')}"
            + (f"?{query}" if query else ""))


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


def raw_read_passes(rt: Runtime, ship_ids: tuple[str, ...], rows: int, passes: int) -> tuple[list[float], int]:
    """COPY every ship's rows (time, channel, value as text) to a discarding sink ``passes`` times: the
    seconds of each pass and the bytes of one."""
    query = sql.SQL(
        "COPY (SELECT created_time, data_channel_id, CASE value_format WHEN 'Decimal' THEN double_v::text "
        "WHEN 'Integer' THEN long_v::text WHEN 'Boolean' THEN bool_v::text ELSE str_v END "
        "FROM {src} WHERE ship_id = %s) TO STDOUT"
    ).format(src=sql.Identifier(rt.settings.source_schema, rt.settings.source_table))
    seconds: list[float] = []
    size = 0
    for _ in range(passes):
        with rt.dbs.source.connect() as conn:
            cur = raw_cursor(conn)
            sink = DiscardSink()
            started = time.perf_counter()
            for ship in ship_ids:
                cur.copy_expert(cur.mogrify(query, (ship,)).decode(), sink)
            seconds.append(time.perf_counter() - started)
            conn.rollback()
        log.info("raw read pass: %s rows, %.1f MB in %.2f s", f"{rows:,}", sink.bytes / 1e6, seconds[-1])
        size = sink.bytes
    return seconds, size


def raw_read(before: tuple[list[float], int], after: tuple[list[float], int], rows: int) -> Measure:
    """The raw read's row of the table: the fastest of its passes before the tool and after it.

    On a shared machine the speed of the same work drifts within minutes; passes on both sides of
    the tool's measures keep the baseline from being taken at a slow moment only.
    """
    seconds = before[0] + after[0]
    note = f"best of {len(seconds)} ({len(before[0])} before the tool, {len(after[0])} after)"
    return Measure(RAW, rows, min(seconds), f"{note}, {before[1] / 1e6:.0f} MB")


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
# 3. the tool process and 5. the peers: child processes, timed whole


@dataclass(frozen=True)
class ChildRun:
    """A finished (or killed) child process: exit code (``None`` when timed out), wall seconds, peak RSS."""

    returncode: int | None
    seconds: float
    maxrss_mb: float
    stdout: str
    stderr: str

    def stderr_tail(self, lines: int = 3) -> str:
        """The last lines of the child's stderr, on one line."""
        return " | ".join(line.strip() for line in self.stderr.strip().splitlines()[-lines:])


def run_child(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float | None) -> ChildRun:
    """Run ``cmd`` in a new session; time its wall clock and take its rusage with ``os.wait4``.

    ``wait4``'s ``ru_maxrss`` is the peak of the child and of every descendant it waited for (the
    tool's reader helpers), so it is the largest process of the tree. Past ``timeout`` seconds the
    child's process group is killed and the exit code is ``None``.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        box: dict[str, Any] = {}

        def reap() -> None:
            box["wait"] = os.wait4(proc.pid, 0)
            box["ended"] = time.perf_counter()

        waiter = threading.Thread(target=reap, name=f"wait-{proc.pid}", daemon=True)
        waiter.start()
        waiter.join(timeout)
        timed_out = waiter.is_alive()
        if timed_out:
            os.killpg(proc.pid, signal.SIGKILL)  # the child's own group (start_new_session)
            waiter.join()
        _, status, usage = box["wait"]
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        return ChildRun(None if timed_out else proc.returncode, box["ended"] - started, _kb_to_mb(usage.ru_maxrss),
                        out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"))


def tool_env(rt: Runtime) -> dict[str, str]:
    """The environment of the tool process: this process's, with the tool's settings set to ``rt``'s."""
    env = {k: v for k, v in os.environ.items() if k not in _CONFIG_VARS}
    s = rt.settings
    env.update(DATABASE_URL=child_url(rt, libpq=False), SOURCE_TABLE=f"{s.source_schema}.{s.source_table}",
               TARGET_SCHEMA=s.target_schema, STATE_DIR=str(s.state_dir), CHUNK_HOURS=str(s.chunk_hours),
               SOURCE_TIMEZONE=s.source_timezone)
    return env


def table_counts(rt: Runtime, schema: str, tables: list[str]) -> dict[str, int | None]:
    """``count(*)`` of each table of ``schema`` (``None`` for a table that does not exist)."""
    out: dict[str, int | None] = {}
    with rt.dbs.target.connect() as conn:
        for table in tables:
            exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": qualified(schema, table)}).scalar()
            out[table] = None if exists is None else int(
                conn.execute(text(f"SELECT count(*) FROM {qualified(schema, table)}")).scalar_one())
    return out


def tool_process(rt_proc: Runtime, seeded: Seeded, expected: dict[str, int], workers: int, timeout: float
                 ) -> tuple[Measure, dict[str, Any]]:
    """Time ``main.py --mode migration-only`` in its own process on ``rt_proc``'s empty wide tables, then
    check that every wide table holds its ship's rows."""
    cmd = [sys.executable, str(ROOT / "main.py"), "--mode", "migration-only", "--cutoff-time", str(seeded.end),
           "--workers", str(workers), "--json"]
    state = rt_proc.settings.state_dir
    state.mkdir(parents=True, exist_ok=True)  # also the working folder: no stray .env is read
    log.info("timing the tool process: %s", " ".join(cmd[1:]))
    child = run_child(cmd, tool_env(rt_proc), state, timeout)
    info: dict[str, Any] = {"command": " ".join(cmd[1:]), "returncode": child.returncode,
                            "seconds": round(child.seconds, 4), "peak_rss_mb": child.maxrss_mb}
    if child.returncode is None:
        return Measure(TOOL_PROCESS, note=f"n/a: timed out after {timeout:g} s"), info
    try:
        result = json.loads(child.stdout)
    except ValueError:
        result = {}
    rows = result.get("rows_read")
    info.update(rows_read=rows, failed_chunks=len(result.get("failed_chunks") or ()))
    if child.returncode != 0 or rows is None:
        return Measure(TOOL_PROCESS, note=f"failed: exit {child.returncode}: {child.stderr_tail()}"[:160]), info
    layouts = ship_layouts(rt_proc, seeded.ship_ids)
    wrong = []
    for ship, layout in layouts.items():
        counts = table_counts(rt_proc, rt_proc.settings.target_schema, [p.table for p in layout.parts])
        wrong += [f"{t}: {n} rows, expected {expected.get(ship)}" for t, n in counts.items()
                  if n != expected.get(ship)]
    info["wide_tables_checked"] = sum(len(x.parts) for x in layouts.values())
    if wrong or rows != seeded.rows:
        problem = "; ".join(wrong) or f"read {rows:,} rows, seeded {seeded.rows:,}"
        return Measure(TOOL_PROCESS, note=f"failed: {problem}"[:160]), info
    note = f"{workers} worker(s), whole process, {info['wide_tables_checked']} wide table(s) checked"
    return Measure(TOOL_PROCESS, rows, child.seconds, note, rss_mb=child.maxrss_mb), info


def best_tool_process(rt_proc: Runtime, analysis: Any, seeded: Seeded, expected: dict[str, int],
                      args: argparse.Namespace) -> tuple[Measure, dict[str, Any]]:
    """The fastest of ``--process-passes`` tool processes, each from empty tables (timed as the raw read is:
    one run of a few seconds on a shared machine is mostly noise); a failed pass is the result."""
    best: tuple[Measure, dict[str, Any]] | None = None
    seconds = []
    for _ in range(max(args.process_passes, 1)):
        fresh_target(rt_proc, analysis)  # empty tables, ledger and cutoff
        measure, info = tool_process(rt_proc, seeded, expected, args.workers, args.tool_timeout)
        if measure.seconds is None:
            return measure, info
        seconds.append(round(measure.seconds, 2))
        if best is None or measure.seconds < best[0].seconds:  # type: ignore[operator]
            best = (measure, info)
    assert best is not None
    measure, info = best
    info["pass_seconds"] = seconds
    return replace(measure, note=f"{measure.note}, best of {len(seconds)}"), info


def peer_args(rt: Runtime, scratch: str, seeded: Seeded, layouts: dict[str, ShipSchema]) -> dict[str, Any]:
    """The arguments file of :mod:`bench.peers`: URL, source, scratch schema, each ship's window and parts."""
    ships = []
    for ship in seeded.ship_ids:
        columns = layouts[ship].channel_map()
        parts = [{"table": p.table, "columns": [[ch, columns[ch].column] for ch in p.channels]}
                 for p in layouts[ship].parts]
        ships.append({"ship_id": ship, "start": str(seeded.start), "end": str(seeded.end), "parts": parts})
    return {"url": child_url(rt, libpq=True), "source_schema": rt.settings.source_schema,
            "source_table": rt.settings.source_table, "target_schema": scratch, "ships": ships}


def table_columns(rt: Runtime, schema: str, table: str) -> dict[str, str]:
    """Column name -> data type of ``schema.table`` (empty when it does not exist)."""
    with rt.dbs.target.connect() as conn:
        rows = conn.execute(text(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = :s AND table_name = :t"), {"s": schema, "t": table}).all()
    return {r[0]: r[1] for r in rows}


def check_peer_tables(rt: Runtime, scratch: str, layouts: dict[str, ShipSchema], expected: dict[str, int],
                      time_type: str) -> str | None:
    """What is wrong with the tables a peer wrote (rows, columns, types against the tool's layout), or ``None``."""
    for ship, layout in layouts.items():
        columns = layout.channel_map()
        counts = table_counts(rt, scratch, [p.table for p in layout.parts])
        for part in layout.parts:
            if counts[part.table] != expected.get(ship):
                return f"{part.table}: {counts[part.table]} rows, expected {expected.get(ship)}"
            want = {TIME_COLUMN: time_type} | {columns[ch].column: columns[ch].pg_type for ch in part.channels}
            got = table_columns(rt, scratch, part.table)
            if len(got) != len(want):
                return f"{part.table}: {len(got)} columns, expected {len(want)}"
            bad = [f"{c} {got.get(c)} (not {t})" for c, t in want.items() if got.get(c) != t]
            if bad:
                return f"{part.table}: {len(bad)} column(s) missing or mistyped, e.g. {bad[0]}"
    return None


def _peer_result(child: ChildRun, timeout: float) -> tuple[dict[str, Any], str | None]:
    """The peer's JSON (empty when it printed none) and why it is not timed (``None``: it ran)."""
    try:
        data = json.loads(child.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        data = {}
    if child.returncode is None:
        return data, f"n/a: timed out after {timeout:g} s"
    if child.returncode == MISSING_EXIT or data.get("missing"):
        return data, f"n/a: pip install -r requirements-bench.txt (no module {data.get('missing', '?')})"
    if child.returncode != 0 or not data.get("ok"):
        return data, f"failed: {data.get('error') or child.stderr_tail()}"
    return data, None


def _reset_schema(rt: Runtime, schema: str, create: bool) -> None:
    """Drop ``schema`` with everything in it and, if ``create``, create it empty."""
    with rt.dbs.target.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {qi(schema)} CASCADE"))
        if create:
            conn.execute(text(f"CREATE SCHEMA {qi(schema)}"))


def run_peer(rt: Runtime, name: str, args_file: Path, check: dict[str, Any], timeout: float
             ) -> tuple[Measure, dict[str, Any]]:
    """Run one peer in its own process into a fresh scratch schema; time it, check its tables, drop them."""
    scratch = check["scratch"]
    _reset_schema(rt, scratch, create=True)
    log.info("timing peer %s", name)
    cmd = [sys.executable, str(ROOT / "bench" / "peers.py"), name, "--args-file", str(args_file)]
    child = run_child(cmd, dict(os.environ), ROOT, timeout)
    data, why = _peer_result(child, timeout)
    info = {"returncode": child.returncode, "wall_seconds": round(child.seconds, 4), "peak_rss_mb": child.maxrss_mb,
            **{k: data[k] for k in ("read", "pivot", "write", "narrow_rows", "tables") if k in data}}
    if why is None:
        why = check_peer_tables(rt, scratch, check["layouts"], check["expected"], check["time_type"])
        if why is None and data.get("narrow_rows") != check["rows"]:
            why = f"read {data.get('narrow_rows')} rows, seeded {check['rows']}"
        why = None if why is None else f"failed: {why}"
    _reset_schema(rt, scratch, create=False)
    info["status"] = why or "ok"
    mname = PEER_PREFIX + name
    if why is not None:
        log.warning("peer %s: %s", name, why)
        return Measure(mname, note=why[:160], peer=True), info
    note = (f"read {data['read']:.2f} + pivot {data['pivot']:.2f} + write {data['write']:.2f} s "
            "in-process; seconds: whole process")
    return Measure(mname, data["narrow_rows"], child.seconds, note, rss_mb=child.maxrss_mb, peer=True), info


def peers(rt: Runtime, names: list[str], scratch: str, seeded: Seeded, expected: dict[str, int],
          time_type: str, tmp: Path, timeout: float) -> tuple[list[Measure], dict[str, Any]]:
    """Run each named peer on every seeded ship and window, writing the tool's table split."""
    layouts = ship_layouts(rt, seeded.ship_ids)
    args_file = tmp / "peer-args.json"
    args_file.write_text(json.dumps(peer_args(rt, scratch, seeded, layouts)), encoding="utf-8")
    check = {"scratch": scratch, "layouts": layouts, "expected": expected, "time_type": time_type,
             "rows": seeded.rows}
    measures, info = [], {}
    for name in names:
        measure, info[name] = run_peer(rt, name, args_file, check, timeout)
        measures.append(measure)
    return measures, info


# ----------------------------------------------------------------------------------------------
# 4. hand-written SQL pivots


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


@dataclass(frozen=True)
class PivotWindow:
    """The window, ship and part the SQL pivots work on, and the pieces of SQL they share."""

    ship: str
    start: datetime
    end: datetime
    layout: ShipSchema
    formats: dict[str, dict[str, int]]  # channel -> value_format -> rows, from the analysis
    time_type: str
    target_schema: str
    src: sql.Composable
    where: sql.Composable

    @property
    def part(self) -> Any:
        """The first part of the ship (the one every SQL pivot builds)."""
        return self.layout.parts[0]

    @property
    def channels(self) -> list[str]:
        """The channels of that part, in column order."""
        return list(self.part.channels)

    def column(self, channel: str) -> str:
        """The wide column of ``channel``."""
        return self.layout.channel_map()[channel].column


def pivot_window(rt: Runtime, analysis: SchemaAnalysis, seeded: Seeded, hours: float) -> PivotWindow:
    """The last ``hours`` of the first ship, its first part."""
    ship = seeded.ship_ids[0]
    start = max(seeded.start, seeded.end - timedelta(hours=hours))
    layout = ship_layouts(rt, (ship,))[ship]
    where = sql.SQL("s.ship_id = {ship} AND s.created_time >= {start} AND s.created_time < {end}").format(
        ship=sql.Literal(ship), start=sql.Literal(start), end=sql.Literal(seeded.end))
    return PivotWindow(ship, start, seeded.end, layout, {c.channel_id: c.formats for c in analysis.ship(ship).channels},
                       analysis.time_type, rt.settings.target_schema,
                       sql.Identifier(rt.settings.source_schema, rt.settings.source_table), where)


def obvious_sql(w: PivotWindow) -> sql.Composable:
    """``max(value) FILTER (WHERE channel = ...)`` per channel, grouped by created_time, into a temp table."""
    aggs = []
    for ch in w.channels:
        fmt = _dominant_format(w.formats.get(ch, {}))
        aggs.append(sql.SQL("{agg}(s.{col}) FILTER (WHERE s.data_channel_id = {ch}) AS {alias}").format(
            agg=sql.SQL(_OBVIOUS_AGG[fmt]), col=sql.Identifier(VALUE_COLUMN[fmt]), ch=sql.Literal(ch),
            alias=sql.Identifier(w.column(ch))))
    return sql.SQL(
        "CREATE TEMP TABLE bench_obvious AS SELECT s.created_time AS {tc}, {aggs} FROM {src} s "
        "WHERE {where} AND s.data_channel_id = ANY({chs}) GROUP BY s.created_time"
    ).format(tc=sql.Identifier(TIME_COLUMN), aggs=sql.SQL(", ").join(aggs), src=w.src, where=w.where,
             chs=sql.Literal(w.channels))


def jsonb_sql(w: PivotWindow) -> sql.Composable:
    """``jsonb_object_agg`` per created_time, then ``jsonb_populate_record`` of the part's row type."""
    value = sql.SQL("CASE s.value_format WHEN 'Decimal' THEN to_jsonb(s.double_v) WHEN 'Integer' THEN "
                    "to_jsonb(s.long_v) WHEN 'Boolean' THEN to_jsonb(s.bool_v) ELSE to_jsonb(s.str_v) END")
    return sql.SQL(
        "CREATE TEMP TABLE bench_best AS SELECT r.* FROM ("
        "SELECT s.created_time, jsonb_object_agg(m.col, {value}) AS j FROM {src} s "
        "JOIN unnest({chs}::text[], {cols}::text[]) AS m(ch, col) ON m.ch = s.data_channel_id "
        "WHERE {where} GROUP BY s.created_time) g "
        "CROSS JOIN LATERAL jsonb_populate_record(NULL::{row}, g.j || jsonb_build_object({tc}, g.created_time)) r"
    ).format(value=value, src=w.src, chs=sql.Literal(w.channels), cols=sql.Literal([w.column(c) for c in w.channels]),
             where=w.where, row=sql.Identifier(w.target_schema, w.part.table), tc=sql.Literal(TIME_COLUMN))


def crosstab_sql(w: PivotWindow, conn: Any, ext_schema: str) -> sql.Composable:
    """tablefunc's ``crosstab(source_sql, category_sql)``: rows ordered by created_time, the value as text
    (crosstab builds its rows from text), one category per channel of the part, typed by the column list."""
    value = sql.SQL("CASE s.value_format WHEN 'Decimal' THEN s.double_v::text WHEN 'Integer' THEN s.long_v::text "
                    "WHEN 'Boolean' THEN s.bool_v::text ELSE s.str_v END")
    source = sql.SQL("SELECT s.created_time, s.data_channel_id, {value} FROM {src} s "
                     "WHERE {where} AND s.data_channel_id = ANY({chs}) ORDER BY 1").format(
        value=value, src=w.src, where=w.where, chs=sql.Literal(w.channels)).as_string(conn)
    categories = sql.SQL("SELECT unnest({chs}::text[])").format(chs=sql.Literal(w.channels)).as_string(conn)
    types = w.layout.channel_map()
    coldefs = [sql.SQL("{} {}").format(sql.Identifier(TIME_COLUMN), sql.SQL(w.time_type))]
    coldefs += [sql.SQL("{} {}").format(sql.Identifier(w.column(ch)), sql.SQL(types[ch].pg_type)) for ch in w.channels]
    return sql.SQL("CREATE TEMP TABLE bench_crosstab AS SELECT * FROM {fn}({source}, {categories}) AS ct({cols})"
                   ).format(fn=sql.Identifier(ext_schema, "crosstab"), source=sql.Literal(source),
                            categories=sql.Literal(categories), cols=sql.SQL(", ").join(coldefs))


def tablefunc_schema(raw: Any, schema: str) -> tuple[str | None, str]:
    """``CREATE EXTENSION IF NOT EXISTS tablefunc`` (into ``schema``, dropped with it, when it is not installed
    yet); returns the schema that holds it, or ``None`` and why."""
    try:
        with raw.cursor() as cur:
            cur.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS tablefunc SCHEMA {}").format(sql.Identifier(schema)))
            cur.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                        "WHERE e.extname = 'tablefunc'")
            found = cur.fetchone()
        raw.commit()
    except psycopg2.Error as exc:
        raw.rollback()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, f"n/a: no tablefunc extension ({first})"
    return (found[0], "") if found else (None, "n/a: tablefunc not found after CREATE EXTENSION")


def _window_counts(raw: Any, w: PivotWindow) -> tuple[int, int]:
    """Narrow rows and distinct created_times of the window's part."""
    with raw.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*), count(DISTINCT s.created_time) FROM {src} s "
                            "WHERE {where} AND s.data_channel_id = ANY({chs})").format(
            src=w.src, where=w.where, chs=sql.Literal(w.channels)))
        covered, wide_rows = cur.fetchone()
    raw.rollback()
    return int(covered), int(wide_rows)


def _pivot_measure(raw: Any, name: str, statement: sql.Composable, rows: int, span: str, timeout_s: float
                   ) -> Measure:
    """Time one SQL pivot; a timeout or an SQL error becomes an n/a note."""
    log.info("timing %s", name)
    try:
        seconds = _timed(raw, statement, timeout_s)
    except psycopg2.Error as exc:
        raw.rollback()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("%s failed: %s", name, first)
        return Measure(name, rows, None, f"failed: {first}"[:160])
    log.info("%s: %s", name, "timed out" if seconds is None else f"{seconds:.2f} s")
    return Measure(name, rows, seconds, span if seconds is not None else f"n/a: timed out after {timeout_s:g} s")


def sql_pivots(rt: Runtime, analysis: SchemaAnalysis, seeded: Seeded, hours: float, timeout_s: float
               ) -> tuple[list[Measure], dict[str, Any]]:
    """Time the obvious FILTER pivot, the jsonb pivot and crosstab on one window of the first ship's first part."""
    w = pivot_window(rt, analysis, seeded, hours)
    raw = rt.dbs.source.raw_connection()
    try:
        dbapi = raw.dbapi_connection
        covered, wide_rows = _window_counts(dbapi, w)
        log.info("pivot window %s .. %s of ship %s, part %s: %d of %d channel(s), %s narrow rows, %s wide rows",
                 w.start, w.end, w.ship, w.part.table, len(w.channels), len(w.layout.channels), f"{covered:,}",
                 f"{wide_rows:,}")
        span = f"{(w.end - w.start).total_seconds() / 3600:g} h, part 1 of {len(w.layout.parts)}"
        measures = [_pivot_measure(dbapi, OBVIOUS, obvious_sql(w), covered, span, timeout_s),
                    _pivot_measure(dbapi, JSONB, jsonb_sql(w), covered, span, timeout_s)]
        ext_schema, why = tablefunc_schema(dbapi, rt.settings.source_schema)
        if ext_schema is None:
            log.warning("crosstab not measured: %s", why)
            measures.append(Measure(CROSSTAB, covered, None, why[:160]))
        else:
            measures.append(_pivot_measure(dbapi, CROSSTAB, crosstab_sql(w, dbapi, ext_schema), covered, span,
                                           timeout_s))
    finally:
        raw.close()
    window = {"ship_id": w.ship, "start": str(w.start), "end": str(w.end), "table": w.part.table,
              "parts": len(w.layout.parts), "channels_in_part": len(w.channels),
              "channels_total": len(w.layout.channels), "narrow_rows": covered, "wide_rows": wide_rows}
    return measures, window


# ----------------------------------------------------------------------------------------------
# 6. one realtime cycle


def realtime_cycle(rt2: Runtime, ships: int, channels: int) -> tuple[Measure, dict[str, Any]]:
    """Seed a short demo-shaped history ending just before the database's now, set the watermark with one
    cycle, insert one minute of new rows per ship and time a second cycle."""
    with rt2.dbs.source.connect() as conn:
        now = conn.execute(text(
            "SELECT to_timestamp(floor(extract(epoch FROM now()) / :iv) * :iv) AT TIME ZONE 'UTC'"),
            {"iv": INTERVAL_SECONDS}).scalar_one()
    history_end = now - timedelta(minutes=REALTIME_NEW_MINUTES + 1)
    seeded = seed_demo(rt2.dbs.source, rt2.source, DemoSpec(ships=ships, channels=channels, days=REALTIME_DAYS,
                                                            end=history_end, offline_hours=0, late_channel_share=0))
    create_tables(rt2, analysis=analyze_source(rt2))
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
    raw_rate = report.rate(RAW)
    fastest = report.fastest_peer()
    peer_rate = fastest.rate if fastest else None
    header = (f"{'measure':<{NAME_WIDTH}} {'rows':>11} {'seconds':>8} {'rows/s':>11} {'vs raw':>7} "
              f"{'vs peer':>7} {'RSS MB':>7}  note")
    lines = [header, "-" * len(header)]
    for m in report.measures:
        lines.append(f"{m.name:<{NAME_WIDTH}} {_fmt(m.rows, ',d'):>11} {_fmt(m.seconds, '.2f'):>8} "
                     f"{_fmt(m.rate, ',.0f'):>11} {_fmt(_ratio(m.rate, raw_rate), '.3f'):>7} "
                     f"{_fmt(_ratio(m.rate, peer_rate), '.3f'):>7} {_fmt(m.rss_mb, ',.0f'):>7}  {m.note}")
    lines.append("")
    lines.append("vs raw: rows/s over the raw read's; vs peer: over the fastest peer's "
                 f"({fastest.name[len(PEER_PREFIX):] if fastest else 'none ran'}); "
                 "RSS MB: peak RSS of the largest process of the measured process tree")
    lines.append("")
    for key, value in ratios(report).items():
        lines.append(f"{key:<30} {_fmt(value, '.3f')}")
    lines.append("")
    lines += render_backfill(report.backfill)
    return "\n".join(lines)


def render_backfill(b: BackfillExtra) -> list[str]:
    """The in-process backfill's memory, stages and output."""
    lines = [f"backfill (in-process) peak RSS: this process {b.rss_self_peak_mb:.0f} MB (before the backfill "
             f"{b.rss_self_before_mb:.0f} MB); largest worker or reader process "
             f"{'n/a' if b.rss_children_peak_mb is None else f'{b.rss_children_peak_mb:.0f} MB'}"]
    if b.stages:
        lines.append(f"backfill stages over {b.stages['chunks']} chunk(s): read {b.stages['read_seconds']:.2f} s, "
                     f"pivot {b.stages['pivot_seconds']:.2f} s, write {b.stages['write_seconds']:.2f} s "
                     f"(ledger chunk seconds {_fmt(b.chunk_seconds_sum, '.2f')})")
    lines.append(f"backfill wrote {b.wide_rows:,} wide rows, {b.cells_written:,} cells, {b.rejected:,} rejects")
    return lines


def ratios(report: Report) -> dict[str, float | None]:
    """The headline ratios, by rows per second."""
    tool = report.rate(BACKFILL)
    process = report.rate(TOOL_PROCESS)
    fastest = report.fastest_peer()
    peer = fastest.rate if fastest else None
    return {
        "tool / raw read": _ratio(tool, report.rate(RAW)),
        "tool / obvious pivot": _ratio(tool, report.rate(OBVIOUS)),
        "tool / best pivot": _ratio(tool, report.rate(JSONB)),
        "tool / crosstab pivot": _ratio(tool, report.rate(CROSSTAB)),
        "tool / fastest peer": _ratio(tool, peer),
        "tool process / raw read": _ratio(process, report.rate(RAW)),
        "tool process / fastest peer": _ratio(process, peer),
    }


def write_json(report: Report, path: Path) -> None:
    """Write the report as JSON (the folder is created)."""
    fastest = report.fastest_peer()
    raw_rate, peer_rate = report.rate(RAW), fastest.rate if fastest else None
    data = {
        "params": report.params,
        "environment": report.environment,
        "measures": [m.as_dict(raw_rate, peer_rate) for m in report.measures],
        "ratios": ratios(report),
        "fastest_peer": fastest.name[len(PEER_PREFIX):] if fastest else None,
        "backfill": asdict(report.backfill),
        "tool_process": report.tool_process,
        "peers": report.peers,
        "pivot_window": report.pivot_window,
        "realtime": report.realtime,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    log.info("wrote %s", path)


# ----------------------------------------------------------------------------------------------
# main


def _peer_names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", help="PostgreSQL URL (default: DATABASE_URL, else the embedded server)")
    p.add_argument("--shape", choices=("production", "demo"), default="production",
                   help="the source: fleet_data.seed_fleet (production-shaped) or demo_data.seed_demo")
    p.add_argument("--ships", type=int, default=1)
    p.add_argument("--channels", type=int, default=1000)
    p.add_argument("--days", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=1, help="backfill worker processes (in-process and tool process)")
    p.add_argument("--json-out", type=Path, default=Path("bench/results.json"))
    p.add_argument("--keep", action="store_true", help="keep the schemas (and an embedded server's data)")
    p.add_argument("--raw-passes", type=int, default=2,
                   help="raw read passes (at least 2: half before the tool, half after); the fastest is reported")
    p.add_argument("--pivot-hours", type=float, default=24.0, help="window of the SQL pivots")
    p.add_argument("--pivot-timeout", type=float, default=1800.0, help="seconds before a SQL pivot is given up")
    p.add_argument("--process-passes", type=int, default=2, help="tool process passes; the fastest is reported")
    p.add_argument("--tool-timeout", type=float, default=3600.0, help="seconds before the tool process is killed")
    p.add_argument("--skip-peers", action="store_true", help="do not run the peers")
    p.add_argument("--peers", type=_peer_names, default=list(PEERS), help=f"peers to run (default: {','.join(PEERS)})")
    p.add_argument("--peer-timeout", type=float, default=600.0, help="seconds before a peer is reported timed out")
    p.add_argument("--skip-realtime", action="store_true", help="do not measure the realtime cycle")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    for name in ("ships", "channels", "workers", "raw_passes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.days, args.pivot_hours, args.peer_timeout, args.tool_timeout) <= 0:
        p.error("--days, --pivot-hours, --peer-timeout and --tool-timeout must be positive")
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


@dataclass(frozen=True)
class Schemas:
    """The schemas of one run."""

    src: str
    tgt: str
    proc: str  # the tool process's target
    peer: str  # the peers' scratch tables
    src_rt: str
    tgt_rt: str

    @classmethod
    def new(cls) -> Schemas:
        """A fresh set, named ``bench_*_<hex>``."""
        tag = uuid.uuid4().hex[:10]
        return cls(f"bench_src_{tag}", f"bench_tgt_{tag}", f"bench_tgt_{tag}_proc", f"bench_peer_{tag}",
                   f"bench_src_{tag}_rt", f"bench_tgt_{tag}_rt")

    def all(self) -> list[str]:
        """Every schema of the run (the source last: dropping it also drops a tablefunc installed there)."""
        return [self.tgt, self.proc, self.peer, self.src_rt, self.tgt_rt, self.src]


def measure_all(rt: Runtime, args: argparse.Namespace, names: Schemas, tmp: Path, report: Report) -> None:
    """Seed, then every measure in order, into ``report``."""
    url = rt.settings.database_url
    log.info("seeding %s-shaped %d ship(s) x %d channel(s) x %g day(s) into %s", args.shape, args.ships,
             args.channels, args.days, names.src)
    seeded, analysis = seed(rt, args.shape, args.ships, args.channels, args.days, SEED_END)
    report.params.update(seeded_rows=seeded.rows, seed_seconds=round(seeded.seconds, 2),
                         ship_ids=list(seeded.ship_ids), seed_start=str(seeded.start))
    expected = wide_rows_expected(rt, seeded)

    passes = max(args.raw_passes, 2)
    raw_before = raw_read_passes(rt, seeded.ship_ids, seeded.rows, passes // 2)
    backfill, report.backfill = tool_backfill(rt, seeded.end, args.workers, seeded.rows)
    rt_proc = Runtime(settings=make_settings(url, names.src, names.proc, tmp), dbs=rt.dbs)
    process, report.tool_process = best_tool_process(rt_proc, analysis, seeded, expected, args)
    raw_after = raw_read_passes(rt, seeded.ship_ids, seeded.rows, passes - passes // 2)
    report.measures += [raw_read(raw_before, raw_after, seeded.rows), backfill, process]

    pivots, report.pivot_window = sql_pivots(rt, analysis, seeded, args.pivot_hours, args.pivot_timeout)
    report.measures += pivots

    if args.skip_peers:
        report.measures += [Measure(PEER_PREFIX + n, note="skipped", peer=True) for n in args.peers]
    else:
        measures, report.peers = peers(rt, args.peers, names.peer, seeded, expected, analysis.time_type, tmp,
                                       args.peer_timeout)
        report.measures += measures

    if args.skip_realtime:
        report.measures.append(Measure("realtime cycle (run_realtime once)", note="skipped"))
        return
    rt2 = Runtime(settings=make_settings(url, names.src_rt, names.tgt_rt, tmp), dbs=rt.dbs)
    try:
        measure, report.realtime = realtime_cycle(rt2, args.ships, args.channels)
    except Exception as exc:  # noqa: BLE001 - the realtime figure is optional; report n/a, keep the rest
        log.warning("realtime cycle not measured: %s", exc, exc_info=args.verbose)
        measure = Measure("realtime cycle (run_realtime once)", note=f"n/a: {type(exc).__name__}: {exc}"[:120])
    report.measures.append(measure)


def run(args: argparse.Namespace) -> Report:
    """Set up, measure everything, and clean up (in a ``finally``)."""
    url = database_url(args.database_url)
    tmp = Path(tempfile.mkdtemp(prefix="bench-migrator-"))
    names = Schemas.new()
    settings = make_settings(url, names.src, names.tgt, tmp)
    rt = open_runtime(settings, "narrow-to-wide-bench")
    report = Report(params={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                            if k != "database_url"}, environment=environment(rt))
    report.params.update({"source_schema": names.src, "target_schema": names.tgt,
                          "tool_process_schema": names.proc, "seed_end": str(SEED_END)})
    try:
        create_schemas(rt.dbs.source, names.all())
        measure_all(rt, args, names, tmp, report)
        return report
    finally:
        clean_up(rt, settings, names.all(), tmp, args.keep)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON file."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the stage-timing capture raises one logger to DEBUG
        handler.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    compile_tool()  # the timed processes start from bytecode, as on a user's machine
    report = run(args)
    print(render(report))
    write_json(report, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
