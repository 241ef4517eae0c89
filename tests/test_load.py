"""Load: ``--mode concurrent`` against a writer inserting at the fleet's production rate.

A writer inserts what the fleet sends (``SHIPS`` ships of ``CHANNELS`` channels, a row per channel
every ``ROW_EVERY_SECONDS``: about 560 narrow rows/s), one ship's batch at a time, spread evenly, with
created_time the database's current second. Meanwhile ``--mode concurrent`` (a real CLI process)
backfills the seeded history and runs realtime. Every ``SAMPLE_SECONDS`` the test measures:

* the realtime lag, as the age of the oldest row waiting: for each ship, the database's ``now()``
  minus the insert time (server_created_time) of the oldest source row newer than the newest
  created_time in its wide tables (0 when none waits); the worst ship. It is bounded by the interval,
  the settle delay (2 s) and the cycle time;
* the staleness: ``now()`` minus the newest created_time in the wide tables (worst ship), which also
  includes the writer's own cadence (up to ``ROW_EVERY_SECONDS``);
* the RSS of the tool's process and its source readers (``/proc/<pid>/status`` VmRSS);
* whether the backfill is still running (ledger chunks pending or running).

Asserted: the lag stays under ``LAG_BOUND_SECONDS`` from the first realtime cycle on (while the
backfill runs too), the RSS grows less than ``RSS_GROWTH_BOUND_MB`` over the second half, the writer
really reached the rate, and at the end (writer stopped, one last ``realtime --once``) the wide
tables equal the source cell by cell and ``validate`` passes. The figures are logged at WARNING
(``pytest -rA``; on stderr with ``pytest -s``) and written to ``<tmp_path>/load_summary.json``.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

from narrow2wide.db.database import qualified, server_now
from narrow2wide.db.runtime import Runtime
from narrow2wide.demo.demo_data import LiveWriter
from narrow2wide.store.chunk_ledger import ChunkLedger
from tests.cli_procs import Procs
from tests.figures import show_figures
from tests.wide_check import compare

log = logging.getLogger("load")

# ----------------------------------------------------------------------------------------------
# parameters

SHIPS = 8
CHANNELS = 1050
ROW_EVERY_SECONDS = 15.0  # each ship sends every channel this often: SHIPS * CHANNELS / 15 = 560 rows/s
QUICK_LOAD_SECONDS = 40.0  # how long the writer runs in the default run
FULL_LOAD_SECONDS = 300.0  # ... and with --full
QUICK_HISTORY_HOURS = 1.0  # history for the backfill (8 x 1050 channels x 240 rows/h = 2.0 M rows/h)
FULL_HISTORY_HOURS = 6.0
INTERVAL_MINUTES = 0.25  # --interval of the realtime side
CHUNK_HOURS = 1  # --chunk-hours of the backfill side (bounds the memory of one chunk)
SAMPLE_SECONDS = 2.0
FIRST_CYCLE_TIMEOUT = 120.0  # seconds from the start until the first realtime cycle must be logged
LAG_BOUND_SECONDS = 60.0  # after the first cycle: the age of the oldest row not yet in the wide tables
RSS_GROWTH_BOUND_MB = 100.0  # peak RSS of the second half minus the RSS at half-time
MIN_WRITER_SHARE = 0.9  # the writer must reach this share of the target rate
SETTLE_SECONDS = 2.1

TARGET_ROWS_PER_SECOND = SHIPS * CHANNELS / ROW_EVERY_SECONDS


# ----------------------------------------------------------------------------------------------
# helpers


class FleetWriter:
    """Production-rate inserts from one thread: each ship's batch (every channel, the database's current
    second) every ``ROW_EVERY_SECONDS``, the ships spread evenly over that period (one
    :meth:`demo_data.LiveWriter.tick` per batch)."""

    def __init__(self, engine: Engine, runtime: Runtime, ship_ids: tuple[str, ...]):
        self.ships = [LiveWriter(engine, runtime.source, (ship,), CHANNELS) for ship in ship_ids]
        self.rows = 0
        self.batches = 0
        self.late_batches = 0  # batches that started more than a slot after their schedule
        self.seconds = 0.0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-writer", daemon=True)

    def start(self) -> FleetWriter:
        """Start inserting."""
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop after the batch in flight; returns the rows inserted and re-raises a failure."""
        self._stop.set()
        self._thread.join(60)
        if self.error is not None:
            raise self.error
        return self.rows

    @property
    def rate(self) -> float:
        """Narrow rows per second inserted so far."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def _run(self) -> None:
        slot = ROW_EVERY_SECONDS / len(self.ships)
        began = time.monotonic()
        n = 0
        try:
            while not self._stop.is_set():
                due = began + n * slot
                if time.monotonic() - due > slot:
                    self.late_batches += 1
                self.rows += self.ships[n % len(self.ships)].tick(n // len(self.ships) + 1)
                self.batches += 1
                n += 1
                self.seconds = time.monotonic() - began
                self._stop.wait(max(began + n * slot - time.monotonic(), 0.0))
            self.seconds = time.monotonic() - began
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by stop()
            log.error("fleet writer failed: %s", exc)
            self.error = exc


@dataclass
class Sample:
    """One measurement."""

    t: float  # seconds since the tool started
    lag_s: float | None  # worst ship: age of the oldest source row not yet in the wide tables
    staleness_s: float | None  # worst ship: database now - newest wide created_time
    rss_mb: float | None
    backfill_running: bool
    after_first_cycle: bool


@dataclass
class LoadReport:
    """The figures of one load run."""

    load_seconds: float
    history_rows: int = 0
    writer_rows: int = 0
    writer_rate: float = 0.0
    writer_late_batches: int = 0
    first_cycle_s: float | None = None
    backfill_done_s: float | None = None
    cycles: int = 0
    cycle_seconds_median: float | None = None
    cycle_seconds_max: float | None = None
    samples: list[Sample] = field(default_factory=list)
    lag_max: float | None = None
    lag_median: float | None = None
    lag_p95: float | None = None
    lag_max_during_backfill: float | None = None
    samples_during_backfill: int = 0
    staleness_max: float | None = None
    staleness_median: float | None = None
    rss_start: float | None = None
    rss_mid: float | None = None
    rss_peak: float | None = None
    rss_end: float | None = None
    rss_growth_second_half: float | None = None
    cells_checked: int = 0
    rows_checked: int = 0
    lost: int = 0
    extra: int = 0

    def line(self) -> str:
        """The figures in one line."""
        f = _fmt
        return (
            f"load: {SHIPS} ships x {CHANNELS} channels, writer {self.writer_rows:,} rows in {self.load_seconds:.0f} s "
            f"({self.writer_rate:.0f} rows/s, target {TARGET_ROWS_PER_SECOND:.0f}; {self.writer_late_batches} late "
            f"batch(es)); history {self.history_rows:,} rows, backfill done at {f(self.backfill_done_s)} s; first "
            f"realtime cycle at {f(self.first_cycle_s)} s, {self.cycles} cycle(s) of median "
            f"{f(self.cycle_seconds_median)} s, max {f(self.cycle_seconds_max)} s; lag (age of the oldest row "
            f"waiting) max {f(self.lag_max)} s, median {f(self.lag_median)} s, p95 {f(self.lag_p95)} s, max during "
            f"the backfill {f(self.lag_max_during_backfill)} s ({self.samples_during_backfill} sample(s)); "
            f"staleness (now - newest wide row) max {f(self.staleness_max)} s, median {f(self.staleness_median)} s; "
            f"RSS at the first cycle {f(self.rss_start)} MB, mid {f(self.rss_mid)} MB, peak {f(self.rss_peak)} MB, "
            f"end {f(self.rss_end)} MB, second-half growth {f(self.rss_growth_second_half)} MB; checked "
            f"{self.rows_checked:,} narrow rows = {self.cells_checked:,} cells: lost {self.lost}, "
            f"duplicated/changed {self.extra}")


def _fmt(value: float | None) -> str:
    """A figure with one decimal, or ``-`` when there is none."""
    return "-" if value is None else f"{value:.1f}"


def rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` and its child processes (the backfill's source readers) in MB; None once it has exited."""
    total = 0.0
    for p in (pid, *_children(pid)):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            if p == pid:
                return None
            continue
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        total += int(found.group(1)) / 1024 if found else 0.0
    return total


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``."""
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if re.search(rf"^PPid:\s+{pid}$", status.read_text(), re.M):
                out.append(int(status.parent.name))
        except OSError:
            continue
    return out


def ship_tables(runtime: Runtime) -> dict[str, list[str]]:
    """Each ship's qualified wide tables."""
    with runtime.dbs.target.connect() as conn:
        rows = conn.execute(text(
            f"SELECT ship_id, table_name FROM {qualified(runtime.settings.target_schema, 'migrator_tables')}"
        )).all()
    out: dict[str, list[str]] = {}
    for ship, table in rows:
        out.setdefault(ship, []).append(qualified(runtime.settings.target_schema, table))
    return out


