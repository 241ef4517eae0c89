"""Operating a backfill on a live source: dry run, rate cap, throttle, pause and resume, metrics, health.

Each test ends with the oracle (tests/wide_check.py): every cell of every ship checked against the
pivot of the narrow source in SQL.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import make_url, text

from config import Settings
from cutoff_store import CutoffStore
from narrow2wide.backfill.runner import BackfillOptions, run_backfill
from narrow2wide.common.errors import ConfigError
from narrow2wide.db.database import Databases, make_engine, qi, qualified
from narrow2wide.db.runtime import Runtime
from narrow2wide.demo.demo_data import DemoSpec, demo_channels, insert_rows
from narrow2wide.ops.throttle import RateCap, ThrottleSettings
from narrow2wide.schema.analyzer import analyze_source
from narrow2wide.schema.tables import create_tables
from narrow2wide.store.chunk_ledger import ChunkLedger
from narrow2wide.store.hold_log import HoldLog
from tests.cli_procs import invoke_cli
from tests.wide_check import compare

SHIPS = ("IMO9301234", "IMO9876543")
CUTOFF = datetime(2024, 10, 2)
HOURS = 6
CHANNELS = 12
ROWS_PER_HOUR = 240 * CHANNELS  # one row per channel every 15 s


def seed_fleet(runtime: Runtime, ships: tuple[str, ...] = SHIPS, hours: int = HOURS, channels: int = CHANNELS,
               end: datetime = CUTOFF) -> int:
    """``hours`` of 15 s ticks before ``end``, every ship's rows written in 15-minute slices in time order."""
    spec = DemoSpec(interval_seconds=15, late_channel_share=0.0, offline_hours=0.0)
    chans = demo_channels(channels)
    rows = 0
    with runtime.dbs.source.begin() as conn:
        runtime.source.create(conn)
        a = end - timedelta(hours=hours)
        while a < end:
            rows += insert_rows(conn, runtime.source, ships, chans, a, a + timedelta(minutes=15), spec)
            a += timedelta(minutes=15)
        conn.execute(text(f"ANALYZE {runtime.source.sql}"))
    analyze_source(runtime)
    create_tables(runtime)
    return rows


def assert_exact(engine, settings: Settings, ships=SHIPS) -> None:
    """The oracle, for every ship."""
    for ship in ships:
        diff = compare(engine, settings, ship)
        assert diff.exact and diff.expected > 0, (ship, diff)


def ledger_done(runtime: Runtime) -> tuple[int, int]:
    """(chunks done, rows read by them) over the whole ledger (0, 0 before it exists)."""
    ledger = ChunkLedger(runtime.settings.target_schema)
    with runtime.dbs.target.connect() as conn:
        if not ledger.exists(conn):
            return 0, 0
        n, rows = conn.execute(text(f"SELECT count(*), coalesce(sum(rows_read), 0) FROM {ledger.table} "
                                    "WHERE status = 'done'")).one()
    return int(n), int(rows)


def assert_ledger_tiles(runtime: Runtime, start: datetime, end: datetime, ships=SHIPS) -> None:
    """Every ship's chunks are done and tile ``[start, end)``: no gap, no overlap (held chunks were split)."""
    ledger = ChunkLedger(runtime.settings.target_schema)
    with runtime.dbs.target.connect() as conn:
        rows = conn.execute(text(f"SELECT ship_id, window_start, window_end, status FROM {ledger.table} "
                                 "ORDER BY ship_id, window_start")).all()
    for ship in ships:
        windows = [(a, b) for s, a, b, _ in rows if s == ship]
        assert windows[0][0] == start and windows[-1][1] == end, (ship, windows)
        assert all(windows[i][1] == windows[i + 1][0] for i in range(len(windows) - 1)), (ship, windows)
    assert {status for *_, status in rows} == {"done"}


def tables_of(engine, schema: str) -> set[str]:
    """The tables of ``schema``."""
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": schema}).scalars())


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET; an HTTP error status is returned, not raised (0 when nothing listens)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError as exc:  # nothing listens (yet)
        return 0, str(exc.reason)


def metric(body: str, name: str) -> float:
    """The value of the sample ``name`` (with its labels) in a Prometheus text page; 0 when absent."""
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def wait_for(predicate, timeout: float, what: str, every: float = 0.2):
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ------------------------------------------------------------------------------------------------
# --dry-run


@pytest.mark.parametrize("mode", ["migration-only", "concurrent", "hybrid"])
def test_dry_run_prints_the_plan_and_writes_nothing(runtime, settings, cli_env, engine, mode):
    rows = seed_fleet(runtime)
    state_before = sorted(p.name for p in settings.state_dir.rglob("*"))
    tables_before = tables_of(engine, settings.target_schema)

    result = invoke_cli(cli_env, "--mode", mode, "--dry-run", "--cutoff-time", str(CUTOFF), "--chunk-hours", "2",
                        "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["mode"] == mode and plan["writes"] == "nothing (dry run)"
    assert [s["ship_id"] for s in plan["ships"]] == list(SHIPS)
    for ship in plan["ships"]:
        assert (ship["chunks_to_do"], ship["chunks_new"], ship["chunks_done"]) == (HOURS // 2, HOURS // 2, 0)
        assert ship["cutoff"] == str(CUTOFF) and ship["cutoff_from"] == "given"
        assert ship["hours_to_do"] == HOURS
        assert ship["sample_rows"] > 0
    # every hour of the seed holds the same rows: the sampled estimate is the seed's row count
    assert plan["estimated_rows"] == rows
    assert plan["eta_seconds"] is not None and plan["sample_rows_per_second"] > 0

    text_out = invoke_cli(cli_env, "--mode", mode, "--dry-run", "--cutoff-time", str(CUTOFF))
    assert text_out.exit_code == 0 and "nothing was written" in text_out.stdout, text_out.output
    assert sorted(p.name for p in settings.state_dir.rglob("*")) == state_before  # no cutoff, log or lock file
    assert tables_of(engine, settings.target_schema) == tables_before  # no ledger, no hold log
    assert ledger_done(runtime) == (0, 0)

    # the plan was right: the run does what it said
    ran = invoke_cli(cli_env, "--mode", "migration-only", "--cutoff-time", str(CUTOFF), "--chunk-hours", "2", "--json")
    assert ran.exit_code == 0, ran.output
    assert [s["chunks"] for s in json.loads(ran.stdout)["ships"]] == [HOURS // 2] * len(SHIPS)
    assert_exact(engine, settings)


def test_dry_run_after_part_of_the_run_counts_the_done_chunks(runtime, settings, cli_env):
    seed_fleet(runtime)
    ran = invoke_cli(cli_env, "--mode", "migration-only", "--cutoff-time", str(CUTOFF), "--chunk-hours", "1",
                     "--ship-id", SHIPS[0])
    assert ran.exit_code == 0, ran.output
    result = invoke_cli(cli_env, "--mode", "migration-only", "--dry-run", "--chunk-hours", "1", "--json")
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.stdout)["ships"]
    assert (first["chunks_done"], first["chunks_to_do"], first["cutoff_from"]) == (HOURS, 0, "stored")
    assert (first["estimated_rows"], first["note"]) == (0, None)
    # the second ship has no cutoff yet: a run would take the database's now, so all of its history is to do
    assert (second["chunks_done"], second["cutoff_from"]) == (0, "database now")
    assert second["chunks_to_do"] >= HOURS and second["estimated_rows"] > 0

    other = invoke_cli(cli_env, "--mode", "migration-only", "--dry-run", "--cutoff-time", str(CUTOFF),
                       "--chunk-hours", "1", "--json")
    first, second = json.loads(other.stdout)["ships"]
    assert (second["chunks_to_do"], second["estimated_rows"]) == (HOURS, HOURS * ROWS_PER_HOUR)
    moved = invoke_cli(cli_env, "--mode", "migration-only", "--dry-run", "--cutoff-time", "2024-10-03 00:00:00",
                       "--json")
    first, _ = json.loads(moved.stdout)["ships"]
    assert first["note"] and "--force" in first["note"]  # a different cutoff would stop the run
    assert not settings.cutoff_file.read_text().count("2024-10-03")
    assert_exact(runtime.dbs.source, settings, ships=SHIPS[:1])  # the dry runs changed nothing the run wrote


def test_dry_run_is_only_for_backfill_modes(cli_env):
    result = invoke_cli(cli_env, "--mode", "realtime", "--dry-run")
    assert result.exit_code == 2
    assert "--dry-run applies to --mode migration-only, concurrent, hybrid only" in result.output


# ------------------------------------------------------------------------------------------------
# throttling


def test_rate_cap_holds_over_a_run_with_two_workers(runtime, settings, engine):
    rows = seed_fleet(runtime, hours=8)
    cap = 12_000.0
    opts = BackfillOptions(cutoff_time=str(CUTOFF), chunk_hours=1, workers=2, progress=False,
                           throttle=ThrottleSettings(max_rows_per_second=cap))
    result = run_backfill(runtime, (), opts)
    assert result.rows_read == rows
    ledger = ChunkLedger(settings.target_schema)
    with engine.connect() as conn:  # the run's working span, from the database's clock
        span = conn.execute(text(f"SELECT extract(epoch FROM max(finished_at) - min(started_at)) "
                                 f"FROM {ledger.table}")).scalar_one()
    rate = rows / float(span)
    assert 0.8 * cap <= rate <= 1.2 * cap, (rate, span)
    assert result.rows_per_second <= 1.2 * cap
    assert result.held_seconds.get("rate_capped", 0) > 0
    assert_exact(engine, settings)


def test_rate_cap_reservations_share_one_schedule():
    cap = RateCap(1000.0)  # one worker's schedule (a multiprocessing.Value when shared by processes)
    assert cap.reserve(500, began=10.0) == 10.5  # 500 rows at 1,000/s: its turn ends half a second on
    assert cap.reserve(500, began=10.1) == 11.0  # the next reservation queues behind it
    assert cap.reserve(1000, began=20.0) == 21.0  # work that began after the schedule ran dry starts afresh
    with pytest.raises(ConfigError):
        RateCap(0)


def test_a_long_rate_cap_turn_ends_the_chunk_at_a_block_and_waits_outside(runtime, settings, engine):
    seed_fleet(runtime, hours=1, channels=4)
    ledger = ChunkLedger(settings.target_schema)
    # two 30-minute blocks of 480 rows; at 400 rows/s the first block's turn ends 1.2 s on: more than the
    # second a worker may wait inside a chunk's transaction, so the chunk ends after its first block
    opts = BackfillOptions(cutoff_time=str(CUTOFF), chunk_hours=1, progress=False,
                           throttle=ThrottleSettings(max_rows_per_second=400))
    result = run_backfill(runtime, (SHIPS[0],), opts)
    assert result.rows_read == 960 and result.held_seconds["rate_capped"] > 1.0
    with engine.connect() as conn:
        chunks = conn.execute(text(f"SELECT id, window_start, window_end, status FROM {ledger.table} "
                                   "ORDER BY window_start")).all()
    half = CUTOFF - timedelta(minutes=30)
    assert [(c.window_start, c.window_end, c.status) for c in chunks] == [
        (CUTOFF - timedelta(hours=1), half, "done"), (half, CUTOFF, "done")]
    assert chunks[1].id < chunks[0].id  # the rest kept the planned chunk's id (so --retry-failed still runs it)
    diff = compare(engine, settings, SHIPS[0])
    assert diff.exact and diff.expected == 960, diff


def _brake(engine, settings: Settings, on: bool) -> str:
    """A one-row table in the source schema the throttle query reads; returns the query."""
    table = qualified(settings.source_schema, "brake")
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {table} (hold boolean)"))
        conn.execute(text(f"DELETE FROM {table}"))
        conn.execute(text(f"INSERT INTO {table} VALUES (:on)"), {"on": on})
    return f"SELECT hold FROM {table}"


def _run_in_thread(runtime: Runtime, opts: BackfillOptions) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = run_backfill(runtime, (), opts)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_throttle_query_holds_the_backfill_while_true_and_lets_it_go_when_false(runtime, settings, engine):
    seed_fleet(runtime)
    query = _brake(engine, settings, on=True)
    opts = BackfillOptions(cutoff_time=str(CUTOFF), chunk_hours=1, progress=False,
                           throttle=ThrottleSettings(throttle_query=query, check_seconds=0.5))
    thread, out = _run_in_thread(runtime, opts)
    holds = HoldLog(settings.target_schema)

    def held() -> bool:
        with engine.connect() as conn:
            return holds.exists(conn) and "throttled" in holds.holding_now(conn)

    wait_for(held, 20, "the backfill to report itself throttled")
    time.sleep(2.0)
    assert ledger_done(runtime) == (0, 0), "a throttled backfill did a chunk"
    assert thread.is_alive()
    _brake(engine, settings, on=False)
    thread.join(60)
    assert not thread.is_alive() and "error" not in out, out
    result = out["result"]
    assert result.rows_read == len(SHIPS) * HOURS * ROWS_PER_HOUR
    assert result.held_seconds["throttled"] >= 2.0
    assert_exact(engine, settings)


def test_max_source_active_holds_while_the_source_is_busy(runtime, settings, engine, pg_url):
    seed_fleet(runtime, hours=2)
    busy = make_engine(pg_url, "someone-else")  # sessions that are not the tool's
    sleepers = [threading.Thread(target=lambda: busy.connect().execute(text("SELECT pg_sleep(4)")), daemon=True)
                for _ in range(2)]
    try:
        for t in sleepers:
            t.start()
        wait_for(lambda: _active_others(engine) >= 2, 10, "two busy sessions")
        opts = BackfillOptions(cutoff_time=str(CUTOFF), chunk_hours=1, progress=False,
                               throttle=ThrottleSettings(max_source_active=1, check_seconds=0.5))
        result = run_backfill(runtime, (), opts)
    finally:
        for t in sleepers:
            t.join(10)
        busy.dispose()
    assert result.held_seconds["throttled"] >= 1.0
    assert result.rows_read == len(SHIPS) * 2 * ROWS_PER_HOUR
    assert_exact(engine, settings)


def _active_others(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                                     "AND application_name = 'someone-else'")).scalar_one())