def measure_lag(runtime: Runtime, tables: dict[str, list[str]]) -> tuple[float | None, float | None]:
    """(lag, staleness) of the worst ship, in seconds: the age (since its insert) of the oldest source row
    newer than the ship's newest wide row, and now minus that newest wide row. None while a ship's wide
    tables are empty."""
    newest: dict[str, object] = {}
    with runtime.dbs.target.connect() as conn:
        for ship, names in tables.items():
            union = " UNION ALL ".join(f"(SELECT max(created_time) AS t FROM {n})" for n in names)
            newest[ship] = conn.execute(text(f"SELECT max(t) FROM ({union}) u")).scalar()
    if any(t is None for t in newest.values()):
        return None, None
    with runtime.dbs.source.connect() as conn:
        now = server_now(conn, "UTC")
        waiting = dict(conn.execute(text(
            f"""SELECT s.ship_id, min(s.server_created_time) FROM {runtime.source.sql} s
                JOIN unnest(CAST(:ships AS text[]), CAST(:newest AS timestamp[])) AS n(ship, t)
                  ON s.ship_id = n.ship AND s.created_time > n.t
                WHERE s.created_time > :lo GROUP BY 1"""),
            {"ships": list(newest), "newest": list(newest.values()), "lo": min(newest.values())}).all())
    lag = max(((now - t).total_seconds() for t in waiting.values()), default=0.0)
    staleness = max((now - t).total_seconds() for t in newest.values())
    return max(lag, 0.0), staleness