def test_a_throttle_query_with_percent_signs_runs_as_written(runtime, settings, cli_env, engine):
    """The operator's SQL goes to the server as written: a LIKE pattern and a modulo are not placeholders."""
    seed_fleet(runtime, hours=1)
    query = ("SELECT count(*) % 2 = 7 FROM pg_stat_activity WHERE application_name LIKE 'etl%' "
             "OR application_name LIKE '%%%'")
    result = invoke_cli(cli_env, "--mode", "migration-only", "--cutoff-time", str(CUTOFF), "--throttle-query", query)
    assert result.exit_code == 0, result.output
    assert_exact(engine, settings)


@pytest.mark.parametrize("query, why", [
    ("UPDATE pg_catalog.pg_class SET relname = relname RETURNING true", "it failed"),
    ("SELECT nextval('{seq}') > 0", "it is not read-only"),
    ("SELECT 1", "its first column must be a boolean"),
    ("SELECT true; DROP TABLE {table}", "one statement"),
    ("SELECT no_such_column FROM {table}", "it failed"),
])
def test_a_bad_throttle_query_is_refused_before_anything_starts(runtime, settings, cli_env, engine, query, why):
    seed_fleet(runtime, hours=1)
    seq = qualified(settings.source_schema, "some_seq")
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SEQUENCE {seq}"))
    sql = query.format(seq=f"{settings.source_schema}.some_seq", table=runtime.source.sql)
    result = invoke_cli(cli_env, "--mode", "migration-only", "--cutoff-time", str(CUTOFF), "--throttle-query", sql)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--throttle-query" in lines[0] and why in lines[0], result.stderr
    assert "migrator_chunks" not in tables_of(engine, settings.target_schema)
    assert not settings.cutoff_file.exists()
    with engine.connect() as conn:  # the sequence was not advanced: the query ran read-only
        assert conn.execute(text(f"SELECT last_value, is_called FROM {seq}")).one() == (1, False)


# ------------------------------------------------------------------------------------------------
# pause and resume


def _no_open_transactions(engine) -> bool:
    """No session of the tool's workers or their readers sits in an open transaction."""
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name IN ('narrow-to-wide-worker', "
            "'narrow-to-wide reader') AND state LIKE 'idle in transaction%'")).scalar_one() == 0


@pytest.mark.slow
def test_pause_holds_a_running_two_worker_backfill_and_resume_finishes_it(runtime, settings, cli_env, engine,
                                                                           procs):
    rows = seed_fleet(runtime, hours=10)
    port = free_port()
    proc = procs.start("--mode", "migration-only", "--workers", "2", "--cutoff-time", str(CUTOFF),
                       "--chunk-hours", "1", "--max-rows-per-second", "8000", "--metrics-port", str(port))
    first = wait_for(lambda: ledger_done(runtime)[0] >= 1 and ledger_done(runtime), 60, "a first chunk done")
    scraped = wait_for(lambda: metric(http_get(f"http://127.0.0.1:{port}/metrics")[1],
                                      'narrow2wide_rows_read_total{phase="backfill"}'), 30, "backfill rows counted")
    assert scraped > 0 and first[1] > 0

    paused = invoke_cli(cli_env, "--mode", "pause")
    assert paused.exit_code == 0 and "Paused every ship" in paused.stdout, paused.output
    holds = HoldLog(settings.target_schema)

    def both_paused() -> bool:
        with engine.connect() as conn:
            return holds.holding_now(conn).get("paused", (0, None))[0] == 2

    wait_for(both_paused, 30, "both workers to hold for the pause")
    held_at = ledger_done(runtime)
    time.sleep(3.0)
    assert ledger_done(runtime) == held_at, "a paused backfill made progress"
    assert held_at[1] < rows and proc.poll() is None
    assert _no_open_transactions(engine), "a paused worker holds a transaction open"
    status = invoke_cli(cli_env, "--mode", "status", "--json")
    assert status.exit_code == 0, status.output
    report = json.loads(status.stdout)
    assert {s["status"] for s in report["ships"]} == {"paused"}
    assert all(s["paused_since"] for s in report["ships"]) and "*" in report["paused"]
    assert report["holding_now"]["paused"]["workers"] == 2
    # the metrics follow the hold log and the ledger in polls: wait until they show the time held, then the
    # row counter is what the ledger says was read
    def page_with_held_seconds() -> str | None:
        page = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        return page if metric(page, 'narrow2wide_backfill_held_seconds_total{reason="paused"}') > 0 else None

    page = wait_for(page_with_held_seconds, 30, "the metrics to show the time held")
    assert metric(page, "narrow2wide_backfill_paused") == 1.0
    assert metric(page, 'narrow2wide_rows_read_total{phase="backfill"}') == held_at[1]

    resumed = invoke_cli(cli_env, "--mode", "resume")
    assert resumed.exit_code == 0 and "Resumed every ship" in resumed.stdout, resumed.output
    code, out, err = procs.finish(proc, timeout=120)
    assert code == 0, out + err
    assert "held: paused" in out and "rate capped" in out, out
    assert ledger_done(runtime)[1] == rows
    assert_ledger_tiles(runtime, CUTOFF - timedelta(hours=10), CUTOFF)
    again = invoke_cli(cli_env, "--mode", "resume")
    assert again.exit_code == 0 and "Nothing was paused." in again.stdout, again.output
    assert_exact(engine, settings)