def backfill_running(runtime: Runtime) -> bool:
    """True while the ledger has chunks pending or running (or does not exist yet)."""
    ledger = ChunkLedger(runtime.settings.target_schema)
    with runtime.dbs.target.connect() as conn:
        if not ledger.exists(conn):
            return True
        left = conn.execute(text(f"SELECT count(*) FROM {ledger.table} WHERE status IN ('pending', 'running')"))
        return bool(left.scalar_one())


def summarize(report: LoadReport) -> None:
    """Fill the lag and RSS figures from the samples."""
    stale = sorted(s.staleness_s for s in report.samples if s.after_first_cycle and s.staleness_s is not None)
    if stale:
        report.staleness_max, report.staleness_median = stale[-1], statistics.median(stale)
    lags = [s.lag_s for s in report.samples if s.after_first_cycle and s.lag_s is not None]
    if lags:
        ordered = sorted(lags)
        report.lag_max = ordered[-1]
        report.lag_median = statistics.median(ordered)
        report.lag_p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    during = [s.lag_s for s in report.samples if s.after_first_cycle and s.backfill_running and s.lag_s is not None]
    report.samples_during_backfill = len(during)
    report.lag_max_during_backfill = max(during) if during else None
    rss = [s for s in report.samples if s.rss_mb is not None and s.after_first_cycle]
    if rss:
        report.rss_start, report.rss_end = rss[0].rss_mb, rss[-1].rss_mb
        report.rss_peak = max(s.rss_mb for s in rss)
        half = rss[len(rss) // 2:]
        report.rss_mid = half[0].rss_mb
        report.rss_growth_second_half = max(s.rss_mb for s in half) - half[0].rss_mb


# ----------------------------------------------------------------------------------------------
# the test


def test_concurrent_keeps_realtime_lag_bounded_and_memory_flat_at_production_rate(
        runtime, prepared, procs: Procs, full_run, tmp_path, record_property, request):
    load_seconds = FULL_LOAD_SECONDS if full_run else QUICK_LOAD_SECONDS
    hours = FULL_HISTORY_HOURS if full_run else QUICK_HISTORY_HOURS
    report = LoadReport(load_seconds)
    history = prepared(ships=SHIPS, channels=CHANNELS, days=hours / 24, end=None, offline_hours=0.0)
    report.history_rows = history.rows
    tables = ship_tables(runtime)
    assert sorted(tables) == sorted(history.ship_ids)

    writer = FleetWriter(runtime.dbs.source, runtime, history.ship_ids).start()
    proc = procs.start("--mode", "concurrent", "--interval", str(INTERVAL_MINUTES), "--chunk-hours", str(CHUNK_HOURS))
    err_file = tmp_path / f"cli{len(procs.started) - 1}.err"
    t0 = time.monotonic()
    writer_stopped = False
    try:
        while time.monotonic() - t0 < load_seconds:
            assert proc.poll() is None, f"concurrent exited ({proc.returncode}): {procs.output(proc)}"
            t = time.monotonic() - t0
            first = report.first_cycle_s is not None or "realtime cycle 1:" in err_file.read_text()
            if first and report.first_cycle_s is None:
                report.first_cycle_s = t
            running = backfill_running(runtime)
            if not running and report.backfill_done_s is None:
                report.backfill_done_s = t
            lag, staleness = measure_lag(runtime, tables)
            report.samples.append(Sample(round(t, 2), lag, staleness, rss_mb(proc.pid), running, first))
            assert first or t < FIRST_CYCLE_TIMEOUT, f"no realtime cycle in {t:.0f} s: {err_file.read_text()}"
            time.sleep(max(SAMPLE_SECONDS - (time.monotonic() - t0 - t), 0.0))
        report.writer_rows = writer.stop()
        writer_stopped = True
    finally:
        if not writer_stopped:
            writer.stop()
    report.writer_rate = writer.rate
    report.writer_late_batches = writer.late_batches

    deadline = time.monotonic() + 900  # the rest of the backfill, if any, without the writer
    while backfill_running(runtime):
        assert proc.poll() is None, f"concurrent exited ({proc.returncode}): {procs.output(proc)}"
        assert time.monotonic() < deadline, "the backfill did not finish"
        time.sleep(1.0)
    if report.backfill_done_s is None:
        report.backfill_done_s = time.monotonic() - t0
    proc.send_signal(signal.SIGTERM)
    code, out, err = procs.finish(proc, timeout=180)
    assert code == 0, f"concurrent did not stop cleanly on SIGTERM ({code})\n{out}\n{err[-4000:]}"
    cycle_seconds = [float(x) for x in re.findall(r"^realtime cycle \d+: .* ([\d.]+) s(?:, \d+ ship\(s\) failed)?$",
                                                  err, re.M)]
    report.cycles = len(cycle_seconds)
    first_cycle_at, backfill_done_at = err.find("realtime cycle 1:"), err.find("backfill done:")
    overlapped = 0 <= first_cycle_at < backfill_done_at
    if cycle_seconds:
        report.cycle_seconds_median = statistics.median(cycle_seconds)
        report.cycle_seconds_max = max(cycle_seconds)
    summarize(report)

    time.sleep(SETTLE_SECONDS)
    code, out, err = procs.run("--mode", "realtime", "--once", timeout=600)
    assert code == 0, f"the final realtime cycle failed\n{out}\n{err}"
    for ship in history.ship_ids:
        diff = compare(runtime.dbs.source, runtime.settings, ship)
        report.cells_checked += diff.expected
        report.lost += diff.missing
        report.extra += diff.extra
        with runtime.dbs.source.connect() as conn:
            report.rows_checked += int(conn.execute(text(
                f"SELECT count(*) FROM {runtime.source.sql} WHERE ship_id = :s"), {"s": ship}).scalar_one())
        assert diff.exact, f"{ship}: the wide tables differ from the source: {diff}"
    code, out, err = procs.run("--mode", "validate", timeout=600)
    validated = code == 0 and "Validation passed" in out

    path = tmp_path / "load_summary.json"
    path.write_text(json.dumps(asdict(report), indent=2))
    show_figures(request, log, f"{report.line()}\n  samples (t s, lag s, staleness s, RSS MB, backfill running): "
         + " ".join(f"({s.t:.0f}, {_fmt(s.lag_s)}, {_fmt(s.staleness_s)}, {_fmt(s.rss_mb)}, "
                    f"{'B' if s.backfill_running else '-'})"
                    for s in report.samples) + f"\n  details: {path}")
    for key in ("lag_max", "lag_median", "lag_p95", "staleness_max", "staleness_median", "rss_start", "rss_peak",
                "rss_end", "rss_growth_second_half", "writer_rate", "cells_checked"):
        record_property(key, getattr(report, key))

    assert validated, f"validate failed ({code})\n{out}\n{err}"
    assert report.writer_rate >= MIN_WRITER_SHARE * TARGET_ROWS_PER_SECOND, report.line()
    assert report.first_cycle_s is not None, report.line()
    assert report.lag_max is not None and report.lag_max < LAG_BOUND_SECONDS, report.line()
    assert report.staleness_median is not None and report.staleness_median < LAG_BOUND_SECONDS, report.line()
    # the two sides overlapped: a realtime cycle ended before the backfill did (the quick run's backfill
    # takes seconds, so the sampler may miss it; the full run's must be seen by the sampler too)
    assert overlapped, f"the backfill never ran alongside realtime: {report.line()}"
    if full_run:
        assert report.samples_during_backfill >= 1, report.line()
    assert report.rss_growth_second_half is not None, report.line()
    assert report.rss_growth_second_half < RSS_GROWTH_BOUND_MB, report.line()