def test_a_pause_with_nothing_running_applies_to_the_next_run(runtime, settings, cli_env, engine):
    seed_fleet(runtime, hours=2)
    assert invoke_cli(cli_env, "--mode", "pause", "--ship-id", SHIPS[1]).exit_code == 0
    thread, out = _run_in_thread(runtime, BackfillOptions(cutoff_time=str(CUTOFF), chunk_hours=1, progress=False))

    ledger = ChunkLedger(settings.target_schema)

    def first_ship_done() -> bool:
        with engine.connect() as conn:
            if not ledger.exists(conn):
                return False
            done = dict(conn.execute(text(
                f"SELECT ship_id, count(*) FILTER (WHERE status = 'done') FROM {ledger.table} GROUP BY 1")).all())
        return done.get(SHIPS[0]) == 2

    try:
        wait_for(first_ship_done, 30, "the ship not paused to finish")
        time.sleep(2.0)
        assert thread.is_alive(), "the run ended with a paused ship's chunks left"
        assert compare(engine, settings, SHIPS[1]).actual == 0
        status = json.loads(invoke_cli(cli_env, "--mode", "status", "--json").stdout)
        assert [s["status"] for s in status["ships"]] == ["completed", "paused"]
    finally:
        resumed = invoke_cli(cli_env, "--mode", "resume", "--ship-id", SHIPS[1])
    assert resumed.exit_code == 0 and f"Resumed {SHIPS[1]}" in resumed.stdout
    thread.join(60)
    assert not thread.is_alive() and "error" not in out, out
    assert out["result"].held_seconds["paused"] >= 2.0
    assert_exact(engine, settings)


# ------------------------------------------------------------------------------------------------
# metrics and health


def test_a_metrics_port_in_use_is_refused_naming_it(cli_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = invoke_cli(cli_env, "--mode", "realtime", "--metrics-port", str(port))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], result.stderr


@pytest.fixture
def own_database(pg_url, engine):
    """A database of this test's own (so that it can be cut away); dropped afterwards."""
    name = f"n2w_ops_{uuid.uuid4().hex[:8]}"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"CREATE DATABASE {qi(name)}"))
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    yield name, url
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"ALTER DATABASE {qi(name)} WITH ALLOW_CONNECTIONS true"))
        conn.execute(text(f"DROP DATABASE IF EXISTS {qi(name)} WITH (FORCE)"))


@pytest.mark.slow
def test_metrics_grow_during_realtime_and_healthz_goes_503_when_the_database_is_cut(own_database, engine, procs,
                                                                                     tmp_path):
    name, url = own_database
    settings = Settings(database_url=url, target_database_url=None, source_schema="tenant",
                        source_table="tbl_data_timeseries", target_schema="wide", state_dir=tmp_path / "state2",
                        embedded_pgdata=tmp_path / "pgdata2")
    own = make_engine(url, "migrator-tests")
    rt = Runtime(settings=settings, dbs=Databases(source=own, target=own))
    try:
        with own.begin() as conn:
            conn.execute(text("CREATE SCHEMA tenant; CREATE SCHEMA wide"))
            now = conn.execute(text("SELECT localtimestamp")).scalar_one()
        seed_fleet(rt, hours=1, end=now.replace(microsecond=0))
        port = free_port()
        proc = procs.start("--mode", "realtime", "--interval", "0.02", "--metrics-port", str(port),
                           DATABASE_URL=url, SOURCE_TABLE="tenant.tbl_data_timeseries", TARGET_SCHEMA="wide",
                           STATE_DIR=str(settings.state_dir))
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 60, "a healthy realtime")
        counted = 'narrow2wide_rows_read_total{phase="realtime"}'
        before = metric(http_get(f"http://127.0.0.1:{port}/metrics")[1], counted)
        cutoff = wait_for(lambda: CutoffStore(settings.cutoff_file).get(SHIPS[0]), 10, "the cutoff").cutoff
        time.sleep(2.0)
        spec = DemoSpec(interval_seconds=1, late_channel_share=0.0, offline_hours=0.0)
        with own.begin() as conn:  # new rows every second from the cutoff up to the database's now
            t1 = conn.execute(text("SELECT localtimestamp")).scalar_one()
            insert_rows(conn, rt.source, SHIPS, demo_channels(CHANNELS), cutoff, t1, spec)
        wait_for(lambda: metric(http_get(f"http://127.0.0.1:{port}/metrics")[1], counted) > before, 30,
                 "the realtime rows counter to grow")
        page = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        assert metric(page, "narrow2wide_realtime_cycle_seconds_count") >= 2
        assert all(f'narrow2wide_realtime_lag_seconds{{ship_id="{s}"}}' in page for s in SHIPS)

        own.dispose()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:  # cut the database away
            conn.execute(text(f"ALTER DATABASE {qi(name)} WITH ALLOW_CONNECTIONS false"))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                         {"d": name})
        status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(
            http_get(f"http://127.0.0.1:{port}/healthz")), 30, "healthz to answer 503")
        assert "last successful realtime cycle" in body
        assert proc.poll() is None, "realtime must outlive an outage"
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"ALTER DATABASE {qi(name)} WITH ALLOW_CONNECTIONS true"))
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 90, "health back after the outage")
        proc.terminate()
        procs.finish(proc, timeout=30)
        for ship in SHIPS:  # realtime owns the rows from the cutoff on (history before it is the backfill's)
            diff = compare(own, settings, ship, start=CutoffStore(settings.cutoff_file).get(ship).cutoff)
            assert diff.exact and diff.expected >= CHANNELS * 2, (ship, diff)
    finally:
        own.dispose()
